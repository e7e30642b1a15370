"""DNSSEC answers in process (pop53.answer on the compiled image): nothing changes without DO;
NSEC3 owner names are not names of the zone; truncation keeps RRsets whole with their RRSIGs;
the data plane's NSEC3 hash; the image's DNSSEC block is validated (IXFR patches of signed
zones: test_signed_ixfr_patch.py)."""
from __future__ import annotations

import hashlib
import struct

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from cases import CASES, qname
from proofs import is_proof, make_query, signature_problems
from signing import ZONES
from pop53 import _core, answer, compile_zones
from pop53.dnssec.index import DSEC, nsec3_hash
from pop53.errors import ImageError
from pop53.zone.compiler import HEADER, ZONE, CHECKSUM_OFFSET
from pop53.zone.images import Image

VARIANTS = ["nsec", "nsec3", "optout"]
CLIENT = ("192.0.2.99", 5353)
DNSSEC_TYPES = {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3,
                dns.rdatatype.DNSKEY, dns.rdatatype.NSEC3PARAM}


def ask(image, name, qtype, **kw) -> dns.message.Message:
    return dns.message.from_wire(answer(image, make_query(name, qtype, **kw), CLIENT))


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_do_a_signed_zone_answers_as_unsigned(signed, images, tmp_path, variant):
    """RFC 3225 §3: DO=0 gets the answers of the zone with its DNSSEC records stripped (the
    DS of the signed child is data of the parent and stays)."""
    s = signed[variant]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    for name, node in list(zone.nodes.items()):
        for rds in list(node.rdatasets):
            if rds.rdtype in DNSSEC_TYPES:
                node.delete_rdataset(rds.rdclass, rds.rdtype, rds.covers)
        if not node.rdatasets:
            del zone.nodes[name]
    plain = tmp_path / "plain.zone"
    zone.to_file(str(plain), relativize=False)
    unsigned = compile_zones([(str(plain), s.origin)])
    for _cat, rel, t in CASES:
        if dns.rdatatype.from_text(t) in DNSSEC_TYPES:
            continue
        for payload in (512, 1232):
            wire = make_query(qname(rel, s.origin), t, do=False, payload=payload)
            assert answer(images[variant], wire, CLIENT) == answer(unsigned, wire, CLIENT), (rel, t)


@pytest.mark.parametrize("variant", ["nsec3", "optout"])
@pytest.mark.parametrize("do", [False, True])
def test_nsec3_owner_names_are_nxdomain(signed, images, variant, do):
    s = signed[variant]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    hashed = [n for n, node in zone.nodes.items() if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3)]
    assert hashed
    for name in hashed:
        for qtype in ("A", "NSEC3", "ANY"):
            r = ask(images[variant], name.to_text(), qtype, do=do)
            assert r.rcode() == dns.rcode.NXDOMAIN, (name, qtype)
            assert not r.answer
        # and below one: no closest encloser there either
        r = ask(images[variant], "x." + name.to_text(), "A", do=do)
        assert r.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rrset_goes_with_its_signatures(signed, images, variant):
    """DO=1 over TCP (no truncation): every RRset the zone signs comes with its RRSIGs, and
    every RRSIG verifies (dnspython's dns.dnssec against the zone's DNSKEY)."""
    s = signed[variant]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    dnskey = zone.find_rrset(s.origin, "DNSKEY")
    for _cat, rel, t in CASES:
        raw = answer(images[variant], make_query(qname(rel, s.origin), t), CLIENT, tcp=True)
        assert signature_problems(raw, dnskey) == [], (rel, t)
        assert _unsigned_rrsets(raw, zone) == [], (rel, t)


def _unsigned_rrsets(raw: bytes, zone) -> list:
    """RRsets in the reply that the zone signs but that travel without their RRSIGs, and
    RRsets that are not whole (RFC 2181 §9)."""
    m = dns.message.from_wire(raw)
    out = []
    for sec in (m.answer, m.authority, m.additional):
        have = {(rr.name, rr.covers) for rr in sec if rr.rdtype == dns.rdatatype.RRSIG}
        for rr in sec:
            if rr.rdtype == dns.rdatatype.RRSIG:
                continue
            node = zone.get_node(rr.name)
            if node is None:
                # synthesized: from a DNAME, a CNAME without RRSIG (RFC 6672 §5.3.1); from a
                # wildcard, with the wildcard's RRSIGs
                if rr.rdtype != dns.rdatatype.CNAME and (rr.name, rr.rdtype) not in have:
                    out.append(f"unsigned wildcard answer {rr.name} {rr.rdtype!r}")
                continue
            zrr = node.get_rdataset(1, rr.rdtype)
            if zrr is not None and len(zrr) != len(rr):
                out.append(f"partial {rr.name} {rr.rdtype!r}")
            if node.get_rdataset(1, dns.rdatatype.RRSIG, rr.rdtype) is not None and \
                    (rr.name, rr.rdtype) not in have:
                out.append(f"unsigned {rr.name} {rr.rdtype!r}")
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_truncation_keeps_rrsets_with_their_signatures(signed, images, variant):
    """At 512 bytes the proofs of NSEC3 denials do not fit: TC, and what the reply holds is
    whole RRsets, each with its RRSIGs, and the whole proof or none of it."""
    s = signed[variant]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    truncated = 0
    for _cat, rel, t in CASES:
        raw = answer(images[variant], make_query(qname(rel, s.origin), t, payload=512), CLIENT)
        assert len(raw) <= 512
        m = dns.message.from_wire(raw)
        truncated += bool(m.flags & dns.flags.TC)
        assert _unsigned_rrsets(raw, zone) == [], (rel, t)
        # a proof is whole or absent (TC), never a part of one
        full = dns.message.from_wire(answer(images[variant], make_query(
            qname(rel, s.origin), t), CLIENT, tcp=True))
        proofs = lambda msg: sorted(rr.to_text() for rr in msg.authority if is_proof(rr))
        assert proofs(m) in ([], proofs(full)), (rel, t)
    if variant != "nsec":
        assert truncated > 0    # the corpus does reach the limit (NSEC3 denials: ~900 bytes)


def test_nsec3_hash_in_c_matches_rfc5155(signed):
    # RFC 5155 Appendix A: H(example) with salt aabbccdd, 12 iterations
    assert base32(_core.nsec3_hash(b"\x07example\x00", bytes.fromhex("aabbccdd"), 12)) == \
        "0p9mhaveqvm6t7vbl5lop2u3t2rp3tom"
    for name in (b"\x00", b"\x03www\x07example\x00", b"\x01*\x02ab\x00", b"\x3f" + b"a" * 63 + b"\x00"):
        for salt in (b"", b"\x01", bytes(range(255))):
            for it in (0, 1, 5):
                assert _core.nsec3_hash(name, salt, it) == nsec3_hash(name, salt, it)
    assert nsec3_hash(b"\x00", b"", 0) == hashlib.sha1(b"\x00").digest()


def base32(h: bytes) -> str:
    import base64
    return base64.b32hexencode(h).decode().lower()


def _dsec_offset(buf) -> int:
    h = HEADER.unpack_from(buf, 0)
    z = ZONE.unpack_from(buf, h[5])
    assert z[3] & _core.ZONE_FLAGS["SIGNED"]
    return z[5] + 4 * (z[6] + 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_corrupt_dnssec_block_is_rejected(images, variant):
    buf = bytearray(bytes(images[variant]))
    off = _dsec_offset(buf)
    mode, _sl, _it, n_chain, chain_off, n_info, info_off = DSEC.unpack_from(buf, off)[:7]
    assert n_chain > 0 and n_info > 0
    for field, value in ((3, len(buf)), (5, len(buf) - 4), (0, 7)):
        bad = bytearray(buf)
        vals = list(DSEC.unpack_from(buf, off))
        vals[field] = value
        DSEC.pack_into(bad, off, *vals)
        struct.pack_into("<I", bad, CHECKSUM_OFFSET, 0)
        struct.pack_into("<I", bad, CHECKSUM_OFFSET, _core.checksum(bad))
        for full in (True, False):
            with pytest.raises(ImageError, match="check 16"):
                Image(bytes(bad), full_check=full)
    # a proof pointing outside the image
    bad = bytearray(buf)
    struct.pack_into("<I", bad, info_off + 4, len(buf) - 2)
    with pytest.raises(ImageError, match="check 16"):
        Image(bytes(bad), full_check=True)


def test_ds_at_a_served_child_is_answered_by_the_parent(signed):
    """With parent and child in one image, DS at the child's apex is the parent's: signed DS,
    or the parent's NODATA proof (RFC 4035 §3.1.4.1)."""
    s, child = signed["nsec3"], signed["child"]
    image = compile_zones([(str(s.path), s.origin), (str(child.path), child.origin),
                           (str(ZONES / "unsigned.sec.example.zone"), "unsigned." + s.origin)])
    r = ask(image, child.origin, "DS")
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.DS, dns.rdatatype.RRSIG]
    assert r.answer[1][0].signer == dns.name.from_text(s.origin)
    r = ask(image, "unsigned." + s.origin, "DS")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert {rr.rdtype for rr in r.authority} == {dns.rdatatype.SOA, dns.rdatatype.NSEC3,
                                                 dns.rdatatype.RRSIG}
    assert all(rr.name.is_subdomain(dns.name.from_text(s.origin)) and
               not rr.name.is_subdomain(dns.name.from_text("unsigned." + s.origin))
               for rr in r.authority)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixed_case_query_names_get_the_same_proofs(signed, images, variant):
    """0x20 case: the covering NSEC search and the NSEC3 hash use the lowercased name."""
    s = signed[variant]
    for rel, qtype in (("nope", "A"), ("x.y.b.ent", "A"), ("x.wild", "TXT"), ("ent", "A")):
        lower = ask(images[variant], qname(rel, s.origin), qtype)
        mixed = ask(images[variant], qname(rel, s.origin).upper(), qtype)
        assert mixed.rcode() == lower.rcode()
        # (owners compressed against the question keep its case: compare case-folded)
        assert sorted(rr.to_text().lower() for rr in mixed.authority) == \
            sorted(rr.to_text().lower() for rr in lower.authority), (rel, qtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_queries_get_whole_parseable_signed_replies(signed, images, variant):
    """400 random DO=1 queries (names made of the zone's labels, any type, any payload, UDP
    and TCP): every reply parses, fits the limit, carries whole RRsets with their RRSIGs, and
    (every 10th: ECDSA verification in Python is the cost) its RRSIGs verify."""
    import random
    s = signed[variant]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    dnskey = zone.find_rrset(s.origin, "DNSKEY")
    rng = random.Random(12)
    labels = ["www", "ent", "b", "a", "wild", "*", "x", "cname", "dname", "signed", "unsigned",
              "deep", "ns", "mail", "zz", "0dlbacs760tsph5hh3kt26bht985mtf3"]
    types = ["A", "AAAA", "MX", "TXT", "NS", "DS", "SOA", "CNAME", "DNAME", "RRSIG", "NSEC",
             "NSEC3", "DNSKEY", "NSEC3PARAM", "ANY", "TYPE999"]
    for i in range(400):
        rel = ".".join(rng.choice(labels) for _ in range(rng.randint(0, 4)))
        name = f"{rel}.{s.origin}" if rel else s.origin
        payload = rng.choice([512, 700, 1232, 4096])
        tcp = rng.random() < 0.3
        raw = answer(images[variant], make_query(name, rng.choice(types), payload=payload),
                     CLIENT, tcp=tcp)
        m = dns.message.from_wire(raw)
        assert tcp or len(raw) <= payload
        assert _unsigned_rrsets(raw, zone) == [], (name, m.question)
        if i % 10 == 0:
            assert signature_problems(raw, dnskey) == [], (name, m.question)
