"""Map deltas: made by the publisher against the stream's snapshot, applied by a subscriber only
on top of exactly that snapshot (gaps, a wrong base, a forged base digest and replays are
refused and the served map stays), checked as strictly as a full map, saved and restored; and
through a real nats-server, a late subscriber gets snapshot + delta and ends at the same map."""
from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from feed_support import NatsServer, TargetSink, wait_for
from pop53.feed import delta as fd
from pop53.feed import message as fm
from pop53.feed.publisher import Publisher
from pop53.feed.receiver import FeedSettings, Receiver
from pop53.feed.transport import Subscriber

OPS = Ed25519PrivateKey.generate()
RING = fm.KeyRing({fm.key_id(OPS.public_key()): OPS.public_key()})
BASE = b"# world\n0.0.0.0/0 us\n1.2.0.0/16   eu  # Europe\n  1.2.3.0/24 us\n2001:db8::/32 eu\n"


def wire(kind, version, payload, name="world"):
    return fm.encode(OPS, stream="pop53", kind=kind, name=name, version=version,
                     sender="portal", payload=payload)


def subj(kind, name="world"):
    return fm.subject("pop53", kind, name)


class MapSink(TargetSink):
    """Maps checked by the real map compiler (pop53.mapping.mapfile), kept as text."""

    def validate(self, kind, name, payload, source):
        from pop53.mapping.mapfile import compile_map_bytes

        if kind != "map":
            return super().validate(kind, name, payload, source)
        compile_map_bytes(payload, source, "us")
        return payload.decode()


def receiver(tmp_path=None):
    sink = MapSink()
    return Receiver(FeedSettings(state=str(tmp_path) if tmp_path else None), RING, sink), sink


def served(sink) -> dict:
    return fd.entries(sink.state[("map", "world")].encode())


def test_make_and_apply_round_trip_add_change_remove():
    new = BASE.replace(b"1.2.3.0/24 us", b"1.2.3.0/24 ap").replace(b"2001:db8::/32 eu\n", b"")
    new += b"9.9.9.0/24 eu\n"
    d = fd.make(7, BASE, new, 10)
    assert d.splitlines()[1:] == [b"+ 1.2.3.0/24 ap", b"+ 9.9.9.0/24 eu", b"- 2001:db8::/32"]
    out = fd.apply(7, BASE, d)
    assert fd.entries(out) == fd.entries(new)
    assert b"# world" in out                       # untouched lines are kept as written
    assert fd.make(7, BASE, new, 2) is None        # three changes > 2: a snapshot instead
    assert fd.make(7, BASE + b"1.2.0.0/16 eu\n", new, 10) is None   # a prefix written twice


def test_a_delta_applies_on_top_of_its_snapshot_only():
    r, sink = receiver()
    assert r.receive(subj("map"), wire("map", 10, BASE))
    d = fd.make(10, BASE, BASE + b"9.9.9.0/24 eu\n", 10)
    assert r.receive(subj("mapdelta"), wire("mapdelta", 11, d))
    assert served(sink)[b"9.9.9.0/24"] == b"eu" and r.applied["mapdelta"] == 1
    # a second (cumulative) delta on the same snapshot replaces the first one's content
    d2 = fd.make(10, BASE, BASE.replace(b"1.2.0.0/16   eu", b"1.2.0.0/16 ap"), 10)
    assert r.receive(subj("mapdelta"), wire("mapdelta", 12, d2))
    assert b"9.9.9.0/24" not in served(sink) and served(sink)[b"1.2.0.0/16"] == b"ap"


@pytest.mark.parametrize("case", ["gap", "wrong-version", "forged-digest", "no-snapshot"])
def test_a_delta_on_another_base_is_refused_and_the_map_keeps_serving(case, caplog):
    r, sink = receiver()
    if case != "no-snapshot":
        r.receive(subj("map"), wire("map", 10, BASE))
    before = dict(sink.state)
    new = BASE + b"9.9.9.0/24 eu\n"
    if case == "gap":                     # built on a snapshot this server never saw
        d = fd.make(9, BASE.replace(b"us", b"ap"), new, 10)
    elif case == "wrong-version":
        d = fd.make(9, BASE, new, 10)
    elif case == "forged-digest":         # right version, other content: never guess
        d = fd.make(10, BASE.replace(b"us", b"ap"), new, 10)
    else:
        d = fd.make(10, BASE, new, 10)
    assert r.receive(subj("mapdelta"), wire("mapdelta", 11, d)) is None
    assert r.refused["base"] == 1 and sink.state == before
    assert "waiting for" in caplog.text and "portal" in caplog.text
    # the next snapshot repairs it
    assert r.receive(subj("map"), wire("map", 12, new))
    assert served(sink)[b"9.9.9.0/24"] == b"eu"


@pytest.mark.parametrize("payload,reason", [
    (b"", "content"),
    (b"base 10 nothex\n+ 9.9.9.0/24 eu\n", "content"),
    (b"BASE_OK\n+ 9.9.9.0/24\n", "content"),                 # + without a region
    (b"BASE_OK\n+ 9.9.9.0/24 eu\n- 9.9.9.0/24\n", "content"),  # the same prefix twice
    (b"BASE_OK\n* 9.9.9.0/24 eu\n", "content"),
    (b"BASE_OK\n- 8.8.8.0/24\n", "content"),                 # removes what the base lacks
    (b"BASE_OK\n+ 1.2.300.0/24 eu\n", "content"),            # the map check: a bad address
    (b"BASE_OK\n+ 9.9.9.0/24 eu extra\n", "content"),
])
def test_malformed_deltas_are_refused_as_strictly_as_a_map(payload, reason):
    r, sink = receiver()
    r.receive(subj("map"), wire("map", 10, BASE))
    payload = payload.replace(b"BASE_OK", b"base 10 " + fd.digest(BASE).encode())
    assert r.receive(subj("mapdelta"), wire("mapdelta", 11, payload)) is None
    assert r.refused[reason] == 1 and served(sink) == fd.entries(BASE)


def test_replayed_and_stale_deltas_and_snapshots_are_refused():
    r, sink = receiver()
    r.receive(subj("map"), wire("map", 10, BASE))
    d = fd.make(10, BASE, BASE + b"9.9.9.0/24 eu\n", 10)
    r.receive(subj("mapdelta"), wire("mapdelta", 12, d))
    assert r.receive(subj("mapdelta"), wire("mapdelta", 12, d)) is None      # replay
    assert r.receive(subj("mapdelta"), wire("mapdelta", 11, d)) is None      # older
    # a snapshot older than the applied delta would take the map back: refused
    assert r.receive(subj("map"), wire("map", 11, BASE)) is None
    assert r.refused["replay"] == 3 and served(sink)[b"9.9.9.0/24"] == b"eu"


def test_snapshot_and_delta_are_saved_and_restored(tmp_path):
    r, _ = receiver(tmp_path)
    r.receive(subj("map"), wire("map", 10, BASE))
    r.receive(subj("mapdelta"), wire("mapdelta", 11, fd.make(10, BASE, BASE + b"9.9.9.0/24 eu\n", 5)))
    r2, sink2 = receiver(tmp_path)
    assert r2.restore() == 2 and served(sink2)[b"9.9.9.0/24"] == b"eu"
    # a newer snapshot makes the saved delta moot: it is removed
    r2.receive(subj("map"), wire("map", 13, BASE))
    assert not (tmp_path / "feed" / "mapdelta.world.msg").exists()


@pytest.fixture
def nats(tmp_path):
    n = NatsServer(tmp_path).start()
    yield n
    n.stop()


def test_publisher_sends_a_delta_for_a_small_change_and_a_late_subscriber_catches_up(nats, tmp_path):
    pub = Publisher([nats.url], OPS, sender="portal")
    big = BASE + b"".join(b"10.%d.%d.0/24 eu\n" % (i // 256, i % 256) for i in range(2000))
    assert asyncio.run(pub.send_map("world", big))[0] == "map"            # nothing to diff
    one = big + b"9.9.9.0/24 ap\n"
    kind, size, _ = asyncio.run(pub.send_map("world", one))
    assert kind == "mapdelta" and size < 200
    assert asyncio.run(pub.send_map("world", one, max_changes=0))[0] == "map"
    kind, _, _ = asyncio.run(pub.send_map("world", one.replace(b" eu\n", b" ap\n")))
    assert kind == "map"                                                    # 2000 changes
    last = one.replace(b" eu\n", b" ap\n") + b"8.8.8.0/24 us\n"
    assert asyncio.run(pub.send_map("world", last))[0] == "mapdelta"
    sink = MapSink()
    rec = Receiver(FeedSettings(state=str(tmp_path / "s")), RING, sink)
    sub = Subscriber([nats.url], rec).start()
    try:
        assert wait_for(lambda: rec.applied["mapdelta"] == 1, timeout=10)
        assert served(sink) == fd.entries(last)
    finally:
        sub.stop()


def test_a_large_snapshot_travels_compressed_and_deltas_apply_to_its_text():
    big = BASE + b"".join(b"10.%d.%d.0/24 eu\n" % (i // 256, i % 256) for i in range(60000))
    wire_payload = fd.deflate(big)
    assert wire_payload.startswith(fd.GZIP) and len(wire_payload) < len(big) // 3
    assert fd.deflate(BASE) == BASE                        # small maps go as text
    r, sink = receiver()
    assert r.receive(subj("map"), wire("map", 10, wire_payload))
    assert served(sink) == fd.entries(big)
    d = fd.make(10, big, big + b"9.9.9.0/24 ap\n", 5)     # the base digest is of the text
    assert r.receive(subj("mapdelta"), wire("mapdelta", 11, d))
    assert served(sink)[b"9.9.9.0/24"] == b"ap"


def test_broken_or_oversized_compressed_payloads_are_refused():
    r, sink = receiver()
    r.receive(subj("map"), wire("map", 10, BASE))
    good = fd.deflate(BASE * 40000)
    for bad in (good[:-9], good + b"x", fd.GZIP + b"\x08\x00garbage"):
        assert r.receive(subj("map"), wire("map", 11, bad)) is None
    assert r.refused["content"] == 3 and served(sink) == fd.entries(BASE)
    with pytest.raises(fd.DeltaError, match="more than 1000 bytes"):
        fd.inflate(good, limit=1000)                       # a bomb stops at the limit
