"""Issue 3: a flood of malformed packets (random bytes, truncated headers, bad names, lying
counts, the BIND fuzz corpus) leaves every worker alive and answering, and what the server does
answer is what the in-process `pop53.answer` says (for UDP and TCP alike)."""
from __future__ import annotations

import collections
import random
import socket
import struct
import time

import dns.message
import pytest

import pop53

from integ_support import (BIND_CORPUS, EXAMPLE_ZONE, INTEG_ZONE, frame, make_query,
                           tcp_connect, tcp_exchange, udp_exchange, udp_socket, wait_for)

UDP_MAX_ACCEPTED = 4096     # io.pxi RECV_SLOT: larger datagrams are dropped by design


def header(qd=1, an=0, ns=0, ar=0, flags=0x0100, qid=0x5353) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def question(qname: bytes, qtype=1, qclass=1) -> bytes:
    return qname + struct.pack("!HH", qtype, qclass)


WWW = b"\x03www\x05integ\x07example\x00"
OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)


def bad_names() -> list[bytes]:
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"      # 257 octets
    return [
        header() + question(b"\x40" + b"a" * 64 + b"\x00"),               # label of 64 octets
        header() + question(long_name),                                  # name over 255 octets
        header() + question(b"\xc0\x0c"),                                # pointer to itself
        header() + question(b"\x03www\xc0\x0c"),                         # pointer loop
        header() + question(b"\xc0\xff"),                                # pointer past the end
        header() + question(b"\xc0\x10\x00"),                            # forward pointer
        header() + question(b"\x80abc\x00"),                             # reserved label type 10
        header() + question(b"\x41\x00"),                                # extended label type 01
        header() + b"\x03www\x05integ",                                  # no terminator, no type
        header() + question(b"\x03w\x00w\x05integ\x07example\x00"),     # NUL inside a label
        header() + question(b"\x00", qtype=0, qclass=0),
        header() + b"\x00\x00",                                          # type but no class
        header(qd=0),                                                    # no question
        header(qd=2) + question(WWW),                                    # count says 2, has 1
        header(qd=2) + question(WWW) * 2,                                # two questions
        header(an=65535) + question(WWW),                                # lying counts
        header(ar=1) + question(WWW),                                    # OPT announced, absent
        header(ar=2) + question(WWW) + OPT + OPT,                        # two OPT
        header(ar=1) + question(WWW) + OPT[:-2] + b"\x00\x08\x00\x03\x00\x10",   # bad option len
        header(ar=1) + question(WWW) + b"\x00" + struct.pack("!HHIH", 41, 1232, 0x00010000, 0),  # EDNS 1
        header(ar=1) + question(WWW) + b"\x03www\x00" + OPT[1:],        # OPT owner not root
        header(ns=1, ar=1) + question(WWW) + OPT,                        # OPT where NS is
        header() + question(WWW) + b"trailing junk",
        header(flags=0x8100) + question(WWW),                            # QR=1: dropped
        header(flags=0x0300) + question(WWW),                            # TC=1 in a query
        header(flags=0x010F) + question(WWW),                            # rcode in a query
    ] + [header(flags=(op << 11) | 0x0100) + question(WWW) for op in range(1, 16)]


def flood_packets(seed: int = 53) -> list[bytes]:
    rng = random.Random(seed)
    out = [rng.randbytes(rng.randrange(0, 600)) for _ in range(1500)]
    out += [bytes([rng.randrange(256)]) * n for n in range(0, 40)]
    for q in (make_query("www.integ.example.", "A"), make_query("x.wild.integ.example.", "TXT", edns=None),
              make_query("www.example.com.", "AAAA", nsid=True)):
        out += [q[:n] for n in range(len(q))]                          # every truncation
        for _ in range(100):                                           # bit flips
            b = bytearray(q)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            out.append(bytes(b))
    out += bad_names() * 10
    out += [p.read_bytes() for p in bind_corpus() if p.stat().st_size <= 65507]
    return out


def bind_corpus():
    paths = sorted(BIND_CORPUS.glob("*.pkt"))
    assert len(paths) >= 290, f"BIND corpus not found at {BIND_CORPUS}"
    return paths


@pytest.fixture
def server(start_server):
    return start_server([INTEG_ZONE, EXAMPLE_ZONE], workers=2, tcp_max_queries=5000)


def answer_from_each_worker(server, wire: bytes, max_sockets: int = 300) -> None:
    """Valid queries from fresh source ports until every UDP worker has answered one (the
    kernel spreads SO_REUSEPORT by 4-tuple hash); every answer is the in-process one."""
    base = [w.stats()["replies"] for w in server.workers]
    for _ in range(max_sockets):
        with udp_socket(server.addresses[0]) as sock:
            got = udp_exchange(sock, wire)
            want = pop53.answer(server.current_image, wire, sock.getsockname()[:2],
                                responder=server.responder)
            assert got is not None, "a valid query got no answer after the flood"
            assert got == want
        if all(w.stats()["replies"] > b for w, b in zip(server.workers, base)):
            return
    raise AssertionError(f"not every worker answered: replies {base} -> "
                         f"{[w.stats()['replies'] for w in server.workers]}")


def test_flood_leaves_every_worker_alive_and_answering(server):
    packets = flood_packets()
    assert len(packets) > 2000
    before = [w.stats() for w in server.workers]
    socks = [udp_socket(server.addresses[0]) for _ in range(16)]
    try:
        for sock in socks:
            sock.setblocking(False)
        t0 = time.monotonic()
        for n, p in enumerate(packets):
            try:
                socks[n % len(socks)].send(p)
            except BlockingIOError:
                time.sleep(0.001)
            if n % 256 == 255:
                time.sleep(0.002)            # do not outrun the socket buffers on 2 cores
                for sock in socks:           # and throw the replies away
                    try:
                        while sock.recv(65535):
                            pass
                    except (BlockingIOError, OSError):
                        pass
            assert time.monotonic() - t0 < 30
    finally:
        for sock in socks:
            sock.close()
    # every worker received part of the flood, and every worker thread is still running
    assert wait_for(lambda: sum(w.stats()["udp"] for w in server.workers)
                    - sum(b["udp"] for b in before) >= 0.9 * len(packets), 5.0)
    for w, b in zip(server.workers, before):
        st = w.stats()
        assert st["udp"] > b["udp"] + 100, (w.index, b["udp"], st["udp"])
        assert st["dropped"] > b["dropped"], "malformed packets were counted as dropped"
        assert w.running
    assert all(t.is_alive() for t in server.net.threads)
    answer_from_each_worker(server, make_query("www.integ.example.", "A", qid=0x1234))
    answer_from_each_worker(server, make_query("big.integ.example.", "TXT", qid=0x4321))


def test_bind_corpus_udp_replies_equal_in_process(server):
    """Each BIND corpus message accepted over UDP gets exactly the in-process reply (or, where
    that is None, no reply).  Sent in a burst, replies matched as a multiset."""
    wires = [p.read_bytes() for p in bind_corpus()]
    wires = [w for w in wires if len(w) <= UDP_MAX_ACCEPTED]
    with udp_socket(server.addresses[0], timeout=1.0) as sock:
        client = sock.getsockname()[:2]
        want = collections.Counter(
            r for r in (pop53.answer(server.current_image, w, client, responder=server.responder)
                        for w in wires) if r is not None)
        for n, w in enumerate(wires):
            sock.send(w)
            if n % 32 == 31:
                time.sleep(0.002)
        got = collections.Counter()
        deadline = time.monotonic() + 10
        while sum(got.values()) < sum(want.values()) and time.monotonic() < deadline:
            try:
                got[sock.recv(65535)] += 1
            except (socket.timeout, TimeoutError):
                break
        # a little longer: nothing beyond the expected replies may arrive
        sock.settimeout(0.3)
        try:
            while True:
                got[sock.recv(65535)] += 1
        except (socket.timeout, TimeoutError):
            pass
    assert sum(want.values()) > 50
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"{sum(missing.values())} expected replies missing, {sum(extra.values())} unexpected; "
        f"e.g. missing {[dns.message.from_wire(m).question for m in list(missing)[:2]]}")


def test_bind_corpus_and_garbage_over_tcp(server):
    wires = [p.read_bytes() for p in bind_corpus()]
    want = [r for r in (pop53.answer(server.current_image, w, ("127.0.0.1", 0), tcp=True,
                                     responder=server.responder) for w in wires) if r is not None]
    got = tcp_exchange(server.addresses[0], wires, timeout=10)
    assert got == want
    # random bytes inside well-formed frames, then random bytes with a lying length prefix
    rng = random.Random(7)
    junk = [rng.randbytes(rng.randrange(0, 300)) for _ in range(300)]
    want = [r for r in (pop53.answer(server.current_image, w, ("127.0.0.1", 0), tcp=True,
                                     responder=server.responder) for w in junk) if r is not None]
    assert tcp_exchange(server.addresses[0], junk) == want
    # incomplete frames and a lying length prefix, then a half-close: the server answers what
    # the complete frames hold (here: the empty message, which it drops) and closes cleanly
    empty = pop53.answer(server.current_image, b"", ("127.0.0.1", 0), tcp=True,
                         responder=server.responder)
    for tail, complete in ((b"\xff\xff" + rng.randbytes(100), []), (b"\x00", []),
                           (b"\x00\x00", [b""]), (b"\x00\x00\x00\x05ab", [b""])):
        with tcp_connect(server.addresses[0]) as s:
            s.sendall(tail)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65535):
                data += chunk
        assert data == b"".join(frame(empty) for _ in complete if empty is not None)
    # still serving over TCP
    q = make_query("www.integ.example.", "A", qid=77)
    assert tcp_exchange(server.addresses[0], [q]) == [
        pop53.answer(server.current_image, q, ("127.0.0.1", 0), tcp=True, responder=server.responder)]
    assert all(t.is_alive() for t in server.tcp.threads)     # every TCP loop and the control thread
