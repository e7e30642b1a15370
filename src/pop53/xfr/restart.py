"""A restarted secondary answers its transferred zones at once (issue 14 point 5).

The engine restores a transferred zone by parsing its snapshot and replaying its journal
(keeper.load_saved): minutes for a million records, during which the zone could only answer
SERVFAIL.  So the image the server last published (file zones, transferred zones, stand-ins) is
also written to `<state>/xfr.img`, beside `xfr.img.json`:

    {"zones": [[origin, master file or null], ...],     the configured zone set
     "files": {origin: {path: sha256}},                  what the file zones were read from
     "failed": {origin: error}, "waiting": [origin]}     the SERVFAIL stand-ins in it

At start, when the configured zone set is the same and no file zone's files changed (their
digests against those just read for the engine), that image
is mapped (milliseconds) and served while the engine restores; the engine's first publish then
replaces it with an equal one and everything continues from there (refresh, IXFR).  Otherwise
the server starts as before (file zones, with SERVFAIL stand-ins for the transferred ones).

Writes are throttled (at most one per SAVE_EVERY seconds, the last one always written, and at
once when a zone gets its first data), since
an image can be ~100 MB and IXFRs may come every second; a restart may thus serve an image a few
seconds older than the journal, which the engine's restore brings up to date.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from pop53.errors import Pop53Error
from pop53.zone.images import Image, load_image

log = logging.getLogger("pop53.secondary")

SAVE_EVERY = 5.0


class TransferImage:
    def __init__(self, state: str, config):
        self.path = os.path.join(state, "xfr.img")
        self.meta_path = self.path + ".json"
        self.config = config
        self._lock = threading.Lock()
        self._last = 0.0
        self._pending: tuple | None = None
        self._timer: threading.Timer | None = None
        self._written: tuple | None = None     # (waiting, failed) of the image last written

    def _zones(self, config) -> list:
        return [[z.name, os.path.abspath(z.file) if z.file else None] for z in config.zones]

    def load(self, config) -> tuple[Image, dict] | None:
        """(the saved image, its meta) when it was saved for this zone set; the caller checks
        the file zones against what it has just read (`usable`)."""
        try:
            with open(self.meta_path) as f:
                meta = json.load(f)
            if meta.get("zones") != self._zones(config):
                log.info("not using the saved transfer image: the zone set changed")
                return None
            image = load_image(self.path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, Pop53Error) as exc:
            log.info("not using the saved transfer image: %s", exc)
            return None
        return image, meta

    def saved(self, image: Image, meta: dict) -> None:
        """A new image was published: write it now, or within SAVE_EVERY seconds (now when a
        zone got its first data or lost it: what a restart would answer SERVFAIL for)."""
        with self._lock:
            self._pending = (image, meta)
            wait = self._last + SAVE_EVERY - time.monotonic()
            changed = (meta["waiting"], meta["failed"]) != self._written
            if wait <= 0 or changed:
                self._write_pending()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._flush)
                self._timer.daemon = True
                self._timer.start()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending is None:
            return
        image, meta = self._pending
        self._pending = None
        self._last = time.monotonic()
        self._written = (meta["waiting"], meta["failed"])
        try:
            image.save(self.path)
            tmp = self.meta_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, self.meta_path)
        except OSError as exc:
            log.warning("could not save the transfer image to %s: %s", self.path, exc)

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    @staticmethod
    def usable(meta: dict, zset) -> bool:
        """Whether the file zones just read (and those that failed) are what the image holds."""
        files = {n: zset.files.get(n) for n in meta.get("files", {})}
        if files != meta.get("files") or dict(zset.failed) != meta.get("failed"):
            log.info("not using the saved transfer image: a file zone changed")
            return False
        return True

    def meta(self, zset, config) -> dict:
        files = {z.name: zset.files.get(z.name) for z in config.zones
                 if z.file is not None and z.name not in zset.failed}
        return {"zones": self._zones(config), "files": files, "failed": dict(zset.failed),
                "waiting": list(zset.waiting)}
