"""The server: what a `pop53 serve` process is made of, and its lifecycle.

Three parts, each with one concern:
  - `ImageSlot` (serve/imageslot.py): the published image and the retired ones behind it;
  - `ZoneSet` (serve/zones.py): which zones load from what files, compiling, publishing into
    the slot, reload, the saved image;
  - `Workers` (serve/workers.py): sockets, UDP worker threads, TCP, housekeeping.
`Server` ties them together and runs the process's lifecycle: load before binding, bind, what
needs root before the privilege drop (state directory, pidfile, metrics, control socket), the
drop, the threads, and stop.  Transfers (pop53.xfr.secondary), the control socket
(serve/control.py) and config reload (serve/reconfig.py) use `server.zones`, `server.slot`
and `server.net` rather than reaching into the server.
"""
from __future__ import annotations

import logging
import os

import dns.rdata

from pop53 import _core
from pop53.config import Config, Listen
from pop53.errors import Pop53Error
from pop53.serve.imageslot import ImageSlot
from pop53.serve.sockets import _start_error, drop_privileges, give_to, run_user
from pop53.serve.workers import Workers
from pop53.serve.zones import ZoneSet
from pop53.zone.images import Image
from pop53.zone.zonefile import ZoneData

log = logging.getLogger("pop53.server")


class Server:
    def __init__(self, config: Config, *, control_handler=None):
        self.config = config
        responder = _core.Responder(
            identity=config.identity if config.nsid or config.chaos else "",
            version=config.version, chaos=config.chaos, nsid=config.nsid,
            edns_max=config.edns_max, cookie_secret=config.cookie_secret,
            cookie_secret_previous=config.cookie_secret_previous)
        # query scoring before any lookup ([scoring], pop53.scoring)
        self.scoring = None
        if config.scoring:
            from pop53.scoring.service import ScoringService
            self.scoring = ScoringService(config.scoring, config.state)
            self.scoring.set_cookie_secrets(config.cookie_secret, config.cookie_secret_previous)
        self.shared = _core.Shared()
        self.slot = ImageSlot(self.shared, lambda: self.net.readers())
        self.slot.listeners.append(self._seed_maps)
        if self.scoring is not None:
            self.scoring.watch_images(self.slot)      # the kernel stage's name filter
        self.zones = ZoneSet(lambda: self.config, self.slot)
        # one response-rate-limiting table for all UDP workers ([rrl]; TCP is never limited)
        self.net = Workers(self.slot, responder,
                           _core.RateLimiter(**config.rrl) if config.rrl else None, self.scoring)
        self.control_handler = control_handler
        self.control_plane = control_handler     # set in start(): never None there
        self._metrics_httpd = None
        self.control = None
        self.pidfile: str | None = None     # written (and given to the run user) before the drop
        self.mapping = None          # pop53.mapping.service.MappingState ([[mapped]])
        self.feed = None             # pop53.feed.transport.Subscriber ([feed])
        self.xdp = None              # pop53.serve.xdp.XdpService ([server] xdp)
        self.observe = None          # pop53.serve.observe.Observe: zone counters, dnstap
        self.started = False

    def _seed_maps(self, image: Image, _changed=None) -> None:
        if self.mapping is not None and self.mapping.seed != image.view.seed:
            self.mapping.publish(image.view.seed)    # names hashed with the image's seed

    # -- what the data plane, tests and metrics read (the parts own it) ------------------------
    current_image = property(lambda self: self.slot.current)
    responder = property(lambda self: self.net.responder)
    limiter = property(lambda self: self.net.limiter)
    workers = property(lambda self: self.net.workers)
    tcp = property(lambda self: self.net.tcp)
    addresses = property(lambda self: self.net.addresses)
    zone_serials = property(lambda self: self.zones.serials)
    zone_fresh = property(lambda self: self.zones.fresh)
    zone_failed = property(lambda self: self.zones.failed)
    zone_waiting = property(lambda self: self.zones.waiting)
    last_error = property(lambda self: self.zones.last_error)
    reload_failures = property(lambda self: self.zones.reload_failures)

    def publish(self, image: Image) -> int:
        return self.slot.publish(image)

    def reclaim(self) -> int:
        return self.slot.reclaim()

    def set_zones(self, zones: dict[str, ZoneData], failed: dict[str, str] | None = None) -> Image:
        return self.zones.set_zones(zones, failed)

    def update_zone(self, data: ZoneData) -> Image:
        return self.zones.update_zone(data)

    def stats(self) -> dict:
        return self.net.stats()

    def restart_workers(self, responder, limiter, edns_max: int | None = None) -> None:
        self.net.restart(responder, limiter, edns_max)

    # -- reload --------------------------------------------------------------------------------
    def reload(self, only: str | None = None) -> bool:
        """Re-read the known-resolvers file, the maps and every zone file (or the zone `only`)
        and swap them in (ZoneSet.reload).  Returns whether everything loaded; a rejected
        reload keeps what was served."""
        if self.scoring is not None:
            self.scoring.load(self, strict=False)
        try:
            if self.mapping is not None:
                self.mapping.reload_maps()      # a bad map raises: the old maps keep serving
            ok = self.zones.reload(only)
            if self.mapping is not None and only is None:
                # dnssec_keys read again (a key roll); a bad key file raises: the old keys sign
                self.mapping.rekey(self.config, self.current_image)
            return ok
        except Pop53Error as exc:
            self.zones.record_failure(str(exc))
            log.error("reload rejected, previous data keeps serving: %s", exc)
            return False

    # -- lifecycle -----------------------------------------------------------------------------
    def bind(self) -> None:
        self.net.bind(self.config)

    def start(self) -> None:
        if self.config.state:
            try:
                os.makedirs(self.config.state, exist_ok=True)
            except OSError as exc:
                raise _start_error(exc, f"cannot create the state directory {self.config.state}") from None
        if self.slot.current is None:
            self.zones.load_first()
        if self.scoring is not None:
            self.scoring.load(self, strict=True)
            self.net.housekeeping.append(lambda: self.scoring.housekeeping(self))
        if self.mapping is None:
            from pop53.mapping import service as mapping
            self.mapping = mapping.attach(self)
        if self.feed is None:
            from pop53.feed import service as feed
            self.feed = feed.attach(self)       # maps and liveness from the fleet's feed
        self.bind()
        dns.rdata.load_all_types()    # dnspython imports RR type modules lazily: do it as root
        from pop53.serve import metrics  # noqa: F401
        from pop53.serve import tcp  # noqa: F401  import while still root: after the drop the interpreter's own tree may be unreadable (e.g. under /root)
        self._before_drop(run_user(self.config.user))
        # what the data plane sets aside (NOTIFY, XFR, TSIG-signed) always reaches Python: a
        # server without transfers still owes TSIG-signed queries NOTAUTH/BADKEY (RFC 8945 §5.2)
        from pop53.xfr.secondary import ControlPlane
        self.control_plane = self.control_handler or ControlPlane(None, self)
        if self.config.xdp:
            from pop53.serve import xdp
            self.xdp = xdp.attach(self)     # needs root: programs and AF_XDP sockets
        drop_privileges(self.config.user)
        self.net.start(self, lambda: self.control_plane, prepare=self._observe)
        self.started = True
        log.info("serving %d zone(s) on %s with %d worker(s) per address",
                 len(self.zones.serials), ", ".join(str(Listen(h, p)) for h, p in self.addresses),
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

    def _observe(self) -> None:
        """Per-zone counters, latency and dnstap on every reader, before its thread runs; each
        image gets its zone -> counter slot table before it is published."""
        from pop53.serve.observe import Observe
        self.observe = Observe(self)
        self.observe.attach()
        self.slot.before.append(self.observe.label)

    def stop(self) -> None:
        self.zones.stop()
        self.net.stop(before_join=self._stop_feeds)

    def _stop_feeds(self) -> None:
        if self.feed is not None:
            self.feed.stop()
        if self.mapping is not None:
            self.mapping.stop()         # its signature-renewal thread
        if self.observe is not None:
            self.observe.stop()
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
