"""The publishing side (the portal, the mapping system, the health checkers): sign and send.

Versions are the publisher's clock in nanoseconds, so they rise across publisher restarts
without any state; a subscriber drops anything at or below the version it has applied."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass

from pop53.feed import delta as fdelta
from pop53.feed import message as fm
from pop53.feed.transport import fetch_last, publish


@dataclass
class Publisher:
    servers: list[str]
    key: object                          # Ed25519PrivateKey
    stream: str = "pop53"                # the header's stream name
    prefix: str = "pop53"                # subject prefix
    nats_stream: str = "POP53"           # the JetStream stream
    sender: str = socket.gethostname()
    _last: int = 0

    def version(self) -> int:
        v = max(time.time_ns(), self._last + 1)
        self._last = v
        return v

    def sign(self, kind: str, name: str, payload: bytes) -> tuple[str, bytes]:
        wire = fm.encode(self.key, stream=self.stream, kind=kind, name=name,
                         version=self.version(), sender=self.sender, payload=payload)
        return fm.subject(self.prefix, kind, name), wire

    async def send(self, kind: str, name: str, payload: bytes = b"") -> int:
        subj, wire = self.sign(kind, name, payload)
        return await publish(self.servers, subj, wire, stream=self.nats_stream, prefix=self.prefix)

    def send_sync(self, kind: str, name: str, payload: bytes = b"") -> int:
        return asyncio.run(self.send(kind, name, payload))

    async def base(self, name: str) -> tuple[int, bytes] | None:
        """The map's current snapshot in the stream (version, payload), if this key signed it
        (a delta is only computed against a snapshot we can verify)."""
        wire = await fetch_last(self.servers, fm.subject(self.prefix, "map", name),
                                stream=self.nats_stream)
        if wire is None:
            return None
        pub = self.key.public_key()
        try:
            msg = fm.decode(wire, fm.KeyRing({fm.key_id(pub): pub}))
        except fm.Refused:
            return None
        if msg.stream != self.stream or msg.kind != "map" or msg.name != name:
            return None
        try:
            return msg.version, fdelta.inflate(msg.payload)
        except fdelta.DeltaError:
            return None

    async def send_map(self, name: str, data: bytes, *, max_changes: int = 1000
                       ) -> tuple[str, int, int]:
        """A delta against the current snapshot when at most `max_changes` prefixes change,
        else the full map.  Returns (kind sent, payload bytes, stream sequence)."""
        base = await self.base(name) if max_changes > 0 else None
        payload = fdelta.make(base[0], base[1], data, max_changes) if base else None
        if payload is None:
            wire = fdelta.deflate(data)
            return "map", len(wire), await self.send("map", name, wire)
        return "mapdelta", len(payload), await self.send("mapdelta", name, payload)


def target_payload(up: bool) -> bytes:
    return json.dumps({"state": "up" if up else "down"}).encode()


def parse_target_payload(payload: bytes, source: str) -> bool:
    """The strict reading of a target message's payload: exactly {"state": "up"|"down"}."""
    from pop53.errors import Pop53Error

    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Pop53Error(f"{source}: payload is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"state"} or doc["state"] not in ("up", "down"):
        raise Pop53Error(f'{source}: payload must be {{"state": "up"|"down"}}')
    return doc["state"] == "up"
