"""Response rate limiting through the real `pop53 serve` on loopback: a burst from one client
gets at most the configured rate of full answers, the rest dropped or sent back truncated;
another client is unaffected; TCP is never limited; the metrics count what was limited."""
from __future__ import annotations

import socket
import time

import dns.flags
import dns.message
import dns.rcode

from integ_support import (INTEG_ZONE, free_port, make_query, metric, scrape, tcp_exchange,
                           udp_exchange, udp_socket)

RATE = 10
BURST = 200


def _config(tmp_path, port, mport, rrl: str) -> str:
    conf = tmp_path / "pop53.toml"
    conf.write_text(f"""\
[server]
listen = ["127.0.0.1:{port}"]
workers = 2
metrics = "127.0.0.1:{mport}"

{rrl}

[[zone]]
name = "integ.example."
file = "{INTEG_ZONE}"
""")
    return str(conf)


def _burst(addr, src: str, n: int) -> tuple[int, int]:
    """n queries for one name from one client address, as fast as the socket goes; then read
    every reply that comes (bounded).  Returns (full answers, truncated)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)    # keep every reply
    s.bind((src, 0))
    s.settimeout(0.5)
    try:
        for i in range(n):
            s.sendto(make_query("www.integ.example.", "A", qid=i + 1), addr)
        full = tc = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(4096)
            except socket.timeout:
                break
            m = dns.message.from_wire(data)
            if m.flags & dns.flags.TC:
                assert not m.answer and m.rcode() == dns.rcode.NOERROR
                tc += 1
            else:
                assert m.answer
                full += 1
        return full, tc
    finally:
        s.close()


def test_a_burst_from_one_client_is_limited(serve, tmp_path):
    port, mport = free_port(), free_port()
    # loopback is exempt by default (the agent probes from there): this test's clients are not
    p = serve("--config", _config(tmp_path, port, mport,
                                  f"[rrl]\nrate = {RATE}\nslip = 2\nexempt = [\"127.0.2.0/24\"]\n"))
    addr = ("127.0.0.1", port)
    t = time.monotonic()
    full, tc = _burst(addr, "127.0.0.1", BURST)
    seconds = time.monotonic() - t
    # the bucket starts full (RATE) and refills RATE a second: the burst spans at most a few
    # seconds, and its sends are over long before the reads stop
    assert 1 <= full <= RATE * (2 + int(seconds)), (full, seconds)
    assert tc >= 1 and full + tc < BURST, (full, tc)
    # another client (a different /24) is answered in full
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.1.1", 0))
    other.settimeout(2)
    try:
        other.sendto(make_query("www.integ.example.", "A", qid=7), addr)
        m = dns.message.from_wire(other.recvfrom(4096)[0])
        assert m.answer and not m.flags & dns.flags.TC
    finally:
        other.close()
    # a client in the configured exempt prefix is never limited
    assert _burst(addr, "127.0.2.1", 30) == (30, 0)
    # TCP is never limited (a client told TC=1 retries there)
    r = dns.message.from_wire(tcp_exchange(addr, [make_query("www.integ.example.", "A", qid=9)])[0])
    assert r.answer
    fam = scrape(("127.0.0.1", mport))
    limited = metric(fam, "pop53_rrl_dropped") + metric(fam, "pop53_rrl_slipped")
    assert metric(fam, "pop53_rrl_slipped") == tc
    # every UDP query the server received (the kernel may drop some of a burst before that)
    # was answered in full or limited; the other client's one was answered
    received = metric(fam, "pop53_queries", proto="udp")
    assert received > BURST // 2 and limited == received - full - 1 - 30, (received, limited, full)
    assert p.proc.poll() is None


def test_without_rrl_nothing_is_limited(serve, tmp_path):
    port, mport = free_port(), free_port()
    serve("--config", _config(tmp_path, port, mport, ""))
    addr = ("127.0.0.1", port)
    s = udp_socket(addr)
    try:
        got = [udp_exchange(s, make_query("www.integ.example.", "A", qid=i + 1)) for i in range(50)]
    finally:
        s.close()
    assert all(g is not None and dns.message.from_wire(g).answer for g in got)
    fam = scrape(("127.0.0.1", mport))
    assert "pop53_rrl_dropped" in fam and metric(fam, "pop53_rrl_dropped") == 0


def test_loopback_is_exempt_by_default(serve, tmp_path):
    port, mport = free_port(), free_port()
    serve("--config", _config(tmp_path, port, mport, "[rrl]\nrate = 1\n"))
    full, tc = _burst(("127.0.0.1", port), "127.0.0.1", 50)
    assert (full, tc) == (50, 0)
