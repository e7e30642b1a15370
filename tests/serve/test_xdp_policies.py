"""Issue 16: the XDP worker applies what the socket worker applies -- server cookies (RFC 7873
/ 9018), response rate limiting that a proven cookie lifts, query scoring -- and counts it in
its own counters."""
from __future__ import annotations

import socket
import time

import dns.message
import pytest

from pop53 import _core
from pop53.lab.veth import VethRig

from test_cookies_serve import SECRET, cookie_of, query
from xdp_support import client_socket, require_xdp, start_xdp_server, xdp_workers

pytestmark = pytest.mark.root


def burst(sock, wire_for, n: int) -> int:
    """n queries in a burst; how many full answers came back."""
    for i in range(n):
        sock.send(wire_for(i + 1))
    full = 0
    sock.settimeout(0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            full += bool(dns.message.from_wire(sock.recv(4096)).answer)
        except (socket.timeout, TimeoutError):
            break
    return full


@pytest.fixture
def server():
    require_xdp()
    with VethRig("p") as rig:
        s = start_xdp_server(rig, cookie_secret=SECRET,
                             tables={"rrl": {"rate": 5, "slip": 0, "exempt": []}, "scoring": {}})
        try:
            yield rig, s
        finally:
            s.stop()


def test_cookies_rrl_and_scoring_over_xdp(server):
    rig, s = server
    client = bytes.fromhex("a1a2a3a4a5a6a7a8")
    with client_socket(rig, rig.srv4) as sock:
        sock.send(query(client, 1))
        m = dns.message.from_wire(sock.recv(4096))
        got = cookie_of(m)
        assert m.answer and got is not None and got[:8] == client and len(got) == 24
        responder = _core.Responder(cookie_secret=bytes.fromhex(SECRET))
        assert _core.cookie_check(responder, got, socket.inet_aton(rig.cli4), int(time.time()))
        # RRL (rate 5, no slip) answers a handful of a burst; a valid server cookie, every one
        assert burst(sock, lambda i: query(None, i), 60) <= 15
        assert burst(sock, lambda i: query(got, i), 60) == 60
    st = [w.stats() for w in xdp_workers(s)]
    assert sum(x["rrl_dropped"] for x in st) >= 40
    assert sum(x["cookies_valid"] for x in st) >= 60
    assert sum(x["replies"] for x in st) >= 121
    admitted = sum(sum(w.scoring_stats()["admitted"].values()) for w in xdp_workers(s))
    assert admitted >= 121        # every query was scored before its answer
    # and none of it went through the kernel's sockets
    assert sum(w.stats()["replies"] for w in s.workers if w not in xdp_workers(s)) == 0


def test_kernel_drops_reach_the_overload_controller(server):
    """A stopped XDP worker: its RX ring (2048) fills and the kernel drops the rest
    (XDP_STATISTICS); when it runs again its first full batches hand those drops to the scoring
    controller, as SO_MEMINFO does for a socket worker."""
    rig, s = server
    (w,) = xdp_workers(s)
    w.stop()
    deadline = time.monotonic() + 3
    while w.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not w.running
    wire = query(None, 7)
    with client_socket(rig, rig.srv4) as sock:
        for _ in range(3000):
            sock.send(wire)
    deadline = time.monotonic() + 3
    while w.xdp_stats()["kernel_drops"] < 900 and time.monotonic() < deadline:
        time.sleep(0.01)
    drops = w.xdp_stats()["kernel_drops"]
    assert 900 <= drops <= 3000 - 2048 + 16
    # and in /metrics (issue 14): the socket's XDP_STATISTICS by reason
    from pop53.serve.observe import xdp_families
    (fam,) = list(xdp_families(s))
    got = {x.labels["reason"]: x.value for x in fam.samples if x.labels["worker"] == str(w.index)}
    assert got["rx_dropped"] + got["rx_ring_full"] == drops and "rx_invalid_descs" in got
    s.restart_workers(s.responder, s.limiter)
    deadline = time.monotonic() + 3
    while w.scoring_stats()["kernel_drops"] < drops and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.scoring_stats()["kernel_drops"] == drops


def test_dnstap_over_xdp_logs_peer_and_address_asked(tmp_path):
    """dnstap (issue 14) covers the XDP workers: each query/response pair read back by
    dnstap-read has the client's address and port and the address it asked (from the frame)."""
    import dnstap_support as tap
    require_xdp()
    out = tmp_path / "x.dnstap"
    with VethRig("t") as rig:
        s = start_xdp_server(rig, tables={"dnstap": {"file": str(out)}})
        try:
            ports = []
            for i in range(5):
                with client_socket(rig, rig.srv4) as sock:
                    sock.send(dns.message.make_query(f"w{i}.integ.example.", "A").to_wire())
                    assert dns.message.from_wire(sock.recv(4096))
                    ports.append(sock.getsockname()[1])
            assert sum(w.stats()["udp"] for w in xdp_workers(s)) >= 5
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and s.observe.dnstap.stats()["frames"] < 10:
                time.sleep(0.05)
        finally:
            s.stop()
    taps = tap.read(out)
    assert sorted(t.client_port for t in taps) == sorted(ports * 2)
    assert all(t.proto == "UDP" and t.server == rig.srv4 and t.client == rig.cli4 for t in taps)
    assert sorted(t.kind for t in taps) == ["AQ"] * 5 + ["AR"] * 5


def test_dnstap_over_xdp_logs_dropped_queries(tmp_path):
    """A query RRL drops on the XDP path is logged as AUTH_QUERY without a response."""
    import dnstap_support as tap
    require_xdp()
    out = tmp_path / "d.dnstap"
    with VethRig("d") as rig:
        s = start_xdp_server(rig, tables={"dnstap": {"file": str(out)},
                                          "rrl": {"rate": 1, "slip": 0, "exempt": []}})
        try:
            with client_socket(rig, rig.srv4) as sock:
                port = sock.getsockname()[1]
                burst(sock, lambda i: query(None, i), 30)
            dropped = sum(w.stats()["rrl_dropped"] for w in xdp_workers(s))
            assert dropped >= 20
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and s.observe.dnstap.stats()["frames"] < 60 - dropped:
                time.sleep(0.05)
        finally:
            s.stop()
    taps = [t for t in tap.read(out) if t.client_port == port]
    assert sum(t.kind == "AQ" for t in taps) == 30
    assert sum(t.kind == "AR" for t in taps) == 30 - dropped
