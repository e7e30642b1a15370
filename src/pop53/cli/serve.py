"""`pop53 serve`: run the server until SIGTERM/SIGINT (or `ctl stop`); SIGHUP reloads the
config file and the zones (pop53.serve.reconfig)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the authoritative server")
    p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--zone", action="append", default=[], metavar="FILE",
                   help="zone file to serve (repeatable; origin from $ORIGIN or SOA)")
    p.add_argument("--example", action="store_true", help="serve the embedded example zone")
    p.add_argument("--listen", action="append", default=[], metavar="ADDR:PORT",
                   help="listen address (repeatable; default 127.0.0.1:53)")
    p.add_argument("--workers", type=int, help="UDP workers per address (default: one per core)")
    p.add_argument("--identity", help="NSID and id.server identity (default: hostname)")
    p.add_argument("--metrics", metavar="ADDR:PORT", help="Prometheus endpoint")
    p.add_argument("--user", help="drop privileges to this user after binding")
    p.add_argument("--state", metavar="DIR", help="state directory: the compiled image is saved "
                   "there and reused at start while the zone files are unchanged")
    p.add_argument("--control", metavar="PATH", help="control socket for `pop53 ctl`")
    p.add_argument("--pidfile", help="write the process id here")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)


def build_config(args):
    from pop53 import config as cfgmod
    from pop53.errors import ConfigError
    from pop53.cli.query import example_zone_path

    if args.config:
        cfg = cfgmod.load(args.config)
    else:
        zones = [{"name": _origin_of(z), "file": os.path.abspath(z)} for z in args.zone]
        doc: dict = {"server": {}, "zone": zones}
        if args.example:
            zones.append({"name": "example.com.", "file": example_zone_path()})
            doc.update(_example_cdn(zones))
        if not zones:
            raise ConfigError("give --config FILE, --zone FILE or --example")
        data = os.path.dirname(example_zone_path())
        cfg = cfgmod.from_dict(doc, file="<command line>", base_dir=data)
    for attr, value in overrides(args).items():
        setattr(cfg, attr, value)
    return cfg


def overrides(args) -> dict:
    """The settings given on the command line: they override the file's, at start and at
    every config reload (pop53.serve.reconfig)."""
    from pop53 import config as cfgmod
    from pop53.errors import ConfigError

    out: dict = {}
    if args.listen:
        out["listen"] = [cfgmod.parse_listen(v, "--listen", None) for v in args.listen]
    if args.workers is not None:
        if not 1 <= args.workers <= 256:
            raise ConfigError("must be within 1..256", key="--workers")
        out["workers"] = args.workers
    if args.identity is not None:
        out["identity"] = args.identity
    if args.metrics:
        out["metrics"] = cfgmod.parse_listen(args.metrics, "--metrics", None, default_port=9153)
    for attr in ("user", "state", "control"):
        if getattr(args, attr):
            out[attr] = getattr(args, attr)
    return out


def _example_cdn(zones: list) -> dict:
    """The example's small CDN chain (docs/mapping.md): zone example.net. and its mapping."""
    import tomllib
    from pop53.cli.query import example_zone_path

    data = os.path.dirname(example_zone_path())
    zones.append({"name": "example.net.", "file": os.path.join(data, "example.net.zone")})
    with open(os.path.join(data, "example-mapping.toml"), "rb") as f:
        return tomllib.load(f)


def _origin_of(path: str) -> str:
    from pop53.zone.zonefile import guess_file_origin

    try:
        return guess_file_origin(path).to_text()
    except OSError as exc:
        from pop53.errors import ZoneError
        raise ZoneError(f"cannot read zone file: {exc.strerror}", file=path) from None


def run(args) -> int:
    from pop53 import __version__
    from pop53.xfr import secondary
    from pop53.serve import reconfig, sdnotify
    from pop53.serve.server import Server
    from pop53 import logs

    cfg = build_config(args)          # a bad config is one line on stderr, before any log
    logs.configure(cfg.log_format, "debug" if args.verbose else cfg.log_level)
    log = logging.getLogger("pop53")
    started = time.monotonic()
    log.info("pop53 %s starting, pid %d, config %s", __version__, os.getpid(),
             args.config or "from the command line",
             extra={"fields": {"event": "start", "version": __version__, "pid": os.getpid()}})
    if secondary.needs_engine(cfg):
        server, service = secondary.build(cfg)
    else:
        server, service = Server(cfg), None
    stop = threading.Event()          # `pop53 ctl stop` sets it from the control thread
    # The signal handlers only set flags the loop below reads: a handler runs in the main
    # thread between two bytecodes, possibly inside stop.wait() holding the Event's lock, and
    # an Event.set() there would wait for that lock for ever (a SIGTERM that hung a test's
    # server in CI, session 15)
    signalled: dict[str, bool] = {"stop": False, "hup": False}
    signal.signal(signal.SIGTERM, lambda *_: signalled.__setitem__("stop", True))
    signal.signal(signal.SIGINT, lambda *_: signalled.__setitem__("stop", True))
    signal.signal(signal.SIGHUP, lambda *_: signalled.__setitem__("hup", True))
    server.pidfile = args.pidfile      # written before the privilege drop
    server.config_overrides = overrides(args)     # kept over a config reload
    server.on_stop = stop.set                     # `pop53 ctl stop`
    server.start()
    if service is not None:
        service.start()
    for host, port in server.addresses:
        if cfg.log_format == "json":
            log.info("pop53: listening on %s port %d (udp+tcp)", host, port,
                     extra={"fields": {"event": "listen", "address": host, "port": port}})
        else:
            print(f"pop53: listening on {host} port {port} (udp+tcp)", file=sys.stderr, flush=True)
    # systemd Type=notify: ready once bound and the zones are published
    sdnotify.notify("READY=1", f"MAINPID={os.getpid()}",
                    f"STATUS=pop53 {__version__}: serving {len(server.zone_serials)} zone(s)")
    watchdog = sdnotify.Watchdog()
    def reload_on_hup() -> None:
        sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        ok = reconfig.reload(server)["ok"]
        sdnotify.notify("READY=1", f"STATUS=pop53 {__version__}: serving "
                        f"{len(server.zone_serials)} zone(s)"
                        + ("" if ok else f"; last reload rejected: {server.last_error}"))

    reloading = None
    try:
        # SIGHUP reloads on a thread: this loop keeps watching for SIGTERM, which stops the
        # process within a second even while a reload compiles (issue 14 point 2)
        while not stop.wait(0.2) and not signalled["stop"]:
            watchdog.tick()
            if signalled["hup"] and (reloading is None or not reloading.is_alive()):
                signalled["hup"] = False
                reloading = threading.Thread(target=reload_on_hup, name="pop53-reload",
                                             daemon=True)
                reloading.start()
    finally:
        sdnotify.notify("STOPPING=1")
        if service is not None:
            service.stop()
        server.stop()
        up = time.monotonic() - started
        log.info("pop53 %s stopped after %.1f s", __version__, up,
                 extra={"fields": {"event": "stop", "version": __version__, "uptime": round(up, 3)}})
    return 0
