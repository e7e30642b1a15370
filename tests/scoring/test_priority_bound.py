"""The priority queue's delay bound by the worker's clock (ext/udp_recv.pxi, the default
[scoring] kernel_stamps = false), replayed on a worker that is not running: its datagrams
arrived after the worker last found the queue empty, and after any earlier full read whose
leftovers the reads since have taken (the queue is FIFO).  Without the second bound a queue
that never empties counted its whole busy stretch as waiting (tens of ms at a flood's start,
where the kernel's stamps said a few); and a poll that returned at once for a queue with a
backlog restarted the bound as if the worker had waited for it (near zero, at the same start)."""
from __future__ import annotations

import socket

import pytest

from pop53 import _core

MS = 1_000_000


@pytest.fixture
def worker():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield _core.Worker(s.fileno())
    s.close()


def _full_reads(count: int, left: int) -> list[tuple]:
    """A full read (64) each ms from 1 ms on, `left` datagrams queued after each."""
    return [("read", (k + 1) * MS, 64, left) for k in range(count)]


def test_a_queue_that_never_empties_is_bounded_by_what_was_left_in_it(worker):
    since = worker.probe_priority_bound(_full_reads(10, 100))
    # nothing was read after an earlier read's leftovers yet: since the queue was last found
    # empty (never, here: 0)
    assert since[:3] == [0, 0, 0]
    # then: the 100 left after read k-3 were taken by reads k-2 and k-1 (128)
    assert since[3:] == [(k - 2) * MS for k in range(3, 10)]


def test_without_a_count_the_queue_holds_at_most_its_capacity(worker):
    since = worker.probe_priority_bound(_full_reads(10, -1), cap=200)
    # at most 200 were queued after a read: four full reads take them
    assert since[:5] == [0] * 5
    assert since[5:] == [(k - 4) * MS for k in range(5, 10)]
    # the capacity unknown: only since the queue was last found empty
    assert worker.probe_priority_bound(_full_reads(10, -1)) == [0] * 10
    # a count above the capacity (drops the controller has not read yet): the capacity
    assert worker.probe_priority_bound(_full_reads(10, 5000), cap=200) == since


def test_a_short_read_emptied_the_queue(worker):
    events = [("read", 1 * MS, 64, 500), ("read", 2 * MS, 10, 0),
              ("read", 3 * MS, 64, 500), ("read", 4 * MS, 64, 500)]
    assert worker.probe_priority_bound(events) == [0, 0, 2 * MS, 2 * MS]


def test_a_wait_restarts_the_bound_only_of_a_queue_found_empty(worker):
    # the queue emptied, then a wait returned (a datagram came): it waited from the wake-up
    events = [("read", 1 * MS, 3, 0), ("wake", 5 * MS, 0, 0), ("read", 5 * MS + 1000, 64, 500)]
    assert worker.probe_priority_bound(events) == [0, 5 * MS]
    # a backlog (the last read was full): a poll that returned at once is no wait, the bound
    # goes on from when the queue was last found empty
    events = [("read", 1 * MS, 3, 0), ("read", 2 * MS, 64, 500), ("wake", 3 * MS, 0, 0),
              ("read", 3 * MS + 1000, 64, 500)]
    assert worker.probe_priority_bound(events) == [0, 1 * MS, 1 * MS]
