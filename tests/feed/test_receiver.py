"""The feed's checks without the transport: every refusal reason, persistence, input delay,
staleness, and a fuzz of the decoder."""
from __future__ import annotations

import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from feed_support import TargetSink
from pop53.feed import message as fm
from pop53.feed.receiver import FeedSettings, Receiver

OPS = Ed25519PrivateKey.generate()
OLD = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
RING = fm.KeyRing({fm.key_id(k.public_key()): k.public_key() for k in (OPS, OLD)},
                  {fm.key_id(OLD.public_key())})


def msg(kind="target", name="eu1", version=2, payload=b'{"state":"down"}', key=OPS, stream="pop53"):
    return fm.encode(key, stream=stream, kind=kind, name=name, version=version, sender="portal-1",
                     payload=payload)


def subj(kind="target", name="eu1"):
    return fm.subject("pop53", kind, name)


def receiver(tmp_path=None, **kw):
    sink = TargetSink()
    return Receiver(FeedSettings(state=str(tmp_path) if tmp_path else None, **kw), RING, sink), sink


def test_a_good_message_is_applied_and_counted():
    r, sink = receiver()
    m = r.receive(subj(), msg())
    assert m.sender == "portal-1" and m.key_id == fm.key_id(OPS.public_key()).hex()
    assert sink.state[("target", "eu1")] is False and r.applied["target"] == 1


def resign(wire: bytes, key=OPS, **patch) -> bytes:
    """Rebuild a message with header fields changed and a valid signature (a trusted sender
    that sends nonsense)."""
    hlen = struct.unpack_from("!H", wire, 13)[0]
    header = json.loads(wire[15:15 + hlen])
    fmt = patch.pop("_format", 1)
    header.update(patch)
    h = json.dumps(header).encode()
    rest = wire[15 + hlen:-64]
    body = struct.pack("!4sB8sH", b"P53F", fmt, fm.key_id(key.public_key()), len(h)) + h + rest
    return body + key.sign(body)


GOOD = msg()


@pytest.mark.parametrize("wire,subject,reason", [
    (msg(key=STRANGER), subj(), "key"),
    (msg(key=OLD), subj(), "revoked"),
    (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), subj(), "signature"),
    (GOOD[:20] + b"X" + GOOD[21:], subj(), "signature"),
    (resign(GOOD, _format=0), subj(), "format"),
    (resign(GOOD, extra=1), subj(), "schema"),
    (resign(GOOD, version="7"), subj(), "schema"),
    (resign(GOOD, kind="zone"), subj(), "schema"),
    (msg(stream="other"), subj(), "stream"),
    (msg(), subj(name="us1"), "subject"),
    (msg(payload=b'{"state":"sideways"}'), subj(), "content"),
    (msg(name="nope"), subj(name="nope"), "content"),
    (b"P53F", subj(), "format"),
    (b"GET / HTTP/1.1\r\n" * 10, subj(), "format"),
])
def test_refusals_are_dropped_counted_and_keep_the_old_data(wire, subject, reason, caplog):
    r, sink = receiver()
    r.receive(subj(), msg(version=1, payload=b'{"state":"up"}'))
    assert r.receive(subject, wire) is None
    assert r.refused == {reason: 1}
    assert sink.state[("target", "eu1")] is True and sink.applies == 1
    assert "dropped message" in caplog.text


def test_replays_and_older_versions_are_refused():
    r, sink = receiver()
    r.receive(subj(), msg(version=5))
    assert r.receive(subj(), msg(version=5)) is None
    assert r.receive(subj(), msg(version=4, payload=b'{"state":"up"}')) is None
    assert r.refused["replay"] == 2 and sink.state[("target", "eu1")] is False
    assert r.receive(subj(), msg(version=6, payload=b'{"state":"up"}')) is not None


def test_saved_messages_restore_after_a_restart(tmp_path):
    r, _ = receiver(tmp_path)
    r.receive(subj(), msg(version=3))
    r.receive(subj("map", "world"), msg("map", "world", 9, b"10.0.0.0/8 eu\n"))
    r.receive(subj("heartbeat", ""), msg("heartbeat", "", 4, b""))
    assert not r.stale()
    r2, sink2 = receiver(tmp_path)
    assert r2.restore() == 2
    assert sink2.state == {("target", "eu1"): False, ("map", "world"): "10.0.0.0/8 eu\n"}
    assert r2.stale(), "stale until the feed speaks again"
    assert r2.receive(subj(), msg(version=3)) is None and r2.refused["replay"] == 1


def test_a_saved_message_signed_by_a_key_revoked_since_is_not_restored(tmp_path):
    r, _ = receiver(tmp_path)
    r.receive(subj(), msg(version=3))
    ring = fm.KeyRing(RING.keys, RING.revoked | {fm.key_id(OPS.public_key())})
    r2 = Receiver(FeedSettings(state=str(tmp_path)), ring, TargetSink())
    assert r2.restore() == 0 and r2.refused["revoked"] == 1


def test_input_delayed_machine_applies_late_and_never_goes_stale():
    r, sink = receiver(delay=60)
    r.receive(subj(), msg(), now=1000)
    assert ("target", "eu1") not in sink.state
    assert r.tick(now=1059) == 0 and r.tick(now=1060) == 1
    assert sink.state[("target", "eu1")] is False
    assert not r.stale(now=10**9)


def test_staleness_follows_the_heartbeat():
    r, _ = receiver(stale_after=5)
    assert r.stale(now=100)
    r.receive(subj("heartbeat", ""), msg("heartbeat", "", 1, b""), now=100)
    assert not r.stale(now=104) and r.stale(now=106)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400) | st.builds(lambda b, i, x: b[:i] + bytes([x]) + b[i + 1:],
                                           st.just(GOOD), st.integers(0, 200), st.integers(0, 255)))
def test_no_input_crashes_the_decoder(wire):
    r, _ = receiver()
    r.receive(subj(), wire)
    assert sum(r.refused.values()) + r.applied["target"] == 1


def test_consumer_heartbeat_is_read_and_bounded(tmp_path):
    """[feed] consumer_heartbeat: how fast a consumer lost with a NATS node is recreated."""
    from pop53.errors import ConfigError
    from pop53.feed.service import parse

    fm.keygen(str(tmp_path), "ops")
    base = {"servers": ["nats://127.0.0.1:4222"], "trusted_keys": [str(tmp_path / "ops.pub")]}
    settings = parse({"feed": base}, "a.toml", None, None)[1]
    assert settings.consumer_heartbeat == 0.5
    settings = parse({"feed": dict(base, consumer_heartbeat=2)}, "a.toml", None, None)[1]
    assert settings.consumer_heartbeat == 2.0
    for bad in (0.05, 31, True, "1"):
        with pytest.raises(ConfigError,
                           match=r"a.toml:feed.consumer_heartbeat: must be a number from 0.1"):
            parse({"feed": dict(base, consumer_heartbeat=bad)}, "a.toml", None, None)
