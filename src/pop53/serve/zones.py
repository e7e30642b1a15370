"""The served zone set: which zones load, from what files, how they compile into an image, and
what a reload changes (issue 14 points 1, 2, 6, 9).

`ZoneSet` owns the per-zone state the control socket, the metrics and the transfer glue read
(serials, failures, zones waiting for a first transfer, the files each version was read from)
and publishes through the `ImageSlot`.  It never touches sockets or threads.

Small zone sets compile in-process and keep their parsed zones, so a reload re-reads only the
zones whose files changed; big ones compile in a child process (its memory goes back to the
system when it exits) and nothing parsed is held here.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable

from pop53.config import Config
from pop53.errors import Pop53Error, ZoneError
from pop53.serve.imageslot import ImageSlot
from pop53.serve.loads import check_loads
from pop53.serve.childcompile import ChildCompile
from pop53.serve.compact import Compactor
from pop53.serve.saved import BackgroundSave, load_saved_image, save_image
from pop53.serve.zonepatch import try_patch
from pop53.serve.zonesplice import try_splice, warm
from pop53.zone.compiler import CompilerUnavailable, compile_zone_data, load_or_fail, with_stand_ins
from pop53.zone.images import Image
from pop53.zone.zonefile import ZoneData, load_zone_file

log = logging.getLogger("pop53.server")

ISOLATE_BYTES = 1 << 20   # zone files larger than this in all compile in a child process


def _progress(p: dict | None) -> dict | None:
    """A reload's progress for `ctl status`: its phase and zone counts, seconds since it began."""
    if p is None:
        return None
    return {**{k: v for k, v in p.items() if k != "since"},
            "seconds": round(time.monotonic() - p["since"], 3)}


class ZoneSet:
    def __init__(self, config: Callable[[], Config], slot: ImageSlot):
        """config(): the running configuration (a config reload replaces it)."""
        self._config = config
        self.slot = slot
        self.data: dict[str, ZoneData] = {}      # parsed zones held (in-process compiles)
        self.serials: dict[str, int] = {}        # origin -> serial in the published image
        self.fresh: dict[str, float] = {}        # origin -> when its data was last loaded
        # zones whose file never loaded: in the image as SERVFAIL stand-ins -> their error
        self.failed: dict[str, str] = {}
        # secondary zones not transferred yet: SERVFAIL stand-ins too (pop53.xfr.secondary)
        self.waiting: list[str] = []
        # origin -> {path: sha256} of the files the served version was read from
        self.files: dict[str, dict] = {}
        self.file_stats: dict[str, tuple] = {}    # serve/zonesplice.unchanged's stat cache
        self.reload_failures = 0
        self.last_error: str | None = None
        # set when the transfer engine owns the image (pop53.xfr.secondary.build): a reload
        # of the file zones goes through it; returns {origin: error}
        self.reload_hook: Callable[[str | None], dict] | None = None
        # more checks of a new image before it is published (raise to reject it): the
        # mapping's static clashes (pop53.mapping.service)
        self.image_checks: list[Callable[[Image], None]] = []
        # zone files parsed, zones patched into the served image name by name, and zones
        # spliced in whole (added, removed, big, stand-ins: serve/zonesplice.py), since start
        self.counts = {"parsed": 0, "patched": 0, "spliced": 0}
        self.full_size = 0         # bytes of the last full compile (patches add garbage)
        # what a reload is doing, for `ctl status` while it runs (issue 14 point 2)
        self.progress: dict | None = None
        self.child = ChildCompile()    # big zone sets compile there; stop() cancels it
        self.saver = BackgroundSave()  # writes the saved image (serve/saved.py)
        self.compactor = Compactor(self, ChildCompile(nice=10))   # drops splices' garbage
        slot.listeners.append(self._published)
        slot.listeners.append(lambda image, changed: warm(self, image, changed))  # splice look-ups

    @property
    def config(self) -> Config:
        return self._config()

    # -- what the control socket and the metrics read -----------------------------------------
    def served(self, name: str) -> bool:
        """Whether `name` answers from real data now (not a SERVFAIL stand-in)."""
        return name in self.serials and name not in self.failed and name not in self.waiting

    def status(self) -> dict:
        return {"generation": self.slot.generation,
                "zones": {k: v for k, v in self.serials.items() if self.served(k)},
                "failed": dict(self.failed), "waiting": list(self.waiting),
                "reload_failures": self.reload_failures, "last_error": self.last_error,
                "loads": dict(self.counts), "progress": _progress(self.progress)}

    def stop(self) -> None:
        """At process stop: a compile in flight is cancelled at once; a saved image being
        written is finished (bounded)."""
        self.child.stop()
        self.compactor.child.stop()
        self.saver.flush(2.0)

    def record_failure(self, error: str) -> None:
        self.reload_failures += 1
        self.last_error = error

    def _published(self, image: Image, changed: dict | None) -> None:
        # reading every zone's name and serial back costs ~0.1 ms a zone: a patch says which
        self.serials = {**self.serials, **changed} if changed is not None else image.zones()
        now = time.time()
        for zone in self.serials:
            self.fresh.setdefault(zone, now)

    # -- loading -------------------------------------------------------------------------------
    def _file_specs(self, only: str | None = None) -> list[tuple[str, str]]:
        return [(z.file, z.name) for z in self.config.zones
                if z.file is not None and only in (None, z.name)]

    def load_files(self, failed: dict | None = None, only: str | None = None) -> dict[str, ZoneData]:
        """Parse every file zone (or the one named `only`).  Without `failed` the first bad
        zone raises; with it, a bad zone is left out, its error recorded there, and the others
        load."""
        zone_dir = self.config.zone_dir
        specs = self._file_specs(only)
        datas = []
        for i, spec in enumerate(specs):
            if self.progress is not None:
                self.progress.update(phase="parsing", zone=spec[1], done=i, total=len(specs))
            if self.child.stopping:
                raise Pop53Error("stopping")
            if failed is None:
                datas.append(load_zone_file(spec[0], spec[1], zone_dir))
            else:
                loaded, bad = load_or_fail([spec], zone_dir)
                datas += loaded
                failed.update(bad)
        self.counts["parsed"] += len(specs)
        out = {}
        for d in datas:
            out[d.origin.to_text()] = d
            for w in d.warnings:
                log.warning("%s", w)
        if failed is not None:
            # one line per zone; a changed zone whose serial did not increase is refused when
            # server.serial_check says so (it then keeps its previous version, like a bad file)
            refused = self.check_loads({n: d.summary() for n, d in out.items()})
            for name, err in refused.items():
                del out[name]
                failed[name] = err
        return out

    def check_loads(self, loaded: dict[str, dict]) -> dict[str, str]:
        served = {n: s for n, s in self.serials.items() if self.served(n)}
        return check_loads(loaded, served, self.files, self.config.serial_check)

    def note_failed(self, failed: dict[str, str]) -> None:
        """One error line per zone that does not load (and answers SERVFAIL), once."""
        for name, err in failed.items():
            if self.failed.get(name) != err:
                log.error("zone %s did not load and answers SERVFAIL: %s", name, err)
        self.failed = dict(failed)

    def check_size(self, image: Image) -> None:
        limit = self.config.max_image_bytes
        if limit and len(image) > limit:
            raise ZoneError(f"image would be {len(image)} bytes, over server.max_image_bytes "
                            f"({limit})")
        for check in self.image_checks:
            check(image)

    # -- the saved image (serve/saved.py) -----------------------------------------------------
    def save_cached(self, image: Image, files: dict[str, dict]) -> None:
        """files: origin -> {path: sha256} of the zones in `image`."""
        self.files = {**self.files, **files}
        config, files, failed = self.config, self.files, dict(self.failed)
        # off the reload's path: the new serial is answered before the image is on disk
        self.saver.submit(lambda: save_image(config, image, files, failed))

    # -- compiling and publishing --------------------------------------------------------------
    def set_zones(self, zones: dict[str, ZoneData], failed: dict[str, str] | None = None) -> Image:
        """Compile the given zones (replacing all) and publish; `failed` zones (origin -> error)
        answer SERVFAIL.  Raises on a bad zone, and then nothing changes."""
        failed = failed or {}
        if self.progress is not None:
            self.progress.update(phase="compiling", zone=None)
        image = compile_zone_data(with_stand_ins(list(zones.values()), failed),
                                  expired=sorted(failed))
        self.check_size(image)
        with self.slot.lock:
            # the parsed zones are kept for transfers and so that a zone whose file breaks
            # keeps its previous version on reload; big zone files compile in a child process
            # and are never held here (a parsed million-name zone is gigabytes in dnspython
            # objects; the image is ~90 MB)
            self.data = dict(zones)
            self.note_failed(failed)
            self.slot.publish(image)
            self.full_size = len(image)
            now = time.time()
            for name in zones:
                self.fresh[name] = now
        self.save_cached(image, {n: d.files for n, d in zones.items()})
        return image

    def update_zone(self, data: ZoneData) -> Image:
        """Replace (or add) one zone, keeping the others: the path for transfers."""
        with self.slot.lock:
            zones = dict(self.data) if self.data else self.load_files()
            zones[data.origin.to_text()] = data
            return self.set_zones(zones)

    def isolate_compile(self) -> bool:
        """Big zone files compile in a child process (its memory is returned to the system
        when it exits); small ones compile in-process, which is faster for them."""
        zones = self.config.zones
        if self.reload_hook is not None or not all(z.file for z in zones):
            return False
        try:
            return sum(os.path.getsize(z.file) for z in zones) > ISOLATE_BYTES
        except OSError:
            return False

    def compile_files(self) -> tuple[Image, dict[str, str], dict]:
        """Compile every file zone in a child process (serve/childcompile.py) into a new image,
        map it and check its size: (the image, {origin: error} of the zones that did not load,
        SERVFAIL stand-ins in it, {path: sha256} of the files read).  Nothing is published."""
        specs = self._file_specs()
        if self.progress is not None:
            self.progress.update(phase="compiling in a child process", done=0, total=len(specs))
        try:
            image, result = self.child.compile(specs, self.config.state or tempfile.gettempdir(),
                                               self.config.zone_dir)
            self.counts["parsed"] += len(specs)
            failed = result["failed"]
            files = {n: z["files"] for n, z in result["loaded"].items()}
            refused = self.check_loads(result["loaded"])
            if refused:       # the image holds the refused version: keep the old one whole
                raise Pop53Error(next(iter(refused.values())))
        except CompilerUnavailable as exc:
            log.warning("%s; compiling in-process", exc)
            failed = {}
            loaded = self.load_files(failed)
            image = compile_zone_data(with_stand_ins(list(loaded.values()), failed),
                                      expired=sorted(failed))
            files = {n: d.files for n, d in loaded.items()}
        self.check_size(image)
        return image, failed, files

    def publish_files_image(self, image: Image, failed: dict[str, str], files: dict) -> None:
        # a zone that served and now fails to load: its previous version is not held in this
        # process (child compile), so the whole reload is rejected and everything keeps serving
        lost = [n for n in failed if self.served(n)]
        if lost:
            raise Pop53Error(failed[lost[0]])
        with self.slot.lock:
            self.data = {}
            self.note_failed(failed)
            self.slot.publish(image)
            self.full_size = len(image)
            now = time.time()
            for name in self.serials:
                self.fresh[name] = now
        self.save_cached(image, files)

    def load_first(self) -> None:
        """At start, before the sockets: the saved image when nothing changed, else a compile.
        A zone that does not load answers SERVFAIL; the others serve."""
        cached = None
        if self.reload_hook is None:
            cached = load_saved_image(self.config)
        if cached is not None:
            self.note_failed(cached[1])
            self.files = cached[2]
            self.slot.publish(cached[0])
            self.full_size = len(cached[0])
        elif self.isolate_compile():
            self.publish_files_image(*self.compile_files())
        else:
            failed: dict[str, str] = {}
            self.set_zones(self.load_files(failed), failed)

    # -- reload --------------------------------------------------------------------------------
    def reload(self, only: str | None = None) -> bool:
        """Re-read every zone file (or the one named `only`) and swap them in.  A zone that does
        not load is reported (one error line) and keeps its previous version, or answers
        SERVFAIL if it never loaded; the others are published.  When its previous version is
        not held in memory (child compile, saved image) the whole reload is rejected and
        everything keeps serving.  Raises Pop53Error for a rejected reload; returns whether
        every zone loaded."""
        self.progress = {"phase": "checking", "since": time.monotonic()}
        try:
            return self._reload(only)
        finally:
            self.progress = None

    def _reload(self, only: str | None) -> bool:
        parsed: dict = {}
        # whole zones compiled alone and spliced in: changed, big, added, removed, stand-ins
        failed = try_splice(self, only, parsed)
        if failed is None:                # name by name (what a splice turns down)
            failed = try_patch(self, only, parsed)
        if failed is not None:
            self.last_error = "; ".join(failed.values()) or None
            self.reload_failures += bool(failed)
            return not failed
        if only is not None and self.reload_hook is None and not self.data:
            only = None     # the other zones' parsed versions are not held here: read them all
        if self.reload_hook is not None:
            failed = self.reload_hook(only) or {}     # {origin: error} of file zones
            zones = self.serials
        elif self.isolate_compile():
            image, failed, files = self.compile_files()
            self.publish_files_image(image, failed, files)
            zones = self.serials
        else:
            failed = {}
            zones = self._reload_in_process(failed, only)
        # the others are published; the zones that did not load count as a failed reload
        self.last_error = "; ".join(failed.values()) or None
        self.reload_failures += bool(failed)
        log.info("reloaded %d zone(s)%s, generation %d", len(zones) - len(failed),
                 f", {len(failed)} rejected" if failed else "", self.slot.generation)
        return not failed

    def _reload_in_process(self, failed: dict[str, str], only: str | None) -> dict:
        files = self.load_files(failed, only)
        configured = {z.name for z in self.config.zones}    # a config reload may drop some
        with self.slot.lock:
            # the zones not re-read, and the previous version of a zone whose file fails
            zones = {k: v for k, v in self.data.items() if k not in files and k in configured}
            zones.update(files)
            for name in failed:
                if name in zones:
                    log.error("zone %s: reload rejected, serial %d keeps serving: %s",
                              name, zones[name].serial, failed[name])
                elif self.served(name):
                    raise Pop53Error(failed[name])   # not held here: reject it all
            stand_ins = {n: e for n, e in failed.items() if n not in zones}
            if only is not None:    # the other zones' stand-ins stay
                stand_ins = {**{n: e for n, e in self.failed.items()
                                if n in configured and n != only}, **stand_ins}
            if files or stand_ins != self.failed \
                    or set(self.serials) - configured:    # else nothing changed
                self.set_zones(zones, stand_ins)
        return zones
