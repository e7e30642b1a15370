"""The garbage a splice leaves, dropped in the background (issue 14 point 2).

A splice appends the new version of a zone and leaves the old one in the image, unreachable
(zone/splice.py): replacing a million-record zone leaves ~86 MB behind each time.  The reload
path only compiles everything again when the image has grown past SPLICE_GROWTH times its last
full compile (serve/zonesplice.py).  Before that, once it has grown past COMPACT_AT times (at
least a third of it garbage), a thread compiles the same zone files in a child process
(serve/childcompile.py: its own, so a reload's big-zone compile is not held up, at a lower CPU
priority) and publishes the result in place of the spliced image: the same zones, the same
versions, no garbage.

The compact image is only published if nothing changed while it compiled: no publish in the
meantime (a reload, a config change), the same files read (a zone file edited but not reloaded
yet is not published behind the operator's back: the compact image is dropped), the same zones
failing.  Otherwise it is dropped and the next splice tries again.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time

from pop53.errors import Pop53Error, ZoneError
from pop53.zone import arena
from pop53.zone.compiler import CompilerUnavailable

log = logging.getLogger("pop53.server")

# compact in the background once the image is this many times its last full compile, and at
# least COMPACT_MIN bytes over it (a small image is compiled again in-process when it passes
# SPLICE_GROWTH, which costs less than a child process)
COMPACT_AT = 1.5
COMPACT_MIN = 16 << 20


class Compactor:
    def __init__(self, zs, child):
        self.zs = zs
        self.child = child          # a ChildCompile of its own
        self.thread: threading.Thread | None = None
        self.done = 0               # compactions published since start

    def maybe(self) -> bool:
        """After a splice: start a compaction if the image holds enough garbage and none is
        running (one running compacts again if a splice published meanwhile).  Returns whether
        one started."""
        if not self._due() or (self.thread is not None and self.thread.is_alive()):
            return False
        self.thread = threading.Thread(target=self._loop, name="pop53-compact", daemon=True)
        self.thread.start()
        return True

    def _due(self) -> bool:
        zs = self.zs
        image = zs.slot.current
        if image is None or not zs.full_size or len(image) <= COMPACT_AT * zs.full_size \
                or len(image) - zs.full_size < COMPACT_MIN:
            return False
        # zone sets compiled in-process keep their parsed zones (zs.data), which the
        # published child compile would drop: those reach the full compile instead
        return zs.isolate_compile()

    def _loop(self) -> None:
        while self._run() and not self.child.stopping and self._due():
            pass

    def _run(self) -> bool:
        """One compaction; True when it was dropped for a publish meanwhile (try again)."""
        zs = self.zs
        t0 = time.monotonic()
        generation, before = zs.slot.generation, len(zs.slot.current)
        cfg = zs.config
        specs = [(z.file, z.name) for z in cfg.zones]
        try:
            image, result = self.child.compile(specs, cfg.state or tempfile.gettempdir(),
                                               cfg.zone_dir)
        except (CompilerUnavailable, Pop53Error, ZoneError, OSError) as exc:
            log.info("compaction of the zone image not done: %s", exc)
            return False
        files = {n: z["files"] for n, z in result["loaded"].items()}
        # it is compacted because splices are happening: the next one starts from a memory
        # file (zone/arena.py) copied here, not on that reload's path
        arena.prepare(image)
        with zs.slot.lock:
            why = None
            if zs.slot.generation != generation:
                why = "a reload published meanwhile"
            elif set(result["failed"]) != set(zs.failed) or \
                    any(zs.files.get(n) != f for n, f in files.items()):
                why = "a zone file changed since it was loaded (not reloaded yet)"
            if why is None:
                try:
                    zs.check_size(image)
                    zs.publish_files_image(image, zs.failed, files)
                except (Pop53Error, ZoneError) as exc:
                    why = str(exc)
        if why is not None:
            log.info("compacted zone image dropped: %s", why)
            return zs.slot.generation != generation
        self.done += 1
        log.info("zone image compacted: %d -> %d bytes in %.1f s (the garbage of replaced "
                 "zones dropped), generation %d", before, len(image), time.monotonic() - t0,
                 zs.slot.generation)
        return False
