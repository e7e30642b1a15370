"""The feed through a real nats-server (JetStream, file storage, loopback): publish -> applied,
the last state of every subject delivered to a subscriber that starts late, NATS killed and
restarted under a running subscriber, and a subscriber restarted with NATS down."""
from __future__ import annotations

import asyncio
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from feed_support import NatsServer, TargetSink, wait_for
from pop53.feed import message as fm
from pop53.feed.receiver import FeedSettings, Receiver
from pop53.feed.transport import STATUS_FILE, Subscriber, publish
from pop53.anycast.staleness import read_state

KEY = Ed25519PrivateKey.generate()
RING = fm.KeyRing({fm.key_id(KEY.public_key()): KEY.public_key()})
_version = [0]


def send(nats: NatsServer, kind: str, name: str, payload: bytes) -> None:
    _version[0] += 1
    wire = fm.encode(KEY, stream="pop53", kind=kind, name=name, version=time.time_ns() + _version[0],
                     sender="test-portal", payload=payload)
    asyncio.run(publish([nats.url], fm.subject("pop53", kind, name), wire, stream="POP53",
                        prefix="pop53"))


def up(state: str) -> bytes:
    return ('{"state":"%s"}' % state).encode()


@pytest.fixture
def nats(tmp_path):
    n = NatsServer(tmp_path).start()
    yield n
    n.stop()


def follower(nats, state_dir, **kw):
    sink = TargetSink()
    r = Receiver(FeedSettings(state=str(state_dir), stale_after=5, **kw), RING, sink)
    return Subscriber([nats.url], r).start(), r, sink


def test_published_state_reaches_a_subscriber_and_a_late_one_gets_the_last_of_each(nats, tmp_path):
    send(nats, "target", "eu1", up("down"))
    send(nats, "target", "eu1", up("up"))
    send(nats, "map", "world", b"10.0.0.0/8 eu\n")
    sub, r, sink = follower(nats, tmp_path / "a")
    try:
        assert wait_for(lambda: sink.state.get(("target", "eu1")) is True
                        and ("map", "world") in sink.state)
        assert r.applied["target"] == 1, "only the last message of a subject is replayed"
        t0 = time.time()
        send(nats, "target", "eu1", up("down"))
        assert wait_for(lambda: sink.state[("target", "eu1")] is False, timeout=5)
        print(f"liveness flip publish->applied {time.time() - t0:.3f}s")
        send(nats, "heartbeat", "", b"")
        assert wait_for(lambda: r.heartbeat is not None)
        assert wait_for(lambda: (tmp_path / "a" / STATUS_FILE).exists())
        assert wait_for(lambda: read_state(tmp_path / "a" / STATUS_FILE)["stale"] is False, 3)
    finally:
        sub.stop()


def test_nats_killed_and_restarted_under_a_running_subscriber(nats, tmp_path):
    sub, r, sink = follower(nats, tmp_path / "a")
    try:
        send(nats, "target", "us1", up("down"))
        assert wait_for(lambda: sink.state.get(("target", "us1")) is False)
        nats.stop()
        assert wait_for(lambda: not sub.connected, timeout=10)
        assert sink.state[("target", "us1")] is False, "serving never stops"
        nats.start()
        send(nats, "target", "us1", up("up"))
        assert wait_for(lambda: sink.state.get(("target", "us1")) is True, timeout=15)
        assert r.refused["replay"] == 0 or r.applied["target"] == 2
    finally:
        sub.stop()


def test_a_subscriber_restarted_with_nats_down_serves_the_last_good_data(nats, tmp_path):
    sub, r, sink = follower(nats, tmp_path / "a")
    send(nats, "map", "world", b"192.0.2.0/24 us\n")
    assert wait_for(lambda: ("map", "world") in sink.state)
    sub.stop()
    nats.stop()
    sub2, r2, sink2 = follower(nats, tmp_path / "a")
    try:
        assert r2.restore() == 1
        assert sink2.state[("map", "world")] == "192.0.2.0/24 us\n"
        assert r2.stale() and not sub2.connected
    finally:
        sub2.stop()
