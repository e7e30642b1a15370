"""Zone versions from arrival to serving: validate, queue (the input-delayed role, paper
§4.2.3), publish, journal and snapshot; and restore them after a restart.  An update that fails
anywhere is rejected and nothing already serving changes."""
from __future__ import annotations

import asyncio
import logging
import time

import dns.name
import dns.zone

from pop53.errors import Pop53Error
from pop53.xfr import journal as jr
from pop53.xfr import recversion as rv
from pop53.xfr.metrics import count
from pop53.xfr.state import EnginePart, Pending, ZoneState
from pop53.xfr.versions import UpdateRejected, ZoneVersion, validate_version

log = logging.getLogger("pop53.xfr")


class ZoneKeeper(EnginePart):
    """Owns what every zone serves and what is saved of it."""

    def __init__(self, svc):
        super().__init__(svc)
        self._publish_lock: asyncio.Lock | None = None
        self._writes: set[asyncio.Task] = set()   # background snapshot writes

    # ---------------------------------------------------------------- lifecycle
    def load_saved(self) -> None:
        """Restore every secondary zone from `<state>`: the snapshot plus the journal, so a
        restarted machine serves at once and then asks the primary only for what changed."""
        for st in self.zones.values():
            if st.store is None or not st.conf.secondary:
                continue
            try:
                self._restore(st)
            except (jr.JournalError, jr.DiffError, UpdateRejected) as exc:
                log.error("zone %s: saved state unusable (%s); starting empty", st.name, exc)
                count(self.stats, "restore.failed", "pop53_xfr_restore_failures_total",
                       "saved zone states that could not be used", zone=st.name)
                st.zone = st.latest = None

    def _restore(self, st: ZoneState) -> None:
        zone = st.store.load_snapshot()
        if zone is None:
            return
        recs = st.store.load_journal()
        serial = jr.serial_of(zone)
        # The chain of records after the snapshot: the last record starting at its serial.
        start = None
        for i in range(len(recs) - 1, -1, -1):
            if recs[i].old_serial == serial:
                start = i
                break
        history: list[jr.Record] = []
        if start is None:
            # Maybe the snapshot is newer than every record; keep those that end at it.
            tail = [r for r in recs if r.new_serial == serial]
            if tail:
                history = recs[:recs.index(tail[-1]) + 1]
            start = len(recs)
        else:
            history = recs[:start]
        records = jr.count_records(zone)
        data = rv.check_full(zone, f"{st.store.snapshot}", records, self.config.max_records)
        now = time.time()
        served = (zone, data, records)
        latest = zone
        pending: list[Pending] = []
        for rec in recs[start:]:
            try:
                new, changed, delta, _view = rv.apply_any(latest, rec.steps, "journal replay")
            except jr.DiffError as exc:
                log.warning("zone %s: journal record %d->%d does not apply (%s); ignoring the rest",
                            st.name, rec.old_serial, rec.new_serial, exc)
                break
            n = (pending[-1].records if pending else records) + delta
            if self.config.delay and rec.received + self.config.delay > now:
                pending.append(Pending(rec.received + self.config.delay, new, None, rec, n,
                                        frozenset(changed)))
            else:
                records = n
                history.append(rec)
                served = (new, None, n)
            latest = new
        if served[1] is None:
            served = (served[0], rv.check_full(served[0], "journal replay", served[2],
                                               self.config.max_records), served[2])
        for p in pending:
            p.data = rv.check_full(p.zone, "journal replay", p.records, self.config.max_records)
        st.zone, st.data, st.records = served
        st.latest = latest
        st.latest_records = pending[-1].records if pending else st.records
        st.pending.extend(pending)
        st.history = history[-self.config.journal_keep:] if self.config.journal_keep else []
        meta = st.store.load_meta()
        last_ok = meta.get("last_ok")
        st.last_ok = float(last_ok) if isinstance(last_ok, (int, float)) else None
        count(self.stats, "restore.ok", "pop53_xfr_restores_total", "zones restored from saved state",
               zone=st.name)
        log.info("zone %s: restored serial %s from saved state (%d pending)", st.name, st.serial, len(pending))

    def initial_publish(self) -> None:
        for st in list(self.zones.values()):     # a restored catalog adds its members
            if st.zone is not None:
                expired = self.svc.refresher.is_expired(st, time.time())
                st.expired = expired
                self.call_publish(st.name, None if expired else self.version(st, st.zone, st.data, st.records))

    def reject(self, st: ZoneState, why: str, reason: str) -> None:
        st.last_error = why
        count(self.stats, f"update.rejected.{reason}", "pop53_xfr_updates_rejected_total",
               "updates rejected (previous version kept)", zone=st.name, reason=reason)
        log.error("zone %s: update rejected, serving serial %s still: %s", st.name, st.serial, why)


    # ---------------------------------------------------------------- accept / publish
    def version(self, st, zone, data, records, steps=None, changed=None, view=None) -> ZoneVersion:
        return ZoneVersion(st.name, jr.serial_of(zone), zone, data, records, steps, changed, view)

    def _validate(self, st: ZoneState, new, source: str, records: int, changed, view, incremental):
        if not rv.is_records(new):
            # an IXFR diff on a validated version: only the changed names need checking
            return validate_version(new, source, records, self.config.max_records,
                                    changed if incremental else None)
        if view is not None:
            return rv.check_changes(new, view, changed, source, records, self.config.max_records)
        if getattr(new, "checked", False):    # a full transfer read and checked from wire
            if records > self.config.max_records:
                raise UpdateRejected(f"{source}: {records} records exceed the limit of "
                                     f"{self.config.max_records} ([xfr] max_records)")
            return new
        return rv.check_full(new, source, records, self.config.max_records)

    async def accept(self, st: ZoneState, new, rec: jr.Record | None, records: int,
                      changed: frozenset | None, source: str, view=None) -> None:
        """Validate; then publish now, or queue for later in the input-delayed role.  `new` is a
        dnspython zone or (the records form, pop53.xfr.recversion) a ZoneData; `view`: for a
        records-form version made by applying steps, the changed names' view."""
        try:
            data = await asyncio.to_thread(self._validate, st, new,
                                           f"{source} serial {jr.serial_of(new)}", records, changed,
                                           view, rec is not None and st.latest is not None)
        except UpdateRejected as exc:
            self.reject(st, str(exc), "validation")
            raise
        except Exception as exc:  # a validator bug must not take the engine down
            self.reject(st, f"{type(exc).__name__}: {exc}", "validation")
            raise UpdateRejected(str(exc)) from None
        self.timings.setdefault(st.name, {})["validated"] = time.monotonic()
        if rec is None:  # first version of this zone
            rec_for_pending = jr.Record((), time.time(), full=True)
        else:
            rec_for_pending = rec
        if self.config.delay and st.zone is not None:
            p = Pending(rec_for_pending.received + self.config.delay, new, data, rec_for_pending,
                         records, changed, view)
            st.pending.append(p)
            st.latest, st.latest_records = new, records
            if rec is not None and st.store is not None:
                async with self._store_lock(st):
                    await asyncio.to_thread(self._journal_append, st, rec)
                st.records_since_snapshot += 1
            count(self.stats, "update.pending", "pop53_xfr_updates_pending_total",
                   "updates queued by the input-delayed role", zone=st.name)
            log.info("zone %s: serial %d queued, applies in %.0f s (input-delayed role)",
                     st.name, jr.serial_of(new), self.config.delay)
            return
        await self._apply(st, new, data, rec, records, changed, journaled=False, view=view)

    async def apply_due(self, st: ZoneState, now: float) -> None:
        while st.pending and st.pending[0].due <= now:
            p = st.pending[0]
            try:
                await self._apply(st, p.zone, p.data, p.record if p.record.steps else None,
                                  p.records, p.changed, journaled=True, view=p.view)
            except UpdateRejected:
                # Everything queued after it was built on it: drop it all, fetch again later.
                st.pending.clear()
                st.latest, st.latest_records = st.zone, st.records
                if st.store is not None:
                    async with self._store_lock(st):
                        await asyncio.to_thread(self._journal_rewrite, st, list(st.history))
                return
            st.pending.popleft()

    async def _apply(self, st, new, data, rec, records, changed, journaled: bool, view=None) -> None:
        version = self.version(st, new, data, records, rec.steps if rec else None, changed, view)
        try:
            await self.publish(st.name, version)
        except Pop53Error as exc:
            self.reject(st, str(exc), "publish")
            raise UpdateRejected(str(exc)) from None
        self.timings.setdefault(st.name, {})["published"] = time.monotonic()
        first = st.zone is None
        st.zone, st.data, st.records = new, data, records
        # In the input-delayed role `latest` already points at the newest queued version.
        if not self.config.delay or st.latest is None:
            st.latest, st.latest_records = new, records
        if rec is not None:
            st.history.append(rec)
            if len(st.history) > self.config.journal_keep:
                del st.history[: len(st.history) - self.config.journal_keep]
        count(self.stats, "update.applied", "pop53_xfr_updates_applied_total",
               "updates published", zone=st.name)
        log.info("zone %s: serving serial %d (%d records)", st.name, version.serial, records)
        await self._persist(st, rec, journaled, full=first or rec is None or rec.full)
        self.svc.outbound.send_notifies(st)

    async def publish(self, name: str, version: ZoneVersion | None) -> None:
        if self._publish_lock is None:      # created on the engine's loop
            self._publish_lock = asyncio.Lock()
        async with self._publish_lock:
            await asyncio.to_thread(self.call_publish, name, version)

    def call_publish(self, name: str, version: ZoneVersion | None) -> None:
        if self.svc.publish_cb is not None:
            self.svc.publish_cb(name, version)
        st = self.zones.get(dns.name.from_text(name))
        if version is not None and st is not None and st.conf.catalog:
            self.svc.catalog.changed(st.conf.name, rv.dns_zone(version.zone))   # RFC 9432 members

    @staticmethod
    def _journal_append(st: ZoneState, rec) -> None:
        """Append unless a journal rewrite already wrote this record (call with the store lock)."""
        if id(rec) in st.journaled:
            return
        st.store.append(rec)
        st.journaled.add(id(rec))

    @staticmethod
    def _journal_rewrite(st: ZoneState, recs: list) -> None:
        """Rewrite the journal with exactly `recs` (call with the store lock)."""
        st.store.rewrite_journal(recs)
        st.journaled = {id(r) for r in recs}

    def _store_lock(self, st: ZoneState) -> asyncio.Lock:
        if st.store_lock is None:
            st.store_lock = asyncio.Lock()
        return st.store_lock

    async def _persist(self, st: ZoneState, rec: jr.Record | None, journaled: bool, full: bool) -> None:
        """Runs after publish, so disk speed never delays what is served."""
        if st.store is None:
            return
        lock = self._store_lock(st)
        try:
            if rec is not None and not journaled:
                async with lock:
                    await asyncio.to_thread(self._journal_append, st, rec)
                st.records_since_snapshot += 1
        except OSError as exc:
            self._persist_failed(st, exc)
            return
        # A snapshot after a full transfer and when the journal grows past its keep limit (the
        # journal is then cut to what IXFR-out still needs plus what is pending).  Written in
        # the background: a million-name zone takes tens of seconds to write, and zone versions
        # are immutable, so it needs no lock while journal appends for newer versions go on (a
        # lock held for the whole write stalled the next update by as long).  Snapshots are
        # serialized among themselves; the journal rewrite at the end takes the store lock and
        # keeps every record known by then.
        if full or st.records_since_snapshot > max(1, self.config.journal_keep):
            st.records_since_snapshot = 0
            zone = st.zone
            if st.snapshot_lock is None:
                st.snapshot_lock = asyncio.Lock()
            snap_lock = st.snapshot_lock

            async def write():
                try:
                    async with snap_lock:
                        await asyncio.to_thread(st.store.save_snapshot_isolated, zone)
                        async with lock:
                            recs = list(st.history) + [p.record for p in st.pending if p.record.steps]
                            await asyncio.to_thread(self._journal_rewrite, st, recs)
                except OSError as exc:
                    self._persist_failed(st, exc)
            t = asyncio.ensure_future(write())
            self._writes.add(t)
            t.add_done_callback(self._writes.discard)

    def _persist_failed(self, st: ZoneState, exc: Exception) -> None:
        # Serving goes on; after a restart the primary fills the gap.
        log.error("zone %s: cannot save state: %s", st.name, exc)
        count(self.stats, "persist.failed", "pop53_xfr_persist_failures_total",
               "state writes that failed", zone=st.name)

