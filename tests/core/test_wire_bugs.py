"""Wire bugs found from outside (issue 9), each pinned by a test named after it.  The same
queries are compared with Knot and NSD in tests/differential (dnsdiff corpus rows)."""
from __future__ import annotations


import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

import pop53

from test_core_answers import SOA_CORE, ZONES, ask, rrs


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
