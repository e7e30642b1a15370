"""The saved image: a restart maps the image compiled last time (milliseconds) instead of
parsing the zone files again, while every file that load read is unchanged.

"Unchanged" is by content: the SHA-256 of each master file and of every file it $INCLUDEs,
taken when it was read (issue 14 point 9: an mtime+size check misses an edited $INCLUDE, a
same-size edit within the clock's resolution, and a file restored with its old mtime).
Beside `zones.img` the state directory holds `zones.img.json`:

    {"zones": [[origin, master file], ...], "files": {origin: {path: sha256 or null}},
     "failed": {origin: error}}        (zones that did not load: SERVFAIL stand-ins)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

from pop53.errors import Pop53Error
from pop53.zone.images import Image, load_image
from pop53.zone.zonefile import file_digests

log = logging.getLogger("pop53.server")


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


class SavedImage:
    def __init__(self, state: str, zones: list[tuple[str, str]]):
        """zones: (origin, master file) of every configured zone, in order."""
        self.image_path = os.path.join(state, "zones.img")
        self.meta_path = self.image_path + ".json"
        self.state = state
        self.zones = [[name, os.path.abspath(path)] for name, path in zones]

    def load(self) -> tuple[Image, dict[str, str], dict[str, dict]] | None:
        """(the image, its failed zones, the files of each zone) if every file it was compiled
        from is unchanged."""
        try:
            with open(self.meta_path) as f:
                meta = json.load(f)
            if meta.get("zones") != self.zones or not isinstance(meta.get("files"), dict):
                return None
            changed = [p for files in meta["files"].values() for p, h in files.items()
                       if _sha256(p) != h]
            if changed:
                log.info("not using the saved image: %s changed", changed[0])
                return None
            image = load_image(self.image_path)
        except (OSError, ValueError, Pop53Error) as exc:
            log.info("not using the saved image: %s", exc)
            return None
        log.info("serving the saved image %s (zone files unchanged)", self.image_path)
        return image, dict(meta.get("failed", {})), meta["files"]

    def save(self, image: Image, files: dict, failed: dict[str, str]) -> None:
        """files: {origin: {path: sha256}} of every file read for the image (as read, not as
        now)."""
        try:
            os.makedirs(self.state, exist_ok=True)
            image.save(self.image_path)
            tmp = self.meta_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"zones": self.zones, "files": files, "failed": failed}, f)
            os.replace(tmp, self.meta_path)
        except OSError as exc:
            log.warning("could not save the image to %s: %s", self.image_path, exc)


def _for(config) -> SavedImage | None:
    """The saved image in the state directory, for file zones only (transferred zones are
    restored by pop53.xfr from their own snapshots and xfr/restart.py)."""
    if not config.state or any(z.file is None for z in config.zones):
        return None
    return SavedImage(config.state, [(z.name, z.file) for z in config.zones])


def load_saved_image(config) -> tuple[Image, dict[str, str], dict[str, dict]] | None:
    """A restart serves at once: when no file the saved image was compiled from changed, map
    that image instead of parsing again.  (image, failed zones, files of each zone)."""
    saved = _for(config)
    return saved.load() if saved is not None else None


def save_image(config, image: Image, files: dict, failed: dict[str, str]) -> None:
    """files: origin -> {path: sha256} of every zone in `image`; a zone that did not load is
    recorded with its file as it is now (a fix invalidates the image)."""
    saved = _for(config)
    if saved is not None:
        paths = {z.name: z.file for z in config.zones}
        bad = {name: file_digests(paths[name], config.zone_dir) for name in failed}
        saved.save(image, {**files, **bad}, failed)


class BackgroundSave:
    """Writes the saved image on its own thread, the latest request only (a burst of reloads
    writes once or twice), so a reload's new serial is answered before its image is on disk."""

    def __init__(self):
        self._cv = threading.Condition()
        self._job = None
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, job) -> None:
        with self._cv:
            self._job = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pop53-save", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._cv.wait_for(lambda: self._job is not None, timeout=5):
                    self._thread = None
                    return
                job, self._job, self._busy = self._job, None, True
            try:
                job()
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending or being written; False if that took over `timeout`."""
        with self._cv:
            return self._cv.wait_for(lambda: self._job is None and not self._busy, timeout)
