"""Real reference DNS servers (Knot, NSD, BIND) on 127.0.0.1, for tests and benchmarks; and
``pop53 serve`` started the same way (``Pop53Server``), so suites can treat it alike.

Each server runs in the foreground as a child of the test process, with its own temporary
directory for configuration, run files, PID file, journal/database and logs, on a free port that
is picked at start (several people run tests at once).  Nothing is written outside that
directory and the zone files are only read.  ``stop()`` signals the PID we started (and only the
process group we created for it); the directory is removed afterwards.

The three are configured alike so that their answers can be compared with each other and with
pop53:

- authoritative only, no recursion, no rate limiting (Debian's NSD turns RRL on by default:
  ``rrl-ratelimit: 0`` switches it off), no round-robin; NSD's and BIND's non-minimal
  response defaults written out (Knot is minimal by design);
- the same largest UDP answer (``udp_max_payload``, default 1232 as agreed on DNS Flag Day 2020,
  RFC 6891 §6.2.5);
- the same identity: CHAOS TXT ``id.server.``/``hostname.bind.`` (RFC 4892) and NSID (RFC 5001)
  answer ``identity``, ``version.bind.``/``version.server.`` answer ``version``.

Use as a context manager::

    from tests.support.refservers import KnotServer, Zone
    with KnotServer([Zone.from_file("a.zone")], identity="knot-ref") as knot:
        reply = knot.query(wire)            # UDP; knot.query(wire, tcp=True) for TCP
        host, port = knot.address

or as a pytest fixture (one server for a whole module)::

    knot = refserver_fixture("knot", lambda: [Zone.from_file(p) for p in ZONES])

``start()`` raises :class:`RefServerError` with the tail of the server's log if the binary is
missing, the server exits, or it does not answer the SOA of every zone within
``startup_timeout`` seconds.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.zone

__all__ = [
    "Zone", "RefServer", "KnotServer", "NsdServer", "BindServer", "Pop53Server", "RefServerError",
    "SERVER_KINDS", "server_class", "free_port", "udp_query", "tcp_query", "recv_exactly",
    "refserver_fixture",
]

LOCALHOST = "127.0.0.1"


class RefServerError(RuntimeError):
    """A reference server could not be started (or stopped); the message holds its log tail."""


@dataclass(frozen=True)
class Zone:
    """One zone to serve: its origin (absolute, ``"example."``) and its zone file."""

    origin: str
    path: Path

    def __post_init__(self) -> None:
        if not self.origin.endswith("."):
            object.__setattr__(self, "origin", self.origin + ".")
        object.__setattr__(self, "path", Path(self.path).resolve())

    @classmethod
    def from_file(cls, path: str | os.PathLike, origin: str | None = None) -> "Zone":
        """A zone whose origin is ``origin`` or, if None, the owner of the file's SOA record
        (the file's ``$ORIGIN`` must then make the SOA owner absolute)."""
        path = Path(path)
        if origin is None:
            z = dns.zone.from_file(str(path), origin=None, relativize=False,
                                   check_origin=True)
            origin = z.origin.to_text()
        return cls(origin, path)


# --------------------------------------------------------------------------------------------
# Sockets


def free_port(host: str = LOCALHOST) -> int:
    """A port that is free for both UDP and TCP on ``host`` right now (bind port 0, read it,
    close).  Another process may take it before the server binds: callers retry on failure."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
            return port
    raise RefServerError(f"no port free for both UDP and TCP on {host}")


def udp_query(address: tuple[str, int], wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send ``wire`` over UDP and return the first reply with the same message ID, or None on
    timeout.  A fresh socket per query, so a late reply can never be taken for another's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.send(wire)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except (socket.timeout, ConnectionRefusedError):
                return None
            if len(wire) < 2 or data[:2] == wire[:2]:
                return data


def tcp_query(address: tuple[str, int], wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send ``wire`` over TCP with the 2-octet length prefix (RFC 1035 §4.2.2, RFC 7766) and
    return the reply, or None if the server closes or times out first."""
    try:
        with socket.create_connection(address, timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            head = recv_exactly(s, 2)
            if head is None:
                return None
            return recv_exactly(s, struct.unpack("!H", head)[0])
    except (OSError, socket.timeout):
        return None


def recv_exactly(s: socket.socket, n: int) -> bytes | None:
    """Exactly n octets from a stream socket; None on EOF first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# Servers


class RefServer:
    """Base class: one reference server process serving ``zones`` on ``host:port``.

    Subclasses set ``kind``/``binary`` and implement ``_write_config`` and ``_argv``.
    """

    kind = "?"
    binary = "?"

    def __init__(self, zones: Sequence[Zone], *, identity: str | None = None,
                 version: str = "pop53-reference", host: str = LOCALHOST,
                 port: int | None = None, udp_max_payload: int = 1232,
                 startup_timeout: float = 20.0) -> None:
        if not zones:
            raise ValueError("a reference server needs at least one zone")
        self.zones = list(zones)
        self.identity = identity or f"{self.kind}-reference"
        self.version = version
        self.host = host
        self._fixed_port = port
        self.port: int | None = port
        self.udp_max_payload = udp_max_payload
        self.startup_timeout = startup_timeout
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- public ------------------------------------------------------------------------------

    @classmethod
    def available(cls) -> bool:
        """True if the server binary is installed (scripts/setup.sh installs all three)."""
        return shutil.which(cls.binary) is not None or Path("/usr/sbin", cls.binary).exists()

    @property
    def address(self) -> tuple[str, int]:
        if self.port is None:
            raise RefServerError(f"{self.kind} is not started")
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "RefServer":
        """Write the configuration, start the server and wait until every zone answers."""
        if self.proc is not None:
            raise RefServerError(f"{self.kind} already started (pid {self.proc.pid})")
        exe = self._executable()
        if not Path(exe).exists():
            raise RefServerError(f"{self.binary} is not installed; run scripts/setup.sh")
        attempts = 1 if self._fixed_port else 4
        last: Exception | None = None
        for _ in range(attempts):
            self.port = self._fixed_port or free_port(self.host)
            self.workdir = Path(tempfile.mkdtemp(prefix=f"pop53-{self.kind}-"))
            try:
                self._write_config()
                self._log = open(self.workdir / "output.log", "wb")
                self.proc = subprocess.Popen(
                    [exe, *self._argv()], stdin=subprocess.DEVNULL, stdout=self._log,
                    stderr=subprocess.STDOUT, cwd=self.workdir,
                    # Own process group: stop() can reach children (NSD forks xfrd and server
                    # processes) without touching anyone else's daemons of the same name.
                    start_new_session=True)
                self._wait_ready()
                return self
            except RefServerError as e:
                last = e
                log = self.log_text()
                self.stop()
                if not _looks_like_port_clash(log):
                    raise
        raise last  # type: ignore[misc]

    def stop(self) -> None:
        """SIGTERM the server and wait until it and every process of the group we created for
        it are gone (NSD's children exit with their parent); SIGKILL what is left after 5 s.
        Removes the work directory.  Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if not _wait_group_gone(proc.pid, 5.0):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise RefServerError(f"{self.kind} pid {proc.pid} did not exit")
            if not _wait_group_gone(proc.pid, 5.0):
                raise RefServerError(f"{self.kind}: processes of group {proc.pid} survived "
                                     f"SIGKILL")
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if not self._fixed_port:
            self.port = None

    def query(self, wire: bytes, *, tcp: bool = False, timeout: float = 2.0) -> bytes | None:
        """Send one DNS message to the server and return the raw reply (None on timeout)."""
        return (tcp_query if tcp else udp_query)(self.address, wire, timeout)

    def log_text(self) -> str:
        """Everything the server wrote (stdout, stderr and its own log file, if any)."""
        if self.workdir is None:
            return ""
        out = []
        for name in ("output.log", f"{self.kind}.log"):
            p = self.workdir / name
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "\n".join(out)

    def pids(self) -> list[int]:
        """The server's PID and its descendants' (for memory measurements)."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def rss_bytes(self) -> int:
        """Resident memory of the server and its children, summed (VmRSS from /proc).  Shared
        pages of forked children are counted once per process, as ``ps`` does."""
        total = 0
        for p in self.pids():
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def __enter__(self) -> "RefServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid}>"

    # -- internals -----------------------------------------------------------------------------

    def _executable(self) -> str:
        return shutil.which(self.binary) or str(Path("/usr/sbin", self.binary))

    def _write_config(self) -> None:
        raise NotImplementedError

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        """Poll the SOA of every zone until each is answered NOERROR with AA (bounded)."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        pending = [z.origin for z in self.zones]
        while pending:
            if self.proc.poll() is not None:
                raise RefServerError(
                    f"{self.kind} exited with status {self.proc.returncode} during start-up\n"
                    + _tail(self.log_text()))
            if time.monotonic() > deadline:
                raise RefServerError(
                    f"{self.kind} did not answer SOA for {pending} within "
                    f"{self.startup_timeout} s on {self.host}:{self.port}\n"
                    + _tail(self.log_text()))
            q = dns.message.make_query(pending[0], dns.rdatatype.SOA, use_edns=False)
            reply = udp_query(self.address, q.to_wire(), timeout=0.2)
            if reply is not None:
                try:
                    r = dns.message.from_wire(reply)
                except Exception:
                    r = None
                if (r is not None and r.rcode() == dns.rcode.NOERROR
                        and r.flags & dns.flags.AA and r.answer):
                    pending.pop(0)
                    continue
            time.sleep(0.05)

    def _path(self, name: str) -> str:
        assert self.workdir is not None
        return str(self.workdir / name)


class KnotServer(RefServer):
    """Knot DNS (``knotd -c CONF``; the foreground is knotd's default)."""

    kind = "knot"
    binary = "knotd"

    def _argv(self) -> list[str]:
        return ["-c", self._path("knot.conf")]

    def _write_config(self) -> None:
        Path(self._path("storage")).mkdir()
        zones = "".join(
            f"  - domain: {_q(z.origin)}\n    file: {_q(str(z.path))}\n" for z in self.zones)
        conf = f"""\
server:
    rundir: {_q(self._path(""))}
    pidfile: {_q(self._path("knot.pid"))}
    listen: {self.host}@{self.port}
    identity: {_q(self.identity)}
    nsid: {_q(self.identity)}
    version: {_q(self.version)}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    udp-max-payload: {self.udp_max_payload}
    answer-rotation: off

database:
    storage: {_q(self._path("storage"))}

control:
    listen: {_q(self._path("knot.sock"))}

log:
  - target: stderr
    any: warning

template:
  - id: default
    storage: {_q(self._path("storage"))}
    # Never write back to the zone files (they live in the repository), never keep history.
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off

zone:
{zones}"""
        Path(self._path("knot.conf")).write_text(conf)


class NsdServer(RefServer):
    """NSD (``nsd -d -c CONF``: -d keeps it in the foreground)."""

    kind = "nsd"
    binary = "nsd"

    def _argv(self) -> list[str]:
        return ["-d", "-c", self._path("nsd.conf")]

    def _write_config(self) -> None:
        zones = "".join(
            f"zone:\n    name: {_q(z.origin)}\n    zonefile: {_q(str(z.path))}\n\n"
            for z in self.zones)
        nsid_hex = self.identity.encode().hex()
        conf = f"""\
server:
    ip-address: {self.host}@{self.port}
    port: {self.port}
    do-ip4: yes
    do-ip6: no
    server-count: 1
    reuseport: no
    username: ""
    chroot: ""
    database: ""
    zonefiles-write: 0
    zonelistfile: {_q(self._path("zone.list"))}
    xfrdfile: {_q(self._path("xfrd.state"))}
    xfrdir: {_q(self._path(""))}
    pidfile: {_q(self._path("nsd.pid"))}
    logfile: {_q(self._path("nsd.log"))}
    verbosity: 1
    identity: {_q(self.identity)}
    nsid: {nsid_hex}
    version: {_q(self.version)}
    hide-identity: no
    hide-version: no
    ipv4-edns-size: {self.udp_max_payload}
    minimal-responses: no
    round-robin: no
    refuse-any: no
    # Debian builds NSD with --enable-ratelimit and RRL on (200 qps): a differential run
    # sends thousands of queries from one address, so switch it off (0 = unlimited).
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0

remote-control:
    control-enable: no

{zones}"""
        Path(self._path("nsd.conf")).write_text(conf)


class BindServer(RefServer):
    """BIND 9 (``named -g -c CONF``: -g keeps it in the foreground, logging to stderr)."""

    kind = "bind"
    binary = "named"

    def _argv(self) -> list[str]:
        return ["-g", "-4", "-n", "1", "-c", self._path("named.conf")]

    def _write_config(self) -> None:
        zones = "".join(
            f'zone "{z.origin}" {{ type primary; file "{z.path}"; }};\n' for z in self.zones)
        conf = f"""\
options {{
    directory "{self._path("")}";
    pid-file "{self._path("named.pid")}";
    session-keyfile "{self._path("session.key")}";
    managed-keys-directory "{self._path("")}";
    dump-file "{self._path("named_dump.db")}";
    statistics-file "{self._path("named.stats")}";
    listen-on port {self.port} {{ {self.host}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    notify no;
    dnssec-validation no;
    empty-zones-enable no;
    server-id "{self.identity}";
    hostname "{self.identity}";
    version "{self.version}";
    max-udp-size {self.udp_max_payload};
    edns-udp-size {self.udp_max_payload};
    minimal-responses no;
    minimal-any no;
    check-names primary ignore;
}};
controls {{ }};
{zones}"""
        Path(self._path("named.conf")).write_text(conf)


class Pop53Server(RefServer):
    """pop53 itself (``python -m pop53 serve``), started the same way, so a suite can treat it
    like the references.  One UDP worker; ``version`` is not configurable from the command
    line and stays pop53's default."""

    kind = "pop53"
    binary = "pop53"

    @classmethod
    def available(cls) -> bool:
        import importlib.util
        return importlib.util.find_spec("pop53") is not None

    def _executable(self) -> str:
        import sys
        return sys.executable

    def _write_config(self) -> None:
        pass

    def _argv(self) -> list[str]:
        argv = ["-m", "pop53", "serve", "--listen", f"{self.host}:{self.port}",
                "--workers", "1", "--identity", self.identity]
        for z in self.zones:
            argv += ["--zone", str(z.path)]
        return argv


SERVER_KINDS: dict[str, type[RefServer]] = {
    "knot": KnotServer, "nsd": NsdServer, "bind": BindServer, "pop53": Pop53Server,
}


def server_class(kind: str) -> type[RefServer]:
    try:
        return SERVER_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown reference server {kind!r}; one of {sorted(SERVER_KINDS)}")


def refserver_fixture(kind: str, zones: Iterable[Zone] | Callable[[], Iterable[Zone]], *,
                      scope: str = "module", **kwargs):
    """A pytest fixture that yields a started server of ``kind`` for ``scope``.

    Assign it at module level: ``knot = refserver_fixture("knot", ZONES)``.  ``zones`` may be a
    callable, evaluated when the fixture first runs.  Extra keyword arguments go to the server.
    """
    import pytest  # only the fixture needs pytest; benchmarks import this module without it

    @pytest.fixture(scope=scope)
    def _server():
        zs = list(zones() if callable(zones) else zones)
        with server_class(kind)(zs, **kwargs) as srv:
            yield srv

    return _server


# --------------------------------------------------------------------------------------------


def _q(s: str) -> str:
    """Quote a value for Knot's YAML-like and NSD's config syntax."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(d.name))
    return out


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _looks_like_port_clash(log: str) -> bool:
    log = log.lower()
    return "address already in use" in log or "can't bind" in log or "could not bind" in log
