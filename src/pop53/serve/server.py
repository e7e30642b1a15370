"""The server: sockets, UDP workers, TCP, image publication and reclamation, reload, privilege
drop, metrics.

Workers are threads, one per core and listen address, each running the nogil batch loop of
`_core.Worker` over its own SO_REUSEPORT socket.  A new image is published with one atomic store
(`_core.Shared.publish`); the previous one is released only after every worker has passed a
batch boundary (the epochs checked by the housekeeping thread), so a query is always answered
from exactly one image.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import tempfile
import threading
import time

import dns.rdata

from pop53 import _core
from pop53.zone.compiler import (CompilerUnavailable, compile_files_isolated, compile_zone_data,
                                 load_or_fail, with_stand_ins)
from pop53.config import Config, Listen
from pop53.errors import Pop53Error, ZoneError
from pop53.serve.loads import check_loads
from pop53.serve.saved import SavedImage
from pop53.serve.sockets import (_start_error, drop_privileges, give_to, run_user, tcp_socket,
                                  udp_socket)
from pop53.zone.images import Image, load_image
from pop53.zone.zonefile import ZoneData, file_digests, load_zone_file

log = logging.getLogger("pop53.server")

ISOLATE_BYTES = 1 << 20   # zone files larger than this in all compile in a child process


class Server:
    def __init__(self, config: Config, *, control_handler=None):
        self.config = config
        self.responder = _core.Responder(
            identity=config.identity if config.nsid or config.chaos else "",
            version=config.version, chaos=config.chaos, nsid=config.nsid,
            edns_max=config.edns_max, cookie_secret=config.cookie_secret,
            cookie_secret_previous=config.cookie_secret_previous)
        self.shared = _core.Shared()
        # one response-rate-limiting table for all UDP workers ([rrl]; TCP is never limited)
        self.limiter = _core.RateLimiter(**config.rrl) if config.rrl else None
        # query scoring before any lookup ([scoring], pop53.scoring)
        self.scoring = None
        if config.scoring:
            from pop53.scoring.service import ScoringService
            self.scoring = ScoringService(config.scoring)
        self.control_handler = control_handler
        self.control_plane = control_handler     # set in start(): never None there
        self.current_image: Image | None = None
        self.zone_data: dict[str, ZoneData] = {}
        self.zone_serials: dict[str, int] = {}
        self.zone_fresh: dict[str, float] = {}
        # zones whose file never loaded: in the image as SERVFAIL stand-ins -> their error
        self.zone_failed: dict[str, str] = {}
        # secondary zones not transferred yet: SERVFAIL stand-ins too (pop53.xfr.secondary)
        self.zone_waiting: list[str] = []
        # origin -> {path: sha256} of the files the served version was read from
        self.zone_files: dict[str, dict] = {}
        self.reload_failures = 0
        self.last_error: str | None = None
        self.workers: list[_core.Worker] = []
        self.udp_socks: list[socket.socket] = []
        self.tcp_socks: list[socket.socket] = []
        self.tcp = None
        self._threads: list[threading.Thread] = []
        self._retired: list[tuple[Image, dict]] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._metrics_httpd = None
        self.control = None
        self.reload_hook = None      # set when transfers are attached (secondary.build)
        self.pidfile: str | None = None     # written (and given to the run user) before the drop
        self.mapping = None          # pop53.mapping.service.MappingState ([[mapped]])
        self.feed = None             # pop53.feed.transport.Subscriber ([feed])
        self.started = False

    # -- zones and images ------------------------------------------------------------------
    def _file_specs(self, only: str | None = None) -> list[tuple[str, str]]:
        return [(z.file, z.name) for z in self.config.zones
                if z.file is not None and only in (None, z.name)]

    def load_zone_files(self, failed: dict | None = None, only: str | None = None) -> dict[str, ZoneData]:
        """Parse every file zone (or the one named `only`).  Without `failed` the first bad
        zone raises; with it, a bad zone is left out, its error recorded there, and the others
        load."""
        if failed is None:
            datas = [load_zone_file(f, n, self.config.zone_dir) for f, n in self._file_specs(only)]
        else:
            datas, bad = load_or_fail(self._file_specs(only), self.config.zone_dir)
            failed.update(bad)
        out = {}
        for d in datas:
            out[d.origin.to_text()] = d
            for w in d.warnings:
                log.warning("%s", w)
        if failed is not None:
            # one line per zone; a changed zone whose serial did not increase is refused when
            # server.serial_check says so (it then keeps its previous version, like a bad file)
            refused = self._check_loads({n: d.summary() for n, d in out.items()})
            for name, err in refused.items():
                del out[name]
                failed[name] = err
        return out

    def _check_loads(self, loaded: dict[str, dict]) -> dict[str, str]:
        served = {n: s for n, s in self.zone_serials.items() if self._served(n)}
        return check_loads(loaded, served, self.zone_files, self.config.serial_check)

    def _note_failed(self, failed: dict[str, str]) -> None:
        """One error line per zone that does not load (and answers SERVFAIL), once."""
        for name, err in failed.items():
            if self.zone_failed.get(name) != err:
                log.error("zone %s did not load and answers SERVFAIL: %s", name, err)
        self.zone_failed = dict(failed)

    def _saved(self) -> SavedImage | None:
        """The saved image in the state directory, for file zones only (transferred zones are
        restored by pop53.xfr from their own snapshots)."""
        if not self.config.state or any(z.file is None for z in self.config.zones):
            return None
        return SavedImage(self.config.state, [(z.name, z.file) for z in self.config.zones])

    def _load_cached_image(self) -> Image | None:
        """A restart serves at once: when no file the saved image was compiled from changed,
        map that image instead of parsing again."""
        saved = self._saved()
        loaded = saved.load() if saved is not None else None
        if loaded is None:
            return None
        self._note_failed(loaded[1])
        self.zone_files = loaded[2]
        return loaded[0]

    def _save_cached_image(self, image: Image, files: dict[str, dict]) -> None:
        """files: origin -> {path: sha256} of the zones in `image`."""
        self.zone_files = {**self.zone_files, **files}
        saved = self._saved()
        if saved is not None:
            # a zone that did not load: its file as it is now (a fix invalidates the image)
            paths = {z.name: z.file for z in self.config.zones}
            failed = {name: file_digests(paths[name], self.config.zone_dir)
                      for name in self.zone_failed}
            saved.save(image, {**self.zone_files, **failed}, self.zone_failed)

    def publish(self, image: Image) -> int:
        """Make `image` the one every worker answers from.  One atomic store."""
        with self._lock:
            old = self.current_image
            gen = self.shared.publish(image.view)
            self.current_image = image
            if old is not None:
                self._retired.append((old, {id(w): w.epoch for w in self._readers()}))
            if self.mapping is not None and self.mapping.seed != image.view.seed:
                self.mapping.publish(image.view.seed)    # names hashed with the image's seed
            self.zone_serials = image.zones()
            now = time.time()
            for zone in self.zone_serials:
                self.zone_fresh.setdefault(zone, now)
            return gen

    def set_zones(self, zones: dict[str, ZoneData], failed: dict[str, str] | None = None) -> Image:
        """Compile the given zones (replacing all) and publish; `failed` zones (origin -> error)
        answer SERVFAIL.  Raises on a bad zone, and then nothing changes."""
        failed = failed or {}
        image = compile_zone_data(with_stand_ins(list(zones.values()), failed),
                                  expired=sorted(failed))
        self._check_size(image)
        with self._lock:
            # the parsed zones are kept for transfers and so that a zone whose file breaks
            # keeps its previous version on reload; big zone files compile in a child process
            # and are never held here (a parsed million-name zone is gigabytes in dnspython
            # objects; the image is ~90 MB)
            self.zone_data = dict(zones)
            self._note_failed(failed)
            self.publish(image)
            now = time.time()
            for name in zones:
                self.zone_fresh[name] = now
        self._save_cached_image(image, {n: d.files for n, d in zones.items()})
        return image

    def _check_size(self, image: Image) -> None:
        if self.config.max_image_bytes and len(image) > self.config.max_image_bytes:
            raise ZoneError(f"image would be {len(image)} bytes, over server.max_image_bytes "
                            f"({self.config.max_image_bytes})")

    def update_zone(self, data: ZoneData) -> Image:
        """Replace (or add) one zone, keeping the others: the path for transfers."""
        with self._lock:
            zones = dict(self.zone_data) if self.zone_data else self.load_zone_files()
            zones[data.origin.to_text()] = data
            return self.set_zones(zones)

    def _isolate_compile(self) -> bool:
        """Big zone files compile in a child process (its memory is returned to the system
        when it exits); small ones compile in-process, which is faster for them."""
        if self.control_handler is not None or not all(z.file for z in self.config.zones):
            return False
        try:
            return sum(os.path.getsize(z.file) for z in self.config.zones) > ISOLATE_BYTES
        except OSError:
            return False

    def compile_files(self) -> tuple[Image, dict[str, str], dict]:
        """Compile every file zone in a child process (see compiler.compile_files_isolated) into
        a new image file, map it and check its size: (the image, {origin: error} of the zones
        that did not load, SERVFAIL stand-ins in it, {path: sha256} of the files read).
        Nothing is published."""
        d = self.config.state or tempfile.gettempdir()
        os.makedirs(d, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".pop53-compile-", suffix=".img", dir=d)
        os.close(fd)
        try:
            result = compile_files_isolated(self._file_specs(), path, skip_bad=True,
                                            include_dir=self.config.zone_dir)
            failed = result["failed"]
            files = {n: z["files"] for n, z in result["loaded"].items()}
            image = load_image(path)
            refused = self._check_loads(result["loaded"])
            if refused:       # the image holds the refused version: keep the old one whole
                raise Pop53Error(next(iter(refused.values())))
        except CompilerUnavailable as exc:
            log.warning("%s; compiling in-process", exc)
            failed = {}
            loaded = self.load_zone_files(failed)
            zones = list(loaded.values())
            image = compile_zone_data(with_stand_ins(zones, failed), expired=sorted(failed))
            files = {n: d.files for n, d in loaded.items()}
        finally:
            os.unlink(path)        # the mapping keeps the data; no file is left behind
        self._check_size(image)
        return image, failed, files

    def _served(self, name: str) -> bool:
        """Whether `name` answers from real data now (not a SERVFAIL stand-in)."""
        return name in self.zone_serials and name not in self.zone_failed \
            and name not in self.zone_waiting

    def _publish_files_image(self, image: Image, failed: dict[str, str], files: dict) -> None:
        # a zone that served and now fails to load: its previous version is not held in this
        # process (child compile), so the whole reload is rejected and everything keeps serving
        lost = [n for n in failed if self._served(n)]
        if lost:
            raise Pop53Error(failed[lost[0]])
        with self._lock:
            self.zone_data = {}
            self._note_failed(failed)
            self.publish(image)
            now = time.time()
            for name in self.zone_serials:
                self.zone_fresh[name] = now
        self._save_cached_image(image, files)

    def reload(self, only: str | None = None) -> bool:
        """Re-read every zone file (or the one named `only`) and swap them in.  A zone that does not load is reported
        (one error line) and keeps its previous version, or answers SERVFAIL if it never
        loaded; the others are published.  When its previous version is not held in memory
        (child compile, saved image) the whole reload is rejected and everything keeps serving.
        Returns whether every zone loaded."""
        if only is not None and self.reload_hook is None and not self.zone_data:
            only = None     # the other zones' parsed versions are not held here: read them all
        if self.scoring is not None:
            self.scoring.load(self, strict=False)
        try:
            if self.mapping is not None:
                self.mapping.reload_maps()      # a bad map raises: the old maps keep serving
            if self.reload_hook is not None:
                failed = self.reload_hook(only) or {}     # {origin: error} of file zones
                zones = self.zone_serials
            elif self._isolate_compile():
                image, failed, files = self.compile_files()
                self._publish_files_image(image, failed, files)
                zones = self.zone_serials
            else:
                failed = {}
                files = self.load_zone_files(failed, only)
                configured = {z.name for z in self.config.zones}    # a config reload may drop some
                with self._lock:
                    # the zones not re-read, and the previous version of a zone whose file fails
                    zones = {k: v for k, v in self.zone_data.items()
                             if k not in files and k in configured}
                    zones.update(files)
                    for name in failed:
                        if name in zones:
                            log.error("zone %s: reload rejected, serial %d keeps serving: %s",
                                      name, zones[name].serial, failed[name])
                        elif self._served(name):
                            raise Pop53Error(failed[name])   # not held here: reject it all
                    stand_ins = {n: e for n, e in failed.items() if n not in zones}
                    if only is not None:    # the other zones' stand-ins stay
                        stand_ins = {**{n: e for n, e in self.zone_failed.items()
                                        if n in configured and n != only}, **stand_ins}
                    if files or stand_ins != self.zone_failed \
                            or set(self.zone_serials) - configured:    # else nothing changed
                        self.set_zones(zones, stand_ins)
            # the others are published; the zones that did not load count as a failed reload
            self.last_error = "; ".join(failed.values()) or None
            self.reload_failures += bool(failed)
            log.info("reloaded %d zone(s)%s, generation %d", len(zones) - len(failed),
                     f", {len(failed)} rejected" if failed else "", self.shared.generation)
            return not failed
        except Pop53Error as exc:
            self.reload_failures += 1
            self.last_error = str(exc)
            log.error("reload rejected, previous data keeps serving: %s", exc)
            return False

    def _readers(self) -> list:
        """Every loop that reads the published image: UDP workers and TCP loops."""
        return self.workers + (self.tcp.loops if self.tcp is not None else [])

    def restart_workers(self, responder, limiter) -> None:
        """New answer settings from a config reload (identity, NSID, CHAOS, EDNS size, cookies;
        RRL): each UDP worker stops at a batch boundary and runs again with them, one at a
        time; its socket queues what arrives meanwhile, so no query is lost."""
        self.responder, self.limiter = responder, limiter
        for i, w in enumerate(self.workers):
            w.stop()
            self._threads[i].join(2)
            t = threading.Thread(target=w.run, args=(self.shared, responder, limiter,
                                                     self.scoring and self.scoring.scorer),
                                 name=f"pop53-udp-{i}", daemon=True)
            self._threads[i] = t
            t.start()

    def reclaim(self) -> int:
        """Release retired images no worker can still hold.  Returns how many are left."""
        with self._lock:
            keep = []
            for image, epochs in self._retired:
                # two quiescent points past the publish: the worker has reloaded the pointer
                if all(not w.running or w.epoch >= epochs.get(id(w), 0) + 2 for w in self._readers()):
                    continue
                keep.append((image, epochs))
            self._retired = keep
            return len(keep)

    # -- lifecycle -------------------------------------------------------------------------
    def bind(self) -> None:
        for addr in self.config.listen:
            try:
                self._bind(addr)
            except OSError as exc:
                raise _start_error(exc, f"cannot listen on {addr}") from None

    def _bind(self, addr: Listen) -> None:
        cfg = self.config
        # with port 0 the first UDP socket picks the port and TCP and the rest of the group
        # follow it; if that port is taken for TCP, pick again
        for attempt in range(20):
            first = udp_socket(addr)
            a = Listen(addr.host, first.getsockname()[1])
            try:
                tsock = tcp_socket(a)
                break
            except OSError as exc:
                first.close()
                if addr.port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        addr = a
        try:
            group = [first] + [udp_socket(addr) for _ in range(cfg.workers - 1)]
        except OSError:
            first.close()
            tsock.close()
            raise
        if self.scoring is not None and self.scoring.steer:
            # a priority socket per worker, for known resolvers only (pop53.scoring.steer)
            group += [udp_socket(addr) for _ in range(cfg.workers)]
            self.scoring.attach(group, cfg.workers)
        elif cfg.reuseport_bpf:
            from pop53.ecmp import reuseport
            reuseport.attach_cbpf(group[0], len(group))
        if self.scoring is not None:
            for i, s in enumerate(group):
                self.scoring.prepare_socket(s, priority=i >= cfg.workers)
            group = group[:cfg.workers]     # priority sockets belong to their workers (scoring)
        self.udp_socks.extend(group)
        self.tcp_socks.append(tsock)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listen address (ports resolved when 0 was given)."""
        return [s.getsockname()[:2] for s in self.tcp_socks]

    def start(self) -> None:
        if self.config.state:
            try:
                os.makedirs(self.config.state, exist_ok=True)
            except OSError as exc:
                raise _start_error(exc, f"cannot create the state directory {self.config.state}") from None
        if self.current_image is None:
            cached = None
            if self.control_handler is None and all(z.file for z in self.config.zones):
                cached = self._load_cached_image()
            if cached is not None:
                self.publish(cached)
            elif self._isolate_compile():
                self._publish_files_image(*self.compile_files())
            else:
                failed: dict[str, str] = {}
                self.set_zones(self.load_zone_files(failed), failed)
        if self.scoring is not None:
            self.scoring.load(self, strict=True)
        if self.mapping is None:
            from pop53.mapping import service as mapping
            self.mapping = mapping.attach(self)
        if self.feed is None:
            from pop53.feed import service as feed
            self.feed = feed.attach(self)       # maps and liveness from the fleet's feed
        self.bind()
        dns.rdata.load_all_types()    # dnspython imports RR type modules lazily: do it as root
        from pop53.serve import metrics
        from pop53.serve import tcp  # noqa: F401  import while still root: after the drop the interpreter's own tree may be unreadable (e.g. under /root)
        self._before_drop(run_user(self.config.user))
        # what the data plane sets aside (NOTIFY, XFR, TSIG-signed) always reaches Python: a
        # server without transfers still owes TSIG-signed queries NOTAUTH/BADKEY (RFC 8945 §5.2)
        from pop53.xfr.secondary import ControlPlane
        self.control_plane = self.control_handler or ControlPlane(None, self)
        drop_privileges(self.config.user)
        for i, s in enumerate(self.udp_socks):
            w = _core.Worker(s.fileno(), i, True)
            if self.scoring is not None:
                self.scoring.worker(w, s)
            self.workers.append(w)
            t = threading.Thread(target=w.run, args=(self.shared, self.responder, self.limiter,
                                                     self.scoring and self.scoring.scorer),
                                 name=f"pop53-udp-{i}", daemon=True)
            self._threads.append(t)
        from pop53.serve.tcp import TcpServer
        self.tcp = TcpServer(self, self.tcp_socks)
        for t in self._threads:
            t.start()
        self.tcp.start()
        hk = threading.Thread(target=self._housekeeping, name="pop53-housekeeping", daemon=True)
        hk.start()
        self._threads.append(hk)
        self.started = True
        log.info("serving %d zone(s) on %s with %d worker(s) per address",
                 len(self.zone_serials), ", ".join(str(Listen(h, p)) for h, p in self.addresses),
                 self.config.workers)

    def _before_drop(self, pw) -> None:
        """What needs root or must belong to the run user, done before the switch (issue 14
        point 8): the state directory, the pidfile, the metrics port, the control socket.  A
        failure is one line naming the path or address."""
        cfg = self.config
        if cfg.state:
            try:
                give_to(pw, cfg.state, recursive=True)    # with what this start saved in it
            except OSError as exc:
                raise _start_error(exc, f"cannot prepare the state directory {cfg.state}") from None
        if self.pidfile:
            try:
                with open(self.pidfile, "w") as f:
                    f.write(f"{os.getpid()}\n")
                give_to(pw, self.pidfile)
            except OSError as exc:
                raise _start_error(exc, f"cannot write the pidfile {self.pidfile}") from None
        if cfg.metrics is not None:
            from pop53.serve import metrics
            try:
                metrics.start(self, cfg.metrics)
            except OSError as exc:
                raise _start_error(exc, f"cannot listen on {cfg.metrics} (metrics)") from None
        if cfg.control:
            from pop53.serve.control import ControlServer
            self.control = ControlServer(self, cfg.control)
            try:
                self.control.start()
                give_to(pw, cfg.control)
            except OSError as exc:
                raise _start_error(exc, f"cannot create the control socket {cfg.control}") from None

    def _housekeeping(self) -> None:
        while not self._stop.wait(0.02):
            self.reclaim()
            if self.scoring is not None:
                self.scoring.housekeeping(self)
            for i, w in enumerate(self.workers):
                for msg, addr in w.take_control():
                    self._control_udp(self.udp_socks[i], msg, addr)

    def _control_udp(self, sock: socket.socket, msg: bytes, rawaddr: bytes) -> None:
        peer = _sockaddr(rawaddr)
        try:
            reply = self.control_plane.handle_udp(msg, peer)
        except Exception:
            log.exception("control handler failed on a message from %s", peer)
            reply = None
        if reply is None:
            _act, reply = _core.answer(self.current_image.view if self.current_image else None,
                                       msg, self.responder, False)
        if reply:
            try:
                sock.sendto(reply, peer)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        for w in self.workers:
            w.stop()
        if self.feed is not None:
            self.feed.stop()
        if self.tcp is not None:
            self.tcp.stop()
        deadline = time.monotonic() + 2
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for s in self.udp_socks + self.tcp_socks:
            try:
                s.close()
            except OSError:
                pass
        if self.scoring is not None:
            self.scoring.close()
        if self.control is not None:
            self.control.stop()
        if self.pidfile and self.started:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        self.started = False

    def stats(self) -> dict:
        total: dict = {}
        for w in self.workers:
            for k, v in w.stats().items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
        if self.tcp is not None:
            for k, v in self.tcp.counters.stats().items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
        return total


def _sockaddr(raw: bytes) -> tuple:
    family = struct.unpack_from("=H", raw, 0)[0]
    if family == socket.AF_INET:
        port = struct.unpack_from("!H", raw, 2)[0]
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6:
        port = struct.unpack_from("!H", raw, 2)[0]
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, 0, 0)
    raise ValueError(f"unknown address family {family}")
