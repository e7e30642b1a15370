"""Issue 3, DNS over TCP (RFC 7766): pipelining, half-close, large answers, idle timeout,
per-connection and global limits, on real sockets."""
from __future__ import annotations

import random
import socket
import time

import dns.flags
import dns.message
import pytest

import pop53

from integ_support import (EXAMPLE_ZONE, INTEG_ZONE, frame, make_query, msg_id, read_frame,
                           tcp_connect, tcp_exchange, udp_exchange, udp_socket, wait_for)

NAMES = ["www.integ.example.", "alias.integ.example.", "nx.integ.example.", "www.example.com.",
         "x.wild.integ.example.", "big.integ.example.", "a.deleg.integ.example.",
         "www.not-ours.test."]


def pipeline(n: int, seed: int = 53) -> list[bytes]:
    rng = random.Random(seed)
    ids = rng.sample(range(1, 65536), n)          # distinct, unordered ids
    return [make_query(rng.choice(NAMES), rng.choice(["A", "AAAA", "TXT", "MX"]), qid=i)
            for i in ids]


@pytest.fixture
def server(start_server):
    return start_server([INTEG_ZONE, EXAMPLE_ZONE], workers=1, tcp_idle_timeout=1.0,
                        tcp_max_connections=4, tcp_max_queries=60)


def expected(server, wire):
    return pop53.answer(server.current_image, wire, ("127.0.0.1", 0), tcp=True,
                        responder=server.responder)


def test_fifty_pipelined_queries_on_one_connection(server):
    queries = pipeline(50)
    with tcp_connect(server.addresses[0]) as s:
        s.sendall(b"".join(frame(q) for q in queries))     # all 50 in one write
        answers = [read_frame(s) for _ in range(50)]
    assert all(a is not None for a in answers)
    by_id = {msg_id(a): a for a in answers}
    assert sorted(by_id) == sorted(msg_id(q) for q in queries)   # RFC 7766 §7: match by id
    for q in queries:
        assert by_id[msg_id(q)] == expected(server, q)


def test_pipelined_queries_split_across_segments(server):
    # framing must not depend on how the bytes arrive: send in odd-sized pieces
    queries = pipeline(20, seed=7)
    data = b"".join(frame(q) for q in queries)
    with tcp_connect(server.addresses[0]) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 37):
            s.sendall(data[i:i + 37])
            time.sleep(0.001)
        answers = [read_frame(s) for _ in range(20)]
    assert [msg_id(a) for a in answers if a] == [msg_id(q) for q in queries]
    assert answers == [expected(server, q) for q in queries]


def test_half_closed_client_gets_every_answer(server):
    queries = pipeline(40, seed=11)
    answers = tcp_exchange(server.addresses[0], queries)   # shutdown(SHUT_WR) after sending
    assert len(answers) == 40
    assert answers == [expected(server, q) for q in queries]


def test_large_answers_complete_over_tcp_never_truncated(server):
    addr = server.addresses[0]
    for name, rdtype, floor in (("big.integ.example.", "TXT", 1232), ("many.integ.example.", "A", 1232),
                                ("huge.integ.example.", "TXT", 16384)):
        for edns in (None, 0):
            q = make_query(name, rdtype, qid=4242, edns=edns)
            (a,) = tcp_exchange(addr, [q])
            m = dns.message.from_wire(a)          # parses: the message is complete
            assert not m.flags & dns.flags.TC
            assert len(a) > floor
            assert m.answer and len(m.answer[0]) >= 40
            assert a == expected(server, q)
            # the same question over UDP does not fit, so it is truncated there (RFC 6891 §7)
            with udp_socket(addr) as u:
                ua = udp_exchange(u, q)
            assert ua is not None and dns.message.from_wire(ua).flags & dns.flags.TC
            assert len(ua) <= (512 if edns is None else 1232)


def test_idle_connection_is_closed(server):
    # tcp_idle_timeout = 1 s: a silent connection, and one gone silent after a query, are closed
    addr = server.addresses[0]
    for send_first in (False, True):
        with tcp_connect(addr, timeout=6) as s:
            t0 = time.monotonic()
            if send_first:
                s.sendall(frame(make_query("www.integ.example.", qid=9)))
                assert read_frame(s) is not None
            try:
                assert s.recv(1) == b""                     # EOF from the server
            except ConnectionResetError:
                pass
            waited = time.monotonic() - t0
            assert 0.8 <= waited < 5.0, waited


def test_per_connection_query_limit(server):
    # tcp_max_queries = 60, one query at a time: the 60th is answered, then the server closes
    # (FIN, not a reset) and a query sent after that gets no answer
    addr = server.addresses[0]
    with tcp_connect(addr) as s:
        for i in range(60):
            s.sendall(frame(make_query("www.integ.example.", qid=1000 + i)))
            assert msg_id(read_frame(s)) == 1000 + i
        assert s.recv(1) == b""                    # EOF: the server closed after the 60th
        try:
            s.sendall(frame(make_query("www.integ.example.", qid=2000)))
            assert read_frame(s) is None
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_query_limit_answers_what_was_received(server):
    # issue 15 (c): 70 queries pipelined in one write arrive before the server reaches its limit
    # of 60; it used to answer 60 and drop the other 10 silently.  Like Knot and NSD, every query
    # received before the close is answered, then the connection ends cleanly (EOF, no reset).
    queries = pipeline(70, seed=3)
    with tcp_connect(server.addresses[0]) as s:
        s.sendall(b"".join(frame(q) for q in queries))
        answers = []
        while (m := read_frame(s)) is not None:     # a reset would raise here
            answers.append(m)
    assert answers == [expected(server, q) for q in queries]


def test_global_connection_limit(server):
    addr = server.addresses[0]
    limit = server.config.tcp_max_connections      # 4
    held = []
    try:
        for i in range(limit):
            s = tcp_connect(addr)
            s.sendall(frame(make_query("www.integ.example.", qid=100 + i)))
            assert read_frame(s) is not None       # accepted and being served
            held.append(s)
        refused_before = server.tcp.refused_connections
        # one over the limit: the handshake completes in the kernel, but the server closes it
        # without answering
        with tcp_connect(addr) as extra:
            extra.sendall(frame(make_query("www.integ.example.", qid=999)))
            try:
                assert read_frame(extra) is None
            except ConnectionResetError:
                pass
        assert server.tcp.refused_connections == refused_before + 1
        # the held connections still work
        for i, s in enumerate(held):
            s.sendall(frame(make_query("www.example.com.", qid=200 + i)))
            assert msg_id(read_frame(s)) == 200 + i
        # free one slot: a new connection is served again
        held.pop().close()
        assert wait_for(lambda: server.tcp.connections < limit, 3.0)
        (a,) = tcp_exchange(addr, [make_query("www.integ.example.", qid=777)])
        assert msg_id(a) == 777
    finally:
        for s in held:
            s.close()
