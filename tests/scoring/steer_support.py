"""Helpers of the kernel-stage and per-address tests (test_steer, test_trust, test_fresh_relays,
test_cookie_steer, test_wake, test_queue_delay): queries from a chosen source address, where the
workers read them (normal or priority socket), a worker held while queries queue, a probe
scorer with a known table."""
from __future__ import annotations

import socket
import time

import dns.flags
import dns.message

from pop53 import _core
from pop53.scoring.known import KnownPrefixes, compile_table


def query(name: str = "www.integ.example.") -> bytes:
    """An A query for `name` with RD=0, as resolvers ask authorities."""
    q = dns.message.make_query(name, "A")
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def ip(a: str) -> bytes:
    """A packed IPv4 address."""
    return socket.inet_aton(a)


def scorer(known: KnownPrefixes, **kw) -> _core.Scorer:
    """A probe Scorer (the worker loop's functions on its own state) with `known` published."""
    s = _core.Scorer(**kw)
    s.publish(compile_table(known))
    return s


def ask(addr, src: str, n: int, wire: bytes | None = None) -> int:
    """n queries (`wire`, else www.integ.example. A with RD=0) from n source ports of `src`;
    returns how many were answered."""
    if wire is None:
        wire = query()
    got = 0
    for _ in range(n):
        with socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            s.settimeout(2)
            s.sendto(wire, addr)
            got += bool(dns.message.from_wire(s.recvfrom(4096)[0]).answer)
    return got


def per_worker(server) -> tuple[int, int]:
    """(datagrams the workers took from their normal sockets, from their priority sockets)."""
    udp = sum(w.stats()["udp"] for w in server.workers)
    prio = sum(w.scoring_stats()["priority_received"] for w in server.workers)
    return udp - prio, prio


def held(server, seconds: float, send) -> None:
    """Stop the only worker at a batch boundary, `send` while it is held, then run it again:
    what queued meanwhile waited `seconds` in the socket."""
    w, t = server.workers[0], server.net.threads[0]
    w.stop()
    t.join(2)
    send()
    time.sleep(seconds)
    t = server.net._thread(0, w)
    server.net.threads[0] = t
    t.start()
