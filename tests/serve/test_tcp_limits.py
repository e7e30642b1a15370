"""Issue 15: TCP connection slots under abuse, on real loopback sockets against the data-plane
TCP loop (ext/tcp.pxi): a peer that never reads, slowloris, the per-address limit.  Every load
is bounded in count and time."""
from __future__ import annotations

import socket
import time

import dns.message
import dns.opcode
import pytest

import pop53.config as cfgmod
from pop53.errors import ConfigError

from integ_support import (EXAMPLE_ZONE, INTEG_ZONE, frame, free_port, make_query, metric,
                           msg_id, read_frame, scrape, tcp_connect, udp_exchange, udp_socket,
                           wait_for)


def _answered(addr, qid: int, timeout: float = 2.0, attempts: int = 1) -> bool:
    """One query on a fresh connection (a new one per attempt, as a client retries); True
    when its answer comes back."""
    for _ in range(attempts):
        try:
            with tcp_connect(addr, timeout=timeout) as s:
                s.sendall(frame(make_query("www.integ.example.", qid=qid)))
                a = read_frame(s)
                if a is not None and msg_id(a) == qid:
                    return True
        except OSError:
            pass
    return False


def _udp_ok(addr, qid: int) -> bool:
    with udp_socket(addr) as u:
        a = udp_exchange(u, make_query("www.example.com.", qid=qid))
    return a is not None and msg_id(a) == qid


def test_client_that_never_reads_is_dropped(start_server):
    # issue 15 (a): clients that ask for big answers and never read used to hold their slots
    # for ever (the idle timeout only covered reads).  Fill every slot with such clients: each
    # is reset after tcp_write_timeout without progress, and TCP serves again.
    server = start_server([INTEG_ZONE, EXAMPLE_ZONE], workers=1, tcp_max_connections=3,
                          tcp_write_timeout=1.0, tcp_idle_timeout=30.0, tcp_max_queries=100000)
    addr = server.addresses[0]
    q = frame(make_query("huge.integ.example.", "TXT", qid=7))       # ~30 KB answers
    hogs = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # fills at once
            s.settimeout(5)
            s.connect(addr)
            s.setblocking(False)
            try:
                s.send(q * 1500)      # far more answer bytes than the kernel buffers hold
            except BlockingIOError:
                pass
            hogs.append(s)
        t0 = time.monotonic()
        assert wait_for(lambda: server.tcp.connections == 3, 3.0)
        # every hog has had answers made (and is stalled on them), so none is a fresh
        # connection the newcomer could take the place of
        assert wait_for(lambda: server.tcp.counters.stats()["tcp"] >= 3, 3.0)
        time.sleep(0.3)
        assert not _answered(addr, 11)                  # every slot is held
        assert wait_for(lambda: server.tcp.connections == 0, 8.0), server.tcp.counters.stats()
        waited = time.monotonic() - t0
        assert 0.5 <= waited < 8.0, waited
        assert server.tcp.counters.stats()["tcp_stalled"] == 3
        assert _answered(addr, 12)                      # slots are free again
        for s in hogs:                                  # the hogs were reset, not served on
            s.setblocking(True)
            s.settimeout(2)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for s in hogs:
            s.close()


def test_slowloris_does_not_take_tcp_down(start_server):
    # issue 15 (b): connections that send one byte each and wait used to take every slot for the
    # idle timeout, and a repeated burst kept TCP down.  Now an incomplete message has a short
    # deadline from its first byte (shorter still when over half the slots are taken) and a new
    # connection evicts the oldest one stuck in an incomplete message.  Bursts of 2.4x the slots,
    # repeated, while a real client keeps asking over TCP and UDP.
    server = start_server([INTEG_ZONE, EXAMPLE_ZONE], workers=1, tcp_max_connections=50,
                          tcp_max_per_ip=0, tcp_idle_timeout=10.0)
    addr = server.addresses[0]
    held: list[socket.socket] = []
    served = udp = 0
    try:
        for burst in range(3):
            for _ in range(120):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(2)
                try:
                    s.connect(addr)
                    s.send(b"\x00")       # the first byte of a length prefix, never the rest
                except OSError:
                    s.close()
                    continue
                held.append(s)
            for i in range(3):
                served += _answered(addr, 100 * burst + i, attempts=3)
                udp += _udp_ok(addr, 100 * burst + i)
        assert served == 9, served        # every TCP query during the bursts was answered
        assert udp == 9
        st = server.tcp.counters.stats()
        assert st["tcp_evicted"] > 0
        assert st["tcp_connections"] <= 50
    finally:
        for s in held:
            s.close()
    # the attackers' leftovers time out (busy: 0.2 s, else tcp_message_timeout = 2 s)
    assert wait_for(lambda: server.tcp.connections == 0, 5.0)


def test_per_address_connection_limit(start_server):
    mport = free_port()
    server = start_server([INTEG_ZONE, EXAMPLE_ZONE], workers=1, tcp_max_per_ip=3,
                          metrics=f"127.0.0.1:{mport}")
    addr = server.addresses[0]
    held = []
    try:
        for i in range(3):
            s = tcp_connect(addr)
            s.sendall(frame(make_query("www.integ.example.", qid=300 + i)))
            assert msg_id(read_frame(s)) == 300 + i
            held.append(s)
        assert not _answered(addr, 399)           # a fourth from 127.0.0.1 is refused
        st = server.tcp.counters.stats()
        assert st["tcp_refused_per_ip"] == 1
        fams = scrape(("127.0.0.1", mport))          # and the operator sees it
        assert metric(fams, "pop53_tcp_closed", reason="refused_per_ip") == 1
        assert metric(fams, "pop53_tcp_connections") == 3
        # another address is counted apart: 127.0.0.2 still gets in
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s2:
            s2.settimeout(5)
            s2.bind(("127.0.0.2", 0))
            s2.connect(addr)
            s2.sendall(frame(make_query("www.integ.example.", qid=397)))
            assert msg_id(read_frame(s2)) == 397
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: server.tcp.connections == 0, 3.0)
    assert _answered(addr, 398)                   # released slots count again


def test_large_pipelined_answers_keep_order_under_backpressure(start_server):
    # a reader slower than the server: answers wait in the connection's buffer, reading stops,
    # and every answer still arrives whole and in order
    server = start_server([INTEG_ZONE, EXAMPLE_ZONE], workers=1, tcp_max_queries=1000)
    addr = server.addresses[0]
    names = ["huge.integ.example.", "www.integ.example.", "big.integ.example."]
    queries = [make_query(names[i % 3], "TXT" if i % 3 != 1 else "A", qid=i + 1) for i in range(600)]
    with tcp_connect(addr, timeout=10) as s:
        s.sendall(b"".join(frame(q) for q in queries))   # ~6 MB of answers
        time.sleep(0.3)                           # let the server stall on the full window
        answers = [read_frame(s) for _ in queries]
    assert [msg_id(a) for a in answers] == list(range(1, 601))
    assert all(not a[2] & 0x02 for a in answers)          # TC clear: never truncated
    big = dns.message.from_wire(answers[0])               # whole: ~30 KB that parse
    assert len(answers[0]) > 16384 and len(big.answer[0]) >= 40


@pytest.mark.parametrize("key,value,message", [
    ("tcp_workers", 0, "server.tcp_workers: must be within 1..64"),
    ("tcp_max_connections", 0, "server.tcp_max_connections: must be >= 1"),
    ("tcp_max_per_ip", -1, "server.tcp_max_per_ip: must be >= 0"),
    ("tcp_write_timeout", 0, "server.tcp_write_timeout: must be within (0, 3600]"),
    ("tcp_message_timeout", "2s", "server.tcp_message_timeout"),
])
def test_bad_tcp_keys_are_rejected_with_the_key(key, value, message):
    with pytest.raises(ConfigError) as exc:
        cfgmod.from_dict({"server": {key: value}, "zone": []}, file="pop53.toml")
    assert str(exc.value).startswith("pop53.toml:") and message in str(exc.value)


def _notify(qid: int) -> bytes:
    m = dns.message.make_query("integ.example.", "SOA")
    m.set_opcode(dns.opcode.NOTIFY)
    m.id = qid
    return m.to_wire()


def test_control_plane_connections_are_limited(start_server):
    # NOTIFY/XFR/TSIG messages hand their connection to the asyncio side, one Python object and
    # task each: tcp_max_control_connections bounds them; past it a handoff is closed unanswered
    server = start_server([INTEG_ZONE], workers=1, tcp_max_control_connections=2,
                          tcp_idle_timeout=30.0)
    addr = server.addresses[0]
    held = []
    try:
        for qid in (21, 22):
            s = tcp_connect(addr, timeout=5)
            s.sendall(frame(_notify(qid)))
            a = read_frame(s)
            assert a is not None and msg_id(a) == qid      # answered by the control plane
            held.append(s)
        assert wait_for(lambda: server.tcp.handed_connections == 2, 3.0)
        with tcp_connect(addr, timeout=5) as s:
            s.sendall(frame(_notify(23)))
            try:
                a = read_frame(s)
            except ConnectionResetError:
                a = None
            assert a is None                                # closed, not answered
        assert wait_for(lambda: server.tcp.counters.stats()["tcp_control_refused"] == 1, 3.0)
        assert server.tcp.counters.stats()["tcp_control_connections"] == 2
        assert _answered(addr, 24)                      # ordinary queries are not affected
        held.pop().close()
        assert wait_for(lambda: server.tcp.handed_connections == 1, 5.0)
        with tcp_connect(addr, timeout=5) as s:
            s.sendall(frame(_notify(25)))
            a = read_frame(s)
            assert a is not None and msg_id(a) == 25
        from pop53.serve.metrics import _tcp_metrics
        closed = list(_tcp_metrics(server.tcp.counters.stats()))[1]
        assert [s.value for s in closed.samples if s.labels == {"reason": "control_refused"}] == [1]
    finally:
        for s in held:
            s.close()


def test_control_connection_limit_is_checked():
    with pytest.raises(ConfigError, match="tcp_max_control_connections"):
        cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "tcp_max_control_connections": 0}},
                         file="<t>")
