"""The mapping state of a running server: the compiled maps, target liveness, and the
published snapshot.  A liveness change rebuilds the merged tables of the answer functions it
touches and publishes a new snapshot with one atomic store (Shared.publish_maps); the old one
is retired like an image (freed after every worker has passed a batch boundary).  A map reload
that fails leaves the old maps serving.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from pop53.mapping.config import MappingConfig, check_image
from pop53.mapping.mapfile import load_map
from pop53.mapping.snapshot import SnapshotBuilder

log = logging.getLogger("pop53.mapping")


def load_tables(mcfg: MappingConfig) -> dict:
    return {m.name: load_map(m.file, m.default, m.regions) for m in mcfg.maps.values()}


def _manifest(mcfg: MappingConfig) -> tuple:
    """What the map files look like on disk: a reload with none changed is skipped."""
    out = []
    for m in mcfg.maps.values():
        try:
            st = os.stat(m.file)
            out.append((m.file, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((m.file, None, None, None))
    return tuple(out)


class MappingState:
    """Maps + liveness -> snapshots.  Thread-safe; `on_publish(snapshot)` is called with each
    new snapshot."""

    def __init__(self, mcfg: MappingConfig, on_publish=None, signer=None):
        self.cfg = mcfg
        self.signer = signer            # pop53.dnssec.online.OnlineSigner, or None
        self._stop = threading.Event()
        self._wake = threading.Event()     # republish now (new signing keys), off the caller
        self._refresher = None
        self.live = {t.name: t.up for t in mcfg.targets.values()}
        self.manifest = _manifest(mcfg)
        self.builder = SnapshotBuilder(mcfg, load_tables(mcfg))
        self.on_publish = on_publish
        self.seed = 0
        self.snapshot = None
        self.generation = 0
        self.last_build_ms = 0.0
        self._lock = threading.Lock()

    def publish(self, seed: int | None = None):
        """Build a snapshot of the current maps and liveness and hand it to on_publish.  The
        callback runs outside this object's lock (it takes the server's), with the build's
        sequence number so that a slower, older build never replaces a newer one."""
        with self._lock:
            if seed is not None:
                self.seed = seed
            t0 = time.perf_counter()
            snap = self.builder.build(lambda t: self.live[t], self.seed, self.signer)
            self.last_build_ms = (time.perf_counter() - t0) * 1e3
            self.snapshot = snap
            self.generation += 1
            seq = self.generation
        if self.on_publish is not None:
            self.on_publish(snap, seq)
        return snap

    def start_refresh(self) -> None:
        """Renew online signatures before they expire: republish (off the hot path) when the
        earliest one reaches its refresh time (pop53.dnssec.online)."""
        if self.signer is None or self._refresher is not None:
            return
        self._refresher = threading.Thread(target=self._refresh_loop, name="pop53-mapsign",
                                           daemon=True)
        self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            due = self.signer.next_refresh()
            wait = 3600.0 if due is None else max(0.0, min(3600.0, due - self.signer.clock()))
            self._wake.wait(wait)
            if self._stop.is_set():
                return
            woken = self._wake.is_set()
            self._wake.clear()
            due = self.signer.next_refresh()
            if woken or (due is not None and due <= self.signer.clock()):
                try:
                    self.publish()
                    log.info("mapped-answer signatures %s (mapping generation %d)",
                             "made with the new keys" if woken else "renewed", self.generation)
                except Exception:   # a failed renewal keeps the old snapshot; retried later
                    log.exception("signing mapped answers failed")
                    self._stop.wait(60.0)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def rekey(self, cfg, image) -> bool:
        """Config reload / `ctl reload` / SIGHUP: read `dnssec_keys` again (pop53.dnssec.online)
        and choose the keys from what `image` serves.  A new key set re-signs the mapped answers
        in the background (the refresher publishes a snapshot signed with it; the old one, and
        its signatures, retire when it is replaced).  Raises ConfigError naming the key file:
        then nothing changes and the current keys keep signing."""
        from pop53.dnssec import online
        zones = online.choose(online.read_config(cfg), image, cfg.source)
        if self.signer is None:
            if not zones:
                return False
            self.signer = online.OnlineSigner([])
        changed = self.signer.update(zones)
        if changed:
            self.start_refresh()
            self._wake.set()
        return changed

    def on_image(self, image, _changed=None) -> None:
        """An image was published (a zone reloaded or transferred): the signing keys follow
        the zone's DNSKEY RRset and SOA signatures (one step of a key roll)."""
        if self.signer is not None and self.signer.reselect(image):
            self._wake.set()

    def set_target(self, name: str, up: bool):
        """Mark a target up or down and publish.  KeyError for an unknown target."""
        if name not in self.live:
            raise KeyError(f"no target named {name!r}")
        with self._lock:
            changed = self.live[name] != up
            self.live[name] = up
        if changed:
            self.publish()
            log.info("target %s is %s (mapping generation %d)", name, "up" if up else "down",
                     self.generation)
        return changed

    def install(self, name: str, table) -> None:
        """One map's new table (from the metadata feed, checked like a file): publish it.  The
        map file stays the initial content; a later file change is read again on reload."""
        builder = SnapshotBuilder(self.cfg, {**self.builder.tables, name: table})
        with self._lock:
            self.builder = builder
        self.publish()

    def reload_maps(self) -> bool:
        """Re-read the map files if any changed on disk; on any error the old maps keep serving
        (raises).  Returns whether new maps were published."""
        manifest = _manifest(self.cfg)
        if manifest == self.manifest:
            return False
        tables = load_tables(self.cfg)
        builder = SnapshotBuilder(self.cfg, tables)
        with self._lock:
            self.builder = builder
            self.manifest = manifest
        self.publish()
        return True

    def status(self) -> dict:
        b = self.builder
        return {
            "generation": self.generation,
            "targets": dict(self.live),
            "maps": {n: {"prefixes": t.prefixes, "ranges_v4": len(t.lo4), "ranges_v6": len(t.lo6),
                         "bytes": t.nbytes} for n, t in b.tables.items()},
            "resources": len(self.cfg.mapped),
            "last_build_ms": round(self.last_build_ms, 3),
            "signatures_made": self.signer.made if self.signer is not None else None,
            "next_signature_refresh": self.signer.next_refresh() if self.signer is not None else None,
            # the key tags signing each zone's mapped answers (chosen from the zone: docs/dnssec-online.md)
            "signing_keys": {z.origin.to_text(): [k.tag for k in z.keys] for z in self.signer.zones}
            if self.signer is not None else None,
        }


def attach(server) -> MappingState | None:
    """Wire the configured mapping into a Server: snapshots go to its workers and retire like
    images.  Raises ConfigError (a bad map) before anything is served."""
    mcfg = getattr(server.config, "mapping", None)
    if mcfg is None:
        return None

    published = [0]

    def on_publish(snap, seq):
        with server.slot.lock:
            if seq <= published[0]:
                return
            published[0] = seq
            old = server.shared.maps_holder
            server.shared.publish_maps(snap)
            if old is not None:
                server.slot.retire(old)

    from pop53.dnssec import online
    image = server.current_image
    signer = online.from_config(server.config, image)
    state = MappingState(mcfg, on_publish, signer)
    origins = {z.origin for z in signer.zones} if signer is not None else ()
    if image is not None:
        # static data clashing with a mapped name: refused at start as `pop53 check` does,
        # and in every reloaded image (before it is published)
        check_image(mcfg, image, origins)
    server.zones.image_checks.append(lambda img: check_image(mcfg, img, origins))
    if signer is not None and image is not None:
        online.check_mapped_names(image, mcfg, signer)
    state.publish(image.view.seed if image is not None else 0)
    state.start_refresh()
    server.slot.listeners.append(state.on_image)
    return state
