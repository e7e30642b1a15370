"""Helpers for the server integration tests (issue 3): DNS over real sockets on 127.0.0.1 / ::1,
the query corpus, metric scraping, `pop53 serve` subprocess handling.  The fixtures that use them
are in conftest.py; this module has its own name so that it never collides with another
directory's conftest on sys.path.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
from prometheus_client.parser import text_string_to_metric_families

from pop53 import config as cfgmod
from tests.support.refservers import recv_exactly

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO / ".." / "shared"
ZONES = HERE / "zones"
INTEG_ZONE = ZONES / "integ.example.zone"
RELOAD_V1 = ZONES / "reload-v1.zone"
RELOAD_V2 = ZONES / "reload-v2.zone"
EXAMPLE_ZONE = REPO / "src" / "pop53" / "data" / "example.com.zone"
BIND_CORPUS = SHARED / "corpora" / "bind9-dns_message_parse"

IDENTITY = "integ-pop"


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_IPV6 = _have_ipv6()


# -- ports ---------------------------------------------------------------------------------------
def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nobody holds `port` for UDP or TCP on host (binds both, as a server would)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, port))
        with socket.socket(family, socket.SOCK_STREAM) as t:
            # SO_REUSEADDR like every server: TIME_WAIT left by closed connections is not "held"
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((host, port))
            t.listen(1)
        return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (bind 0, read, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port_is_free(port, host):
            return port
    raise RuntimeError("no free port")


def wait_for(pred, timeout: float, interval: float = 0.02):
    """Poll pred() until it returns something truthy or timeout passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# -- DNS wire helpers ----------------------------------------------------------------------------
def with_id(wire: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid & 0xFFFF) + wire[2:]


def msg_id(wire: bytes) -> int:
    return struct.unpack_from("!H", wire, 0)[0]


def make_query(name: str, rdtype="A", *, qid: int = 1, edns: int | None = 0, payload: int = 1232,
               rdclass="IN", want_dnssec: bool = False, nsid: bool = False, rd: bool = True) -> bytes:
    options = [dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")] if nsid else None
    q = dns.message.make_query(name, rdtype, rdclass=rdclass, use_edns=edns if edns is not None else False,
                               payload=payload, want_dnssec=want_dnssec, options=options)
    if not rd:
        q.flags &= ~dns.flags.RD
    q.id = qid & 0xFFFF
    return q.to_wire()


def frame(wire: bytes) -> bytes:
    """RFC 1035 §4.2.2 / RFC 7766 §8: a two-octet length prefix."""
    return struct.pack("!H", len(wire)) + wire


def read_frame(sock: socket.socket) -> bytes | None:
    """One length-framed message, or None on EOF (a clean close between messages)."""
    head = recv_exactly(sock, 2)
    if head is None:
        return None
    (n,) = struct.unpack("!H", head)
    body = recv_exactly(sock, n)
    if body is None:
        raise AssertionError(f"connection closed in the middle of a {n}-octet message")
    return body


def _connected(addr: tuple, kind: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(family, kind)
    s.settimeout(timeout)
    s.connect(addr[:2])
    return s


def tcp_connect(addr: tuple, timeout: float = 5.0) -> socket.socket:
    return _connected(addr, socket.SOCK_STREAM, timeout)


def tcp_exchange(addr: tuple, wires: list[bytes], timeout: float = 5.0) -> list[bytes]:
    """Send every message pipelined on one connection, half-close, read answers until EOF."""
    with tcp_connect(addr, timeout) as s:
        s.sendall(b"".join(frame(w) for w in wires))
        s.shutdown(socket.SHUT_WR)
        out = []
        while (m := read_frame(s)) is not None:
            out.append(m)
        return out


def udp_socket(addr: tuple, timeout: float = 2.0) -> socket.socket:
    return _connected(addr, socket.SOCK_DGRAM, timeout)


def udp_exchange(sock: socket.socket, wire: bytes) -> bytes | None:
    """Send one datagram on a connected socket; the reply with the same id, or None on timeout
    (no retry: on loopback a lost query is a server bug)."""
    sock.send(wire)
    qid = msg_id(wire) if len(wire) >= 2 else None
    try:
        while True:
            r = sock.recv(65535)
            if qid is None or (len(r) >= 2 and msg_id(r) == qid):
                return r
    except (socket.timeout, TimeoutError):
        return None


# -- the query corpus ----------------------------------------------------------------------------
CORPUS_TYPES = ["A", "AAAA", "NS", "SOA", "MX", "TXT", "CNAME", "SRV", "CAA", "DS", "ANY"]


def corpus_names() -> list[str]:
    """Every owner of the integration zone and the example zone ('*' replaced by a label), plus
    names that exercise the other branches: NXDOMAIN, empty non-terminal, below a delegation,
    below a wildcard, mixed case, a name in no zone we serve."""
    names: list[str] = []
    for path in (INTEG_ZONE, EXAMPLE_ZONE):
        z = dns.zone.from_file(str(path), relativize=False)
        for owner in sorted(z.nodes):
            text = owner.to_text()
            names.append(text.replace("*.", "anything.", 1) if text.startswith("*.") else text)
        origin = z.origin.to_text()
        names += [f"nx.{origin}", f"deeper.nx.{origin}", f"A.B.c.{origin}"]
    names += [
        "ent.integ.example.",                 # empty non-terminal: NODATA (RFC 8020 territory)
        "a.b.deleg.integ.example.",           # below the cut: referral
        "deeper.x.wild.integ.example.",       # wildcard two levels down (RFC 4592 §2.2.1)
        "WwW.InTeG.ExAmPlE.",                 # case preserved in the question (RFC 4343)
        "ALIAS.integ.example.",
        "www.not-ours.test.",                 # REFUSED
        "example.",                           # parent of a zone we serve: REFUSED
        ".",
    ]
    return list(dict.fromkeys(names))


def query_corpus() -> list[bytes]:
    """~600 queries with distinct ids, every name x type with EDNS 1232, plus variants."""
    out: list[bytes] = []

    def add(*args, **kw):
        out.append(make_query(*args, qid=len(out) + 1, **kw))

    names = corpus_names()
    for name in names:
        for t in CORPUS_TYPES:
            add(name, t)
    for name in names:
        add(name, "A", edns=None)                      # no EDNS: 512-octet limit
        add(name, "TXT", edns=None)
    for name in ("big.integ.example.", "huge.integ.example.", "many.integ.example.",
                 "www.integ.example.", "www.example.com.", "nx.integ.example."):
        for kw in ({"payload": 512}, {"payload": 4096}, {"want_dnssec": True}, {"nsid": True},
                   {"rd": False}, {"edns": None}):
            add(name, "TXT", **kw)
            add(name, "A", **kw)
    for name in ("id.server.", "hostname.bind.", "version.bind.", "version.server."):
        add(name, "TXT", rdclass="CH")
        add(name, "TXT", rdclass="CH", nsid=True)
    return out


# -- metrics -------------------------------------------------------------------------------------
def scrape(addr: tuple, timeout: float = 5.0) -> dict:
    """Scrape and parse a Prometheus endpoint: {family name: {labels tuple: value}}."""
    host, port = addr[:2]
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        d = out.setdefault(fam.name, {})
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            d[tuple(sorted(s.labels.items()))] = s.value
    return out


def metric(families: dict, name: str, **labels) -> float:
    return families.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


# -- in-process servers --------------------------------------------------------------------------
def start_with_retry(make):
    """make() -> a server not yet started (Server(cfg), secondary.build(cfg)[0]); returns it
    started.  With listen port 0 the server lets the kernel pick the UDP port and then binds TCP
    to the same number, which fails when that TCP port is busy (notes/integration.md, bug 2):
    try again with a new port, a bounded number of times."""
    for attempt in range(5):
        s = make()
        try:
            s.start()
            return s
        except OSError as exc:
            s.stop()
            if exc.errno != errno.EADDRINUSE or attempt == 4:
                raise
    raise AssertionError("unreachable")


def server_config(zones, *, listen=("127.0.0.1:0",), workers: int = 2, **server_keys):
    zone_tables = []
    for z in zones:
        origin = dns.zone.from_file(str(z), relativize=False).origin.to_text()
        zone_tables.append({"name": origin, "file": str(z)})
    doc = {"server": {"listen": list(listen), "workers": workers, "identity": IDENTITY,
                      **server_keys},
           "zone": zone_tables}
    return cfgmod.from_dict(doc, file="<integration test>")


# -- pop53 serve subprocesses --------------------------------------------------------------------
_LISTENING = re.compile(r"pop53: listening on (\S+) port (\d+)")


class ServeProcess:
    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc = proc
        self.log = log
        self.addresses: list[tuple[str, int]] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_listening(self, count: int, timeout: float = 15.0) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.findall(self.log_text())
            if len(found) >= count:
                self.addresses = [(h, int(p)) for h, p in found[:count]]
                return self.addresses
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"pop53 serve did not come up (exit {self.proc.poll()}):\n{self.log_text()}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
