"""The control socket: a Unix stream socket that takes one command per connection and answers
one JSON object.  Commands (knotc's names where knotc has one):
  reload [ZONE]        the config file and every zone file (pop53.serve.reconfig); with ZONE
                       that zone's file only (also `zone-reload ZONE`)
  status, zones, stats the server, its zones, its counters
  zone-status [ZONE]   per zone: serial, state, kind (file / secondary), transfer freshness
  zone-notify ZONE     NOTIFY the zone's secondaries now
  zone-refresh ZONE    an SOA check of a secondary zone now (also `refresh`)
  zone-retransfer ZONE a full transfer now (also `retransfer`)
  zone-flush [ZONE] [-o DIR]  write transferred zones to zone files (pop53.xfr.flush)
  xfr                  transferred zones' freshness, the machine's stale flag and role
  stop                 stop the server (as SIGTERM)
  target NAME up|down  a mapped answer target's liveness, published at once
  mapping              maps, targets and the mapping generation

Root-owned by default (mode 0600), so only the operator can drive it.  Each connection is
served on its own thread, so `status` answers (with the reload's progress) while a reload is
compiling (issue 14 point 2); reloads themselves run one at a time (serve/reconfig.py).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading

log = logging.getLogger("pop53.control")
MAX_CONNECTIONS = 16      # connections served at once; more wait in the listen queue
# the client side (commands, send, format_reply) is serve/ctlclient.py: `pop53 ctl` imports
# only that
from pop53.serve.ctlclient import ALIASES, COMMANDS, RELOADS, NoReply, format_reply, send  # noqa: F401,E402


class ControlServer:
    def __init__(self, server, path: str):
        self.server = server
        self.path = path
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def start(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        s.listen(8)
        s.settimeout(0.2)
        self.sock = s
        self.thread = threading.Thread(target=self._run, name="pop53-control", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            while not self._slots.acquire(timeout=0.2):
                if self._stop.is_set():
                    conn.close()
                    return
            threading.Thread(target=self._serve, args=(conn,), name="pop53-control-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(2)
                try:
                    cmd = conn.recv(256).decode("ascii", "replace").strip()
                    reply = self.handle(cmd)
                    conn.settimeout(10)
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass
        finally:
            self._slots.release()

    def handle(self, cmd: str) -> dict:
        s = self.server
        verb, _, arg = cmd.partition(" ")
        verb, arg = ALIASES.get(verb, verb), arg.strip()
        if verb in ("reload", "zone-reload"):
            from pop53.serve import reconfig
            if verb == "zone-reload" and not arg:
                return {"ok": False, "error": "usage: zone-reload ZONE"}
            if arg:
                arg = _zone_name(arg)
                if arg not in {z.name for z in s.config.zones if z.file is not None}:
                    return {"ok": False, "error": f"zone {arg} is not a configured file zone"}
            return reconfig.reload(s, arg or None)
        if verb == "stop":
            if getattr(s, "on_stop", None) is None:
                return {"ok": False, "error": "this server is not stopped from its control socket"}
            s.on_stop()
            return {"ok": True, "stopping": True}
        # zones that did not load answer SERVFAIL: listed apart with their error, no serial
        state = s.zones.status()
        if cmd == "status":
            return {"ok": True, **state, "workers": len(s.net.workers),
                    "listen": [list(a) for a in s.net.addresses]}
        if cmd == "zones":
            return {"ok": True, **{k: state[k] for k in ("zones", "failed", "waiting")}}
        if cmd == "stats":
            return {"ok": True, "stats": s.stats()}
        if verb in ("target", "mapping"):
            return _mapping_command(s, verb, arg.split())
        if verb == "zone-status":
            return zone_status(s, _zone_name(arg) if arg else None)
        if verb == "zone-flush":
            from pop53.xfr.flush import flush
            return flush(s, arg)
        if verb in ("xfr", "refresh", "retransfer", "zone-notify"):
            svc = getattr(getattr(s, "control_handler", None), "service", None)
            if svc is None:
                return {"ok": False, "error": "no transferred zones here (no [[zone]] has "
                                              "primaries, notify or allow_transfer)"}
            if verb == "xfr":
                return {"ok": True, **svc.status()}
            if not arg:
                return {"ok": False, "error": f"usage: {verb} ZONE"}
            try:
                if verb == "zone-notify":
                    notify_now(svc, arg)
                else:
                    (svc.refresh_now if verb == "refresh" else svc.retransfer_now)(arg)
            except KeyError as exc:
                return {"ok": False, "error": exc.args[0]}
            return {"ok": True, "zone": _zone_name(arg), "queued": verb}
        return {"ok": False, "error": f"unknown command {cmd!r}; one of {', '.join(COMMANDS)}"}

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(1)
        if self.sock is not None:
            self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _mapping_command(s, verb: str, args: list) -> dict:
    state = getattr(s, "mapping", None)
    if state is None:
        return {"ok": False, "error": "no mapped names here (no [[mapped]] in the configuration)"}
    if verb == "mapping":
        return {"ok": True, **state.status()}
    if len(args) != 2 or args[1] not in ("up", "down"):
        return {"ok": False, "error": "usage: target NAME up|down"}
    try:
        changed = state.set_target(args[0], args[1] == "up")
    except KeyError as exc:
        return {"ok": False, "error": exc.args[0]}
    return {"ok": True, "target": args[0], "up": args[1] == "up", "changed": changed,
            "generation": state.generation}


def _zone_name(text: str) -> str:
    return text if text.endswith(".") else text + "."


def notify_now(svc, name: str) -> None:
    """`zone-notify ZONE`: NOTIFY the zone's secondaries now (RFC 1996), as after a change."""
    import dns.name     # here, not at the top: `pop53 ctl` imports this module and starts faster

    st = svc.zones.get(dns.name.from_text(name))
    if st is None:
        raise KeyError(f"zone {_zone_name(name)} is not configured")
    if not st.conf.notify:
        raise KeyError(f"zone {st.name} has no notify list")
    if st.zone is None:
        raise KeyError(f"zone {st.name} has no data to announce yet")
    svc.outbound.send_notifies(st)


def zone_status(s, only: str | None) -> dict:
    """Per zone, as `knotc zone-status`: serial, state (ok, failed, waiting, expired), kind,
    and for a secondary its primaries and transfer freshness."""
    import dns.name

    svc = getattr(getattr(s, "control_handler", None), "service", None)
    zs = s.zones
    xfr = svc.status()["zones"] if svc is not None else {}
    out = {}
    members = svc.catalog.owned() if svc is not None else {}
    listed = [(z.name, z.file, z.raw.get("primaries", []), None) for z in s.config.zones]
    listed += [(m.to_text(), None, [str(p) for p in svc.zones[m].conf.primaries], cat.to_text())
               for m, cat in members.items() if m in svc.zones]
    for name, file, primaries, catalog in listed:
        if only is not None and name != only:
            continue
        row = {"kind": "file" if file is not None else "secondary",
               "serial": zs.serials.get(name) if zs.served(name) else None,
               "state": "ok"}
        if catalog is not None:           # a member of this catalog zone (RFC 9432)
            info = svc.catalog.members[dns.name.from_text(catalog)][dns.name.from_text(name)]
            row.update(catalog=catalog, group=info["group"])
        if name in zs.failed:
            row.update(state="failed", error=zs.failed[name])
        elif name in zs.waiting:
            row["state"] = "waiting"
        if name in xfr:
            x = xfr[name]
            row.update(primaries=list(primaries), age=x.get("age"), last_error=x.get("last_error"))
            if x.get("expired"):
                row["state"] = "expired"
        out[name] = row
    if only is not None and not out:
        return {"ok": False, "error": f"zone {only} is not configured"}
    return {"ok": True, "zones": out}
