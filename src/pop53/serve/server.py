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
import json
import logging
import os
import pwd
import socket
import struct
import tempfile
import threading
import time

import dns.rdata

from pop53 import _core
from pop53.zone.compiler import CompilerUnavailable, compile_files_isolated, compile_zone_data
from pop53.config import Config, Listen
from pop53.errors import Pop53Error, ZoneError
from pop53.zone.images import Image, load_image
from pop53.zone.zonefile import ZoneData, load_zone_file

log = logging.getLogger("pop53.server")

# Linux constants Python's socket module may not name
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
RECV_TIMEOUT = 0.1
ISOLATE_BYTES = 1 << 20   # zone files larger than this in all compile in a child process   # how often an idle worker passes a quiescent point and checks for stop


def udp_socket(addr: Listen) -> socket.socket:
    s = socket.socket(addr.family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, int(RECV_TIMEOUT * 1e6)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if addr.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if addr.wildcard:
        # replies must leave from the address the query was sent to
        if addr.family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
    s.bind((addr.host, addr.port))
    return s


def tcp_socket(addr: Listen) -> socket.socket:
    s = socket.socket(addr.family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if addr.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr.host, addr.port))
    s.listen(1024)
    s.setblocking(False)
    return s


def drop_privileges(user: str | None) -> None:
    """After binding: switch to the unprivileged user before anything is served."""
    if not user or os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise Pop53Error(f"user {user!r} does not exist (server.user)") from None
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise Pop53Error("could not drop root privileges")
    log.info("dropped privileges to %s (uid %d)", user, pw.pw_uid)


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
        self.control_handler = control_handler
        self.current_image: Image | None = None
        self.zone_data: dict[str, ZoneData] = {}
        self.zone_serials: dict[str, int] = {}
        self.zone_fresh: dict[str, float] = {}
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
        self.started = False

    # -- zones and images ------------------------------------------------------------------
    def load_zone_files(self) -> dict[str, ZoneData]:
        out = {}
        for z in self.config.zones:
            if z.file is not None:
                out[z.name] = load_zone_file(z.file, z.name)
                for w in out[z.name].warnings:
                    log.warning("%s", w)
        return out

    def _file_manifest(self) -> list:
        out = []
        for z in self.config.zones:
            if z.file is not None:
                st = os.stat(z.file)
                out.append([z.name, os.path.abspath(z.file), st.st_mtime_ns, st.st_size])
        return out

    def _cache_paths(self) -> tuple[str, str] | None:
        if not self.config.state:
            return None
        return (os.path.join(self.config.state, "zones.img"),
                os.path.join(self.config.state, "zones.img.json"))

    def _load_cached_image(self) -> Image | None:
        """A restart serves at once: when the zone files are unchanged since the image in the
        state directory was compiled, map that image instead of parsing again."""
        paths = self._cache_paths()
        if paths is None or any(z.file is None for z in self.config.zones):
            return None
        try:
            with open(paths[1]) as f:
                meta = json.load(f)
            if meta.get("files") != self._file_manifest():
                return None
            image = load_image(paths[0])
        except (OSError, ValueError, Pop53Error) as exc:
            log.info("not using the saved image: %s", exc)
            return None
        log.info("serving the saved image %s (zone files unchanged)", paths[0])
        return image

    def _save_cached_image(self, image: Image) -> None:
        paths = self._cache_paths()
        if paths is None or any(z.file is None for z in self.config.zones):
            return
        try:
            os.makedirs(self.config.state, exist_ok=True)
            image.save(paths[0])
            tmp = paths[1] + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"files": self._file_manifest()}, f)
            os.replace(tmp, paths[1])
        except OSError as exc:
            log.warning("could not save the image to %s: %s", paths[0], exc)

    def publish(self, image: Image) -> int:
        """Make `image` the one every worker answers from.  One atomic store."""
        with self._lock:
            old = self.current_image
            gen = self.shared.publish(image.view)
            self.current_image = image
            if old is not None:
                self._retired.append((old, {id(w): w.epoch for w in self._readers()}))
            self.zone_serials = image.zones()
            now = time.time()
            for zone in self.zone_serials:
                self.zone_fresh.setdefault(zone, now)
            return gen

    def set_zones(self, zones: dict[str, ZoneData]) -> Image:
        """Compile the given zones (replacing all) and publish.  Raises on a bad zone, and then
        nothing changes."""
        image = compile_zone_data(list(zones.values()))
        self._check_size(image)
        with self._lock:
            # keep the parsed zones only where transfers need them (memory: a parsed
            # million-name zone is gigabytes in dnspython objects; the image is ~90 MB)
            self.zone_data = dict(zones) if self.control_handler is not None else {}
            self.publish(image)
            now = time.time()
            for name in zones:
                self.zone_fresh[name] = now
        self._save_cached_image(image)
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

    def compile_files(self) -> Image:
        """Compile every file zone in a child process (see compiler.compile_files_isolated) into
        a new image file, map it and check its size.  Nothing is published."""
        d = self.config.state or tempfile.gettempdir()
        os.makedirs(d, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".pop53-compile-", suffix=".img", dir=d)
        os.close(fd)
        try:
            compile_files_isolated([(z.file, z.name) for z in self.config.zones if z.file], path)
            image = load_image(path)
        except CompilerUnavailable as exc:
            log.warning("%s; compiling in-process", exc)
            image = compile_zone_data(list(self.load_zone_files().values()))
        finally:
            os.unlink(path)        # the mapping keeps the data; no file is left behind
        self._check_size(image)
        return image

    def _publish_files_image(self, image: Image) -> None:
        with self._lock:
            self.zone_data = {}
            self.publish(image)
            now = time.time()
            for name in self.zone_serials:
                self.zone_fresh[name] = now
        self._save_cached_image(image)

    def reload(self) -> bool:
        """Re-read every zone file and swap them in.  A bad zone is rejected with an error and
        the previous data keeps serving.  Returns whether the new data was published."""
        try:
            if self.reload_hook is not None:
                self.reload_hook()
                self.last_error = None
                log.info("reloaded, generation %d", self.shared.generation)
                return True
            if self._isolate_compile():
                self._publish_files_image(self.compile_files())
                zones = self.zone_serials
                self.last_error = None
                log.info("reloaded %d zone(s), generation %d", len(zones), self.shared.generation)
                return True
            files = self.load_zone_files()
            with self._lock:
                zones = {k: v for k, v in self.zone_data.items() if k not in files}
                zones.update(files)
                self.set_zones(zones)
            self.last_error = None
            log.info("reloaded %d zone(s), generation %d", len(zones), self.shared.generation)
            return True
        except Pop53Error as exc:
            self.reload_failures += 1
            self.last_error = str(exc)
            log.error("reload rejected, previous data keeps serving: %s", exc)
            return False

    def _readers(self) -> list:
        """Every loop that reads the published image: UDP workers and TCP loops."""
        return self.workers + (self.tcp.loops if self.tcp is not None else [])

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
        cfg = self.config
        for addr in cfg.listen:
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
            group = [first] + [udp_socket(addr) for _ in range(cfg.workers - 1)]
            if cfg.reuseport_bpf:
                from pop53.ecmp import reuseport
                reuseport.attach_cbpf(group[0], len(group))
            self.udp_socks.extend(group)
            self.tcp_socks.append(tsock)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listen address (ports resolved when 0 was given)."""
        return [s.getsockname()[:2] for s in self.tcp_socks]

    def start(self) -> None:
        if self.current_image is None:
            cached = None
            if self.control_handler is None and all(z.file for z in self.config.zones):
                cached = self._load_cached_image()
            if cached is not None:
                self.publish(cached)
            elif self._isolate_compile():
                self._publish_files_image(self.compile_files())
            else:
                self.set_zones(self.load_zone_files())
        self.bind()
        dns.rdata.load_all_types()    # dnspython imports RR type modules lazily: do it as root
        from pop53.serve import metrics
        from pop53.serve import tcp  # noqa: F401  import while still root: after the drop the interpreter's own tree may be unreadable (e.g. under /root)
        drop_privileges(self.config.user)
        control = self.control_handler is not None
        for i, s in enumerate(self.udp_socks):
            w = _core.Worker(s.fileno(), i, control)
            self.workers.append(w)
            t = threading.Thread(target=w.run, args=(self.shared, self.responder, self.limiter),
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
        if self.config.metrics is not None:
            from pop53.serve import metrics
            metrics.start(self, self.config.metrics)
        if self.config.control:
            from pop53.serve.control import ControlServer
            self.control = ControlServer(self, self.config.control)
            self.control.start()
        self.started = True
        log.info("serving %d zone(s) on %s with %d worker(s) per address",
                 len(self.zone_serials), ", ".join(str(Listen(h, p)) for h, p in self.addresses),
                 self.config.workers)

    def _housekeeping(self) -> None:
        while not self._stop.wait(0.02):
            self.reclaim()
            if self.control_handler is not None:
                for i, w in enumerate(self.workers):
                    for msg, addr in w.take_control():
                        self._control_udp(self.udp_socks[i], msg, addr)

    def _control_udp(self, sock: socket.socket, msg: bytes, rawaddr: bytes) -> None:
        peer = _sockaddr(rawaddr)
        try:
            reply = self.control_handler.handle_udp(msg, peer)
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
        if self.control is not None:
            self.control.stop()
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
