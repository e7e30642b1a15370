"""The subscriber's checks and bookkeeping, independent of the transport.

Order of checks for every message (the first failure drops it, counted by reason and logged
with the sender and key id): frame and format, key (trusted, not revoked), signature, strict
header, stream, subject (the header must name the subject it arrived on), version (above the
last one applied for that subject: no replay, no going back), content (the sink validates it
exactly like a file).  Only then is it applied (after `delay` on an input-delayed machine) and
saved, so a restart maps the last good data even with NATS down.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pop53.errors import Pop53Error
from pop53.feed import delta as fdelta
from pop53.feed.message import KeyRing, Message, Refused, decode, subject
from pop53.xfr.metrics import metric   # the process-wide default registry /metrics serves

log = logging.getLogger("pop53.feed")


class Sink(Protocol):
    """What the feed feeds: validate() raises Pop53Error for bad content and returns what
    apply() installs (so the work of checking is done once, before anything changes)."""

    def validate(self, kind: str, name: str, payload: bytes, source: str) -> Any: ...

    def apply(self, kind: str, name: str, prepared: Any) -> None: ...


@dataclass
class FeedSettings:
    stream: str = "pop53"              # the stream name in every message's header
    prefix: str = "pop53"              # NATS subject prefix: PREFIX.map.NAME, PREFIX.target.NAME
    delay: float = 0.0                 # input-delayed role: apply messages this much later
    stale_after: float = 30.0          # no heartbeat for this long: the machine is stale
    consumer_heartbeat: float = 0.5    # the NATS consumer's idle heartbeat (transport.Subscriber)
    state: str | None = None           # where the last applied messages are kept


class Receiver:
    def __init__(self, settings: FeedSettings, keys: KeyRing, sink: Sink):
        self.settings = settings
        self.keys = keys
        self.sink = sink
        self.last: dict[tuple[str, str], int] = {}       # subject -> version applied (or queued)
        self.applied = collections.Counter()              # kind -> messages applied
        self.refused = collections.Counter()              # reason -> messages dropped
        self.heartbeat: float | None = None               # receipt time of the last heartbeat
        self.bases: dict[str, tuple[int, bytes]] = {}     # map -> last snapshot (deltas' base)
        self.delayed: list[tuple[float, Message, Any, bytes]] = []
        self._lock = threading.Lock()
        self._dir = Path(settings.state) / "feed" if settings.state else None
        if self._dir:
            self._dir.mkdir(parents=True, exist_ok=True)

    # -- the pipeline -------------------------------------------------------------------------
    def receive(self, subj: str, wire: bytes, now: float | None = None) -> Message | None:
        """Check one message; apply it (or queue it on a delayed machine).  None if dropped."""
        now = time.time() if now is None else now
        try:
            msg, prepared = self._check(subj, wire)
        except Refused as exc:
            self.refused[exc.reason] += 1
            _inc("pop53_feed_refused_total", "feed messages dropped, by the check that failed",
                 reason=exc.reason)
            log.warning("feed: dropped message on %s: %s", subj, exc)
            return None
        with self._lock:
            if msg.version <= self.last.get(msg.subject_key, 0):   # raced with ourselves
                self.refused["replay"] += 1
                return None
            self.last[msg.subject_key] = msg.version
            if msg.kind == "map":
                self.bases[msg.name] = (msg.version, msg.payload)
            if self.settings.delay > 0 and msg.kind != "heartbeat":
                self.delayed.append((now + self.settings.delay, msg, prepared, wire))
            else:
                self._apply(msg, prepared, wire, now)
        return msg

    def _check(self, subj: str, wire: bytes) -> tuple[Message, Any]:
        msg = decode(wire, self.keys)
        if msg.stream != self.settings.stream:
            raise Refused("stream", f"stream {msg.stream!r} from {msg.sender} (key {msg.key_id}),"
                                    f" this server follows {self.settings.stream!r}")
        want = subject(self.settings.prefix, msg.kind, msg.name)
        if subj != want:
            raise Refused("subject", f"{msg.kind} {msg.name!r} from {msg.sender} (key "
                                     f"{msg.key_id}) arrived on {subj}, expected {want}")
        last = self.last.get(msg.subject_key, 0)
        if msg.kind in ("map", "mapdelta"):
            # a map's content version is its snapshot's or its delta's, whichever is newer
            last = max(last, self.last.get(("map", msg.name), 0),
                       self.last.get(("mapdelta", msg.name), 0))
        if msg.version <= last:
            raise Refused("replay", f"{msg.kind} {msg.name!r} version {msg.version} from "
                                    f"{msg.sender} (key {msg.key_id}); version {last} is applied")
        if msg.kind == "heartbeat":
            if msg.payload:
                raise Refused("content", f"heartbeat from {msg.sender} carries a payload")
            return msg, None
        kind, payload = msg.kind, msg.payload
        try:
            if kind == "map":           # (a large snapshot is compressed; the text is kept)
                msg = dataclasses.replace(msg, payload=fdelta.inflate(payload))
                payload = msg.payload
            elif kind == "mapdelta":
                kind, payload = "map", self._undelta(msg)
            prepared = self.sink.validate(kind, msg.name, payload,
                                          f"<feed {msg.kind} {msg.name} v{msg.version}>")
        except fdelta.DeltaError as exc:
            raise Refused(exc.reason, f"{msg.kind} {msg.name!r} version {msg.version} from "
                                      f"{msg.sender} (key {msg.key_id}): {exc}") from None
        except Pop53Error as exc:
            raise Refused("content", f"from {msg.sender} (key {msg.key_id}): {exc}") from None
        return msg, prepared

    def _undelta(self, msg: Message) -> bytes:
        """The full map a delta makes, on top of exactly the snapshot it names."""
        base = self.bases.get(msg.name)
        if base is None:
            raise fdelta.DeltaError("base", "no snapshot of this map yet (waiting for one)")
        return fdelta.apply(base[0], base[1], msg.payload)

    def _apply(self, msg: Message, prepared: Any, wire: bytes | None, now: float) -> None:
        if msg.kind == "heartbeat":
            self.heartbeat = now
        else:
            self.sink.apply("map" if msg.kind == "mapdelta" else msg.kind, msg.name, prepared)
            log.info("feed: applied %s %s version %d from %s (key %s)", msg.kind, msg.name,
                     msg.version, msg.sender, msg.key_id)
        self.applied[msg.kind] += 1
        _inc("pop53_feed_applied_total", "feed messages applied, by kind", kind=msg.kind)
        if wire is not None and self._dir:
            self._save(msg, wire)

    def tick(self, now: float | None = None) -> int:
        """Apply the delayed messages whose time has come; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            due = [d for d in self.delayed if d[0] <= now]
            self.delayed = [d for d in self.delayed if d[0] > now]
            for _, msg, prepared, wire in due:
                self._apply(msg, prepared, wire, now)
        return len(due)

    # -- persistence --------------------------------------------------------------------------
    def _path(self, msg: Message) -> Path:
        return self._dir / f"{msg.kind}.{msg.name or '-'}.msg"

    def _save(self, msg: Message, wire: bytes) -> None:
        if msg.kind == "map":       # a new snapshot: the saved delta (on an older base) is moot
            (self._dir / f"mapdelta.{msg.name}.msg").unlink(missing_ok=True)
        path = self._path(msg)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(wire)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def restore(self) -> int:
        """Apply the saved messages (checked again with today's keys) at start.  The heartbeat
        is not restored: the machine stays stale until the feed speaks.  Returns how many."""
        if not self._dir:
            return 0
        n = 0
        for path in sorted(self._dir.glob("*.msg")):
            wire = path.read_bytes()
            kind = path.name.split(".", 1)[0]
            name = path.name[len(kind) + 1:-4]
            subj = subject(self.settings.prefix, kind, "" if name == "-" else name)
            try:
                msg, prepared = self._check(subj, wire)
            except Refused as exc:
                self.refused[exc.reason] += 1
                log.warning("feed: saved %s not restored: %s", path, exc)
                continue
            self.last[msg.subject_key] = msg.version
            if msg.kind == "map":
                self.bases[msg.name] = (msg.version, msg.payload)
            if msg.kind != "heartbeat":
                self.sink.apply("map" if msg.kind == "mapdelta" else msg.kind, msg.name, prepared)
                n += 1
        return n

    # -- staleness ----------------------------------------------------------------------------
    def age(self, now: float | None = None) -> float | None:
        if self.heartbeat is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.heartbeat)

    def stale(self, now: float | None = None) -> bool:
        """An input-delayed machine is never stale (§4.2.3): it is there to serve old data."""
        if self.settings.delay > 0:
            return False
        age = self.age(now)
        return age is None or age > self.settings.stale_after



def _inc(name: str, doc: str, **labels) -> None:
    m = metric("Counter", name, doc, tuple(labels))
    if m is not None:
        m.labels(**labels).inc()
