"""Zones added to and removed from a running transfer engine, without a restart: by a config
reload (`reconfigure`, issue 14 point 3) or by a catalog zone (pop53.xfr.catalog, RFC 9432).

A new secondary zone is restored from its saved state when there is one, else it answers
SERVFAIL (a stand-in, never REFUSED: it is ours) until its first transfer; its refresh loop
starts on the engine's loop at once.  A removed zone's loop is cancelled and it leaves the
image; its saved state stays on disk (as Knot keeps a removed zone's journal until purged), so
adding it back starts from there.
"""
from __future__ import annotations

import asyncio
import logging

import dns.name

from pop53.xfr import journal as jr
from pop53.xfr.config import XfrConfig, ZoneConf
from pop53.xfr.state import ZoneState

log = logging.getLogger("pop53.xfr")


def _task_name(st: ZoneState) -> str:
    return f"xfr {st.name}"


async def _start_loop(svc, st: ZoneState) -> None:
    st.wake = asyncio.Event()
    svc._tasks.append(asyncio.create_task(svc.refresher.zone_loop(st), name=_task_name(st)))


async def _stop_loop(svc, st: ZoneState) -> None:
    for t in [t for t in svc._tasks if t.get_name() == _task_name(st)]:
        t.cancel()
        svc._tasks.remove(t)
        await asyncio.gather(t, return_exceptions=True)


def _running(svc) -> bool:
    return svc.loop is not None and svc._stop is not None and not svc._stop.is_set()


def _on_loop(svc, coro) -> None:
    """Run `coro` on the engine's loop: now from another thread, as a task from the loop."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is svc.loop:
        asyncio.ensure_future(coro)
    else:
        svc.call(coro)


def add_zone(svc, zc: ZoneConf, publish: bool = True) -> ZoneState:
    """A zone the engine did not have: a secondary (its refresh loop starts now) or one we
    are primary for (its data comes through set_local_zone).  `publish`: republish the image
    now (the caller may batch several changes and call `republish` once)."""
    store = jr.ZoneStore(svc.config.state, zc.name) if (svc.config.state and zc.secondary) else None
    st = ZoneState(zc, store)
    svc.zones[zc.name] = st
    if zc.secondary:
        if store is not None:
            try:
                svc.keeper._restore(st)
            except Exception as exc:   # a bad saved state only costs the restore
                log.error("zone %s: saved state unusable (%s); starting empty", st.name, exc)
                st.zone = st.latest = None
        if st.zone is not None:
            svc.keeper.call_publish(st.name, svc.keeper.version(st, st.zone, st.data, st.records))
        elif publish:
            republish(svc)            # its SERVFAIL stand-in
        if _running(svc):
            _on_loop(svc, _start_loop(svc, st))
        log.info("zone %s added: secondary of %s", st.name,
                 ", ".join(str(p) for p in zc.primaries))
    return st


def remove_zone(svc, name: dns.name.Name, publish: bool = True) -> None:
    st = svc.zones.pop(name, None)
    if st is None:
        return
    if st.conf.secondary and _running(svc):
        _on_loop(svc, _stop_loop(svc, st))
    if publish:
        republish(svc, drop=(st.name,))
    else:
        svc.publish_cb.zones.pop(st.name, None)
    log.info("zone %s removed", st.name)


def republish(svc, drop: tuple = ()) -> None:
    """A full compile of what the engine serves (stand-ins follow the zone set)."""
    pub = svc.publish_cb
    if pub is not None and hasattr(pub, "recompile"):
        pub.recompile(drop=drop)


def reconfigure(svc, new: XfrConfig, publish: bool = True) -> dict:
    """Apply a new [xfr]/[[key]]/[[zone]] configuration to the running engine: keys, ACLs
    (allow_transfer, notify) and primaries change in place; zones are added and removed.
    Zones we are primary for (file zones) are only registered here; their data follows from
    the server's zone reload.  Returns {"added": [...], "removed": [...], "changed": [...]}."""
    wanted = {zc.name: zc for zc in new.zones}
    svc.config = new
    for part in (svc.keeper, svc.refresher, svc.outbound):
        part.config = new
    svc.keyring = {k.name: k.tsig_key() for k in new.keys}
    added, removed, changed = [], [], []
    members = svc.catalog.owned()
    for cat in [c for c in svc.catalog.members if not getattr(wanted.get(c), "catalog", False)]:
        removed += [m.to_text() for m in svc.catalog.members[cat]]
        svc.catalog.drop(cat)        # a catalog left the config: its members go with it
    for name, st in list(svc.zones.items()):
        zc = wanted.get(name)
        if zc is None and name in members:
            continue                 # a catalog's member (pop53.xfr.catalog), not the config's
        if zc is None:
            remove_zone(svc, name, publish=False)
            removed.append(st.name)
        elif zc.secondary != st.conf.secondary:     # file <-> secondary: a new zone
            remove_zone(svc, name, publish=False)
            add_zone(svc, zc, publish=False)
            changed.append(st.name)
        elif zc != st.conf:
            st.conf = zc
            changed.append(st.name)
            if zc.secondary and st.wake is not None:
                svc.loop.call_soon_threadsafe(st.wake.set)   # check the new primaries now
    for name, zc in wanted.items():
        if name not in svc.zones:
            add_zone(svc, zc, publish=False)
            added.append(name.to_text())
    if publish and (added or removed or changed):
        republish(svc, drop=tuple(removed))
    return {"added": added, "removed": removed, "changed": changed}

