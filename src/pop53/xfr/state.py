"""Per-zone state of the transfer engine: what is served, what is newest, what is queued."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

import dns.zone

from pop53.xfr import journal as jr
from pop53.xfr.config import ZoneConf


@dataclasses.dataclass
class Pending:
    due: float
    zone: dns.zone.Zone
    data: Any
    record: jr.Record
    records: int
    changed: frozenset | None
    view: Any = None        # records form: the changed names' view (pop53.xfr.recversion)


class ZoneState:
    def __init__(self, conf: ZoneConf, store: jr.ZoneStore | None):
        self.conf = conf
        self.name = conf.name.to_text()
        self.store = store
        # a version is a dnspython zone or, for transfers read from wire, a ZoneData in the
        # records form (pop53.xfr.recversion)
        self.zone: dns.zone.Zone | None = None       # published (served) version
        self.data: Any = None
        self.records = 0
        self.latest: dns.zone.Zone | None = None     # newest validated version (pending or served)
        self.latest_records = 0
        self.history: list[jr.Record] = []           # applied records, oldest first (IXFR out)
        self.pending: collections.deque[Pending] = collections.deque()
        self.last_ok: float | None = None
        self.expired = False
        self.last_error: str | None = None
        self.next_check = 0.0
        self.force_axfr = False
        self.wake: asyncio.Event | None = None
        self.refreshing = False
        self.records_since_snapshot = 0
        self.store_lock: asyncio.Lock | None = None
        self.snapshot_lock: asyncio.Lock | None = None
        self.journaled: set[int] = set()     # id() of the records the journal file holds

    @property
    def serial(self) -> int | None:
        return jr.serial_of(self.zone) if self.zone is not None else None

    @property
    def latest_serial(self) -> int | None:
        return jr.serial_of(self.latest) if self.latest is not None else None

    def soa_timers(self) -> tuple[int, int, int]:
        z = self.latest or self.zone
        if z is None:
            return (60, 10, 7 * 86400)
        soa = jr.soa_of(z)[2]
        return (soa.refresh, soa.retry, soa.expire)


class EnginePart:
    """A part of the transfer engine (refresh, keeper, outbound): it reaches the engine's
    shared state, and the other parts through `svc` (the XfrService that owns it)."""

    def __init__(self, svc):
        self.svc = svc
        self.config = svc.config
        self.stats = svc.stats
        self.zones = svc.zones
        self.timings = svc.timings
