"""dnstap output (issue 14 point 11; docs/dnstap.md): sampled queries and responses as dnstap
protobuf messages (AUTH_QUERY, AUTH_RESPONSE) over Frame Streams, to a unix socket or a file;
the control plane's messages (NOTIFY, transfers, SOA queries, handed-over TCP connections) through
control(), every one, as AUTH_* (answered by us) or RESOLVER_* (sent by us); a `[dnstap]` change
applied by a reload (Output.reconfigure).

The workers copy sampled exchanges into their own lock-free rings (ext/dnstap.pxi); one writer
thread here drains them (the encoder and the writes run without the GIL, ext/dnstap_out.pxi) and
owns the output: the Frame Streams control frames, the bidirectional handshake on a socket
(READY -> ACCEPT -> START ... STOP -> FINISH) and reconnecting when the reader goes away.
While the output is down the rings fill and further messages are dropped and counted; a worker
never waits for the writer.

PyPI has `fstrm` and `dnstap-pb`: the first frames but leaves the socket and the handshake to us,
the second needs a protobuf object per message in Python.  The writer must keep up with every
worker at sample 1, so the few dnstap fields are encoded by hand in C and the five control
frames are built here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import struct
import threading

from pop53 import __version__, _core
from pop53.config import _typed
from pop53.errors import ConfigError

log = logging.getLogger("pop53.dnstap")

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"
# Frame Streams control frame types (fstrm/control.h)
ACCEPT, START, STOP, READY, FINISH = 1, 2, 3, 4, 5
FIELD_CONTENT_TYPE = 1


@dataclasses.dataclass(frozen=True)
class Settings:
    socket: str | None
    file: str | None
    sample: int = 1
    queries: bool = True
    responses: bool = True
    identity: str = ""
    version: str = f"pop53 {__version__}"
    ring_size: int = 1 << 20
    reconnect: float = 1.0


def parse(doc: dict, file: str | None, identity: str) -> Settings | None:
    """[dnstap] -> Settings, or None when the table is absent.  Errors name the key."""
    raw = doc.get("dnstap")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", file=file, key="dnstap")

    def typed(name, kind, default):
        return _typed(raw, name, kind, default, "dnstap", file)

    sock, path = raw.get("socket"), raw.get("file")
    if (sock is None) == (path is None):
        raise ConfigError("set exactly one of socket (a unix socket path) or file", file=file,
                          key="dnstap")
    for name, v in (("socket", sock), ("file", path)):
        if v is not None and (not isinstance(v, str) or not v):
            raise ConfigError("expected a path", file=file, key=f"dnstap.{name}")
    s = Settings(socket=sock, file=path, sample=typed("sample", int, 1),
                 queries=typed("queries", bool, True), responses=typed("responses", bool, True),
                 identity=typed("identity", str, identity),
                 version=typed("version", str, f"pop53 {__version__}"),
                 ring_size=typed("ring_size", int, 1 << 20), reconnect=typed("reconnect", float, 1.0))
    if s.sample < 1:
        raise ConfigError(f"must be 1 or more (1 in N queries), got {s.sample}", file=file,
                          key="dnstap.sample")
    if not (s.queries or s.responses):
        raise ConfigError("queries and responses are both false: nothing to log", file=file,
                          key="dnstap")
    if not (1 << 16) <= s.ring_size <= (1 << 30):
        raise ConfigError(f"must be within 65536..1073741824 bytes, got {s.ring_size}", file=file,
                          key="dnstap.ring_size")
    if s.reconnect <= 0:
        raise ConfigError("must be positive", file=file, key="dnstap.reconnect")
    for name in ("identity", "version"):
        if len(getattr(s, name).encode()) > 255:
            raise ConfigError("at most 255 bytes", file=file, key=f"dnstap.{name}")
    return s


def control_frame(ctype: int, content_type: bytes | None = CONTENT_TYPE) -> bytes:
    """A Frame Streams control frame: escape (0), length, type, optional content-type field."""
    body = struct.pack(">I", ctype)
    if content_type is not None:
        body += struct.pack(">II", FIELD_CONTENT_TYPE, len(content_type)) + content_type
    return struct.pack(">II", 0, len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        b = sock.recv(n - len(out))
        if not b:
            raise ConnectionError("the dnstap reader closed the connection")
        out += b
    return out


def read_control(sock: socket.socket) -> tuple[int, list[bytes]]:
    """One control frame from the reader: (type, content types)."""
    escape, length = struct.unpack(">II", _recv_exact(sock, 8))
    if escape != 0 or not 4 <= length <= 512:
        raise ConnectionError("the dnstap reader sent no control frame")
    body = _recv_exact(sock, length)
    ctype, types, off = struct.unpack_from(">I", body)[0], [], 4
    while off + 8 <= len(body):
        field, flen = struct.unpack_from(">II", body, off)
        if field == FIELD_CONTENT_TYPE:
            types.append(body[off + 8:off + 8 + flen])
        off += 8 + flen
    return ctype, types


AUTH, RESOLVER = 1, 3      # dnstap Message.Type of a query (its response: + 1)
OFF_SAMPLE = 0xFFFFFFFF    # a ring's sample while [dnstap] is removed by a reload
_current: "Output | None" = None     # the running server's output (control-plane messages)


def control(mt: int, tcp: bool, ours, peer, query: bytes | None, replies=(),
            qtime: float = 0.0, zone: bytes | None = None) -> None:
    """Log one control-plane exchange (docs/dnstap.md), every one (not sampled): mt AUTH (a
    NOTIFY, a transfer or a query on a handed-over TCP connection, answered by us) or RESOLVER
    (an SOA query, a transfer request or a NOTIFY we sent).  ours / peer: (host, port) tuples
    (ours may be None: the address the kernel would use toward peer).  RESOLVER messages carry
    query_zone: `zone` (wire form) or the query's (else the first reply's) question name.  No-op
    without [dnstap]."""
    out = _current
    if out is not None:
        if mt == RESOLVER and zone is None:
            zone = qname_wire(query if query is not None else (replies[0] if replies else b""))
        out.control(mt, tcp, ours, peer, query, replies, qtime, zone if mt == RESOLVER else None)


def qname_wire(msg: bytes) -> bytes | None:
    """The first question's name of a DNS message in wire form (uncompressed, as a question's
    first name always is), or None."""
    if len(msg) < 13 or msg[4:6] == b"\0\0":
        return None
    pos = 12
    while pos < len(msg) and msg[pos] != 0:
        if msg[pos] & 0xC0:
            return None
        pos += msg[pos] + 1
    return msg[12:pos + 1] if pos < len(msg) and pos - 12 < 255 else None


def _pack(addr) -> tuple[bytes, int] | None:
    try:
        host = addr[0].split("%")[0]
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host), addr[1]
    except (OSError, IndexError, TypeError, AttributeError):
        return None


def _local_toward(peer) -> tuple | None:
    """Our address the kernel picks toward peer (a UDP connect sends nothing)."""
    try:
        fam = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((peer[0], peer[1] or 53))
            return s.getsockname()[:2]
    except (OSError, IndexError, TypeError):
        return None


class Output:
    """The writer thread: rings of the readers -> Frame Streams."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.rings: list = []
        self.ctl_ring = None      # the control plane's messages (one producer: _ctl_lock)
        self._ctl_lock = threading.Lock()
        self._pending: Settings | None = None     # a reload's new target, for the thread
        self._base: dict = {}     # counters of writers replaced by a reload
        self.writer = None
        self.connected = False
        self.opens = 0            # times the output was opened (connected)
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._failed = False      # a file output failed: not reopened (it would be truncated)

    def attach(self, reader, tcp: bool, server: tuple | None) -> None:
        """Give a reader (Worker or TcpLoop, before it runs) a ring; server: our (host, port)."""
        s = self.settings
        packed, port = None, 0
        if server:
            try:
                host = server[0].split("%")[0]
                packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
                port = server[1]
            except (OSError, IndexError):
                packed = None
        ring = _core.DnstapRing(s.ring_size, s.sample, s.queries, s.responses, tcp, packed, port)
        ring.attach(reader)
        self.rings.append(ring)

    def start(self) -> None:
        global _current
        s = self.settings
        self.ctl_ring = _core.DnstapRing(s.ring_size, 1, s.queries, s.responses)
        self.rings.append(self.ctl_ring)
        self.writer = _core.DnstapWriter(self.rings, self.settings.identity, self.settings.version)
        self._thread = threading.Thread(target=self._run, name="pop53-dnstap", daemon=True)
        self._thread.start()
        _current = self

    def control(self, mt: int, tcp: bool, ours, peer, query: bytes | None, replies=(),
                qtime: float = 0.0, zone: bytes | None = None) -> None:
        """See control(): query and replies as separate records (one AUTH_QUERY / RESOLVER_QUERY,
        then one response message each: a transfer is many)."""
        if self.ctl_ring is None or self._pending_off():
            return
        p = _pack(peer)
        o = _pack(ours) if ours is not None and ours[0] not in ("0.0.0.0", "::") else None
        if o is None and p is not None:
            o = _pack(_local_toward(peer) or ("::" if len(p[0]) == 16 else "0.0.0.0", 0))
        if p is None or o is None or len(o[0]) != len(p[0]):
            return
        client, server = (p, o) if mt == AUTH else (o, p)
        with self._ctl_lock:
            if query is not None:
                self.ctl_ring.log(mt, tcp, client[0], client[1], server[0], server[1], query,
                                  None, qtime, zone)
            for r in replies:
                self.ctl_ring.log(mt, tcp, client[0], client[1], server[0], server[1], None,
                                  bytes(r), qtime, zone)

    def _pending_off(self) -> bool:
        return self.settings.sample == OFF_SAMPLE

    def reconfigure(self, new: Settings | None) -> list[str]:
        """A `ctl reload` with a changed (already validated) [dnstap]: sampling and kinds at once
        in every ring; a new target, identity or version re-opens the output in the writer's
        thread; None (the table removed) turns logging off.  Returns what still needs a restart
        (ring_size)."""
        if new is None:
            for r in self.rings:
                r.configure(OFF_SAMPLE, False, False)
            self._pending = dataclasses.replace(self.settings, sample=OFF_SAMPLE)
            return []
        for r in self.rings:
            r.configure(1 if r is self.ctl_ring else new.sample, new.queries, new.responses)
        restart = []
        if new.ring_size != self.settings.ring_size:
            restart.append("dnstap.ring_size")
            new = dataclasses.replace(new, ring_size=self.settings.ring_size)
        self._pending = new
        return restart

    def stop(self, timeout: float = 2.0) -> None:
        global _current
        if _current is self:
            _current = None
        self._stop.set()
        if self.writer is not None:
            self.writer.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        out = self.writer.stats() if self.writer is not None else {}
        for k in ("frames", "bytes", "lost"):
            out[k] = out.get(k, 0) + self._base.get(k, 0)
        out.update(connected=int(self.connected), opens=self.opens)
        return out

    def _apply_pending(self) -> None:
        """In the writer's thread: close the output (STOP, FINISH) and switch to the new
        settings; the next loop opens the new target.  What the rings hold is written to the new
        one."""
        new, self._pending = self._pending, None
        old = self.settings
        if (new.socket, new.file, new.identity, new.version) == (old.socket, old.file,
                                                                  old.identity, old.version) \
                and OFF_SAMPLE not in (new.sample, old.sample):
            self.settings = new
            return
        if self._fd is not None:
            self._close(clean=True)
        if (new.identity, new.version) != (old.identity, old.version):
            st = self.writer.stats()
            for k in ("frames", "bytes", "lost"):
                self._base[k] = self._base.get(k, 0) + st[k]
            self.writer = _core.DnstapWriter(self.rings, new.identity, new.version)
        self.settings = new
        self._failed = False
        self._warned = False
        log.info("dnstap: reconfigured (%s, 1 in %d)", self._target() or "off", new.sample)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if self._pending is not None:
                self._apply_pending()
            if self._pending_off():
                self._stop.wait(0.05)
                continue
            if self._fd is None and not self._open():
                self._stop.wait(self.settings.reconnect)
                continue
            try:
                n = self.writer.drain(self._fd)
            except OSError as exc:
                if self.settings.file is not None:
                    # reopening would truncate what was written: stop writing until a restart
                    log.error("dnstap: writing %s failed (%s); dnstap is off until a restart, "
                              "messages are dropped and counted", self._target(), exc)
                    self._close(clean=False)
                    self._failed = True
                    continue
                log.warning("dnstap: output %s failed (%s); reconnecting", self._target(), exc)
                self._close(clean=False)
                continue
            if n == 0:
                self._stop.wait(0.005)
        if self._fd is not None:
            try:
                self.writer.drain(self._fd)
            except OSError:
                pass
            self._close(clean=True)

    def _target(self) -> str:
        return self.settings.socket or self.settings.file

    def _open(self) -> bool:
        s = self.settings
        if self._failed:
            return False
        try:
            if s.file is not None:
                self._fd = os.open(s.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
                os.write(self._fd, control_frame(START))
            else:
                self._sock = self._handshake(s.socket)
                self._fd = self._sock.fileno()
        except (OSError, ConnectionError) as exc:
            if not self._warned:
                log.warning("dnstap: cannot open %s (%s); retrying every %gs, messages are "
                            "dropped meanwhile", self._target(), exc, s.reconnect)
                self._warned = True
            self._fd = None
            return False
        if self._warned or self.opens:
            log.info("dnstap: writing to %s", self._target())
        self._warned = False
        self.connected = True
        self.opens += 1
        return True

    def _handshake(self, path: str) -> socket.socket:
        """Bidirectional Frame Streams: READY, wait for ACCEPT with our content type, START."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(path)
            sock.sendall(control_frame(READY))
            ctype, types = read_control(sock)
            if ctype != ACCEPT or (types and CONTENT_TYPE not in types):
                raise ConnectionError(f"the reader did not accept {CONTENT_TYPE.decode()}")
            sock.sendall(control_frame(START))
            sock.settimeout(None)
            # blocking writes that wake twice a second, so that stop is noticed (dnstap_out.pxi)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 500_000))
            return sock
        except BaseException:
            sock.close()
            raise

    def _close(self, clean: bool) -> None:
        try:
            if clean:
                os.write(self._fd, control_frame(STOP, None))
                if self._sock is not None:
                    self._sock.settimeout(1.0)
                    read_control(self._sock)       # FINISH
        except (OSError, ConnectionError):
            pass
        if self._sock is not None:
            self._sock.close()
        elif self._fd is not None:
            os.close(self._fd)
        self._sock = None
        self._fd = None
        self.connected = False
