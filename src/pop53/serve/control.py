"""The control socket: a Unix stream socket that takes one command per connection and answers
one JSON object.  Commands: `reload`, `status`, `zones`, `stats`; for transferred zones
`xfr` (their freshness, the machine's stale flag and role), `refresh ZONE` (an SOA check now)
and `retransfer ZONE` (a full transfer now); for mapped names `target NAME up|down` (liveness,
published at once) and `mapping` (maps, targets, generation).

Root-owned by default (mode 0600), so only the operator can drive it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading

log = logging.getLogger("pop53.control")
COMMANDS = ("reload", "status", "zones", "stats", "xfr", "refresh", "retransfer", "target",
            "mapping")


class ControlServer:
    def __init__(self, server, path: str):
        self.server = server
        self.path = path
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()

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
            with conn:
                conn.settimeout(2)
                try:
                    cmd = conn.recv(256).decode("ascii", "replace").strip()
                    conn.sendall(json.dumps(self.handle(cmd)).encode() + b"\n")
                except OSError:
                    pass

    def handle(self, cmd: str) -> dict:
        s = self.server
        if cmd == "reload":
            ok = s.reload()
            return {"ok": ok, "generation": s.shared.generation, "error": s.last_error}
        # zones that did not load answer SERVFAIL: listed apart with their error, no serial
        zones = {k: v for k, v in s.zone_serials.items() if s._served(k)}
        if cmd == "status":
            return {"ok": True, "generation": s.shared.generation, "zones": zones,
                    "failed": s.zone_failed, "waiting": s.zone_waiting,
                    "workers": len(s.workers), "listen": [list(a) for a in s.addresses],
                    "reload_failures": s.reload_failures, "last_error": s.last_error}
        if cmd == "zones":
            return {"ok": True, "zones": zones, "failed": s.zone_failed,
                    "waiting": s.zone_waiting}
        if cmd == "stats":
            return {"ok": True, "stats": s.stats()}
        verb, _, arg = cmd.partition(" ")
        if verb in ("target", "mapping"):
            return _mapping_command(s, verb, arg.split())
        if verb in ("xfr", "refresh", "retransfer"):
            svc = getattr(getattr(s, "control_handler", None), "service", None)
            if svc is None:
                return {"ok": False, "error": "no transferred zones here (no [[zone]] has primaries)"}
            if verb == "xfr":
                return {"ok": True, **svc.status()}
            if not arg.strip():
                return {"ok": False, "error": f"usage: {verb} ZONE"}
            try:
                (svc.refresh_now if verb == "refresh" else svc.retransfer_now)(arg.strip())
            except KeyError as exc:
                return {"ok": False, "error": exc.args[0]}
            return {"ok": True, "zone": arg.strip(), "queued": verb}
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


def send(path: str, cmd: str, timeout: float = 60.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(cmd.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def _rows(rows: list[tuple]) -> list[str]:
    """Left-aligned columns (knotc-like)."""
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1])
            for r in rows]


def _plain(value, indent: str = "") -> list[str]:
    """Any JSON reply as indented "key: value" lines."""
    out = []
    for k, v in value.items():
        if isinstance(v, dict) and v:
            out.append(f"{indent}{k}:")
            out.extend(_plain(v, indent + "  "))
        elif isinstance(v, list):
            out.append(f"{indent}{k}: {', '.join(str(x) for x in v) or '-'}")
        else:
            out.append(f"{indent}{k}: {'-' if v is None else v}")
    return out


def _zones(reply: dict) -> list[str]:
    rows = [(name, f"serial {serial}", "ok") for name, serial in sorted(reply["zones"].items())]
    rows += [(name, "SERVFAIL", f"not loaded: {err}") for name, err in
             sorted(reply.get("failed", {}).items())]
    rows += [(name, "SERVFAIL", "waiting for its first transfer") for name in
             reply.get("waiting", [])]
    return _rows(rows) or ["no zones"]


def format_reply(command: str, reply: dict) -> str:
    """A control reply for a human (`pop53 ctl` without --json)."""
    if not reply.get("ok"):
        return f"error: {reply.get('error') or 'failed'}"
    verb = command.split()[0]
    if verb == "reload":
        return f"reloaded, generation {reply['generation']}"
    if verb == "zones":
        return "\n".join(_zones(reply))
    if verb == "status":
        listen = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in reply["listen"])
        lines = [f"serving on {listen or '-'} with {reply['workers']} worker(s), "
                 f"generation {reply['generation']}",
                 f"reload failures: {reply['reload_failures']}"
                 + (f", last error: {reply['last_error']}" if reply.get("last_error") else ""),
                 *_zones(reply)]
        return "\n".join(lines)
    if verb == "stats":
        return "\n".join(_rows(sorted(reply["stats"].items()))) or "no counters yet"
    if verb in ("refresh", "retransfer"):
        return f"{reply['queued']} of {reply['zone']} queued"
    return "\n".join(_plain({k: v for k, v in reply.items() if k != "ok"}))
