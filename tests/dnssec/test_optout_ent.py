"""NSEC3 opt-out, a name error below an empty non-terminal that opt-out left without an NSEC3
(it lies above insecure delegations only).  The closest encloser cannot be proven, so the
answer is proven against the closest provable encloser (RFC 5155 §7.2.1): its NSEC3, the
opt-out NSEC3 covering the next closer name, and the NSEC3 covering the wildcard at that
encloser (§7.2.2: "MUST include"; §8.4: what a validator checks).  The validator then calls
the answer insecure (§9.2), but the proof is whole.  pop53 once left the wildcard proof out;
Knot 3.2.6 includes it: here both must send the same three records, and each must be the one
the RFC names."""
from __future__ import annotations

import base64

import dns.dnssec
import dns.message
import dns.name
import dns.rdatatype
import pytest

from pop53 import answer, compile_zones
from signing import make_keys, sign
from tests.support.refservers import KnotServer, Zone

pytestmark = pytest.mark.peers

O = "oo.example."
ZONE = f"""$ORIGIN {O}
$TTL 300
@ SOA ns1 h 1 7200 3600 1209600 300
@ NS ns1
ns1 A 192.0.2.1
c.d NS ns.c.d
ns.c.d A 192.0.2.4
e.f.g A 192.0.2.5
h.i.g NS ns.h.i.g
ns.h.i.g A 192.0.2.6
"""
# (query name, closest provable encloser, next closer): d and i.g are bare ENTs
CASES = [("zz.d", "", "d"), ("a.zz.d", "", "d"), ("zz.i.g", "g", "i.g"), ("m.i.g", "g", "i.g")]


def _h(name: str) -> bytes:
    return dns.dnssec.nsec3_hash(name, None, 0, 1).lower().encode()


def _owner_hash(rrset) -> bytes:
    return rrset.name.labels[0]


def _covers(rrset, h: bytes) -> bool:
    owner = _owner_hash(rrset)
    nxt = base64.b32hexencode(rrset[0].next).lower()
    return owner < h < nxt or (nxt <= owner and (h > owner or h < nxt))


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    d = tmp_path_factory.mktemp("optout-ent")
    make_keys(d / "keys", O)
    (d / "src.zone").write_text(ZONE)
    return sign(d / "src.zone", d / "keys", d / "out.zone", "optout", O)


def test_nxdomain_below_a_bare_ent_proves_the_wildcard_at_the_provable_encloser(zone):
    image = compile_zones([(str(zone.path), O)])
    with KnotServer([Zone(O, zone.path)]) as knot:
        for rel, cpe, nc in CASES:
            q = dns.message.make_query(f"{rel}.{O}", "A", want_dnssec=True)
            a = dns.message.from_wire(knot.query(q.to_wire(), tcp=True))
            b = dns.message.from_wire(answer(image, q.to_wire(), ("192.0.2.99", 5353), tcp=True))
            assert b.rcode() == a.rcode() == dns.rcode.NXDOMAIN
            mine = [r for r in b.authority if r.rdtype == dns.rdatatype.NSEC3]
            theirs = [r for r in a.authority if r.rdtype == dns.rdatatype.NSEC3]
            assert sorted(map(_owner_hash, mine)) == sorted(map(_owner_hash, theirs)), rel
            cpe_name = f"{cpe}.{O}" if cpe else O
            owners = {_owner_hash(r) for r in mine}
            assert _h(cpe_name) in owners, f"{rel}: no NSEC3 of the provable encloser"
            assert any(_covers(r, _h(f"{nc}.{O}")) and r[0].flags & 1 for r in mine), \
                f"{rel}: no opt-out NSEC3 covering the next closer"
            assert any(_covers(r, _h(f"*.{cpe_name}")) for r in mine), \
                f"{rel}: no NSEC3 covering the wildcard at the provable encloser"
