"""Issue 3: answers on the wire (UDP and TCP, IPv4 and IPv6) are byte-for-byte the in-process
answers of `pop53.answer` for a query corpus built from the test zones and the example zone."""
from __future__ import annotations

import socket

import dns.flags
import dns.message
import pytest

import pop53

from integ_support import (EXAMPLE_ZONE, HAVE_IPV6, INTEG_ZONE, make_query, msg_id, query_corpus,
                           tcp_exchange, udp_exchange, udp_socket, with_id)

HOSTS = ["127.0.0.1"] + (["::1"] if HAVE_IPV6 else [])


@pytest.fixture(scope="module")
def corpus():
    return query_corpus()


@pytest.fixture
def server(start_server):
    listen = ["127.0.0.1:0"] + (["[::1]:0"] if HAVE_IPV6 else [])
    return start_server([INTEG_ZONE, EXAMPLE_ZONE], listen=listen, workers=2)


def test_corpus_is_substantial(corpus, server):
    # the comparison below means little unless the corpus covers the answer kinds
    rcodes, tc, sizes = set(), 0, []
    for wire in corpus:
        r = pop53.answer(server.current_image, wire, ("127.0.0.1", 5300), responder=server.responder)
        assert r is not None
        m = dns.message.from_wire(r)
        rcodes.add(m.rcode())
        tc += bool(m.flags & dns.flags.TC)
        sizes.append(len(pop53.answer(server.current_image, wire, ("127.0.0.1", 5300), tcp=True,
                                      responder=server.responder)))
    assert len(corpus) >= 500
    assert {0, 3, 5} <= rcodes          # NOERROR, NXDOMAIN, REFUSED
    assert tc >= 5
    assert max(sizes) > 16384           # 'huge' over TCP


@pytest.mark.parametrize("host", HOSTS)
def test_udp_answers_equal_in_process(corpus, server, host):
    addr = next(a for a in server.addresses if a[0] == host)
    mismatches = []
    with udp_socket(addr) as sock:
        client = sock.getsockname()[:2]
        for wire in corpus:
            got = udp_exchange(sock, wire)
            want = pop53.answer(server.current_image, wire, client, responder=server.responder)
            assert got is not None, f"no UDP answer to {dns.message.from_wire(wire).question}"
            assert msg_id(got) == msg_id(wire)
            if got != want:
                mismatches.append(dns.message.from_wire(wire).question[0].to_text())
    assert not mismatches, f"{len(mismatches)} UDP answers differ, e.g. {mismatches[:5]}"


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_answers_equal_in_process(corpus, server, host):
    addr = next(a for a in server.addresses if a[0] == host)
    mismatches = []
    # 100 pipelined queries per connection; answers come back in order with matching ids
    for start in range(0, len(corpus), 100):
        chunk = corpus[start:start + 100]
        answers = tcp_exchange(addr, chunk)
        assert len(answers) == len(chunk)
        for wire, got in zip(chunk, answers):
            assert msg_id(got) == msg_id(wire)
            want = pop53.answer(server.current_image, wire, (host, 0), tcp=True,
                                responder=server.responder)
            if got != want:
                mismatches.append(dns.message.from_wire(wire).question[0].to_text())
            assert not dns.message.from_wire(got).flags & dns.flags.TC
    assert not mismatches, f"{len(mismatches)} TCP answers differ, e.g. {mismatches[:5]}"


def test_id_is_echoed_whatever_it_is(server):
    # the comparison above holds for every id, not only small ones (RFC 1035 §4.1.1)
    base = query_corpus()[0]
    addr = server.addresses[0]
    with udp_socket(addr) as sock:
        for qid in (0, 1, 0x7FFF, 0x8000, 0xFFFF):
            wire = with_id(base, qid)
            got = udp_exchange(sock, wire)
            want = pop53.answer(server.current_image, wire, sock.getsockname()[:2],
                                responder=server.responder)
            assert got == want and msg_id(got) == qid


def test_wildcard_listen_replies_from_the_address_queried(start_server):
    """Issue 3: "Replies leave from the address the query was sent to."  Bound to 0.0.0.0 (and
    [::]), queried on three loopback addresses: each reply comes from the address queried
    (IP_PKTINFO / IPV6_PKTINFO), or a resolver would discard it."""
    listen = ["0.0.0.0:0"] + (["[::]:0"] if HAVE_IPV6 else [])
    s = start_server([INTEG_ZONE, EXAMPLE_ZONE], listen=listen, workers=2)
    targets = [(a, s.addresses[0][1]) for a in ("127.0.0.1", "127.0.0.2", "127.0.0.53")]
    if HAVE_IPV6:
        targets.append(("::1", s.addresses[1][1]))
    base = make_query("www.integ.example.", "A")
    for host, port in targets:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for k in range(8):          # several source ports: both workers of the group
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2.0)
                wire = with_id(base, 0x100 + k)
                sock.sendto(wire, (host, port))
                reply, src = sock.recvfrom(4096)
                assert src[:2] == (host, port)
                assert reply == pop53.answer(s.current_image, wire, sock.getsockname()[:2],
                                             responder=s.responder)
