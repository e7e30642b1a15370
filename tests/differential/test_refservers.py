"""The reference-server launcher (tests/support/refservers.py) itself: each server starts on
a free loopback port, answers the zones over UDP and TCP, carries the configured identity
(CHAOS TXT, NSID), has no rate limit, and leaves no process or directory behind."""
from __future__ import annotations

import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

import dnsdiff
from tests.support.refservers import RefServerError, Zone, refserver_fixture, server_class

pytestmark = pytest.mark.peers

# The fixture form other suites use: one server for this module, zones evaluated lazily.
knot_star = refserver_fixture(
    "knot", lambda: [z for z in dnsdiff.reference_zones() if z.origin == "star.example."],
    identity="star-only")


def _ask(srv, qname, qtype, qclass="IN", tcp=False, **kw):
    q = dns.message.make_query(qname, qtype, qclass, **kw)
    raw = srv.query(q.to_wire(), tcp=tcp)
    assert raw is not None, f"{srv.kind}: no reply to {qname} {qclass} {qtype} (tcp={tcp})"
    return dns.message.from_wire(raw)


@pytest.mark.parametrize("kind", ["knot", "nsd", "bind"])
def test_server_lifecycle_identity_and_cleanup(kind):
    srv = server_class(kind)(dnsdiff.reference_zones(), identity=f"{kind}-id-x",
                             version="v-test-1")
    with srv:
        pids, workdir = srv.pids(), srv.workdir
        host, port = srv.address
        assert host == "127.0.0.1" and port > 0 and workdir.is_dir()
        assert srv.rss_bytes() > 0
        for tcp in (False, True):
            r = _ask(srv, "www.diff.example.", "A", tcp=tcp)
            assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
            assert {rd.address for rd in r.answer[0]} == {"192.0.2.80", "192.0.2.81"}
        # Identity (RFC 4892 CHAOS TXT, RFC 5001 NSID) as configured.
        for name in ("id.server.", "hostname.bind."):
            r = _ask(srv, name, "TXT", "CH")
            assert [s.decode() for rd in r.answer[0] for s in rd.strings] == [f"{kind}-id-x"]
        r = _ask(srv, "version.bind.", "TXT", "CH")
        assert [s.decode() for rd in r.answer[0] for s in rd.strings] == ["v-test-1"]
        r = _ask(srv, "www.diff.example.", "A", use_edns=0,
                 options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
        nsid = [o for o in r.options if o.otype == dns.edns.NSID]
        assert nsid and nsid[0].to_wire() == f"{kind}-id-x".encode()
    # Stopped: every process gone, the directory removed, the port silent.
    assert srv.proc is None and srv.workdir is None
    from tests.support.refservers import _group_members
    assert _group_members(pids[0]) == []
    assert not workdir.exists()
    from tests.support.refservers import udp_query
    q = dns.message.make_query("www.diff.example.", "A").to_wire()
    assert udp_query((host, port), q, timeout=0.3) is None


def test_nsd_rate_limit_is_off():
    """Debian's NSD limits to 200 qps per /24 by default; the launcher turns RRL off, so a
    burst of 600 queries from 127.0.0.1 is answered in full, none with TC."""
    with server_class("nsd")(dnsdiff.reference_zones()) as srv:
        wire = dns.message.make_query("www.diff.example.", "A").to_wire()
        start, tc, lost = time.monotonic(), 0, 0
        for _ in range(600):
            raw = srv.query(wire, timeout=1.0)
            if raw is None:
                lost += 1
            elif dns.message.from_wire(raw).flags & dns.flags.TC:
                tc += 1
        elapsed = time.monotonic() - start
        assert lost == 0 and tc == 0, (lost, tc)
        # Only meaningful if the burst really exceeded 200 qps.
        assert 600 / elapsed > 200, f"burst too slow to test RRL: {600 / elapsed:.0f} qps"


def test_start_failure_reports_the_log(tmp_path):
    bad = tmp_path / "bad.zone"
    bad.write_text("$ORIGIN bad.example.\n@ 3600 IN SOA ns hm 1 2 3 4 5\n@ NS ns\n"
                   "@ CNAME elsewhere.\n")       # CNAME and other data: Knot refuses the zone
    srv = server_class("knot")([Zone("bad.example.", bad)], startup_timeout=3)
    with pytest.raises(RefServerError) as e:
        srv.start()
    assert "bad.example." in str(e.value)
    assert srv.proc is None and srv.workdir is None


def test_refserver_fixture_serves_only_the_given_zones(knot_star):
    r = _ask(knot_star, "anything.star.example.", "A")
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "198.51.100.1"
    r = _ask(knot_star, "www.diff.example.", "A")
    assert r.rcode() == dns.rcode.REFUSED
