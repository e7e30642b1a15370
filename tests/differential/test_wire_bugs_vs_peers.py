"""Issue 9's wire bugs on data the differential zones do not hold, compared with Knot and NSD
through the same normal form and table as the corpus (tests/core/test_wire_bugs.py pins
pop53's own answers)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

import dnsdiff
import dnsdiff_table as table
from tests.support.refservers import Zone, server_class

pytestmark = pytest.mark.peers

# A pre-signed CNAME owner: RRSIG and NSEC beside the CNAME (RFC 2181 §10.1, RFC 4035 §2.5).
SIGNED = Path(__file__).resolve().parents[1] / "data" / "signed.test.zone"


@pytest.mark.parametrize("kind", ["knot", "nsd"])
def test_bug_dnssec_query_at_signed_cname_owner_agrees_with_peers(kind):
    import pop53
    path = SIGNED
    image = pop53.compile_zones([path])
    cases = [dnsdiff.Case("cname", "alias.signed.test.", qt, edns=e, do=do)
             for qt in ("RRSIG", "NSEC", "NSEC3", "A", "CNAME")
             for e, do in ((None, False), (1232, True))]
    with server_class(kind)([Zone("signed.test.", path)]) as srv:
        ref = [srv.query(c.wire()) for c in cases]
    ours = [pop53.answer(image, c.wire(), ("127.0.0.1", 5300)) for c in cases]
    # The RRSIG and NSEC records themselves are the answer, from both peers and from pop53.
    for c, raw in zip(cases, ours):
        if c.qtype in ("RRSIG", "NSEC"):
            (rrset,) = dns.message.from_wire(raw).answer
            assert dns.rdatatype.to_text(rrset.rdtype) == c.qtype
    # NSD adds the apex NS RRset and its addresses (the nsd-authority-ns quirk, here for a zone
    # outside the corpus): strip them.
    apex_ns = dnsdiff.Quirk(
        "nsd-authority-ns", frozenset({"nsd"}), "", lambda case, r: True,
        lambda case, r: dataclasses.replace(
            r, authority=frozenset(x for x in r.authority if x.rdtype != "NS"),
            additional=frozenset(x for x in r.additional if x.name != "ns.signed.test.")))
    found = []
    for c, a, b in zip(cases, ref, ours):
        probs, _ = dnsdiff.compare(c, kind, dnsdiff.normalize(a), "pop53", dnsdiff.normalize(b),
                                   [apex_ns], table.EXCUSES)
        if probs:
            found.append((c, probs))
    assert not found, dnsdiff.report(found)


NUL_HEAD = b"$ORIGIN nul.test.\n$TTL 300\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"


def test_bug_raw_nul_byte_in_zone_file_is_rejected_like_knot(tmp_path):
    """A raw NUL octet in an owner name: Knot refuses the zone and so does pop53 (NSD cuts the
    name at the NUL and serves "a."); written \\000 both load it and answer the same."""
    import pop53
    from pop53.errors import ZoneError
    from tests.support.refservers import RefServerError
    raw, esc = tmp_path / "raw.zone", tmp_path / "esc.zone"
    raw.write_bytes(NUL_HEAD + b"a\x00b A 192.0.2.2\n")
    esc.write_bytes(NUL_HEAD + b"a\\000b A 192.0.2.2\n")
    with pytest.raises(RefServerError):
        server_class("knot")([Zone("nul.test.", raw)], startup_timeout=2).start()
    with pytest.raises(ZoneError, match=r"raw\.zone:6"):
        pop53.compile_zones([raw])
    case = dnsdiff.Case("exact", "a\\000b.nul.test.", "A")
    with server_class("knot")([Zone("nul.test.", esc)]) as srv:
        ref = dnsdiff.normalize(srv.query(case.wire()))
    ours = dnsdiff.normalize(pop53.answer(pop53.compile_zones([esc]), case.wire(),
                                          ("127.0.0.1", 5300)))
    assert ref.answer and ref.rcode == "NOERROR"
    probs, _ = dnsdiff.compare(case, "knot", ref, "pop53", ours)
    assert not probs, probs
