"""The publishing side (the portal, the mapping system, the health checkers): sign and send.

Versions are the publisher's clock in nanoseconds, so they rise across publisher restarts
without any state; a subscriber drops anything at or below the version it has applied."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass

from pop53.feed import message as fm
from pop53.feed.transport import publish


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
