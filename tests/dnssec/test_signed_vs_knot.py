"""Differential: pop53 and Knot serve the same pre-signed zone (NSEC, NSEC3, NSEC3 opt-out);
every query of the corpus (cases.py: positive, NXDOMAIN, NODATA, ENT, wildcard, referral to a
signed and an unsigned child, DS, CNAME chain, DNAME, an NSEC3 owner name) with DO=1 over UDP
and TCP gets the same reply.  Tolerance (docs/dnssec.md): proof records (NSEC/NSEC3 and their
RRSIGs) may differ when both replies' proofs are signed correctly (delv checks that the proofs
prove, test_delv.py) and are as many; everything else must be equal."""
from __future__ import annotations

import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from cases import CASES, qname
from proofs import differences, make_query, signature_problems
from tests.support.refservers import KnotServer, Pop53Server, Zone

pytestmark = pytest.mark.peers

VARIANTS = ["nsec", "nsec3", "optout"]


def _corpus(signed) -> list[tuple[str, str, str]]:
    zone = dns.zone.from_file(str(signed.path), signed.origin, relativize=False)
    hashed = sorted(n for n, node in zone.nodes.items() if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3))
    extra = [("nsec3-owner", hashed[0].to_text(), "A")] if hashed else []
    return [(cat, qname(rel, signed.origin), t) for cat, rel, t in CASES] + extra


@pytest.mark.parametrize("variant", VARIANTS)
def test_signed_zone_answers_like_knot(signed, variant):
    if not KnotServer.available():
        pytest.skip("knotd not installed")
    s = signed[variant]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    dnskey = zone.find_rrset(s.origin, "DNSKEY")
    corpus = _corpus(s)
    differ, bad_sigs = [], []
    z = Zone(s.origin, s.path)
    with KnotServer([z]) as knot, Pop53Server([z]) as pop:
        for tcp in (False, True):
            for cat, qn, qt in corpus:
                wire = make_query(qn, qt)
                a, b = knot.query(wire, tcp=tcp), pop.query(wire, tcp=tcp)
                assert a is not None and b is not None, (cat, qn, qt, tcp)
                key = f"{cat} {qn} {qt} {'tcp' if tcp else 'udp'}"
                bad_sigs += [f"{key}: {p}" for p in signature_problems(b, dnskey)]
                diff = differences(a, b)
                if diff:
                    differ.append((key, diff))
    assert not bad_sigs, bad_sigs[:10]
    assert not differ, "\n".join(f"{k}: {d}" for k, d in differ[:5])
