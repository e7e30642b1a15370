"""Config reload (issue 14 point 3): `pop53 ctl reload` and SIGHUP re-read the config file, not
only the zone files.

The new file is validated whole first (the schema, every table's value checks, the transfer
tables); an invalid one is rejected with its one-line error and the running configuration keeps
serving, unchanged.  Then, without a restart:
  - zones added to or removed from [[zone]] are loaded or dropped (per zone: a bad new zone is a
    SERVFAIL stand-in, as at start);
  - [[key]] TSIG keys, allow_transfer / notify ACLs, primaries and the [xfr] options apply to
    the transfer engine (pop53.xfr.zoneset.reconfigure);
  - identity, version, nsid, chaos, edns_max, cookies and [rrl]: the UDP workers restart one at
    a time with the new settings (Server.restart_workers);
  - serial_check, max_image_bytes, zone_dir, [log] apply from the next load / line;
  - [dnstap]: sampling and kinds at once, a new path, identity or version re-opens the output
    (serve/dnstap.py; not ring_size, nor turning it on in a server started without it).
What is bound or dropped at start (listen, workers, user, control, metrics, state,
reuseport_bpf, the TCP limits) cannot change live: such a change is reported as "needs a
restart" (in the log and ctl's reply) and the running value stays.  Settings given on the
command line (`serve --listen ...`) keep overriding the file.  A config file the run user
cannot read (root-only, [server] user set) is not re-read: the zone files are, with a warning.
"""
from __future__ import annotations

import logging
import os
import threading

from pop53 import config as cfgmod
from pop53.errors import ConfigError

log = logging.getLogger("pop53.server")

# bound, opened or dropped at start
RESTART = ("listen", "workers", "user", "control", "metrics", "state", "reuseport_bpf",
           "tcp_idle_timeout", "tcp_max_connections", "tcp_max_queries", "receive_timestamps",
           "receive_timestamp_every", "udp_coalesce_us")
# what the data plane's Responder holds
ANSWER = ("identity", "version", "chaos", "nsid", "edns_max", "cookie_secret",
          "cookie_secret_previous")
COOKIE_KEYS = ("cookies", "cookie_secret", "cookie_secret_previous")
_ONE_AT_A_TIME = threading.Lock()     # SIGHUP (main thread) and ctl (control thread)


def _engine(server):
    return getattr(server.control_handler, "service", None)


def load_new(server) -> tuple:
    """Read and check the config file again: (new Config, new XfrConfig or None).  Raises
    ConfigError (one line naming the file and key) and changes nothing."""
    from pop53.xfr.config import parse_xfr_config
    from pop53.xfr.secondary import needs_engine

    old = server.config
    new = cfgmod.load(old.source)
    for attr, value in getattr(server, "config_overrides", {}).items():
        setattr(new, attr, value)
    # `cookies = true` without a secret draws a random one per load: keep the running one
    # while the cookie keys are unchanged (a new one would invalidate every client's cookie)
    if all(old.doc.get("server", {}).get(k) == new.doc.get("server", {}).get(k)
           for k in COOKIE_KEYS):
        new.cookie_secret = old.cookie_secret
        new.cookie_secret_previous = old.cookie_secret_previous
    from pop53.serve import dnstap
    dnstap.parse(new.doc, new.source, new.identity)     # a bad [dnstap] rejects the reload
    xcfg = None
    if _engine(server) is not None:
        xcfg = parse_xfr_config(new.doc, new.source)
    elif needs_engine(new):
        raise ConfigError("transfers (a [[key]], or primaries, notify or allow_transfer in a "
                          "[[zone]]) on a server started without them need a restart",
                          file=new.source)
    return new, xcfg


def apply(server, new, xcfg) -> dict:
    """Switch to a checked configuration; returns what changed."""
    from pop53 import _core, logs

    old = server.config
    restart = [k for k in RESTART if getattr(new, k) != getattr(old, k)]
    for k in restart:
        log.warning("config reload: server.%s changed; it needs a restart (%s keeps serving)",
                    k, getattr(old, k))
        setattr(new, k, getattr(old, k))
    report: dict = {"restart": [f"server.{k}" for k in restart]}
    if getattr(server, "observe", None) is not None:       # [dnstap]: serve/observe.py
        for k in server.observe.reconfigure_dnstap(new):
            log.warning("config reload: %s changed; it needs a restart", k)
            report["restart"].append(k)
    before = {z.name for z in old.zones}
    after = {z.name for z in new.zones}
    report["added"] = sorted(after - before)
    report["removed"] = sorted(before - after)
    answer = any(getattr(new, k) != getattr(old, k) for k in ANSWER)
    if answer or new.rrl != old.rrl:
        responder = server.responder
        if answer:
            responder = _core.Responder(
                identity=new.identity if new.nsid or new.chaos else "", version=new.version,
                chaos=new.chaos, nsid=new.nsid, edns_max=new.edns_max,
                cookie_secret=new.cookie_secret, cookie_secret_previous=new.cookie_secret_previous)
        limiter = server.limiter
        if new.rrl != old.rrl:
            limiter = _core.RateLimiter(**new.rrl) if new.rrl else None
        server.restart_workers(responder, limiter, new.edns_max)
        if server.scoring is not None:       # the kernel stage's cookie check follows the secrets
            server.scoring.set_cookie_secrets(new.cookie_secret, new.cookie_secret_previous)
        report["answers"] = True
    if (new.log_format, new.log_level) != (old.log_format, old.log_level):
        logs.configure(new.log_format, new.log_level)
    server.config = new
    svc = _engine(server)
    if svc is not None:
        from pop53.xfr import zoneset
        report["xfr"] = zoneset.reconfigure(svc, xcfg, publish=False)
    return report


def reload(server, only: str | None = None) -> dict:
    """`ctl reload [ZONE]` / SIGHUP: the config file (when the server has one) and the zone
    files; with `only`, that zone's file alone and not the config.  The control reply."""
    with _ONE_AT_A_TIME:
        return _reload(server, only)


def _reload(server, only: str | None) -> dict:
    report: dict = {}
    source = server.config.source
    if only is None and source and not source.startswith("<") and server.config.user \
            and not os.access(source, os.R_OK):
        # root-only config file and [server] user: the zone files still reload (as before)
        log.warning("config file %s is not readable by %s after the privilege drop: the "
                    "configuration is kept, only the zone files are read again", source,
                    server.config.user)
        report = {"config": "unreadable"}
    elif only is None and source and not source.startswith("<"):
        try:
            new, xcfg = load_new(server)
        except ConfigError as exc:
            server.zones.record_failure(str(exc))
            log.error("config reload rejected, the previous configuration keeps serving: %s", exc)
            return {"ok": False, "error": str(exc), "config": "rejected"}
        report = apply(server, new, xcfg)
        report["config"] = "reloaded"
        if report["added"] or report["removed"]:
            log.info("config reloaded: %d zone(s) added (%s), %d removed (%s)",
                     len(report["added"]), ", ".join(report["added"]) or "-",
                     len(report["removed"]), ", ".join(report["removed"]) or "-")
    ok = server.reload(only)
    return {"ok": ok, "generation": server.slot.generation, "error": server.zones.last_error,
            **report}
