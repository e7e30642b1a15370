"""`pop53 ctl zone-flush [ZONE] [-o DIR]`, as `knotc zone-flush [ZONE] [-o DIR]`: write the
content a zone is served with right now (a transferred zone's last applied version, or a
primary zone the transfer engine holds) to a master file an operator can read, diff, archive
or load elsewhere.

Where: ``<[server] state>/zone/<zone>.zone`` by default, or ``DIR/<zone>.zone`` with ``-o DIR``
(the directory must exist and be writable by the server's user).  Each file is written
atomically (`journal.atomic_write`: a reader sees the old file or the whole new one, also
after a crash).  The file starts with a comment naming the zone, serial and time, then
``$ORIGIN`` and the RRsets sorted by owner, names relative to the origin (RFC 1035 §5.1).

Every zone the transfer engine holds can be flushed: its secondary zones and, when it runs
(any [[zone]] with primaries, notify or allow_transfer), the file zones too.  Without the
engine a file zone is refused: its file is its content.
"""
from __future__ import annotations

import datetime

import dns.rdatatype
import os
import shlex
from pathlib import Path

import dns.name

from pop53.xfr import journal as jr
from pop53.xfr import recversion as rv


def parse(arg: str) -> tuple[str | None, str | None]:
    """The control command's arguments: ``[ZONE] [-o DIR]`` (shell quoting, as ctl sends)."""
    words = shlex.split(arg)
    out = None
    if "-o" in words:
        i = words.index("-o")
        if i + 1 >= len(words):
            raise ValueError("usage: zone-flush [ZONE] [-o DIR]")
        out = words[i + 1]
        del words[i:i + 2]
    if len(words) > 1:
        raise ValueError("usage: zone-flush [ZONE] [-o DIR]")
    return (words[0] if words else None), out


def target_dir(state: str | None, out: str | None) -> Path:
    if out is not None:
        d = Path(out)
        if not d.is_dir():
            raise ValueError(f"-o {out}: not a directory")
        return d
    if state is None:
        raise ValueError("no [server] state directory to flush into; give -o DIR")
    d = Path(state) / "zone"
    d.mkdir(mode=0o750, exist_ok=True)
    return d


def write_zone(zone, path: Path) -> int:
    """`zone` (a dnspython zone) as a master file at `path`, atomically; returns its size."""
    serial = jr.serial_of(zone)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def write(f):
        f.write(f"; zone {zone.origin} serial {serial}, written by pop53 zone-flush at {now}\n")
        if not rv.is_records(zone):
            zone.to_file(f, sorted=True, relativize=True, want_origin=True)
            return
        # the records form: one record at a time (no dnspython zone of it all), absolute names
        f.write(f"$ORIGIN {zone.origin}\n")
        for name, ttl, rd in rv.iter_rrs(zone):
            f.write(f"{name} {ttl} IN {dns.rdatatype.to_text(rd.rdtype)} "
                    f"{rd.to_text(origin=zone.origin, relativize=False)}\n")

    jr.atomic_write(path, write)
    return path.stat().st_size


def flush(server, arg: str) -> dict:
    """The control command (pop53.serve.control): a JSON-able reply."""
    try:
        only, out = parse(arg)
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    svc = getattr(getattr(server, "control_handler", None), "service", None)
    held = dict(svc.zones) if svc is not None else {}
    if only is not None:
        name = dns.name.from_text(only)
        if name not in held:
            files = {z.name: z.file for z in server.config.zones if z.file is not None}
            if name.to_text() in files:
                return {"ok": False, "error": f"zone {name} is served from its file "
                                              f"{files[name.to_text()]}; nothing to flush"}
            return {"ok": False, "error": f"zone {name} is not configured"}
        held = {name: held[name]}
    elif not held:
        return {"ok": False, "error": "no transferred zones here (no [[zone]] has primaries, "
                                      "notify or allow_transfer)"}
    try:
        where = target_dir(server.config.state, out)
    except (ValueError, OSError) as exc:
        return {"ok": False, "error": str(exc)}
    # never over a zone's saved state (a zone named "snapshot." beside the zone "zone.")
    reserved = {st.store.snapshot for st in svc.zones.values() if st.store is not None}
    flushed, skipped = {}, {}
    for name, st in sorted(held.items()):
        zone = st.zone          # the served version; published versions are never changed
        if zone is None:
            skipped[st.name] = "no data yet (waiting for its first transfer)"
            continue
        path = where / f"{jr.file_label(name)}.zone"
        if path in reserved:
            skipped[st.name] = f"{path} is a zone's saved snapshot"
            continue
        try:
            size = write_zone(zone, path)
        except OSError as exc:
            skipped[st.name] = f"cannot write {path}: {exc.strerror or exc}"
            continue
        flushed[st.name] = {"file": str(path), "serial": jr.serial_of(zone),
                            "records": jr.count_records(zone), "bytes": size,
                            "expired": st.expired}
    ok = bool(flushed) or not skipped
    reply = {"ok": ok, "directory": str(where), "flushed": flushed, "skipped": skipped}
    if not ok:
        reply["error"] = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return reply


def format_flush(reply: dict) -> str:
    lines = [f"{name}  serial {z['serial']}  {z['records']} records  -> {z['file']}"
             + ("  (expired)" if z["expired"] else "")
             for name, z in reply["flushed"].items()]
    lines += [f"{name}  not flushed: {why}" for name, why in reply["skipped"].items()]
    return "\n".join(lines) or "nothing to flush"


def command(zone: list[str], out: str | None) -> str:
    """The control command `pop53 ctl zone-flush` sends (quoted: a directory may hold spaces).
    The control socket reads one command of at most 256 octets: a longer one is refused here
    rather than cut (a cut path could name another directory)."""
    from pop53.errors import Pop53Error

    cmd = shlex.join(["zone-flush", *zone, *(["-o", os.path.abspath(out)] if out else [])])
    if len(cmd.encode()) > 255:
        raise Pop53Error(f"zone-flush: command too long for the control socket ({cmd[:60]}...)")
    return cmd
