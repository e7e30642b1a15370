"""The control socket's client side: the commands, one request and its reply, and the reply
for a human.  `pop53 ctl` imports only this (and the C modules _socket and _json): its start is
part of what an operator waits for after a reload (issue 14 points 2 and 13), like `knotc`.
The `socket` and `json` packages would pull in enum and re (~20 ms of a ~40 ms start under -S,
measured); `--json` output and a reply that does not parse still use json.

`main` is the lean entry (`python3 -m pop53 ctl ...` and the `pop53-ctl` script come here
without argparse or the server's modules); anything it does not parse itself (help, a bad
option, zone-flush) goes to the full command line (pop53.cli.ctl), which prints the same.
"""
from __future__ import annotations

import sys

import _socket

RELOADS = ("reload", "zone-reload")
COMMANDS = ("reload", "status", "zones", "stats", "xfr", "refresh", "retransfer", "zone-status",
            "zone-reload", "zone-notify", "zone-refresh", "zone-retransfer", "zone-flush", "stop",
            "target", "mapping")
ALIASES = {"zone-refresh": "refresh", "zone-retransfer": "retransfer"}


class NoReply(Exception):
    """The server took the command but did not answer in time (it is alive: it accepted)."""


def send(path: str, cmd: str, timeout: float | None = 60.0) -> dict:
    """One command, its reply.  OSError: the socket cannot be reached; NoReply: it was reached
    but the reply did not come within `timeout` seconds (None: wait as long as it takes, for a
    reload)."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(5.0)
        s.connect(path)
        s.settimeout(timeout)
        s.sendall(cmd.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise NoReply(f"no reply to {cmd.split()[0]!r} within {timeout:.0f} s") from None
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    return loads(data)


class _Plain:
    """What json's C scanner reads from its decoder: the defaults of json.loads."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__


def loads(data: bytes):
    """json.loads of the server's one-line reply, through json's own C scanner (no `re`)."""
    try:
        from _json import make_scanner
        text = data.decode()
        value, end = make_scanner(_Plain)(text, 0)
        if text[end:].strip() == "":
            return value
    except (ImportError, StopIteration, UnicodeDecodeError, ValueError):
        pass
    import json
    return json.loads(data)     # the same value, or json's own error


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
    if verb in ("reload", "zone-reload"):
        lines = [f"reloaded, generation {reply['generation']}"]
        for what in ("added", "removed"):
            if reply.get(what):
                lines.append(f"zones {what}: {', '.join(reply[what])}")
        if reply.get("restart"):
            lines.append("needs a restart (the running value stays): "
                         + ", ".join(reply["restart"]))
        return "\n".join(lines)
    if verb == "zone-status":
        rows = []
        for name, z in sorted(reply["zones"].items()):
            serial = "-" if z["serial"] is None else z["serial"]
            extra = z.get("error") or z.get("last_error") or ""
            if z.get("age") is not None:
                extra = f"last ok {z['age']:.0f} s ago" + (f"; {extra}" if extra else "")
            kind = f"member of {z['catalog']}" if z.get("catalog") else z["kind"]
            rows.append((name, kind, f"serial {serial}", z["state"], extra))
        return "\n".join(r.rstrip() for r in _rows(rows)) or "no zones"
    if verb == "stop":
        return "stopping"
    if verb == "zone-flush":
        from pop53.xfr.flush import format_flush
        return format_flush(reply)
    if verb == "zones":
        return "\n".join(_zones(reply))
    if verb == "status":
        listen = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in reply["listen"])
        lines = [f"serving on {listen or '-'} with {reply['workers']} worker(s), "
                 f"generation {reply['generation']}",
                 f"reload failures: {reply['reload_failures']}"
                 + (f", last error: {reply['last_error']}" if reply.get("last_error") else ""),
                 *_zones(reply)]
        if reply.get("loads"):
            loads = reply["loads"]
            lines.insert(2, f"zone files parsed since start: {loads['parsed']}, "
                            f"zones patched in by a reload: {loads['patched']}"
                            + (f", spliced in whole: {loads['spliced']}"
                               if loads.get("spliced") else ""))
        p = reply.get("progress")
        if p:
            step = f" {p['done']}/{p['total']}" if "total" in p else ""
            zone = f" ({p['zone']})" if p.get("zone") else ""
            lines.insert(1, f"reloading for {p['seconds']:.1f} s: {p['phase']}{step}{zone}")
        return "\n".join(lines)
    if verb == "stats":
        return "\n".join(_rows(sorted(reply["stats"].items()))) or "no counters yet"
    if verb in ("refresh", "retransfer", "zone-notify", *ALIASES):
        return f"{reply['queued']} of {reply['zone']} queued"
    return "\n".join(_plain({k: v for k, v in reply.items() if k != "ok"}))


_VALUE_OPTS = {"-s": "socket", "--socket": "socket", "--timeout": "timeout"}


def main(argv: list[str] | None = None) -> int:
    """`pop53 ctl [options] COMMAND [ZONE...]` without argparse; falls back to the full CLI."""
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = {"socket": "/run/pop53.sock", "timeout": 60.0, "json": False}
    words = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name in _VALUE_OPTS and (eq or i + 1 < len(argv)):
            if not eq:
                i += 1
                value = argv[i]
            opts[_VALUE_OPTS[name]] = value
        elif a == "--json":
            opts["json"] = True
        elif a.startswith("-") and a != "-":
            return _full(argv)
        else:
            words.append(a)
        i += 1
    try:
        timeout = float(opts["timeout"])
    except ValueError:
        return _full(argv)
    if not words or words[0] not in COMMANDS or words[0] == "zone-flush":
        return _full(argv)
    command = " ".join(words)
    try:
        reply = send(opts["socket"], command, None if words[0] in RELOADS else timeout)
    except NoReply as exc:
        print(f"pop53: error: {exc} from {opts['socket']}; the server is up (`pop53 ctl status` "
              "shows what it is doing)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pop53: error: cannot reach the control socket {opts['socket']}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    emit(command, reply, opts["json"])
    return 0 if reply.get("ok") else 1


def emit(command: str, reply: dict, as_json: bool) -> None:
    if as_json:
        import json
        json.dump(reply, sys.stdout, indent=2)
        print()
    else:
        print(format_reply(command, reply), file=sys.stdout if reply.get("ok") else sys.stderr)


def _full(argv: list[str]) -> int:
    if sys.flags.no_site:     # scripts/pop53-ctl runs under -S: the full CLI needs site-packages
        import site
        site.main()
    from pop53.cli import full_main
    return full_main(["ctl", *argv])
