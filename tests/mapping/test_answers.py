"""Mapped answers through the C answer path, table-driven where it can be: A/AAAA by the
family asked, CNAME chains, mapped referrals (two-tier delegation) with glue, static data
beside mapped names, ECS echo and scopes (RFC 7871), key modes, trust lists, source limits."""
from __future__ import annotations

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from .mapkit import Mapping, addresses, ecs_echo, scope

LINES = ["10.0.0.0/8 eu", "10.1.0.0/16 us", "2001:db8::/32 eu", "192.0.2.0/24 eu"]
TARGETS = {
    "eu1": (["192.0.2.10", "2001:db8::10"], "n1.w10.cdn.example."),
    "eu2": (["192.0.2.11"], "n2.w10.cdn.example."),
    "us1": (["198.51.100.1", "2001:db8:1::1"], "n3.w10.cdn.example."),
    "ext": (["203.0.113.7"], "edge.other.example."),
}
MAPPED = [
    {"name": "www.cdn.example.", "regions": {"eu": ["eu1", "eu2"], "us": ["us1"]}},
    {"name": "v4only.cdn.example.", "type": "A", "regions": {"eu": ["eu1"], "us": ["us1"]}},
    {"name": "c.cdn.example.", "type": "CNAME", "regions": {"eu": ["eu1"], "us": ["us1"]}},
    {"name": "out.cdn.example.", "type": "CNAME", "regions": {"eu": ["ext"], "us": ["us1"]}},
    {"name": "w10.cdn.example.", "type": "NS", "ttl": 4000,
     "regions": {"eu": ["eu1", "eu2"], "us": ["us1"]}},
]


@pytest.fixture(scope="module")
def m():
    return Mapping(LINES, "us", TARGETS, MAPPED)


def rrs(section):
    return sorted((r.name.to_text(), dns.rdatatype.to_text(r.rdtype), r.ttl, x.to_text())
                  for r in section for x in r)


@pytest.mark.parametrize("qtype,ecs,client,want,want_scope", [
    ("A", ("10.2.0.0", 16), None, ("192.0.2.10", "192.0.2.11"), 15),   # 10.2.0.0/15 is eu
    ("A", ("10.1.2.0", 24), None, ("198.51.100.1",), 16),
    ("AAAA", ("10.2.0.0", 24), None, ("2001:db8::10",), 15),
    ("AAAA", ("2001:db8:5::", 48), None, ("2001:db8::10",), 32),
    ("A", None, "10.1.9.9", ("198.51.100.1",), None),             # no ECS: the source address
    ("A", None, "10.3.9.9", ("192.0.2.10", "192.0.2.11"), None),
    ("A", ("10.1.0.0", 0), "10.3.9.9", ("192.0.2.10", "192.0.2.11"), 0),   # §7.1.2
    ("A", None, "2001:db8:7::1", ("192.0.2.10", "192.0.2.11"), None),     # v6 client, A asked
])
def test_address_answers(m, qtype, ecs, client, want, want_scope):
    r = m.ask("www.cdn.example.", qtype, ecs=ecs, client=client or "192.0.2.1")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert addresses(r, qtype) == want
    assert all(rr.ttl == 20 for rr in r.answer)
    assert scope(r) == want_scope
    if ecs is not None:
        e = ecs_echo(r)     # RFC 7871 §7.2.1: family, source and address copied
        assert (e.family, e.srclen) == ((2 if ":" in ecs[0] else 1), ecs[1])
        assert e.address == ecs[0] or ecs[1] == 0


def test_static_rrset_beside_mapped_and_nodata(m):
    """A static RRset of another type lives at a mapped name; a type with neither is NODATA
    (the name exists), and both say scope 0: they do not depend on the client."""
    r = m.ask("www.cdn.example.", "TXT", ecs=("10.1.0.0", 24))
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.TXT] and scope(r) == 0
    r = m.ask("www.cdn.example.", "MX", ecs=("10.1.0.0", 24))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA] and scope(r) == 0
    r = m.ask("v4only.cdn.example.", "AAAA", ecs=("10.1.0.0", 24))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority


def test_static_answers_echo_scope_zero(m):
    r = m.ask("sta.cdn.example.", "A", ecs=("10.1.0.0", 24))
    assert addresses(r) == ("192.0.2.99",) and scope(r) == 0
    r = m.ask("nx.cdn.example.", "A", ecs=("10.1.0.0", 24))
    assert r.rcode() == dns.rcode.NXDOMAIN and scope(r) == 0


def test_cname_chain_into_mapped_referral(m):
    """c -> (mapped CNAME) n1.w10 -> (mapped NS) a referral whose NS and glue follow the
    client; the reply's scope is the most specific of the two lookups."""
    r = m.ask("c.cdn.example.", "A", ecs=("10.2.0.0", 24))
    assert rrs(r.answer) == [("c.cdn.example.", "CNAME", 20, "n1.w10.cdn.example.")]
    assert rrs(r.authority) == [("w10.cdn.example.", "NS", 4000, "n1.w10.cdn.example."),
                                ("w10.cdn.example.", "NS", 4000, "n2.w10.cdn.example.")]
    assert ("n2.w10.cdn.example.", "A", 4000, "192.0.2.11") in rrs(r.additional)
    assert scope(r) == 15
    r = m.ask("c.cdn.example.", "CNAME", ecs=("10.1.0.0", 24))
    assert rrs(r.answer) == [("c.cdn.example.", "CNAME", 20, "n3.w10.cdn.example.")]
    assert not r.authority
    r = m.ask("out.cdn.example.", "A", ecs=("10.2.0.0", 24))   # leaves our zones: chain ends
    assert rrs(r.answer) == [("out.cdn.example.", "CNAME", 20, "edge.other.example.")]


def test_two_tier_referral(m):
    """The toplevel role: any name at or below the mapped NS gets a referral (AA clear) with
    glue chosen for the client; DS at the cut is answered by the parent (NODATA)."""
    for name in ("w10.cdn.example.", "a1.w10.cdn.example.", "x.y.w10.cdn.example."):
        r = m.ask(name, "A", ecs=("10.1.0.0", 24))
        assert not r.flags & dns.flags.AA and not r.answer
        assert rrs(r.authority) == [("w10.cdn.example.", "NS", 4000, "n3.w10.cdn.example.")]
        assert rrs(r.additional) == [("n3.w10.cdn.example.", "A", 4000, "198.51.100.1"),
                                     ("n3.w10.cdn.example.", "AAAA", 4000, "2001:db8:1::1")]
        assert scope(r) == 16
    r = m.ask("w10.cdn.example.", "DS", ecs=("10.1.0.0", 24))
    assert r.flags & dns.flags.AA and not r.answer
    assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]


def test_tcp_answers_the_same(m):
    a = m.ask("www.cdn.example.", "A", ecs=("10.1.0.0", 24))
    b = m.ask("www.cdn.example.", "A", ecs=("10.1.0.0", 24), tcp=True)
    assert addresses(a) == addresses(b) and scope(a) == scope(b)


def test_case_of_the_query_name_is_kept(m):
    r = m.ask("WwW.CdN.example.", "A", ecs=("10.1.0.0", 24))
    assert r.answer[0].name.to_text() == "WwW.CdN.example."
    assert addresses(r) == ("198.51.100.1",)


@pytest.mark.parametrize("keys,ecs,client,want,want_scope", [
    # source_only: ECS is ignored (the resolver's address picks) and echoed with scope 0
    ({"key": "source_only"}, ("10.1.0.0", 24), "10.2.0.1", ("192.0.2.10", "192.0.2.11"), 0),
    # ecs_only: without ECS the default region answers, whatever the source
    ({"key": "ecs_only"}, None, "10.2.0.1", ("198.51.100.1",), None),
    ({"key": "ecs_only"}, ("10.2.0.0", 24), "10.1.0.1", ("192.0.2.10", "192.0.2.11"), 15),
    # a trust list: ECS from others is not used (scope 0), from a listed resolver it is
    ({"ecs_trust": ["192.0.2.0/25"]}, ("10.2.0.0", 24), "192.0.2.200", ("192.0.2.10", "192.0.2.11"), 0),
    ({"ecs_trust": ["192.0.2.0/25"]}, ("10.1.0.0", 24), "192.0.2.100", ("198.51.100.1",), 16),
    ({"ecs_trust": ["192.0.2.0/25"]}, ("10.1.0.0", 24), "192.0.2.200", ("192.0.2.10", "192.0.2.11"), 0),
    # source limit /12: a /24 source is used to /12 (10.0.0.0/12 is eu) and claims at most /12
    ({"ecs_max_v4": 12}, ("10.1.0.0", 24), "192.0.2.1", ("192.0.2.10", "192.0.2.11"), 12),
])
def test_key_modes_trust_and_limits(keys, ecs, client, want, want_scope):
    m = Mapping(LINES, "us", TARGETS, MAPPED[:1], **keys)
    r = m.ask("www.cdn.example.", "A", ecs=ecs, client=client)
    assert addresses(r) == want and scope(r) == want_scope
