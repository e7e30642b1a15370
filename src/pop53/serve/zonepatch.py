"""A reload that compiles only the zones whose files changed (issue 14 point 2).

Which zones changed is decided by content: the SHA-256 of the master file and of every file it
$INCLUDEs (zonefile.file_digests), against the digests the served version was read from.  An
unchanged zone is neither parsed nor compiled again.  A changed zone is parsed alone and patched
into the served image by the IXFR patcher (zone/incremental.py: its names are rewritten at the
image's end and the zone's node table, cuts and additional-section targets repointed), which
answers exactly as a full compile of the new zone set.  With one changed zone among 1,000 a
reload costs that zone's parse and patch plus ~0.1 ms per zone for the digests, instead of a
parse and compile of every zone.

What this patch does not take goes to serve/zonesplice.py (the zone compiled alone and spliced
in whole): zones added or removed, a zone that answered SERVFAIL (a stand-in), a changed zone
file over PATCH_BYTES, and a change the patcher turns down (an apex deleted, a name at or below
another zone).  Why PATCH_BYTES: this path parses the zone in the server process and hands the
patcher every old and new owner name as a dns.name object (zone_names, _encode_node), which for
a million names is gigabytes held in the server and minutes of Python; the splice parses and
compiles such a zone in a child process and the server only copies bytes.  The full reload
(ZoneSet.reload) remains for signed zones, the transfer engine owning the image, and an image
grown past MAX_GROWTH times its last full compile by the patches' garbage (the full compile
compacts it).
"""
from __future__ import annotations

import logging
import os
import time

import dns.name
import numpy as np
import numpy.ma  # noqa: F401  np.unique imports it lazily: import while root (see Server.start)

from pop53 import _core
from pop53.zone.compiler import HEADER, NODE, ZONE, load_or_fail
from pop53.zone.images import Image
from pop53.zone.incremental import patch_image
from pop53.zone.zonefile import file_digests

log = logging.getLogger("pop53.server")

PATCH_BYTES = 1 << 20     # a changed zone file bigger than this is compiled alone in a child and spliced
MAX_GROWTH = 2.0          # patches' garbage allowed before a full compile compacts


def zone_names(image: Image, origin: dns.name.Name) -> set | None:
    """The owner names of zone `origin` in `image` (its node table), or None when the zone is
    not in it, is a SERVFAIL stand-in or is signed (its NSEC3 owners are not in the table)."""
    src = image._data
    h = HEADER.unpack_from(src, 0)
    n_zones, zones_off = h[4], h[5]
    key = origin.to_wire().lower()
    for i in range(n_zones):
        z = ZONE.unpack_from(src, zones_off + ZONE.size * i)
        if bytes(src[z[0]:z[0] + z[1]]) != key:
            continue
        if z[3] & (_core.ZONE_FLAGS["SIGNED"] | _core.ZONE_FLAGS["EXPIRED"]):
            return None
        table = np.frombuffer(src, dtype=np.uint32, count=z[6] + 1, offset=z[5])
        names = set()
        for off in table[table != 0].tolist():
            n = NODE.unpack_from(src, off)
            names.add(dns.name.from_wire(bytes(src[n[0]:n[0] + n[1]]), 0)[0])
        return names
    return None


def changed_files(zs, only: str | None) -> dict[str, tuple[str, dict]] | None:
    """{origin: (master file, digests now)} of the file zones whose content changed since the
    served version was read; None when the zone set itself changed (a full reload)."""
    cfg = zs.config
    if any(z.file is None for z in cfg.zones) or zs.waiting \
            or set(zs.serials) != {z.name for z in cfg.zones}:
        return None
    out = {}
    for z in cfg.zones:
        if only is None or z.name == only:
            digests = file_digests(z.file, cfg.zone_dir)
            if digests != zs.files.get(z.name):
                out[z.name] = (z.file, digests)
    return out


def try_patch(zs, only: str | None, parsed: dict | None = None) -> dict | None:
    """Reload by patching the changed zones into the served image.  Returns {origin: error} of
    the changed zones that did not load (their previous version keeps serving), or None when
    this reload needs the full path (nothing has changed then).  parsed: {origin: ZoneData}
    the splice already read (serve/zonesplice.py), not read again."""
    image = zs.slot.current
    if image is None or zs.reload_hook is not None:
        return None
    t0 = time.monotonic()
    changed = changed_files(zs, only)
    if changed is None or any(n in zs.failed for n in changed):
        return None
    try:
        if any(os.path.getsize(path) > PATCH_BYTES for path, _ in changed.values()):
            return None
    except OSError:
        return None
    parsed = parsed or {}
    datas, bad = load_or_fail([(path, name) for name, (path, _) in changed.items()
                               if name not in parsed], zs.config.zone_dir)
    zs.counts["parsed"] += len(changed) - sum(1 for n in changed if n in parsed)
    for d in datas:
        for w in d.warnings:
            log.warning("%s", w)
    loaded = {d.origin.to_text(): d for d in datas}
    loaded.update({n: parsed[n] for n in changed if n in parsed})
    bad.update(zs.check_loads({n: d.summary() for n, d in loaded.items()}))
    new = image
    for name, d in loaded.items():
        if name in bad:
            continue
        old_names = zone_names(new, d.origin)
        if old_names is None:
            return None
        patched = _patch(new, d, old_names | set(d.zone.nodes))
        if patched is None:
            return None
        new = patched
    if len(new) > MAX_GROWTH * zs.full_size:
        return None              # compact: the full compile drops the patches' garbage
    zs.check_size(new)
    good = {n: d for n, d in loaded.items() if n not in bad}
    with zs.slot.lock:
        if good:
            zs.slot.publish(new, {n: d.serial for n, d in good.items()})
            zs.counts["patched"] += len(good)
        now = time.time()
        for name, d in good.items():
            zs.fresh[name] = now
            if zs.data:
                zs.data[name] = d
    for name, err in bad.items():
        log.error("zone %s: reload rejected, serial %d keeps serving: %s", name,
                  zs.serials.get(name, 0), err)
    if good:
        zs.save_cached(new, {n: d.files for n, d in good.items()})
    log.info("reloaded %d changed zone(s) of %d (%d patched in %.3f s), generation %d",
             len(changed), len(zs.config.zones), len(good), time.monotonic() - t0,
             zs.slot.generation)
    return bad


def _patch(image: Image, data, names) -> Image | None:
    out = patch_image(image, data.origin, data, names)
    if out is None:
        log.info("zone %s: compiled in full (%s)", data.origin, patch_image.last_reason)
    return out
