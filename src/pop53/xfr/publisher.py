"""The image publisher: turns zone versions into served images (patched or compiled), compacts
patched images in the background, and keeps the heap settled after big compiles."""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pop53.errors import Pop53Error
from pop53.xfr.inbound import CollectTxn
from pop53.xfr.isolate import run_in_fork
from pop53.xfr.metrics import count
from pop53.xfr.versions import UpdateRejected, ZoneVersion
from pop53.xfr.wholepatch import splice_zone

log = logging.getLogger("pop53.xfr")


class ImagePublisher:
    """The glue to the server (issue 3): keeps the validated data of every zone the image holds
    and hands each new image to `server_publish(image)` (one atomic swap; the image is always a
    full image).  Zones loaded from files are passed as `static`.

    An IXFR update (`version.changed`, diff from the version we last published) is first tried
    as a patch of the current image (`pop53.zone.incremental.patch_image`: milliseconds instead of a
    full compile); a structural change, a full transfer or an expiry splices that zone, compiled
    alone, into the image (xfr/wholepatch.py); a zone new to the image (or to its data) goes to
    `compile_zone_data`.  Replaced records stay
    in a patched image as garbage: once it has grown past MAX_GROWTH times the last full
    compile, the patched image is still published at once, and a compaction starts in the
    background (a full compile in a forked child, so it does not take the GIL from the engine);
    the updates published meanwhile are patched onto its result before it is swapped in.  An
    expired zone (`version is None`) keeps its last data in the image, marked expired: the data
    plane answers SERVFAIL for it (RFC 1035 §3.3.13 via `compile_zone_data(..., expired=[...])`)."""

    # a patched image may grow to this multiple of the last full compile before we compact
    MAX_GROWTH = 1.25
    # after a full compile with at least this many nodes, the heap is settled (settle_heap)
    SETTLE_NODES = 50_000
    COMPACT_TIMEOUT = 1800.0

    def __init__(self, server_publish: Callable[[Any], None], static: list | tuple = (),
                 compile_zone_data: Callable | None = None, incremental: bool = True,
                 compact_in_background: bool = True, check_image: Callable | None = None):
        self.server_publish = server_publish
        # raises (a Pop53Error, e.g. the server's max_image_bytes) for an image that must not
        # be published: the update is rejected and the previous image keeps serving
        self.check_image = check_image
        self.static = list(static)
        self.zones: dict[str, Any] = {}
        self.expired: set[str] = set()
        self._compile = compile_zone_data
        self.incremental = incremental
        self.compact_in_background = compact_in_background
        self.last_image = None
        self._full_size = 0
        self.stats = {"patched": 0, "spliced": 0, "compiled": 0, "compacted": 0,
                      "compactions_dropped": 0}
        self.last_fallback: str | None = None
        self._lock = threading.RLock()
        # the compaction in flight: its generation, and the names changed since its snapshot
        self._gen = 0
        self._compacting: threading.Thread | None = None
        self._since: dict[str, set] = {}
        if incremental:
            from pop53.zone import incremental as _inc  # noqa: F401  (imported now, not on the first update)

    def _compiler(self) -> Callable:
        if self._compile is not None:
            return self._compile
        from pop53.zone.compiler import compile_zone_data
        return compile_zone_data

    def _try_patch(self, name: str, version: ZoneVersion):
        if not self.incremental or self.last_image is None or not version.changed \
                or name in self.expired or name not in self.zones or not version.steps:
            return None
        prev = self.zones[name]
        # the diff must start at the version this image holds (a rejected or skipped update
        # in between would make the changed names incomplete)
        if prev is None or version.steps[0].old_serial != prev.serial:
            return None
        data = version.view
        if data is None:
            if getattr(version.data, "_zone", True) is None:
                return None     # records form without a view: data.zone would build it all
            data = version.data
        from pop53.zone.incremental import patch_image
        image = patch_image(self.last_image, name, data, version.changed)
        if image is None:
            self.last_fallback = patch_image.last_reason
        return image

    def _try_splice(self, name: str, version: ZoneVersion | None):
        """The zone compiled alone and spliced in, when it already has data in the image (a zone
        joining, or a stand-in replaced, goes through the full compile, which also settles which
        zones wait for data)."""
        if not self.incremental or self.zones.get(name) is None:
            return None
        if version is None:        # past its SOA expire: its last data, marked expired
            return splice_zone(self.last_image, self.zones[name], expired=True)
        return splice_zone(self.last_image, version.data)

    def __call__(self, name: str, version: ZoneVersion | None) -> None:
        with self._lock:
            self._publish(name, version)

    def _counted(self, path: str) -> None:
        count(self.stats, path, "pop53_xfr_images_total",
              "images published for transferred zones, by how they were made", path=path)

    def _publish(self, name: str, version: ZoneVersion | None) -> None:
        t0 = time.monotonic()
        zones = dict(self.zones)
        expired = set(self.expired)
        if version is None:
            expired.add(name)
        else:
            zones[name] = version.data
            expired.discard(name)
        how = "patched"
        try:
            image = self._try_patch(name, version) if version is not None else None
            if image is None:
                # a full transfer, an IXFR the patcher turns down, an expiry: that zone alone
                # compiled and spliced in (xfr/wholepatch.py)
                image, how = self._try_splice(name, version), "spliced"
        except Exception as exc:  # a patcher bug must not cost the update: compile in full
            log.exception("zone %s: incremental patch failed, compiling in full: %s", name, exc)
            image = None
        patched = image is not None
        if patched and self.check_image is not None:
            try:
                self.check_image(image)
            except Pop53Error as exc:
                # the garbage of earlier patches may be what is over the limit: compact now
                log.info("zone %s: patched image refused (%s); compiling in full", name, exc)
                image, patched = None, False
        if image is None:
            image = self._compile_all(zones, expired, name)
            if self.check_image is not None:
                self.check_image(image)
        self.server_publish(image)
        log.info("zone %s: image %s and published in %.3f s (%d bytes)", name,
                 how if patched else "compiled", time.monotonic() - t0, len(image))
        self.zones = zones
        self.expired = expired
        self.last_image = image
        if patched:
            self._counted(how)
            if self._compacting is not None:
                # (a whole-zone patch adds none: the compaction is then dropped)
                self._since.setdefault(name, set()).update(
                    (version.changed if version is not None else None) or ())
            elif len(image) > self.MAX_GROWTH * self._full_size:
                self._start_compaction()
        else:
            self._counted("compiled")
            self._full_size = len(image)
            self._gen += 1          # a compaction in flight is stale now
            if image.counts["nodes"] >= self.SETTLE_NODES or \
                    image.counts["records"] >= CollectTxn.FREEZE_EVERY:
                settle_heap()
            if self.incremental:    # the next update's patch starts from a ready index
                from pop53.zone.patchkit import patch_index
                patch_index(image)

    def update_static(self, static: list, same_stand_ins: bool) -> Any:
        """The file zones changed (a reload): each changed one is spliced into the image
        (xfr/wholepatch.py) when the zone set and the stand-ins are unchanged; else, or when a
        patch is not possible, recompile()."""
        with self._lock:
            old = {d.origin: d for d in self.static}
            new = {d.origin: d for d in static}
            image = self.last_image
            if not (self.incremental and same_stand_ins and image is not None
                    and set(old) == set(new)):
                return self.recompile(static)
            for origin, data in new.items():
                if data is not old[origin]:
                    image = splice_zone(image, data)
                    if image is None:
                        return self.recompile(static)
            if self.check_image is not None:
                self.check_image(image)
            self.server_publish(image)
            self.static, self.last_image = list(static), image
            self._counted("spliced")
            if self._compacting is None and len(image) > self.MAX_GROWTH * self._full_size:
                self._start_compaction()
            return image

    def recompile(self, static: list | None = None, drop: tuple = ()) -> Any:
        """Publish a full compile of the current zone set: after the file zones changed
        (`static`), a transferred zone was removed (`drop`) or the stand-ins changed (a zone
        added by a config reload or a catalog).  The next patch starts from this image."""
        with self._lock:
            zones = {n: d for n, d in self.zones.items() if n not in drop}
            expired = {n for n in self.expired if n not in drop}
            static = self.static if static is None else list(static)
            image = self._compile_all(zones, expired, "(all)", static)
            if self.check_image is not None:
                self.check_image(image)
            self.server_publish(image)
            self.static, self.zones, self.expired = static, zones, expired
            self.last_image = image
            self._full_size = len(image)
            self._gen += 1          # a compaction in flight is stale now
            return image

    def _compile_all(self, zones: dict, expired: set, name: str, static: list | None = None):
        present = [d for d in zones.values() if d is not None]
        exp = sorted(z for z in expired if zones.get(z) is not None)
        everything = (self.static if static is None else static) + present
        compile_ = self._compiler()
        try:
            return compile_(everything, expired=exp) if exp else compile_(everything)
        except Pop53Error:
            raise
        except Exception as exc:  # a compiler bug must not take the engine down
            raise UpdateRejected(f"zone {name}: compile failed: {type(exc).__name__}: {exc}") from None

    # ---------------------------------------------------------------- background compaction
    def _start_compaction(self) -> None:
        """Compile the current zone set again, away from the engine (call with the lock)."""
        self._gen += 1
        gen = self._gen
        zones, expired, static = dict(self.zones), set(self.expired), list(self.static)
        self._since = {}
        self.last_fallback = "compaction"
        if not self.compact_in_background:
            image = self._compile_all(zones, expired, "(compaction)", static)
            self._install_compacted(gen, image, zones, expired, static)
            return
        t = threading.Thread(target=self._compact, args=(gen, zones, expired, static),
                             name="pop53-compact", daemon=True)
        self._compacting = t
        t.start()

    def _compact(self, gen: int, zones: dict, expired: set, static: list) -> None:
        import os
        import tempfile
        from pop53.zone.images import load_image
        fd, path = tempfile.mkstemp(prefix="pop53-compact-", suffix=".img")
        os.close(fd)
        image = None
        try:
            t0 = time.monotonic()
            self._compiler()            # imported here, before the fork

            def work():
                self._compile_all(zones, expired, "(compaction)", static).save(path)
            run_in_fork(work, "image compaction", self.COMPACT_TIMEOUT)
            image = load_image(path)
            from pop53.zone.patchkit import patch_index
            patch_index(image)      # outside the lock: the engine keeps publishing meanwhile
            log.info("compaction: %d bytes compiled in %.1f s", len(image), time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - the patched image keeps serving
            log.error("compaction failed, the patched image keeps serving: %s", exc)
        finally:
            try:
                os.unlink(path)     # the mapping keeps the data
            except OSError:
                pass
        with self._lock:
            self._compacting = None
            if image is not None:
                self._install_compacted(gen, image, zones, expired, static)

    def _install_compacted(self, gen, image, zones, expired, static) -> None:
        """Swap in a compacted image, with the updates published since its snapshot patched
        onto it (call with the lock).  Dropped when a full compile or an expiry intervened."""
        from pop53.zone.incremental import patch_image
        since, self._since = self._since, {}
        if gen != self._gen or expired != self.expired or static != self.static \
                or set(zones) != set(self.zones):
            self._counted("compactions_dropped")
            return
        full_size = len(image)
        for name, data in self.zones.items():
            if data is zones[name]:
                continue
            if since.get(name) and getattr(data, "_zone", True) is None:
                from pop53.xfr.recversion import view_of
                data = view_of(data, since[name])     # records form: the changed names only
            image = patch_image(image, name, data, since.get(name, ())) if since.get(name) else None
            if image is None:
                log.info("compaction dropped: zone %s changed meanwhile and did not patch", name)
                self._counted("compactions_dropped")
                return
        if self.check_image is not None:
            try:
                self.check_image(image)
            except Pop53Error as exc:
                log.info("compaction dropped: %s", exc)
                self._counted("compactions_dropped")
                return
        self.server_publish(image)
        self.last_image = image
        self._full_size = full_size
        self._counted("compacted")

    def wait_compaction(self, timeout: float) -> bool:
        """For tests and benchmarks: wait until no compaction is in flight."""
        t = self._compacting
        if t is not None:
            t.join(timeout)
        return self._compacting is None


def settle_heap() -> None:
    """Collect once, then freeze what is left (gc.freeze): a zone of a million names is millions
    of dnspython objects, and every full (generation 2) collection walks all of them (measured:
    0.5 s at 100,000 names, falling on whichever update allocates next).  Frozen objects are
    never walked; they are still freed by reference counting, and anything they leave in a
    reference cycle is reclaimed at the next settle (unfreeze first)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()

