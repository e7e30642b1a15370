"""Water torture relayed through never-seen addresses of known prefixes (issue 13): the kernel
stage steers a prefix with no history to the priority socket whole, so the relays fill the known
resolvers' queue.  The overflow deadline (docs/scoring.md, "After the priority queue
overflowed") starts before that queue drops: at SC_FRESH_RUN NXDOMAINs answered to untrusted
addresses from a priority queue that never emptied (sc_prio_fresh), or at the first full
priority batch after its drop counter moved (sc_prio_full); and what the relays queued there
before it is dropped unanswered (sc_admit's purge), not answered ahead of the known resolvers'
queries behind it."""
from __future__ import annotations

import contextlib
import socket
import time
from functools import partial

import dns.message
import dns.rcode
import pytest

import pop53
from pop53 import config as cfgmod
from pop53.scoring.known import KnownPrefixes
from pop53.scoring.service import datagram_truesize
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import ask, held, ip, query, scorer

# 127.1.0.0/24 and the 256 /24s of 127.3.0.0/16
KNOWN = KnownPrefixes(frozenset({0x7F0100} | {0x7F0300 + i for i in range(256)}), frozenset())
COARSE = 6              # CLOCK_MONOTONIC_COARSE (Linux; the time module does not name it)
FRESH_RUN = 128         # SC_FRESH_RUN (ext/p53.pxd)
IMAGE = pop53.compile_zones([INTEG_ZONE])


_query, _ip, _scorer = query, ip, partial(scorer, KNOWN)


def _relay(s, n: int, first: int = 0, name: str = "r{}x.integ.example.") -> None:
    """n queries, each from its own never-seen address of 127.1.0.0/24 (.100 on), admitted and
    answered (NXDOMAIN for the default random names), and the answer through the second check,
    as the worker loop does."""
    for i in range(first, first + n):
        a = _ip(f"127.1.0.{100 + i % 150}")
        q = _query(name.format(i))
        assert s.admit(q, a)
        r = pop53.answer(IMAGE, q, (socket.inet_ntoa(a), 5353))
        assert not s.nx_check(q, r, "top", a)


def test_nxdomains_to_never_seen_addresses_from_a_standing_priority_queue_start_the_deadline():
    s = _scorer(tick_ms=1000, window_ms=2000)
    s.batch(1)                                          # starts the clock
    s.batch(64, priority=True)                          # a full priority batch: a backlog
    _relay(s, FRESH_RUN - 28)
    s.batch(3, priority=True)                           # the queue emptied: the run starts again
    _relay(s, FRESH_RUN - 1, first=100)
    assert s.overflow_until() == 0 and s.stats()["fresh_floods"] == 0
    # real names (NOERROR) do not count: a resolver with no history yet behind a held worker
    _relay(s, 2 * FRESH_RUN, name="www.integ.example.")
    # nor answers to queries from the normal socket
    s.batch(64)
    _relay(s, 2 * FRESH_RUN, first=300)
    assert s.overflow_until() == 0 and s.stats()["fresh_floods"] == 0
    s.batch(64, priority=True)      # a priority batch: the run goes on from FRESH_RUN - 1 ...
    _relay(s, 1, first=700)         # ... to FRESH_RUN
    now = time.clock_gettime(COARSE)
    assert s.stats()["fresh_floods"] == 1 and s.stats()["overflow_ticks"] == 0
    assert now + 0.9 < s.overflow_until() <= now + 1.0 + 0.02
    assert s.classify(_query("www.integ.example."), _ip("127.1.0.99")) == "normal"


def test_after_the_deadline_the_priority_backlog_below_top_is_dropped_unanswered():
    s = _scorer(tick_ms=1000, window_ms=2000, trust_after_ms=0)
    good, old, new = _query("www.integ.example."), _ip("127.1.0.7"), _ip("127.1.0.77")
    s.batch(1)
    assert s.admit(good, old) and s.admit(good, old) and s.trusted(old)
    s.batch(64, priority=True)
    _relay(s, FRESH_RUN)
    assert s.overflow_until() > 0
    # from the priority socket: the trusted address is answered, the never-seen one is what
    # the kernel stage queued there before the deadline
    s.batch(64, priority=True)
    assert s.admit(good, old) and not s.admit(good, new)
    st = s.stats()
    assert st["purged"] == 1 and st["dropped"]["normal"] == 1 and st["dropped"]["top"] == 0
    # from the normal socket it is normal, admitted while nothing is cut
    s.batch(5)
    assert s.admit(good, new) and s.stats()["purged"] == 1


def test_the_deadline_holds_while_the_flood_that_set_it_goes_on():
    """A tick renews the deadline while the normal queue is overloaded and FRESH_RUN of its
    queries came from untrusted addresses of known prefixes it kept out of the priority socket:
    spoofed sources across known /24s came back into the priority queue each second."""
    s = _scorer(tick_ms=20)
    w = _query("www.integ.example.")

    def tick(n: int, held: int, **batch) -> float:
        for i in range(held):
            assert s.classify(w, _ip(f"127.3.{i % 256}.{1 + i // 256}")) == "normal"
        time.sleep(0.03)
        before = s.overflow_until()
        s.batch(64, **batch)
        return s.overflow_until() - before

    s.batch(1, ovfl=0)                                   # the drop counters' baselines
    s.batch(1, ovfl=0, priority=True)
    time.sleep(0.03)
    s.batch(64, ovfl=40, priority=True)                  # the priority socket dropped
    assert s.overflow_until() > 0 and s.stats()["overflow_ticks"] == 1
    assert tick(64, FRESH_RUN, ovfl=500) > 0.02          # overloaded, the flood goes on
    assert s.stats()["overflow_held"] == 1
    assert tick(64, FRESH_RUN - 1, ovfl=1000) == 0       # too few kept out
    assert tick(64, 2 * FRESH_RUN, ovfl=1000) == 0       # the normal queue kept up
    assert s.stats()["overflow_held"] == 1


@contextlib.contextmanager
def _priority_socket(s, rcvbuf: int):
    """A real socket standing in for `s`'s priority socket (SO_RCVBUF asked: rcvbuf), its drop
    counter's baseline taken by a first full batch, and a socket sending to it."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        rx.bind(("127.0.0.1", 0))
        s.batch(1)
        s.batch(64, priority=True, priority_fd=rx.fileno())       # the baseline
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def test_a_full_priority_batch_reads_the_drop_counter_at_once():
    """The first full priority batch after the priority socket dropped starts the deadline,
    not the next tick (tick_ms is 1 s here); a short one does not read the counter."""
    s = _scorer(tick_ms=1000, window_ms=2000)
    with _priority_socket(s, 4096) as (rx, tx):
        for _ in range(200):
            tx.sendto(b"x" * 100, rx.getsockname())
        s.batch(10, priority=True, priority_fd=rx.fileno())
        assert s.overflow_until() == 0
        s.batch(64, priority=True, priority_fd=rx.fileno())
        now = time.clock_gettime(COARSE)
        assert now + 0.9 < s.overflow_until() <= now + 1.0 + 0.02
        # the drops count into the tick too (overflow_ticks, the known resolvers at risk)
        assert s.stats()["kernel_drops_priority"] > 0 and s.stats()["overflow_ticks"] == 0


def test_a_priority_queue_a_quarter_full_at_a_full_batch_starts_the_deadline():
    """A full priority batch that finds the queue holding more than a quarter of its room starts
    the deadline before any drop (a flood of real names from never-seen addresses filled all of
    it first); below a quarter nothing starts."""
    truesize = datagram_truesize()
    for fill, starts in ((0.15, False), (0.4, True)):
        s = _scorer(tick_ms=1000, window_ms=2000)
        with _priority_socket(s, 64 * truesize) as (rx, tx):
            room = rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)     # as the kernel keeps it
            for _ in range(int(room * fill / truesize)):
                tx.sendto(b"x" * 40, rx.getsockname())
            s.batch(64, priority=True, priority_fd=rx.fileno())
            assert (s.overflow_until() > 0) is starts, fill
            assert s.stats()["prio_filled"] == starts
            assert s.stats()["kernel_drops_priority"] == 0


@pytest.mark.parametrize("steer_idle", [True, False])
def test_a_worker_drops_the_backlog_never_seen_relays_queued_in_its_priority_socket(tmp_path,
                                                                                   steer_idle):
    """A real server with the kernel stage, its worker held while 200 never-seen addresses of a
    known /16 relay one random name each: the kernel queues them in the priority socket (their
    /24s have no history).  The worker answers the first FRESH_RUN (64 a batch; each NXDOMAIN),
    then the deadline starts and it drops the rest of that backlog unanswered; its priority
    socket never dropped."""
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n127.3.0.0/16\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "steer": True, "trust_after_ms": 50,
                       "steer_idle": steer_idle},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    relays = []
    try:
        addr = server.addresses[0]
        assert server.scoring.steering == "ebpf"
        assert ask(addr, "127.1.0.7", 2) == 2
        time.sleep(0.1)
        assert ask(addr, "127.1.0.7", 1) == 1
        assert server.scoring.scorer.trusted(_ip("127.1.0.7"))
        for i in range(200):
            r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            r.bind((f"127.3.{i}.1", 0))
            relays.append(r)
        held(server, 0.05, lambda: [r.sendto(_query(f"t{i}x.integ.example."), addr)
                                    for i, r in enumerate(relays)])
        deadline = time.monotonic() + 5
        while True:
            st = server.workers[0].scoring_stats()
            if sum(st["admitted"].values()) + sum(st["dropped"].values()) >= 203:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.01)
        assert st["kernel_drops_priority"] == 0 and st["overflow_ticks"] == 0
        assert st["fresh_floods"] == 1 and st["purged"] == 200 - FRESH_RUN, st
        assert server.scoring.scorer.overflow_until() > time.clock_gettime(COARSE) + 0.5
        answered = 0
        for r in relays:
            r.setblocking(False)
            try:
                m = dns.message.from_wire(r.recv(4096))
                assert m.rcode() == dns.rcode.NXDOMAIN
                answered += 1
            except BlockingIOError:
                pass
        assert answered == FRESH_RUN
        assert ask(addr, "127.1.0.7", 3) == 3       # trusted: still the priority socket's
    finally:
        for r in relays:
            r.close()
        server.stop()
