"""IXFR to a signed zone patched into the image instead of compiled in full
(pop53/zone/patch_dnssec.py): the zone's DNSSEC block is written after a copy of its node table
with the offsets of the rewritten records remapped.  A full re-sign with a new record value, a
pre-published ZSK (new DNSKEY RRset, every RRSIG new) and a one-signature change (a few names)
are each patched, and the patched image passes the data plane's full validation and answers
every DO=1 query of the corpus exactly like a full compile of the new version, with signatures
that verify; NSEC3 and opt-out zones too (their hashed owners found through the chain).
Changes of the name set or of the chain still compile in full (the patcher says why)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import dns.dnssec
import dns.message
import dns.rdataclass
import dns.name
import dns.rdatatype
import dns.zone
import pytest

import pop53
from pop53 import _core
from pop53.zone.compiler import compile_zone_data
from pop53.zone.incremental import patch_image
from pop53.zone.zonefile import load_zone_file

from cases import CASES, qname
from proofs import make_query, signature_problems
from signing import ORIGIN, sign

pytestmark = pytest.mark.peers
O = dns.name.from_text(ORIGIN)


def changed_names(a: Path, b: Path) -> set:
    za = dns.zone.from_file(str(a), ORIGIN, relativize=False)
    zb = dns.zone.from_file(str(b), ORIGIN, relativize=False)
    out = set()
    for n in set(za.nodes) | set(zb.nodes):
        na, nb = za.nodes.get(n), zb.nodes.get(n)
        if na is None or nb is None or {(r.rdtype, r.covers, r.ttl, frozenset(r)) for r in na} != \
                {(r.rdtype, r.covers, r.ttl, frozenset(r)) for r in nb}:
            out.add(n)
    return out


def answers(image) -> list:
    return [pop53.answer(image, make_query(qname(rel, ORIGIN), t), ("127.0.0.1", 5353), tcp=tcp)
            for _c, rel, t in CASES for tcp in (False, True)]


def patched_like_full(old_path, new_path) -> tuple:
    old = compile_zone_data([load_zone_file(old_path, ORIGIN)])
    data = load_zone_file(new_path, ORIGIN)
    changed = changed_names(old_path, new_path)
    patched = patch_image(old, O, data, changed)
    assert patched is not None, patch_image.last_reason
    _core.ImageView(bytes(patched), True)            # the data plane's full validation
    full = compile_zone_data([data])
    assert answers(patched) == answers(full)
    dnskey = dns.zone.from_file(str(new_path), ORIGIN, relativize=False).find_rrset(O, "DNSKEY")
    bad = [p for raw in answers(patched) for p in signature_problems(raw, dnskey)]
    assert not bad, bad[:5]
    return patched, changed


def resign(src_text: str, signed, tmp_path, serial: int, name: str, variant="nsec"):
    src = tmp_path / f"{name}.zone"
    src.write_text(src_text.replace(" 2026120301 7200 ", f" {2026120300 + serial} 7200 ", 1))
    out = tmp_path / f"{name}.signed"
    sign(src, signed.keydir, out, variant)
    return out


@pytest.fixture
def unsigned_text(signed, tmp_path):
    """The source of the signed NSEC test zone (its child's DS included), SOA serial 1."""
    src = signed["nsec"].keydir.parent / "sec.example.zone"
    text = src.read_text()
    assert " 2026120301 7200 " in text
    return text


def test_resign_and_zsk_prepublish_are_patched(signed, unsigned_text, tmp_path):
    v1 = signed["nsec"].path
    # a full re-sign with one record changed: every RRSIG is new (ECDSA), the names are the same
    v2 = resign(unsigned_text.replace("192.0.2.80", "192.0.2.81"), signed["nsec"], tmp_path, 2, "v2")
    _, changed = patched_like_full(v1, v2)
    assert len(changed) > 10
    # pre-publish a ZSK: a new DNSKEY RRset at the apex, everything re-signed
    keydir = tmp_path / "keys"
    subprocess.run(["cp", "-r", str(signed["nsec"].keydir), str(keydir)], check=True)
    subprocess.run(["dnssec-keygen", "-q", "-K", str(keydir), "-a", "ECDSAP256SHA256", "-P", "now",
                    "-A", "none", ORIGIN], check=True, capture_output=True)
    src = tmp_path / "v3.zone"
    src.write_text(unsigned_text.replace(" 2026120301 7200 ", " 2026120303 7200 ", 1))
    v3 = tmp_path / "v3.signed"
    sign(src, keydir, v3, "nsec")
    patched, _ = patched_like_full(v2, v3)
    keys = dns.message.from_wire(pop53.answer(patched, make_query(ORIGIN, "DNSKEY"),
                                              ("127.0.0.1", 5353), tcp=True)).answer[0]
    assert len([k for k in keys if k.rdtype == dns.rdatatype.DNSKEY]) == 3


def test_one_signature_changed_is_patched(signed, tmp_path):
    """A primary refreshing one RRSIG (a few records of the IXFR): the other names keep their
    records, only the changed name's offset moves in the DNSSEC block."""
    from pop53.dnssec import keys as dkeys
    v1 = signed["nsec"].path
    z = dns.zone.from_file(str(v1), ORIGIN, relativize=False)
    www = dns.name.from_text("www." + ORIGIN)
    zsk = next(k for k in dkeys.load_dir(str(signed["nsec"].keydir), O)
               if isinstance(k, dkeys.SigningKey) and not k.ksk)
    rrset = z.find_rrset(www, "A")
    old_sig = z.find_rdataset(www, "RRSIG", "A")
    sig = dns.dnssec.sign(rrset, zsk.private, O, zsk.dnskey, lifetime=86400 * 30)
    node = z.nodes[www]
    node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.A)
    node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.A, create=True) \
        .add(sig, old_sig.ttl)
    v2 = tmp_path / "v2.signed"
    z.to_file(str(v2), relativize=False)
    _, changed = patched_like_full(v1, v2)
    assert changed == {www}


def test_structural_changes_and_nsec3_compile_in_full(signed, unsigned_text, tmp_path):
    v2 = resign(unsigned_text + "added 3600 IN A 192.0.2.99\n", signed["nsec"], tmp_path, 2, "v2")
    old = compile_zone_data([load_zone_file(signed["nsec"].path, ORIGIN)])
    data = load_zone_file(v2, ORIGIN)
    assert patch_image(old, O, data, changed_names(signed["nsec"].path, v2)) is None
    assert "names" in patch_image.last_reason
    # NSEC -> NSEC3 at once, and new NSEC3 parameters: the chain itself changes
    n3 = signed["nsec3"].path
    assert patch_image(old, O, load_zone_file(n3, ORIGIN), changed_names(signed["nsec"].path, n3)) is None
    assert patch_image.last_reason == "signed zone: NSEC <-> NSEC3"
    salted = tmp_path / "salted.zone"
    salted.write_text(unsigned_text)
    out = tmp_path / "salted.signed"
    subprocess.run(["dnssec-signzone", "-S", "-K", str(signed["nsec3"].keydir), "-o", ORIGIN,
                    "-f", str(out), "-3", "ab", "-H", "0", str(salted)], check=True,
                   capture_output=True, cwd=signed["nsec3"].keydir)
    old = compile_zone_data([load_zone_file(n3, ORIGIN)])
    assert patch_image(old, O, load_zone_file(out, ORIGIN), changed_names(n3, out)) is None
    assert patch_image.last_reason in ("signed zone: new NSEC3 parameters",
                                       "signed zone: an NSEC3 owner appears or goes")


@pytest.mark.parametrize("variant", ["nsec3", "optout"])
def test_nsec3_resign_is_patched(signed, unsigned_text, tmp_path, variant):
    """NSEC3 (and opt-out): a full re-sign with a changed record rewrites every NSEC3 record's
    RRSIG too; the hashed owners, outside the node table, are found through the chain."""
    v2 = resign(unsigned_text.replace("192.0.2.80", "192.0.2.81"), signed[variant], tmp_path, 2,
                "v2", variant)
    _, changed = patched_like_full(signed[variant].path, v2)
    assert sum(1 for n in changed if len(n) == len(O) + 1 and len(n.labels[0]) == 32) > 5
