"""The overload controller's split (issue 13: "no loss of capacity or of legitimate answers
without an attack", "unknown clients get what is left"), through the C functions the worker
loop runs (`_core.Scorer.admit/tick/batch` on the probe state): an overloaded normal queue cuts
the classes worse than normal; the normal class is cut only while the known resolvers are at
risk (their own queue drops or waits, or their queries come through the overloaded normal
socket); it recovers as soon as they are safe, even while the normal queue stays overloaded."""
from __future__ import annotations

import time

from test_filters import ip, query, scorer


def _unknown(s):
    s.admit(query(), ip("203.0.113.1"))             # normal
    s.admit(query(rd=True), ip("203.0.113.2"))      # odd


def test_an_overloaded_normal_queue_cuts_only_the_classes_worse_than_normal():
    s = scorer(source_rate=60000, recover=256)
    for _ in range(12):
        _unknown(s)
        s.tick(True, False)          # the normal queue overloaded, the known resolvers safe
    st = s.stats()
    assert st["share"] == {"top": 1.0, "normal": 1.0, "odd": 0.0, "flood": 0.0}
    assert st["overload_ticks"] == 12 and st["risk_ticks"] == 0
    assert st["dropped"]["normal"] == 0 and st["dropped"]["odd"] > 0
    _unknown(s)
    s.tick(True, True)               # their own queue at risk: the normal class goes next
    assert s.stats()["share"]["normal"] == 0.5 and s.stats()["risk_ticks"] == 1
    _unknown(s)
    s.tick(True, False)              # safe again: normal recovers, the queue still overloaded
    assert s.stats()["share"]["normal"] == 0.75
    assert s.stats()["share"]["odd"] == 0.0


def test_known_queries_through_the_normal_socket_share_its_risk():
    """Without the kernel stage (or a known address not steered) the known resolvers' queries
    wait in the normal queue: its overload is theirs, and the normal class is cut for them for
    a second after their last such query.  The same queries from the priority socket are not."""
    s = scorer(source_rate=60000)
    s.admit(query(), ip("192.0.2.1"))                # top, through the normal socket
    s.admit(query(), ip("203.0.113.1"))
    s.tick(True, False)                              # flood and odd (idle) to nothing, normal 1/2
    assert s.stats()["share"]["normal"] == 0.5 and s.stats()["risk_ticks"] == 1
    s.admit(query(), ip("203.0.113.1"))
    s.tick(True, False)                              # within a second of the known query
    assert s.stats()["share"]["normal"] == 0.25 and s.stats()["risk_ticks"] == 2
    p = scorer(source_rate=60000, tick_ms=1000)
    p.batch(1)                                       # the first batch starts the clock
    for _ in range(3):
        p.batch(1, priority=True)                    # a datagram from the priority socket
        p.admit(query(), ip("192.0.2.1"))            # is that known query
        p.admit(query(), ip("203.0.113.1"))
        p.tick(True, False)
    assert p.stats()["share"]["normal"] == 1.0 and p.stats()["risk_ticks"] == 0


def test_redirects_counted_a_tick_before_their_queries_are_no_sharing():
    """With the wake words the program sends known queries to a waiting worker's normal
    socket, and the worker counts them from its wake word, sometimes a batch before it reads
    them: one counted in a tick and scored in the next is still a redirect, not a known
    resolver sharing the normal queue.  Carried one tick only, and only what was redirected."""
    s = scorer(source_rate=60000)
    s.redirected(2)
    s.admit(query(), ip("192.0.2.1"))                # top, the first redirect
    s.tick(True, False)
    s.admit(query(), ip("192.0.2.2"))                # the second, read in the next tick
    s.tick(True, False)
    assert s.stats()["risk_ticks"] == 0 and s.stats()["share"]["normal"] == 1.0
    s.admit(query(), ip("192.0.2.3"))                # one more, with no redirect counted
    s.tick(True, False)
    assert s.stats()["risk_ticks"] == 1


def _standing(s, late: bool) -> None:
    """A tick of a standing normal queue (every batch waited 5 ms), quick priority batches and,
    when `late`, one that waited 5 ms."""
    for _ in range(3):
        _unknown(s)
        s.batch(64, delay_us=5000)
        s.batch(1, delay_us=100, priority=True)
    if late:
        s.batch(1, delay_us=5000, priority=True)
    time.sleep(0.03)
    s.batch(64, delay_us=5000)


def test_priority_drops_and_delay_put_the_known_resolvers_at_risk():
    s = scorer(tick_ms=20, full_run=1000, source_rate=60000)
    s.batch(1, ovfl=0, priority=True)                # the first batch starts the clock
    s.batch(3, delay_us=100)
    time.sleep(0.03)
    s.batch(3, delay_us=100, ovfl=0)                 # calm tick
    assert s.stats()["overload_ticks"] == 0
    for _ in range(3):                               # every priority batch of the tick waited 5 ms
        _unknown(s)
        s.batch(2, delay_us=5000, priority=True)
        s.batch(3, delay_us=100)                     # the normal queue is fine
    time.sleep(0.03)
    s.batch(2, delay_us=5000, priority=True)
    st = s.stats()
    assert st["risk_ticks"] == 1 and st["delay_ticks"] == 0
    assert st["share"]["flood"] == 0.0 and st["share"]["odd"] == 0.5   # worst first, as ever
    s.batch(1, delay_us=100, ovfl=9, priority=True)  # the priority socket's own drops
    time.sleep(0.03)
    s.batch(1, delay_us=100, priority=True)
    assert s.stats()["risk_ticks"] == 2 and s.stats()["kernel_drops_priority"] == 9
    # a standing normal queue with the priority queue quick: overloaded, not at risk
    _standing(s, late=False)
    st = s.stats()
    assert st["delay_ticks"] == 1 and st["risk_ticks"] == 2 and st["overload_ticks"] == 3
    # ... but one of their batches waited 5 ms behind it (a throttled worker): at risk
    _standing(s, late=True)
    assert s.stats()["risk_ticks"] == 3 and s.stats()["overload_ticks"] == 4
    # the same late batch with the normal queue fine is not (cutting it would not help)
    s.batch(3, delay_us=100)
    s.batch(1, delay_us=5000, priority=True)
    s.batch(1, delay_us=100, priority=True)
    time.sleep(0.03)
    s.batch(3, delay_us=100)
    assert s.stats()["risk_ticks"] == 3 and s.stats()["overload_ticks"] == 4
