"""The transfer engine (façade): secondary zones over NOTIFY/IXFR/AXFR with TSIG, and serving
our own zones to secondaries.

Protocols (dnspython does the message work):
  RFC 1034 §4.3.5  SOA refresh/retry/expire timers        RFC 1982  serial arithmetic
  RFC 1995         IXFR (incremental transfer)            RFC 5936  AXFR
  RFC 1996         NOTIFY                                 RFC 8945  TSIG

The engine (`XfrService`) runs on one asyncio loop (its own thread via `start()`, or the server's
loop via `await run()`).  Its interface to the server is small (docs/xfr.md):

  publish(zone_name: str, version: ZoneVersion | None) -> None
      called (from a worker thread, one call at a time) for every version that should be served;
      `None` means the zone expired and must answer SERVFAIL.  It compiles and swaps the image; if
      it raises Pop53Error the update is rejected and the previous version keeps serving.

  handle_tcp_query(wire, peer) -> list[bytes] | None    AXFR/IXFR out (None: not an XFR query)
  handle_notify(wire, peer) -> bytes | None             NOTIFY in (None: not a NOTIFY / drop)
  handle_query(wire, peer) -> bytes | None              SOA of our zones (for our secondaries'
                                                        refresh checks, TSIG-aware); None: not ours
  set_local_zone(name, zone)                            a zone we are primary for (file zones):
                                                        journaled, served, NOTIFY sent on change
  status() -> dict                                      staleness/expiry (pop53.anycast.staleness)

The work is done by the parts it owns, one concern each:
  refresh.Refresher   NOTIFY in, SOA timers, expiry, fetching (inbound.py does the wire)
  keeper.ZoneKeeper   validate, queue (input-delayed role), publish, journal, restore
  outbound.Outbound   SOA / AXFR / IXFR to our secondaries, NOTIFY out, the small listener
  protocol            TSIG parsing and checks, refusal replies, the refusal log
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from pathlib import Path
from typing import Any

import dns.name
import dns.zone

from pop53.anycast import staleness
from pop53.errors import Pop53Error
from pop53.xfr import journal as jr
from pop53.xfr import recversion as rv
from pop53.xfr import outbound
from pop53.xfr.catalog import CatalogConsumer
from pop53.xfr.config import XfrConfig, ZoneConf
from pop53.xfr.keeper import ZoneKeeper
from pop53.xfr.metrics import metric
from pop53.xfr.outbound import Outbound
from pop53.xfr.protocol import Refusals
from pop53.xfr.refresh import Refresher
from pop53.xfr.state import ZoneState
from pop53.xfr.versions import Publish

log = logging.getLogger("pop53.xfr")


class XfrService:
    """Secondary engine + outbound XFR + NOTIFY, for every zone in `config`."""

    def __init__(self, config: XfrConfig, publish: Publish | None = None):
        self.config = config
        self.publish_cb = publish
        self.stats: collections.Counter = collections.Counter()
        self.zones: dict[dns.name.Name, ZoneState] = {}
        for zc in config.zones:
            store = jr.ZoneStore(config.state, zc.name) if config.state else None
            self.zones[zc.name] = ZoneState(zc, store)
        self.keyring = {k.name: k.tsig_key() for k in config.keys}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._started = threading.Event()
        self._servers: list[Any] = []
        # Per zone, the phases of the last update (time.monotonic()), for bench/ and debugging:
        # notify, xfr_start, xfr_done, applied, validated, published.
        self.timings: dict[str, dict[str, float]] = {}
        self.refused = Refusals(self.stats)
        self.keeper = ZoneKeeper(self)
        self.refresher = Refresher(self)
        self.outbound = Outbound(self)
        self.catalog = CatalogConsumer(self)     # RFC 9432 member zones
        # the server's interface (module docstring)
        self.handle_notify = self.refresher.handle_notify
        self.handle_query = self.outbound.handle_query
        self.handle_tcp_query = self.outbound.handle_tcp_query
        self.refresh_now = self.refresher.refresh_now
        self.retransfer_now = self.refresher.retransfer_now
        self.load_saved = self.keeper.load_saved

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "XfrService":
        """Run the engine on its own thread and loop.  Restores saved state first and publishes
        it before returning, so a restarted machine serves at once."""
        self.keeper.load_saved()
        self.keeper.initial_publish()
        self._thread = threading.Thread(target=self._thread_main, name="pop53-xfr", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise Pop53Error("xfr engine did not start")
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.run(_restored=True))
        finally:
            loop.close()

    async def run(self, _restored: bool = False) -> None:
        """The engine's main coroutine (use this to run on the server's own loop)."""
        if not _restored:
            self.keeper.load_saved()
            self.keeper.initial_publish()
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for st in self.zones.values():
            st.wake = asyncio.Event()
            if st.conf.secondary:
                self._tasks.append(asyncio.create_task(self.refresher.zone_loop(st), name=f"xfr {st.name}"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="xfr housekeeping"))
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            for t in self._tasks + list(self.outbound._notify_tasks):
                t.cancel()
            if self.keeper._writes:  # let a snapshot being written finish (bounded)
                await asyncio.wait(list(self.keeper._writes), timeout=120)
            await asyncio.gather(*self._tasks, *self.outbound._notify_tasks, return_exceptions=True)
            for s in self._servers:
                s.close()
            self._tasks.clear()

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the engine's loop from another thread (tests, the server)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


    # ---------------------------------------------------------------- primary role (local zones)
    def set_local_zone(self, name: str, zone) -> None:
        """A zone we are primary for changed (or appeared): record the diff in the journal so
        secondaries can IXFR, and NOTIFY them.  `zone` (a dnspython zone with absolute names,
        or a ZoneData in the records form, pop53.xfr.recversion) must not be changed
        afterwards."""
        origin = dns.name.from_text(name)
        st = self.zones.get(origin)
        if st is None:
            st = self.zones[origin] = ZoneState(ZoneConf(origin), None)
        if st.conf.secondary:
            raise Pop53Error(f"zone {name} is a secondary here; its data comes from its primaries")
        if getattr(zone, "relativize", False):
            raise Pop53Error("set_local_zone needs a zone with absolute names (relativize=False)")
        old = st.zone
        if old is not None and jr.serial_of(old) == jr.serial_of(zone):
            return
        if old is not None:
            d = rv.diff(old, zone)
            if d is None:       # too big to diff in the records form: a new chain (AXFR out)
                st.history = []
            else:
                rec = jr.Record((d,), time.time(), full=True)
                st.history = (st.history + [rec])[-self.config.journal_keep:] if self.config.journal_keep else []
        st.zone = st.latest = zone
        st.records = st.latest_records = jr.count_records(zone)
        st.last_ok = time.time()
        if old is not None:
            self.outbound.send_notifies(st)


    # ---------------------------------------------------------------- status / staleness
    def status(self) -> dict:
        """Per-zone freshness and the machine's stale flag (see pop53.anycast.staleness)."""
        zones = {}
        for st in list(self.zones.values()):   # a reload or a catalog may change the set
            if not st.conf.secondary:
                continue
            zones[st.name] = {
                "serial": st.serial,
                "latest_serial": st.latest_serial,
                "last_ok": st.last_ok,
                "expired": st.expired,
                "pending": len(st.pending),
                "pending_serials": [jr.serial_of(p.zone) for p in st.pending],
                "last_error": st.last_error,
            }
        return staleness.machine_status(zones, role=self.config.role, stale_after=self.config.stale_after,
                                        delay=self.config.delay)

    @property
    def state_file(self) -> Path | None:
        return self.config.state / staleness.STATE_FILE if self.config.state else None

    async def _housekeeping(self) -> None:
        while True:
            try:
                s = self.status()
                g = metric("Gauge", "pop53_xfr_stale", "1 when this machine's data is stale (§4.2.2)", ())
                if g is not None:
                    g.set(1 if s["stale"] else 0)
                for name, z in s["zones"].items():
                    g = metric("Gauge", "pop53_xfr_zone_age_seconds",
                                "seconds since the zone was last known current", ("zone",))
                    if g is not None and z["age"] is not None:
                        g.labels(zone=name).set(z["age"])
                    g = metric("Gauge", "pop53_xfr_zone_serial", "serial served", ("zone",))
                    if g is not None and z["serial"] is not None:
                        g.labels(zone=name).set(z["serial"])
                    g = metric("Gauge", "pop53_xfr_zone_is_expired", "1 when the zone expired", ("zone",))
                    if g is not None:
                        g.labels(zone=name).set(1 if z["expired"] else 0)
                if self.state_file is not None:
                    self.config.state.mkdir(parents=True, exist_ok=True)
                    await asyncio.to_thread(staleness.write_state, self.state_file, s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("xfr status: %s", exc)
            await asyncio.sleep(self.config.status_interval)


    # ---------------------------------------------------------------- listeners
    async def serve(self, host: str, port: int, answer=None):
        """A small TCP + UDP listener for NOTIFY, SOA and XFR (outbound.serve); on the engine's loop."""
        return await outbound.serve(self, host, port, answer)

    def start_listener(self, host: str, port: int, answer=None) -> None:
        """`serve` on the engine's thread (after start())."""
        self.call(self.serve(host, port, answer))
