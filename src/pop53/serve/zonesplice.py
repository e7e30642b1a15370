"""A reload that splices whole zones into the served image (issue 14 point 2), tried first:

- a changed zone whose file is over CHILD_BYTES: the patcher needs every old and new name as
  a Python object (a million names: gigabytes in the server and minutes of Python), so such a
  zone is compiled alone in a child process (serve/childcompile.py) with the served image's hash seed
  and spliced in (zone/splice.py: bytes copied, offsets moved in C);
- zones added to or removed from the configuration (`ctl reload` re-reads it);
- a SERVFAIL stand-in whose file now loads, and a new zone that does not (it joins as one);
- any other changed zone: compiled alone in C and spliced, it costs a fraction of the name-by-
  name patch (serve/zonepatch.py), which builds every name of the zone as a Python object
  (measured: 0.009 s against 0.255 s of CPU for a 2,000-record zone, 0.05 s against 3.0 s
  for 20,000).  The patch remains for what a splice turns down, with the zones this path
  already parsed.

Small zones compile alone in-process.  Unchanged zones are neither parsed nor compiled.  Signed
zones, zones nested in another and NS/MX/SRV targets crossing zones are spliced like any other
(docs/zone_splice.md).  What a splice leaves to the patch or the full reload: transfers owning
the image, and an image grown past SPLICE_GROWTH times its last full compile.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time

import dns.name

from pop53.errors import ZoneError
from pop53.zone.compiler import (CompilerUnavailable, compile_zone_data, failed_zone,
                                 load_or_fail)
from pop53.zone import splice as _splice_mod
from pop53.zone.splice import splice
from pop53.zone.zonefile import file_digests

log = logging.getLogger("pop53.server")

# zone files bigger than this compile alone in a child process (their parse never in the server)
CHILD_BYTES = 1 << 20
# a replaced zone stays in the image as garbage: serve/compact.py drops it in the background
# past 1.5x the last full compile; past this, a reload compiles everything.  3.5: a big zone
# replaced twice before the compaction of the first is done still splices (the full compile
# of a million-record zone set on the reload's path is seconds)
SPLICE_GROWTH = 3.5


def _plan(zs, only: str | None):
    """(zones to load: [(origin, file)], origins to remove), or None for the full reload."""
    cfg = zs.config
    if any(z.file is None for z in cfg.zones) or zs.waiting:
        return None
    configured = {z.name: z.file for z in cfg.zones}
    served = set(zs.serials)
    if only is not None:
        if only not in configured:
            return None
        names, removed = [only], []
    else:
        names, removed = list(configured), sorted(served - set(configured))
    todo = []
    for name in names:
        if name not in served or name in zs.failed \
                or not unchanged(zs, name, configured[name], cfg.zone_dir):
            todo.append((name, configured[name]))
    return todo, removed


# a file's ctime this much older than the moment its content was hashed: a later write moves its
# ctime (the kernel stamps it at a clock tick of a few ms at most), so while the stat is the same
# the content is (git's "racy clean" rule; mtime alone can be set back by a tool, ctime not)
SETTLED = 2.0


def _signature(paths) -> tuple | None:
    out = []
    for p in sorted(paths):
        try:
            st = os.stat(p)
        except OSError:
            return None
        out.append((p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def unchanged(zs, name: str, path: str, zone_dir: str | None) -> bool:
    """Whether the files of zone `name` (its master file `path` and what it $INCLUDEs) are those
    its served version was read from.  By content (issue 14 point 9), but a file whose stat is
    the one seen, settled, at its last hash is not read again: `ctl reload` with a 1M-record
    zone among 1,000 hashed ~30 MB in ~1,000 files each time (0.12-0.15 s measured).
    zs.file_stats: origin -> (zone_dir, the stat of its files when their content last matched,
    zs.files[origin] then)."""
    files = zs.files.get(name)
    if not files or os.path.abspath(path) not in files:
        return False
    sig = _signature(files)
    seen = zs.file_stats.get(name)
    if sig is not None and seen == (zone_dir, sig, files):
        return True
    now = time.time_ns()
    if file_digests(path, zone_dir) != files:
        return False
    if sig is not None and all(max(f[4], f[5]) < now - SETTLED * 1e9 for f in sig):
        zs.file_stats[name] = (zone_dir, sig, files)
    return True


def try_splice(zs, only: str | None, parsed: dict | None = None) -> dict | None:
    """Reload by splicing the changed, added and removed zones.  Returns {origin: error} of the
    zones that did not load (a served one keeps its version; a new one joins as a SERVFAIL
    stand-in), or None when another path is needed (nothing has changed then; `parsed` gets
    {origin: ZoneData} of the zones read in-process, for the name-by-name patch)."""
    image = zs.slot.current
    if image is None or zs.reload_hook is not None:
        return None
    t0 = time.monotonic()
    plan = _plan(zs, only)
    if plan is None:
        return None
    t_plan = time.monotonic()
    todo, removed = plan
    seed = image.view.seed
    put, serials, files, datas, bad = {}, {}, {}, {}, {}
    in_child = False
    for i, (name, path) in enumerate(todo):
        if zs.progress is not None:
            zs.progress.update(phase="compiling changed zones", zone=name, done=i, total=len(todo))
        try:
            big = os.path.getsize(path) > CHILD_BYTES
        except OSError:
            big = False
        if big:
            in_child = True
            try:
                img, result = zs.child.compile([(path, name)],
                                               zs.config.state or tempfile.gettempdir(),
                                               zs.config.zone_dir, seed=seed)
            except CompilerUnavailable:
                return None
            zs.counts["parsed"] += 1
            if result["failed"]:
                bad[name] = result["failed"].get(name) or next(iter(result["failed"].values()))
                continue
            summary = result["loaded"][name]
        else:
            loaded, failed = load_or_fail([(path, name)], zs.config.zone_dir)
            zs.counts["parsed"] += 1
            if failed:
                bad.update(failed)
                continue
            d = loaded[0]
            for w in d.warnings:
                log.warning("%s", w)
            summary = d.summary()
        refused = zs.check_loads({name: summary})
        if refused:
            bad.update(refused)
            continue
        if not big:
            try:
                img = compile_zone_data([d], seed=seed)
            except ZoneError as exc:
                bad[name] = str(exc)
                continue
            datas[name] = d
            if parsed is not None:
                parsed[name] = d
        put[_key(name)] = img
        serials[name] = summary["serial"]
        files[name] = summary["files"]
    stand_ins = {}
    for name, err in bad.items():
        if name not in zs.serials:          # a new zone that does not load: SERVFAIL
            put[_key(name)] = compile_zone_data([failed_zone(name)], seed=seed, expired=[name])
            serials[name] = 0
            stand_ins[name] = err
        elif name in zs.failed:
            stand_ins[name] = err           # still a stand-in; its error may have changed
    if not put and not removed:
        _report(zs, bad, stand_ins)
        return bad
    t_compile = time.monotonic()
    new = splice(image, put, [_key(n) for n in removed])
    t_splice = time.monotonic()
    if new is None:
        log.info("zones compiled in full (%s)", splice.last_reason)
        return None
    if len(new) > SPLICE_GROWTH * zs.full_size:
        return None              # compact: the full compile drops the garbage
    zs.check_size(new)
    with zs.slot.lock:
        zs.slot.publish(new, serials)
        gone = set(removed)
        zs.serials = {k: v for k, v in zs.serials.items() if k not in gone}
        for name in gone:
            zs.fresh.pop(name, None)
            zs.files.pop(name, None)
            zs.data.pop(name, None)
        now = time.time()
        for name in files:
            zs.fresh[name] = now
        if in_child:
            zs.data = {}        # not every zone's parse is held here any more
        elif zs.data:
            zs.data.update(datas)
        keep = {n: e for n, e in zs.failed.items() if n not in gone and n not in files}
        zs.note_failed({**keep, **stand_ins})
        zs.counts["spliced"] += len(put)
    t_publish = time.monotonic()
    _report(zs, bad, stand_ins)
    zs.save_cached(new, files)
    zs.compactor.maybe()        # a replaced zone's old version is garbage (serve/compact.py)
    log.info("reloaded %d zone(s) of %d (%d spliced, %d removed in %.3f s: files checked "
             "%.3f, compiled %.3f, spliced %.3f, published %.3f), generation %d",
             len(todo), len(zs.config.zones), len(put), len(removed), time.monotonic() - t0,
             t_plan - t0, t_compile - t_plan, t_splice - t_compile, t_publish - t_splice,
             zs.slot.generation)
    return bad


def warm(zs, image, changed: dict | None) -> None:
    """After a full publish (a compile, the saved image), on a thread: find every zone's
    NS/MX/SRV RRsets (a C walk without the GIL, ~0.2 s for a million names) and note the
    stat of every zone file whose content is the served one, not on the first reload's path.
    (The copy into a memory file, zone/arena.py, is left to the first splice: done here it
    would hold a second copy of the image in every server, reloaded or not.)"""
    if changed is None and zs.reload_hook is None:
        threading.Thread(target=_warm, args=(zs, image), name="pop53-splice-warm",
                         daemon=True).start()


def _warm(zs, image) -> None:
    try:
        _splice_mod._refs(image, _splice_mod._zones(image._data))
        cfg = zs.config
        for z in cfg.zones:
            if z.file is not None and z.name in zs.files and zs.slot.current is image:
                unchanged(zs, z.name, z.file, cfg.zone_dir)
    except Exception as exc:          # never fatal: a reload does what is missing itself
        log.debug("splice warm-up: %s", exc)


def _report(zs, bad: dict, stand_ins: dict) -> None:
    for name, err in bad.items():
        if name not in stand_ins:
            log.error("zone %s: reload rejected, serial %d keeps serving: %s", name,
                      zs.serials.get(name, 0), err)
        else:
            zs.failed[name] = err


def _key(name: str) -> bytes:
    return dns.name.from_text(name).to_wire().lower()
