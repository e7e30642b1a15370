"""The secondary side of every zone: NOTIFY in (RFC 1996), the SOA refresh/retry/expire timers
(RFC 1034 §4.3.5, serials by RFC 1982), and fetching what changed (IXFR, else AXFR)."""
from __future__ import annotations

import asyncio
import logging
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.xfr
import dns.zone

from pop53.serve import dnstap
from pop53.xfr import journal as jr
from pop53.xfr import recversion as rv
from pop53.xfr.axfr_records import xfr_records
from pop53.xfr.config import Peer
from pop53.xfr.metrics import count
from pop53.xfr.protocol import Refuse, check_key, parse_control, reply_msg, sign
from pop53.xfr.state import EnginePart, ZoneState
from pop53.xfr.translog import log_transfer
from pop53.xfr.versions import UpdateRejected

log = logging.getLogger("pop53.xfr")

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA


class Refresher(EnginePart):
    """Keeps every secondary zone current: one task per zone waits for its timer or a NOTIFY."""

    def handle_notify(self, wire: bytes, peer) -> bytes | None:
        """A NOTIFY over UDP or TCP.  Returns the reply (None: not a NOTIFY, or drop)."""
        if len(wire) < 12 or ((wire[2] >> 3) & 0xF) != dns.opcode.NOTIFY:
            return None
        try:
            msg = parse_control(wire, self.svc.keyring)
            if len(msg.question) != 1:
                raise Refuse("malformed", reply_msg(msg, dns.rcode.FORMERR))
            q = msg.question[0]
            st = self.zones.get(q.name)
            # Unknown zone or not a secondary here: RFC 1996 §3.10 lets us refuse.
            if st is None or not st.conf.secondary:
                raise Refuse("notauth", reply_msg(msg, dns.rcode.NOTAUTH))
            if not st.conf.is_primary(peer[0]):
                raise Refuse("not_primary", reply_msg(msg, dns.rcode.REFUSED))
            check_key(msg, st.conf)
            # Well signed but malformed is refused too: RFC 1996 §3.7 allows only an SOA of the
            # zone in the answer section, class IN, type SOA.
            if q.rdtype != SOA or q.rdclass != IN or msg.authority or \
                    any(r.rdtype != SOA or r.name != q.name for r in msg.answer) or \
                    any(len(r) != 1 for r in msg.answer):
                raise Refuse("malformed", reply_msg(msg, dns.rcode.FORMERR))
        except Refuse as r:
            self.svc.refused("notify", r.reason, peer, detail=f"{len(wire)} octets")
            return r.reply
        count(self.stats, "notify.accepted", "pop53_xfr_notify_received_total",
               "NOTIFY messages accepted", zone=st.name)
        log.info("NOTIFY for %s from %s", st.name, peer[0])
        self.timings[st.name] = {"notify": time.monotonic()}
        self.wake(st)
        reply = dns.message.make_response(msg)
        reply.flags |= dns.flags.AA
        return reply.to_wire()

    def wake(self, st: ZoneState) -> None:
        if self.svc.loop is not None and st.wake is not None:
            self.svc.loop.call_soon_threadsafe(st.wake.set)

    def refresh_now(self, name: str) -> None:
        """Operator command: check the primary now (like a NOTIFY)."""
        self.wake(self._secondary(name))

    def retransfer_now(self, name: str) -> None:
        """Operator command: a full transfer now, whatever the serials say (a repair; like
        `knotc zone-retransfer` or `rndc retransfer`)."""
        st = self._secondary(name)
        st.force_axfr = True
        self.wake(st)

    def _secondary(self, name: str) -> ZoneState:
        try:
            st = self.zones[dns.name.from_text(name)]
        except dns.exception.DNSException as exc:
            raise KeyError(f"bad zone name {name!r}: {exc}") from None
        except KeyError:
            raise KeyError(f"zone {name} is not configured") from None
        if not st.conf.secondary:
            raise KeyError(f"zone {name} is not a secondary (it has no primaries)")
        return st

    # ---------------------------------------------------------------- queries for our zones
    # ---------------------------------------------------------------- the refresh loop
    async def zone_loop(self, st: ZoneState) -> None:
        st.next_check = 0.0  # at start: check at once (serve saved data meanwhile)
        while True:
            now = time.time()
            due = st.next_check
            if st.pending:
                due = min(due, st.pending[0].due)
            if st.zone is not None and not st.expired and st.last_ok is not None:
                due = min(due, st.last_ok + st.soa_timers()[2] + 0.01)
            try:
                await asyncio.wait_for(st.wake.wait(), timeout=max(0.0, due - now))
                notified = True
            except asyncio.TimeoutError:
                notified = False
            st.wake.clear()
            now = time.time()
            try:
                await self.svc.keeper.apply_due(st, now)
                if notified or now >= st.next_check:
                    ok = await self._refresh(st)
                    refresh, retry, _expire = st.soa_timers()
                    wait = refresh if ok else retry
                    st.next_check = time.time() + max(self.config.min_refresh, wait)
                await self._check_expire(st, time.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine must survive anything a peer can cause
                log.exception("zone %s: refresh loop error: %s", st.name, exc)
                count(self.stats, "engine.error", "pop53_xfr_engine_errors_total",
                       "unexpected errors in the refresh loop", zone=st.name)
                st.next_check = time.time() + max(self.config.min_refresh, st.soa_timers()[1])

    def is_expired(self, st: ZoneState, now: float) -> bool:
        if not st.conf.secondary or st.zone is None:
            return False
        if st.last_ok is None:
            return False  # never checked since a restore without meta: give it one expire period
        return now - st.last_ok > st.soa_timers()[2]

    async def _check_expire(self, st: ZoneState, now: float) -> None:
        if st.zone is None or st.expired or not self.is_expired(st, now):
            return
        # RFC 1034 §4.3.5: after expire without a refresh the data is no longer authoritative.
        st.expired = True
        count(self.stats, "zone.expired", "pop53_xfr_zone_expired_total",
               "zones that expired (SOA expire passed without a refresh)", zone=st.name)
        log.error("zone %s expired: no successful refresh for %.0f s (SOA expire %d); answering "
                  "SERVFAIL", st.name, now - st.last_ok, st.soa_timers()[2])
        await self.svc.keeper.publish(st.name, None)

    async def _refresh(self, st: ZoneState) -> bool:
        """One refresh: SOA check against each primary in turn, transfer if newer.  True when
        the zone is known current afterwards (RFC 1034 §4.3.5)."""
        errors = []
        for primary in st.conf.primaries:
            try:
                # a catalog zone is not meant for queries (RFC 9432; Knot REFUSES its SOA): ask
                # by IXFR, which answers "current" with the primary's SOA alone (RFC 1995 §4)
                their = None if st.conf.catalog else await self._soa_check(st, primary)
            except Exception as exc:
                errors.append(f"{primary}: SOA check: {type(exc).__name__}: {exc}")
                count(self.stats, "soa.failed", "pop53_xfr_soa_checks_total", "SOA checks",
                       zone=st.name, result="failed")
                continue
            count(self.stats, "soa.ok", "pop53_xfr_soa_checks_total", "SOA checks",
                   zone=st.name, result="ok")
            ours = st.latest_serial
            if their is not None and ours is not None and not jr.serial_gt(their, ours) \
                    and not st.force_axfr:
                await self._mark_ok(st)
                return True
            try:
                ok = await self._transfer(st, primary)
            except UpdateRejected as exc:
                errors.append(f"{primary}: {exc}")
                st.last_error = str(exc)
                return False  # the primary's data is bad: another primary has the same serial
            except (dns.exception.DNSException, OSError, EOFError, jr.DiffError) as exc:
                errors.append(f"{primary}: transfer: {type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # a bug, not the peer: keep the traceback
                log.exception("zone %s: transfer from %s: unexpected error", st.name, primary)
                errors.append(f"{primary}: transfer: {type(exc).__name__}: {exc}")
                continue
            if ok:
                st.force_axfr = False
                await self._mark_ok(st)
                return True
        st.last_error = "; ".join(errors) or "no primary answered"
        log.warning("zone %s: refresh failed: %s", st.name, st.last_error)
        return False

    async def _mark_ok(self, st: ZoneState) -> None:
        st.last_ok = time.time()
        st.last_error = None
        if st.expired and st.zone is not None:
            st.expired = False
            log.info("zone %s: refreshed after expiry; serving again", st.name)
            await self.svc.keeper.publish(st.name, self.svc.keeper.version(st, st.zone, st.data, st.records))
        if st.store is not None:
            try:
                await asyncio.to_thread(st.store.save_meta, {"last_ok": st.last_ok, "serial": st.serial})
            except OSError as exc:
                log.error("zone %s: cannot save state: %s", st.name, exc)

    async def _soa_check(self, st: ZoneState, primary: Peer) -> int:
        q = dns.message.make_query(st.conf.name, SOA)
        q.flags &= ~dns.flags.RD
        sign(q, st.conf.key)
        # UDP first, TCP when truncated (RFC 1035 §4.2); dnspython verifies the response's TSIG
        # against our key and request MAC and raises on a missing or bad one.
        t0 = time.time()
        r, tcp = await dns.asyncquery.udp_with_fallback(q, primary.host,
                                                        timeout=self.config.timeout,
                                                        port=primary.port)
        dnstap.control(dnstap.RESOLVER, tcp, None, (primary.host, primary.port), q.wire,
                       [r.wire], t0)
        if r.rcode() != dns.rcode.NOERROR:
            raise dns.exception.FormError(f"rcode {dns.rcode.to_text(r.rcode())}")
        if st.conf.key is not None and not r.had_tsig:
            raise dns.exception.FormError("unsigned response")
        for rrset in r.answer:
            if rrset.rdtype == SOA and rrset.name == st.conf.name and len(rrset) == 1:
                return rrset[0].serial
        raise dns.exception.FormError("no SOA in the answer")

    async def _transfer(self, st: ZoneState, primary: Peer) -> bool:
        base = st.latest
        use_ixfr = base is not None and not st.force_axfr
        self.timings.setdefault(st.name, {})["xfr_start"] = time.monotonic()
        try:
            result = await self._xfr(st, primary, base, use_ixfr)
        except dns.xfr.TransferError as exc:
            # RFC 1995 §4 / RFC 5936: a primary may refuse IXFR or have no journal: use AXFR.
            if not use_ixfr:
                raise
            log.info("zone %s: IXFR from %s refused (%s); trying AXFR", st.name, primary, exc)
            count(self.stats, "ixfr.fallback", "pop53_xfr_ixfr_fallbacks_total",
                   "IXFR answered with an error, AXFR used", zone=st.name)
            use_ixfr = False
            result = await self._xfr(st, primary, base, False)
        kind = "IXFR" if use_ixfr else "AXFR"
        try:
            return await self.ingest(st, base, result, f"{kind} from {primary}")
        except jr.DiffError:
            # A diff that does not fit our version: our journal and theirs disagree.  Repair
            # with a full transfer instead of guessing (RFC 1995 §4 allows AXFR-style).
            result = await self._xfr(st, primary, base, False)
            return await self.ingest(st, base, result, f"AXFR from {primary}")

    async def ingest(self, st: ZoneState, base: dns.zone.Zone | None, result, source: str) -> bool:
        """Turn what a transfer delivered into a new version and accept it (validate, then
        publish or queue).  Raises DiffError (diff does not fit `base`) or UpdateRejected; in
        both cases nothing that is served has changed."""
        if result is None:
            return True  # already current
        tm = self.timings.setdefault(st.name, {})
        tm["xfr_done"] = time.monotonic()
        kind, payload = result
        if kind == "steps":
            if base is None:
                raise jr.DiffError("incremental transfer without a base version")
            try:
                new, changed, delta, view = await asyncio.to_thread(rv.apply_any, base, payload,
                                                                    source)
            except jr.BadData as exc:
                self.svc.keeper.reject(st, f"{source}: {exc}", "validation")
                raise UpdateRejected(str(exc)) from None
            except jr.DiffError as exc:
                self.svc.keeper.reject(st, f"{source}: {exc}", "diff")
                raise
            tm["applied"] = time.monotonic()
            rec = jr.Record(rv.journal_steps(payload), time.time())
            await self.svc.keeper.accept(st, new, rec, st.latest_records + delta, frozenset(changed),
                                         source, view)
            return True
        # A full transfer.  Against our previous version it becomes one diff, so that the
        # journal, a restart and our own IXFR service cover it like any other change.  (For
        # the records form only up to recversion.DIFF_RECORDS records: beyond, the version
        # starts a new chain, and IXFR-out answers older serials with an AXFR.)
        new = payload
        steps = None
        if base is not None:
            try:
                d = await asyncio.to_thread(rv.diff, base, new)
            except jr.DiffError as exc:
                self.svc.keeper.reject(st, f"{source}: {exc}", "validation")
                raise UpdateRejected(str(exc)) from None
            steps = (d,) if d is not None else None
        records = await asyncio.to_thread(jr.count_records, new)
        tm["applied"] = time.monotonic()
        rec = jr.Record(steps, time.time(), full=True) if steps else None
        await self.svc.keeper.accept(st, new, rec, records, None, source)
        return True

    async def _xfr(self, st: ZoneState, primary: Peer, base, incremental: bool):
        """One transfer read from wire into the records form (pop53.xfr.axfr_records; TSIG
        verified by dnspython over the raw messages).  Returns None (current), ("full",
        ZoneData) or ("steps", WireSteps)."""
        serial = jr.serial_of(base) if (incremental and base is not None) else None
        key = st.conf.key
        kind = "ixfr" if serial is not None else "axfr"
        t0 = time.monotonic()
        try:
            got, payload, nbytes = await asyncio.to_thread(
                xfr_records, primary, st.conf.name, key, self.config.timeout,
                self.config.transfer_lifetime, self.config.max_transfer_bytes,
                self.config.max_records, serial, self.config.max_diff)
        except UpdateRejected as exc:
            self.svc.keeper.reject(st, f"{kind.upper()} from {primary}: {exc}",
                                   "validation" if "max_" not in str(exc) else "size")
            raise
        except dns.xfr.TransferError:
            count(self.stats, f"xfr_in.{kind}.error", "pop53_xfr_in_total", "transfers received",
                   zone=st.name, kind=kind, result="error")
            raise
        except (dns.exception.DNSException, EOFError, ConnectionError, ValueError, KeyError,
                AttributeError, TypeError, jr.DiffError) as exc:
            # Malformed or cut-short transfer (bad TSIG, wrong SOA, junk, EOF): nothing applied.
            count(self.stats, f"xfr_in.{kind}.malformed", "pop53_xfr_in_total", "transfers received",
                   zone=st.name, kind=kind, result="malformed")
            log.warning("zone %s: %s from %s failed: %s: %s", st.name, kind.upper(), primary,
                        type(exc).__name__, exc)
            raise
        result = None if got == "uptodate" else (got, payload)
        if got == "full":
            payload.checked = True      # the zone-file checks ran on it (xfr_records)
        got = kind if result is None else "axfr" if got == "full" else "ixfr"
        log_transfer("in", got.upper(), st.name, jr.serial_of(base) if base is not None else None,
                     _new_serial(result, base), nbytes, time.monotonic() - t0, primary,
                     key.name if key else None)
        if result is None:
            return None
        count(self.stats, f"xfr_in.{got}.ok", "pop53_xfr_in_total", "transfers received",
               zone=st.name, kind=got, result="ok")
        return result


def _new_serial(result, base) -> int | None:
    """The serial a transfer delivered: the last IXFR step's, the full zone's, or (None: the
    primary answered with our own SOA, RFC 1995 §4) the serial we already had."""
    if result is None:
        return jr.serial_of(base) if base is not None else None
    kind, payload = result
    return payload[-1].new_serial if kind == "steps" else jr.serial_of(payload)
