"""Property tests of the data plane with hypothesis (deterministic: derandomize, no database).

1. Random bytes and randomly mutated real queries never crash or hang pop53.answer and get
   drop (only when shorter than a header or QR=1), FORMERR, another error rcode, or a reply
   that dnspython parses (wirekit.check_reply: ID/RD/opcode echoed, question echoed, error
   replies at most header + question + OPT).
2. Random valid queries built with dnspython (names from the zones with random 0x20 case and
   random prefixes, random types, EDNS on/off, random payload sizes, DO bit) round-trip: the
   reply parses, echoes the question exactly, fits the size limit (512 without EDNS, otherwise
   max(512, min(advertised, 1232))), sets TC when truncated and never carries a partial RRset
   (RFC 2181 §9), and for the simple cases (exact match, NXDOMAIN, NODATA, REFUSED) agrees with
   a straightforward dnspython reading of RFC 1034 §4.3.2.
3. Names at every edge: 255 octets, 63-octet labels, 127 labels, escaped bytes (\\. \\000).

Budget: the whole file runs in well under a minute on the CI machine (bounded max_examples).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pop53
from malformed.wirekit import (
    CLIENT, EXAMPLE_ZONE, ERROR_RCODES, MUTATION_OPS, NOERROR, NXDOMAIN, QR, REFUSED, SEEDS,
    check_reply, mutate,
)

HERE = Path(__file__).resolve().parent
Z_ZONE = HERE / "zones" / "z.zone"
EDNS_MAX = 1232      # the Responder default: DNS Flag Day 2020

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------------
# zones and the image (module globals: hypothesis forbids function-scoped fixtures in @given)
# ---------------------------------------------------------------------------------------------
ZONES = [dns.zone.from_file(str(p), relativize=False) for p in (EXAMPLE_ZONE, Z_ZONE)]
IMAGE = pop53.compile_zones([str(EXAMPLE_ZONE), str(Z_ZONE)])
RESPONDER = pop53.Responder()
ZONE_NAMES = sorted({n for z in ZONES for n in z.nodes}, key=lambda n: n.to_wire())
Z = dns.name.from_text("z.")


# ---------------------------------------------------------------------------------------------
# 1. random bytes and mutations
# ---------------------------------------------------------------------------------------------
def _outcome(wire: bytes, tcp: bool = False) -> None:
    reply = pop53.answer(IMAGE, wire, CLIENT, tcp=tcp)
    if len(wire) < 12 or struct.unpack("!H", wire[2:4])[0] & QR:
        assert reply is None
        return
    msg = check_reply(wire, reply)
    if not tcp:
        # (msg.payload is ours; the client's advertised size is checked in the round trips)
        assert len(reply) <= (EDNS_MAX if msg.edns >= 0 else 512)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=1500)
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes(wire, tcp):
    _outcome(wire, tcp)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=1000)
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes_behind_a_query_header(body):
    """Random bytes behind a header that passes the first rows (QR=0, QUERY, QDCOUNT 1, random
    other counts), so the parser's deeper paths see random input."""
    for counts in ((0, 0, 0), (0, 0, 1), (0, 0, 3), (1, 1, 2)):
        wire = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, *counts) + body
        _outcome(wire)


MUTATIONS = st.lists(st.tuples(st.sampled_from(MUTATION_OPS), st.integers(0, 1 << 16),
                               st.integers(0, 255)), min_size=1, max_size=6)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=1200)
@given(st.sampled_from(SEEDS), MUTATIONS, st.booleans())
def test_mutated_queries(seed, ops, tcp):
    _outcome(mutate(seed, ops), tcp)


# ---------------------------------------------------------------------------------------------
# 2. valid queries against a reference reading of RFC 1034 §4.3.2
# ---------------------------------------------------------------------------------------------
@dataclass
class Expect:
    rcode: int
    aa: bool
    answer: set
    authority: set


def _norm(rrsets) -> set:
    return {(r.name.canonicalize(), r.rdtype, r.ttl, frozenset(r)) for r in rrsets}


def _find_zone(qname: dns.name.Name):
    best = None
    for z in ZONES:
        if qname.is_subdomain(z.origin) and (best is None or len(z.origin) > len(best.origin)):
            best = z
    return best


def _soa(z) -> dns.rrset.RRset:
    rds = z.find_rdataset(z.origin, dns.rdatatype.SOA)
    soa = dns.rrset.from_rdata_list(z.origin, min(rds.ttl, rds[0].minimum), list(rds))
    return soa


def _exists(z, name: dns.name.Name) -> bool:
    """A name exists when it owns data or is an empty non-terminal (RFC 8020, RFC 4592 §2.2.2)."""
    return z.get_node(name) is not None or any(
        n.is_subdomain(name) and n != name for n in z.nodes)


def reference(qname: dns.name.Name, qtype: int) -> Expect | None:
    """RFC 1034 §4.3.2 for the simple cases; None when the answer involves a zone cut, a
    CNAME/DNAME chain, a wildcard or ANY (those are the semantic suites' job)."""
    z = _find_zone(qname)
    if z is None:
        return Expect(REFUSED, False, set(), set())
    if qtype in (dns.rdatatype.ANY, dns.rdatatype.DS):
        return None
    # step 3b: a cut at or above the name (below the apex) or a DNAME above it
    for depth in range(len(z.origin) + 1, len(qname) + 1):
        anc = qname.split(depth)[1]
        node = z.get_node(anc)
        if node is None:
            continue
        if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) is not None:
            return None
        if anc != qname and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.DNAME):
            return None
    node = z.get_node(qname)
    if node is not None:
        if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME) and qtype != dns.rdatatype.CNAME:
            return None
        rds = node.get_rdataset(dns.rdataclass.IN, qtype)
        if rds is not None:
            return Expect(NOERROR, True, _norm([dns.rrset.from_rdata_list(qname, rds.ttl, list(rds))]),
                          set())
        return Expect(NOERROR, True, set(), _norm([_soa(z)]))           # NODATA
    if _exists(z, qname):
        return Expect(NOERROR, True, set(), _norm([_soa(z)]))           # empty non-terminal
    # closest encloser; a wildcard child there would synthesize (RFC 4592 §3.3.1)
    ce = qname.parent()
    while not _exists(z, ce):
        ce = ce.parent()
    if z.get_node(dns.name.Name((b"*",) + ce.labels)) is not None:
        return None
    return Expect(NXDOMAIN, True, set(), _norm([_soa(z)]))


def _section_map(rrsets) -> dict:
    return {(r.name.canonicalize(), r.rdtype): (r.ttl, frozenset(r)) for r in rrsets}


def check_round_trip(q: dns.message.Message, responder=RESPONDER) -> dns.message.Message:
    wire = q.to_wire()
    udp = pop53.answer(IMAGE, wire, CLIENT, responder=responder)
    tcp = pop53.answer(IMAGE, wire, CLIENT, tcp=True, responder=responder)
    edns_max = responder.edns_max
    m = check_reply(wire, udp)
    t = check_reply(wire, tcp)
    # the question exactly as asked, 0x20 case included
    assert m.question[0].name.labels == q.question[0].name.labels
    assert (m.question[0].rdtype, m.question[0].rdclass) == (q.question[0].rdtype,
                                                             q.question[0].rdclass)
    # size limit: 512 without EDNS; else the advertised size capped by ours (RFC 6891 §6.2.5)
    if q.edns >= 0:
        assert m.edns == 0 and m.payload == edns_max
        assert len(udp) <= max(512, min(q.payload, edns_max))
        assert bool(m.ednsflags & dns.flags.DO) == bool(q.ednsflags & dns.flags.DO)
    else:
        assert m.edns < 0 and len(udp) <= 512
    assert not t.flags & dns.flags.TC
    # RFC 2181 §9: whatever the UDP reply holds is whole RRsets, the same as over TCP
    for sec in ("answer", "authority", "additional"):
        full = _section_map(getattr(t, sec))
        for key, val in _section_map(getattr(m, sec)).items():
            assert full.get(key) == val, f"partial or foreign RRset {key} in {sec}"
    if not m.flags & dns.flags.TC and q.question[0].rdtype != dns.rdatatype.ANY:
        assert _norm(m.answer) == _norm(t.answer)
        assert _norm(m.authority) == _norm(t.authority)
    if m.flags & dns.flags.TC:
        # truncation happens only when the full answer does not fit
        limit = max(512, min(q.payload, edns_max)) if q.edns >= 0 else 512
        assert len(tcp) > limit
    exp = reference(q.question[0].name, q.question[0].rdtype)
    if exp is not None:
        assert int(t.rcode()) == exp.rcode
        assert bool(t.flags & dns.flags.AA) == exp.aa
        assert _norm(t.answer) == exp.answer
        assert _norm(t.authority) == exp.authority
    return m


def _case(name: dns.name.Name, flips) -> dns.name.Name:
    """Random 0x20 case: flip ASCII letters where `flips` says so."""
    out, k = [], 0
    for label in name.labels:
        b = bytearray(label)
        for i, c in enumerate(b):
            if (65 <= c <= 90 or 97 <= c <= 122) and flips[k % len(flips)]:
                b[i] ^= 0x20
            k += 1
        out.append(bytes(b))
    return dns.name.Name(out)


LABEL = st.binary(min_size=1, max_size=63)
QTYPES = st.one_of(
    st.sampled_from(["A", "AAAA", "NS", "MX", "TXT", "SOA", "SRV", "CNAME", "PTR", "HINFO",
                     "CAA", "ANY", "DS", "DNAME", "NULL", "TYPE65280"]).map(dns.rdatatype.from_text),
    st.integers(1, 65535).filter(lambda t: t != 41 and not 249 <= t <= 254),
)


OUTSIDE = [dns.name.from_text(t) for t in ("example.net.", "com.", ".", "z.example.com.")]


@st.composite
def names(draw):
    """Mostly names of the zones (so exact matches, NODATA and the chains are common), some with
    random prefix labels (NXDOMAIN, wildcards, below cuts), a few outside every zone."""
    base = draw(st.sampled_from(OUTSIDE) if draw(st.integers(0, 9)) == 9 else
                st.sampled_from(ZONE_NAMES))
    labels = list(base.labels)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        p = draw(st.one_of(st.sampled_from([b"www", b"*", b"a", b"sub", b"nx"]), LABEL))
        if sum(len(x) + 1 for x in labels) + len(p) + 1 <= 255:
            labels.insert(0, p)
    flips = draw(st.lists(st.booleans(), min_size=1, max_size=16))
    return _case(dns.name.Name(labels), flips)


def _types_at(name: dns.name.Name) -> list[int]:
    z = _find_zone(name)
    node = z.get_node(name) if z is not None else None
    return [r.rdtype for r in node] if node is not None else []


PAYLOADS = st.one_of(st.integers(0, 65535),
                     st.sampled_from([0, 511, 512, 513, 1231, 1232, 1233, 1400, 4096, 65535]))


@st.composite
def queries(draw, name_strategy=None, qtypes=None):
    qname = draw(name_strategy if name_strategy is not None else names())
    own = _types_at(qname)
    if qtypes is not None:
        qtype = draw(qtypes)
    elif own and draw(st.booleans()):
        qtype = draw(st.sampled_from(own))          # a type the name has: an exact match
    else:
        qtype = draw(QTYPES)
    edns = draw(st.booleans())
    kw = {}
    if edns:
        kw = {"use_edns": 0, "want_dnssec": draw(st.booleans()), "payload": draw(PAYLOADS)}
        if draw(st.booleans()):
            kw["options"] = [dns.edns.GenericOption(3, b"")]
    q = dns.message.make_query(qname, qtype, **kw)
    q.id = draw(st.integers(0, 65535))
    if not draw(st.booleans()):
        q.flags &= ~dns.flags.RD
    return q


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=1000)
@given(queries())
def test_valid_queries_round_trip(q):
    check_round_trip(q)


SIZES = [dns.name.from_text(f"sz{k}.z.") for k in (1, 2, 4, 5, 8, 10, 11, 15, 20, 40, 80)] + [
    dns.name.from_text("many.z.")]


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=500)
@given(queries(st.sampled_from(SIZES).flatmap(
    lambda n: st.lists(st.booleans(), min_size=1, max_size=8).map(lambda f: _case(n, f))),
    st.sampled_from([dns.rdatatype.TXT, dns.rdatatype.A, dns.rdatatype.A, dns.rdatatype.ANY])))
def test_truncation_boundaries(q):
    """RRsets from 113 to ~9000 octets against every payload size: TC exactly when it does not
    fit, never a partial RRset, and a truncated UDP reply is still well formed."""
    m = check_round_trip(q)
    if m.flags & dns.flags.TC:
        assert not m.answer or all(len(r) for r in m.answer)


RESPONDERS = [pop53.Responder(edns_max=4096), pop53.Responder(edns_max=512),
              pop53.Responder(identity="ns-" + "i" * 60, edns_max=1400)]


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=300)
@given(queries(st.sampled_from(SIZES)), st.sampled_from(RESPONDERS))
def test_truncation_with_other_limits(q, responder):
    """The configured maximum caps the client's advertised size (RFC 6891 §6.2.5), whatever
    it is, with or without an NSID identity taking room in the OPT."""
    check_round_trip(q, responder)


# ---------------------------------------------------------------------------------------------
# 3. names at every edge
# ---------------------------------------------------------------------------------------------
L63 = b"a" * 63
LONG_OWNER = dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 59, b"z", b""])
assert len(LONG_OWNER.to_wire()) == 255

EDGE_NAMES = [
    (LONG_OWNER, "TXT", NOERROR, 1, "an existing owner of exactly 255 octets"),
    (dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b"e" * 59, b"z", b""]), "A", NXDOMAIN, 0,
     "255 octets, not in the zone"),
    (dns.name.Name([L63, b"z", b""]), "A", NOERROR, 1, "a 63-octet label that exists"),
    (dns.name.Name([L63, L63, b"z", b""]), "A", NXDOMAIN, 0, "below a 63-octet label"),
    (dns.name.Name([b"x"] * 126 + [b"z", b""]), "A", NXDOMAIN, 0, "127 labels, 255 octets"),
    (dns.name.Name([b"X"] * 126 + [b"Z", b""]), "TXT", NXDOMAIN, 0, "127 labels, upper case"),
    (dns.name.Name([b"a.b", b"z", b""]), "TXT", NOERROR, 1, "escaped dot inside a label (a\\.b)"),
    (dns.name.Name([b"A.B", b"z", b""]), "TXT", NOERROR, 1, "a\\.b with 0x20 case"),
    (dns.name.Name([b"a", b"b", b"z", b""]), "TXT", NXDOMAIN, 0,
     "a.b.z is not a\\.b.z (and b.z does not exist)"),
    (dns.name.Name([b"x\x00y", b"z", b""]), "TXT", NOERROR, 1, "\\000 inside a label"),
    (dns.name.Name([b"x\x00Y", b"z", b""]), "TXT", NOERROR, 1, "\\000 with 0x20 case"),
    (dns.name.Name([b"x", b"z", b""]), "TXT", NXDOMAIN, 0, "x.z is not x\\000y.z"),
    (dns.name.Name([b"@at sp", b"z", b""]), "TXT", NOERROR, 1, "\\@ and \\032 in a label"),
    (dns.name.Name([b"\xff\x80\x7f", b"z", b""]), "A", NXDOMAIN, 0, "non-ASCII label bytes"),
    (dns.name.Name([b"mixed", b"z", b""]), "A", NOERROR, 1, "owner written MiXeD in the file"),
    (dns.name.Name([b"MIXED", b"Z", b""]), "A", NOERROR, 1, "query upper case"),
    (dns.name.Name([b"c", b"ent", b"z", b""]), "A", NOERROR, 0, "empty non-terminal: NODATA"),
    (dns.name.Name([b"b", b"c", b"ent", b"z", b""]), "TXT", NOERROR, 0, "deeper ENT: NODATA"),
]


@pytest.mark.parametrize("qname,qtype,rcode,count,reason", EDGE_NAMES,
                         ids=[e[4] for e in EDGE_NAMES])
@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_edge_names(qname, qtype, rcode, count, reason, edns):
    q = dns.message.make_query(qname, qtype, use_edns=0 if edns else None)
    m = check_round_trip(q)
    assert int(m.rcode()) == rcode, reason
    assert sum(len(r) for r in m.answer) == count, reason
    assert m.flags & dns.flags.AA
    if count:
        assert m.answer[0].name == qname
    else:
        assert [r.rdtype for r in m.authority] == [dns.rdatatype.SOA]
        assert m.authority[0].ttl == 300, "min(SOA TTL 600, MINIMUM 300) (RFC 2308 §5)"


@st.composite
def edge_names(draw):
    """Random labels of random bytes (1..63 octets) below z., filled up to 255 octets."""
    labels = [b"z", b""]
    total = 3
    target = draw(st.integers(3, 255))
    while total < target:
        room = min(63, 255 - total - 1)
        if room < 1:
            break
        lab = draw(st.binary(min_size=1, max_size=room))
        labels.insert(0, lab)
        total += len(lab) + 1
    return dns.name.Name(labels)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=300)
@given(queries(edge_names()))
def test_edge_names_random(q):
    m = check_round_trip(q)
    assert len(q.question[0].name.to_wire()) <= 255
    if int(m.rcode()) not in ERROR_RCODES:
        assert m.flags & dns.flags.AA


def test_dname_substitution_too_long_is_yxdomain():
    """A 255-octet name below dn.z. (DNAME www.z.) would become 256 octets: YXDOMAIN with the
    DNAME and no synthesized CNAME (RFC 6672 §2.2)."""
    prefix = []
    need = 255 - len(dns.name.from_text("dn.z.").to_wire())
    while need > 0:
        n = min(63, need - 1)
        prefix.append(b"q" * n)
        need -= n + 1
    qname = dns.name.Name(prefix + [b"dn", b"z", b""])
    assert len(qname.to_wire()) == 255
    m = check_round_trip(dns.message.make_query(qname, "A"))
    assert m.rcode() == dns.rcode.YXDOMAIN
    assert [r.rdtype for r in m.answer] == [dns.rdatatype.DNAME]
