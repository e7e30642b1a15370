"""pop53.anycast.coord: K suspension slots in a real etcd (v3 HTTP gateway), lease expiry, etcd down."""
from __future__ import annotations

import time

import pytest

from pop53.anycast.coord import CoordError, CoordUnavailable, SlotClient

pytestmark = [pytest.mark.root]


def clients(etcd, n: int, k: int, ttl: int = 2, prefix: str = "/t") -> list[SlotClient]:
    return [SlotClient(etcd.endpoints, holder=f"m{i}", slots=k, ttl=ttl, prefix=prefix,
                       timeout=1) for i in range(1, n + 1)]


def test_at_most_k_slots(etcd):
    cs = clients(etcd, 5, 2)
    got = [c.acquire() for c in cs]
    assert sorted(g for g in got if g is not None) == [0, 1]
    assert got.count(None) == 3
    assert "all 2 suspension slots are taken" in cs[4].last_error
    assert cs[0].holders() == {0: "m1", 1: "m2"}
    # Asking again while holding is idempotent: the same slot, not a second one.
    assert cs[0].acquire() == 0 and cs[0].holders() == {0: "m1", 1: "m2"}
    cs[0].release()
    assert cs[0].held is None
    assert cs[2].acquire() == 0
    assert cs[3].acquire() is None
    assert cs[0].holders() == {0: "m3", 1: "m2"}


def test_dead_holders_slot_frees_at_lease_expiry(etcd):
    a, b = clients(etcd, 2, 1, ttl=2)
    assert a.acquire() == 0
    assert b.acquire() is None
    # `a` dies: no more keepalives.  Its slot must free once the lease's TTL has run out.
    t0 = time.monotonic()
    got = None
    while time.monotonic() - t0 < 10 and got is None:
        time.sleep(0.2)
        got = b.acquire()
    assert got == 0
    waited = time.monotonic() - t0
    assert 1.0 <= waited <= 6.0, waited  # etcd expires leases at TTL (2s), not before
    assert b.holders() == {0: "m2"}


def test_keepalive_keeps_the_slot_beyond_ttl(etcd):
    a, b = clients(etcd, 2, 1, ttl=2)
    assert a.acquire() == 0
    for _ in range(12):  # 3.6 s > TTL, kept alive
        time.sleep(0.3)
        assert a.keepalive()
        assert b.acquire() is None
    assert a.held == 0


def test_etcd_down_never_suspends_beyond_the_held_slot(etcd):
    a, b = clients(etcd, 2, 2, ttl=3)
    assert a.acquire() == 0
    etcd.stop()
    # b holds nothing: it cannot get a slot, and says why.
    with pytest.raises(CoordUnavailable, match="unreachable"):
        b.acquire()
    assert b.held is None
    # a keeps the slot it holds, but only until the lease could have expired on the server.
    assert a.keepalive() and a.acquire() == 0
    t0 = time.monotonic()
    while a.held is not None and time.monotonic() - t0 < 8:
        a.keepalive()
        time.sleep(0.1)
    assert a.held is None
    assert time.monotonic() - t0 <= 3.5
    assert "slot lost" in (a.last_error or "")
    etcd.start()
    assert b.acquire() in (0, 1)


def test_bad_parameters():
    with pytest.raises(CoordError):
        SlotClient([], holder="x", slots=1)
    with pytest.raises(CoordError, match="ttl"):
        SlotClient(["http://127.0.0.1:1"], holder="x", slots=1, ttl=1)
    with pytest.raises(CoordUnavailable):
        SlotClient(["http://127.0.0.1:1"], holder="x", slots=1, timeout=0.5).acquire()
