"""Table-driven semantic tests of the answer path (RFC 1034 §4.3.2, 2181, 2308, 4592, 6604,
6672, 8482), on the zones in tests/data/.  Each row: a query, the rcode, the flags, and each
section as a set of RR texts (None = not checked)."""
from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

import pop53
import pop53.zone.zonefile
from pop53 import Responder

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"

ZONES = [DATA / "core.test.zone", DATA / "other.test.zone", DATA / "child.core.test.zone"]
SOA_CORE = "core.test. 600 IN SOA ns1.core.test. hostmaster.core.test. 1 7200 900 1209600 600"
SOA_OTHER = "other.test. 120 IN SOA ns2.other.test. admin.other.test. 7 3600 600 86400 120"
WWW_A = {"www.core.test. 3600 IN A 192.0.2.80", "www.core.test. 3600 IN A 192.0.2.81"}
DELEG_NS = {"deleg.core.test. 3600 IN NS ns.deleg.core.test.",
            "deleg.core.test. 3600 IN NS ns.sibling.core.test.",
            "deleg.core.test. 3600 IN NS ns.other.test."}
DELEG_GLUE = {"ns.deleg.core.test. 3600 IN A 192.0.2.100",
              "ns.deleg.core.test. 3600 IN AAAA 2001:db8::100",
              "ns.sibling.core.test. 3600 IN A 192.0.2.101"}


@pytest.fixture(scope="module")
def image():
    return pop53.compile_zones(ZONES)


def rrs(section) -> set[str]:
    out = set()
    for rrset in section:
        for rd in rrset:
            out.add(f"{rrset.name.to_text().lower()} {rrset.ttl} "
                    f"{dns.rdataclass.to_text(rrset.rdclass)} {dns.rdatatype.to_text(rrset.rdtype)} "
                    f"{rd.to_text()}")
    return out


def ask(image, name, rdtype="A", *, rdclass="IN", use_edns=False, payload=None, tcp=False,
        responder=None, want_dnssec=False, **kw):
    if use_edns is False and not want_dnssec:
        q = dns.message.make_query(name, rdtype, rdclass=rdclass, use_edns=False, **kw)
    else:
        q = dns.message.make_query(name, rdtype, rdclass=rdclass, use_edns=use_edns or 0,
                                   payload=payload or 1232, want_dnssec=want_dnssec, **kw)
    wire = pop53.answer(image, q.to_wire(), ("127.0.0.1", 5300), tcp=tcp, responder=responder)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    assert r.question == q.question
    return r, wire


CASES = [
    # id, qname, qtype, rcode, aa, answer, authority, additional
    ("exact A (two RRs)", "www.core.test.", "A", "NOERROR", True, WWW_A, set(), set()),
    ("exact TXT multi-string", "www.core.test.", "TXT", "NOERROR", True,
     {'www.core.test. 3600 IN TXT "hello" "world"'}, set(), set()),
    ("NODATA has SOA with min TTL", "www.core.test.", "MX", "NOERROR", True, set(), {SOA_CORE}, set()),
    ("NXDOMAIN has SOA", "nope.core.test.", "A", "NXDOMAIN", True, set(), {SOA_CORE}, set()),
    ("empty non-terminal is NODATA", "b.c.core.test.", "A", "NOERROR", True, set(), {SOA_CORE}, set()),
    ("ENT two levels up is NODATA", "c.core.test.", "TXT", "NOERROR", True, set(), {SOA_CORE}, set()),
    ("CNAME followed", "alias.core.test.", "A", "NOERROR", True,
     {"alias.core.test. 3600 IN CNAME www.core.test."} | WWW_A, set(), set()),
    ("CNAME query type returns the CNAME only", "alias.core.test.", "CNAME", "NOERROR", True,
     {"alias.core.test. 3600 IN CNAME www.core.test."}, set(), set()),
    ("CNAME chain of three hops", "chain1.core.test.", "A", "NOERROR", True,
     {"chain1.core.test. 3600 IN CNAME chain2.core.test.",
      "chain2.core.test. 3600 IN CNAME chain3.core.test.",
      "chain3.core.test. 3600 IN CNAME www.core.test."} | WWW_A, set(), set()),
    ("CNAME loop stops", "loop1.core.test.", "A", "NOERROR", True,
     {"loop1.core.test. 3600 IN CNAME loop2.core.test.",
      "loop2.core.test. 3600 IN CNAME loop1.core.test."}, set(), set()),
    ("CNAME to NXDOMAIN: rcode of the target (RFC 6604)", "dangling.core.test.", "A", "NXDOMAIN", True,
     {"dangling.core.test. 3600 IN CNAME nothere.core.test."}, {SOA_CORE}, set()),
    ("CNAME into another served zone", "out.core.test.", "A", "NOERROR", True,
     {"out.core.test. 3600 IN CNAME www.other.test.", "www.other.test. 300 IN A 198.51.100.80"},
     set(), set()),
    ("CNAME out of our zones ends the chain", "away.core.test.", "A", "NOERROR", True,
     {"away.core.test. 3600 IN CNAME elsewhere.example."}, set(), set()),
    ("wildcard synthesis", "x.wild.core.test.", "A", "NOERROR", True,
     {"x.wild.core.test. 3600 IN A 192.0.2.42"}, set(), set()),
    ("wildcard synthesis spans labels", "a.x.wild.core.test.", "TXT", "NOERROR", True,
     {'a.x.wild.core.test. 3600 IN TXT "wild"'}, set(), set()),
    ("wildcard NODATA", "x.wild.core.test.", "MX", "NOERROR", True, set(), {SOA_CORE}, set()),
    ("no synthesis at an existing name", "exists.wild.core.test.", "A", "NOERROR", True, set(),
     {SOA_CORE}, set()),
    ("no synthesis below an empty non-terminal", "q.ent.wild.core.test.", "A", "NXDOMAIN", True,
     set(), {SOA_CORE}, set()),
    ("the wildcard name itself", "*.wild.core.test.", "A", "NOERROR", True,
     {"*.wild.core.test. 3600 IN A 192.0.2.42"}, set(), set()),
    ("wildcard CNAME is followed", "zz.wc.core.test.", "A", "NOERROR", True,
     {"zz.wc.core.test. 3600 IN CNAME www.core.test."} | WWW_A, set(), set()),
    ("wildcard with MX and additional", "m.sub.wild.core.test.", "MX", "NOERROR", True,
     {"m.sub.wild.core.test. 3600 IN MX 5 mail.core.test."}, set(),
     {"mail.core.test. 3600 IN A 192.0.2.25"}),
    ("DNAME synthesis into a served zone", "x.y.dn.core.test.", "A", "NOERROR", True,
     {"dn.core.test. 3600 IN DNAME other.test.", "x.y.dn.core.test. 3600 IN CNAME x.y.other.test.",
      "x.y.other.test. 300 IN A 198.51.100.9"}, set(), set()),
    ("DNAME to a name that does not exist", "foo.dn.core.test.", "A", "NXDOMAIN", True,
     {"dn.core.test. 3600 IN DNAME other.test.", "foo.dn.core.test. 3600 IN CNAME foo.other.test."},
     {SOA_OTHER}, set()),
    ("DNAME owner itself is not rewritten", "dn.core.test.", "DNAME", "NOERROR", True,
     {"dn.core.test. 3600 IN DNAME other.test."}, set(), set()),
    ("DNAME substitution too long: YXDOMAIN", "a" * 57 + ".dnlong.core.test.", "A", "YXDOMAIN", True,
     None, set(), set()),
    ("referral below a cut", "host.deleg.core.test.", "A", "NOERROR", False, set(), DELEG_NS, DELEG_GLUE),
    ("referral at the cut", "deleg.core.test.", "NS", "NOERROR", False, set(), DELEG_NS, DELEG_GLUE),
    ("referral for glue owner itself", "ns.deleg.core.test.", "A", "NOERROR", False, set(), DELEG_NS,
     DELEG_GLUE),
    ("DS at the cut is answered by the parent", "deleg.core.test.", "DS", "NOERROR", True,
     {"deleg.core.test. 3600 IN DS 12345 8 2 " + "0123456789abcdef" * 4}, set(), set()),
    ("DS at a served child's apex: parent side", "child.core.test.", "DS", "NOERROR", True, set(),
     {SOA_CORE}, set()),
    ("longest zone wins", "host.child.core.test.", "A", "NOERROR", True,
     {"host.child.core.test. 600 IN A 192.0.2.78"}, set(), set()),
    ("MX additional across zones", "core.test.", "MX", "NOERROR", True,
     {"core.test. 3600 IN MX 10 mail.core.test.", "core.test. 3600 IN MX 20 mx.other.test."}, set(),
     {"mail.core.test. 3600 IN A 192.0.2.25", "mx.other.test. 300 IN A 198.51.100.25"}),
    ("SRV additional", "_sip._udp.core.test.", "SRV", "NOERROR", True,
     {"_sip._udp.core.test. 3600 IN SRV 10 60 5060 www.core.test."}, set(),
     WWW_A | {"www.core.test. 3600 IN AAAA 2001:db8::80"}),
    ("unknown type (RFC 3597)", "unknown.core.test.", "TYPE65400", "NOERROR", True,
     {"unknown.core.test. 3600 IN TYPE65400 \\# 4 deadbeef"}, set(), set()),
    ("out of every zone: REFUSED", "www.example.", "A", "REFUSED", False, set(), set(), set()),
    ("root: REFUSED", ".", "NS", "REFUSED", False, set(), set(), set()),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_answer(image, case):
    _id, name, qtype, rcode, aa, answer, authority, additional = case
    r, _ = ask(image, name, qtype)
    assert dns.rcode.to_text(r.rcode()) == rcode
    assert bool(r.flags & dns.flags.AA) == aa
    assert not r.flags & dns.flags.TC
    assert r.flags & dns.flags.QR and r.flags & dns.flags.RD and not r.flags & dns.flags.RA
    if answer is not None:
        assert rrs(r.answer) == answer
    if authority is not None:
        assert rrs(r.authority) == authority
    if additional is not None:
        assert rrs(r.additional) == additional


def test_case_of_query_name_is_preserved(image):
    q = dns.message.make_query("WwW.CoRe.TeSt.", "A")
    wire = pop53.answer(image, q.to_wire(), ("127.0.0.1", 1))
    assert wire[12:12 + len(b"\x03WwW\x04CoRe\x04TeSt\x00")] == b"\x03WwW\x04CoRe\x04TeSt\x00"
    r = dns.message.from_wire(wire)
    assert {rr.name.to_text() for rr in r.answer} == {"WwW.CoRe.TeSt."}
    assert rrs(r.answer) == WWW_A


def test_wildcard_owner_keeps_query_case(image):
    r, _ = ask(image, "MiXeD.wild.core.test.", "A")
    assert [rr.name.to_text() for rr in r.answer] == ["MiXeD.wild.core.test."]


def test_truncation_without_edns_sets_tc_and_drops_whole_rrset(image):
    r, wire = ask(image, "big.core.test.", "TXT")
    assert len(wire) <= 512
    assert r.flags & dns.flags.TC
    assert r.answer == []          # never a partial RRset (RFC 2181 §9)


def test_edns_buffer_allows_the_large_answer(image):
    r, wire = ask(image, "big.core.test.", "TXT", use_edns=0, payload=4096)
    assert not r.flags & dns.flags.TC
    assert len(rrs(r.answer)) == 6
    assert len(wire) <= 1232      # our configured maximum caps the client's 4096
    assert r.payload == 1232


def test_edns_buffer_below_512_is_treated_as_512(image):
    r, wire = ask(image, "big.core.test.", "TXT", use_edns=0, payload=100)
    assert len(wire) <= 512 and r.flags & dns.flags.TC


def test_configured_maximum_is_respected(image):
    small = Responder(edns_max=600)
    r, wire = ask(image, "big.core.test.", "TXT", use_edns=0, payload=4096, responder=small)
    assert len(wire) <= 600 and r.flags & dns.flags.TC and r.payload == 600


def test_tcp_is_never_truncated(image):
    r, wire = ask(image, "big.core.test.", "TXT", tcp=True)
    assert not r.flags & dns.flags.TC and len(rrs(r.answer)) == 6 and len(wire) > 512


def test_referral_with_glue_fits_in_512(image):
    # answer+authority fit in 512, but with a tiny limit even the NS set cannot
    r, wire = ask(image, "host.deleg.core.test.", "A", use_edns=0, payload=512,
                  responder=Responder(edns_max=512))
    assert len(wire) <= 512 and not r.flags & dns.flags.TC
    assert rrs(r.additional) == DELEG_GLUE


def test_any_over_udp_returns_one_rrset_rfc8482(image):
    r, _ = ask(image, "www.core.test.", "ANY")
    assert r.rcode() == 0 and r.flags & dns.flags.AA
    assert len(r.answer) == 1


def test_any_over_tcp_returns_everything(image):
    r, _ = ask(image, "www.core.test.", "ANY", tcp=True)
    assert {rrset.rdtype for rrset in r.answer} == {dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT}


def test_any_at_a_cname_owner_returns_the_cname_only(image):
    r, _ = ask(image, "dangling.core.test.", "ANY")
    assert r.rcode() == 0 and rrs(r.answer) == {"dangling.core.test. 3600 IN CNAME nothere.core.test."}


def test_cname_query_below_dname_stops_at_the_synthesized_cname(image):
    r, _ = ask(image, "foo.dn.core.test.", "CNAME")
    assert r.rcode() == 0 and r.authority == []
    assert rrs(r.answer) == {"dn.core.test. 3600 IN DNAME other.test.",
                             "foo.dn.core.test. 3600 IN CNAME foo.other.test."}


def test_any_at_empty_non_terminal_is_nodata(image):
    r, _ = ask(image, "c.core.test.", "ANY")
    assert r.answer == [] and rrs(r.authority) == {SOA_CORE}


def test_edns_reply_echoes_do_bit_and_version_zero(image):
    r, _ = ask(image, "www.core.test.", "A", use_edns=0, want_dnssec=True)
    assert r.edns == 0 and r.ednsflags & dns.flags.DO


def test_cd_bit_is_cleared_in_authoritative_answers(image):
    # RFC 4035 §3.1.6; Knot and NSD do the same
    q = dns.message.make_query("www.core.test.", "A")
    q.flags |= dns.flags.CD
    r = dns.message.from_wire(pop53.answer(image, q.to_wire(), ("127.0.0.1", 1)))
    assert not r.flags & dns.flags.CD


@pytest.mark.parametrize("qname", ["id.server.", "hostname.bind.", "ID.SERVER."])
def test_chaos_identity(image, qname):
    r, _ = ask(image, qname, "TXT", rdclass="CH", responder=Responder(identity="pop1-m1"))
    assert r.rcode() == 0 and r.flags & dns.flags.AA
    assert [rd.strings for rrset in r.answer for rd in rrset] == [(b"pop1-m1",)]
    assert r.answer[0].rdclass == dns.rdataclass.CH


def test_chaos_version(image):
    r, _ = ask(image, "version.bind.", "TXT", rdclass="CH", responder=Responder(version="pop53-test"))
    assert [rd.strings for rrset in r.answer for rd in rrset] == [(b"pop53-test",)]


def test_chaos_can_be_switched_off(image):
    r, _ = ask(image, "id.server.", "TXT", rdclass="CH", responder=Responder(identity="x", chaos=False))
    assert r.rcode() == dns.rcode.REFUSED and r.answer == []


def test_chaos_other_names_refused(image):
    r, _ = ask(image, "authors.bind.", "TXT", rdclass="CH", responder=Responder(identity="x"))
    assert r.rcode() == dns.rcode.REFUSED


def test_nsid_answered_when_asked(image):
    q = dns.message.make_query("www.core.test.", "A", use_edns=0,
                               options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
    wire = pop53.answer(image, q.to_wire(), ("127.0.0.1", 1), responder=Responder(identity="m7"))
    r = dns.message.from_wire(wire)
    nsid = [o for o in r.options if o.otype == dns.edns.NSID]
    assert len(nsid) == 1 and nsid[0].to_wire() == b"m7"


def test_nsid_not_sent_unasked_or_when_disabled(image):
    r, _ = ask(image, "www.core.test.", "A", use_edns=0, responder=Responder(identity="m7"))
    assert not r.options
    q = dns.message.make_query("www.core.test.", "A", use_edns=0,
                               options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
    wire = pop53.answer(image, q.to_wire(), ("127.0.0.1", 1), responder=Responder(identity="m7", nsid=False))
    assert not dns.message.from_wire(wire).options


def test_no_image_refuses(image):
    q = dns.message.make_query("www.core.test.", "A")
    r = dns.message.from_wire(pop53.answer(None, q.to_wire(), ("127.0.0.1", 1)))
    assert r.rcode() == dns.rcode.REFUSED


def test_answers_are_compressed(image):
    _, wire = ask(image, "core.test.", "MX")
    # every owner and the MX exchange names compress against the question
    assert wire.count(b"\x04core\x04test\x00") == 1


def test_expired_zone_answers_servfail_and_others_are_unaffected():
    img = pop53.compile_zone_data([pop53.zone.zonefile.load_zone_file(z) for z in ZONES],
                                  expired=["other.test."])
    r, _ = ask(img, "www.other.test.", "A")
    assert r.rcode() == dns.rcode.SERVFAIL and not r.flags & dns.flags.AA and r.answer == []
    r, _ = ask(img, "www.core.test.", "A")
    assert r.rcode() == 0 and rrs(r.answer) == WWW_A
    # a chain into the expired zone stops there
    r, _ = ask(img, "out.core.test.", "A")
    assert rrs(r.answer) == {"out.core.test. 3600 IN CNAME www.other.test."}
