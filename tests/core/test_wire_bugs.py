"""Wire bugs found from outside (issue 9), each pinned by a test named after it.  The same
queries are compared with Knot and NSD in tests/differential (dnsdiff corpus rows)."""
from __future__ import annotations


import dns.flags
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

import pop53
from pop53 import Responder

from test_core_answers import SOA_CORE, WWW_A, ZONES, ask, rrs


@pytest.fixture(scope="module")
def image():
    return pop53.compile_zones(ZONES)


# A pre-signed CNAME owner: RRSIG and NSEC may live beside a CNAME (RFC 2181 §10.1, RFC 4035
# §2.5), so a query for them is answered with them, not by following the alias.
SIGNED = ZONES[0].parent / "signed.test.zone"
SOA_SIGNED = "signed.test. 60 IN SOA ns.signed.test. hm.signed.test. 1 7200 900 1209600 60"


@pytest.fixture(scope="module")
def signed_image():
    return pop53.compile_zones([SIGNED])


@pytest.mark.parametrize("qtype", ["NSEC", "RRSIG", "NSEC3"])
@pytest.mark.parametrize("qname", ["alias.core.test.", "dangling.core.test.", "zz.wc.core.test."])
def test_bug_dnssec_query_at_cname_owner_is_answered_at_the_owner(image, qname, qtype):
    """NSEC, NSEC3 and RRSIG queries at a CNAME owner (also a wildcard-synthesized one) are
    answered there, like a CNAME query (RFC 1034 §4.3.2 step 3a restarts only for a type that
    cannot live beside the CNAME; RFC 4035 §2.5).  This zone is unsigned: NODATA with the
    SOA, never the CNAME and never the target's records or rcode (dangling -> NXDOMAIN)."""
    r, _ = ask(image, qname, qtype)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert r.answer == []
    assert rrs(r.authority) == {SOA_CORE}


@pytest.mark.parametrize("qtype", ["RRSIG", "NSEC"])
def test_bug_dnssec_records_at_a_signed_cname_owner_are_the_answer(signed_image, qtype):
    r, _ = ask(signed_image, "alias.signed.test.", qtype)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and r.authority == []
    (rrset,) = r.answer
    assert rrset.name.to_text() == "alias.signed.test." and rrset.rdtype == dns.rdatatype.from_text(qtype)


def test_other_types_at_a_signed_cname_owner_still_follow_it(signed_image):
    r, _ = ask(signed_image, "alias.signed.test.", "A")
    assert rrs(r.answer) == {"alias.signed.test. 300 IN CNAME www.signed.test.",
                             "www.signed.test. 300 IN A 192.0.2.80"}
    r, _ = ask(signed_image, "alias.signed.test.", "NSEC3")
    assert r.answer == [] and rrs(r.authority) == {SOA_SIGNED}


# QCLASS ANY (RFC 1035 §3.2.5) is answered from the served IN zones, with AA clear: "responses
# to QCLASS=* queries can never be authoritative" (RFC 1034 §3.7.1), as NSD answers (Knot sets
# AA).  Negative answers keep the SOA (RFC 2308 §3), as Knot's do.
QCLASS_ANY = [
    ("www.core.test.", "A", "NOERROR", WWW_A, set()),
    ("www.core.test.", "ANY", "NOERROR", None, set()),
    ("nope.core.test.", "A", "NXDOMAIN", set(), {SOA_CORE}),
    ("www.core.test.", "MX", "NOERROR", set(), {SOA_CORE}),
    ("alias.core.test.", "A", "NOERROR", {"alias.core.test. 3600 IN CNAME www.core.test."} | WWW_A,
     set()),
    ("host.deleg.core.test.", "A", "NOERROR", set(), None),
    ("www.example.", "A", "REFUSED", set(), set()),
    ("version.bind.", "TXT", "REFUSED", set(), set()),
]


@pytest.mark.parametrize("qname,qtype,rcode,answer,authority", QCLASS_ANY)
def test_bug_qclass_any_is_answered_for_the_served_zone(image, qname, qtype, rcode, answer,
                                                       authority):
    r, _ = ask(image, qname, qtype, rdclass="ANY", responder=Responder(identity="x"))
    assert dns.rcode.to_text(r.rcode()) == rcode
    assert not r.flags & dns.flags.AA
    assert r.question[0].rdclass == dns.rdataclass.ANY
    if answer is not None:
        assert rrs(r.answer) == answer
    if authority is not None:
        assert rrs(r.authority) == authority
    assert all(rrset.rdclass == dns.rdataclass.IN for rrset in r.answer + r.authority)
    if rcode == "NOERROR" and qtype == "ANY":
        assert len(r.answer) == 1          # RFC 8482 §4.1, as for class IN
    r_in, _ = ask(image, qname, qtype, responder=Responder(identity="x"))
    if rcode != "REFUSED":                 # the same data as class IN, but AA
        assert rrs(r.answer) == rrs(r_in.answer) and rrs(r.authority) == rrs(r_in.authority)
        assert rrs(r.additional) == rrs(r_in.additional)


@pytest.mark.parametrize("qname", ["id.server.", "hostname.bind.", "version.bind.",
                                   "version.server."])
@pytest.mark.parametrize("qtype", ["A", "SOA", "NS", "CNAME", "AAAA", "TYPE65280"])
def test_bug_chaos_query_for_another_type_is_refused(image, qname, qtype):
    """The CHAOS identity names hold TXT by convention (RFC 4892 §2); another type is REFUSED, not
    answered with an empty NOERROR that has no SOA (no CHAOS zone exists to supply one), as
    Knot and NSD answer."""
    r, _ = ask(image, qname, qtype, rdclass="CH", responder=Responder(identity="pop1"))
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA
    assert r.answer == [] and r.authority == []


@pytest.mark.parametrize("qtype", ["TXT", "ANY"])
def test_chaos_txt_and_any_still_answer_the_identity(image, qtype):
    # ANY: the one RRset there is (RFC 8482 §4.1), as NSD and BIND answer; Knot refuses it.
    r, _ = ask(image, "id.server.", qtype, rdclass="CH", responder=Responder(identity="pop1"))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert [rd.strings for rrset in r.answer for rd in rrset] == [(b"pop1",)]
