"""Fleet scale, under load: two real `pop53 serve` processes follow one feed (a real
nats-server) while map versions are published, alternately as full snapshots and as one-prefix
deltas.  Version k maps 1.2.4.0/24 to region eu/us/ap (k mod 3), so an answer names the version
it came from.  Query threads hammer both servers the whole time; every answer must

* arrive (none lost) and be NOERROR;
* be whole: the mapped A set is exactly one region's, and the mapped delegation's NS and its
  glue are the same target's (an NS from one version with glue from another would be mixed);
* come from version N or N+1: a version the fleet was serving at some moment while the query
  was in flight.  The publisher publishes N+2 only once every server has been seen answering
  N+1, so at any moment at most two versions are served.
"""
from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.edns
import dns.message
import pytest

from feed_support import NatsServer, free_port, server_toml, wait_for
from pop53.feed import message as fm
from pop53.feed.publisher import Publisher

DATA = Path(__file__).resolve().parents[2] / "src" / "pop53" / "data"
REGIONS = ("eu", "us", "ap")
A_SETS = {("192.0.2.10", "192.0.2.11"): "eu", ("198.51.100.10",): "us", ("203.0.113.10",): "ap"}
NS_GLUE = {"n1.w10.example.net.": ("eu", "192.0.2.10"), "n3.w10.example.net.": ("us", "198.51.100.10"),
           "n4.w10.example.net.": ("ap", "203.0.113.10")}
VERSIONS = 24


def _q(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A", options=[dns.edns.ECSOption("1.2.4.0", 24)])
    q.id = qid
    return q.to_wire()


def region_of(wire: bytes) -> tuple[str, str | None]:
    """(region, problem): the region an answer shows, or why it is not a whole answer."""
    r = dns.message.from_wire(wire)
    if r.rcode() != 0:
        return "", f"rcode {r.rcode()}"
    if r.answer:                                     # e1.example.net. A
        got = tuple(sorted(x.address for rrs in r.answer for x in rrs))
        return (A_SETS[got], None) if got in A_SETS else ("", f"mixed A set {got}")
    ns = [x.target.to_text() for rrs in r.authority for x in rrs if rrs.rdtype == 2]
    glue = {(rrs.name.to_text(), x.address) for rrs in r.additional if rrs.rdtype == 1 for x in rrs}
    if len(ns) != 1 or ns[0] not in NS_GLUE:
        return "", f"NS {ns}"
    region, addr = NS_GLUE[ns[0]]
    if glue != {(ns[0], addr)}:
        return "", f"NS {ns[0]} with glue {sorted(glue)}: mixed"
    return region, None


class Load(threading.Thread):
    """Back-to-back queries to one server, alternating the mapped A and the mapped delegation;
    records (t_send, t_recv, region, problem)."""

    def __init__(self, port: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.rows: list[tuple[float, float, str, str | None]] = []

    def run(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", self.port))
        s.settimeout(2.0)
        qs = [_q("e1.example.net.", 1), _q("www.w10.example.net.", 2)]
        i = 0
        while not self.stop.is_set() and i < 200_000:
            t0 = time.monotonic()
            s.send(qs[i % 2])
            try:
                wire = s.recv(4096)
                region, problem = region_of(wire)
            except socket.timeout:
                region, problem = "", "lost (no answer in 2 s)"
            self.rows.append((t0, time.monotonic(), region, problem))
            i += 1


@pytest.fixture
def fleet(tmp_path):
    nats = NatsServer(tmp_path).start()
    fm.keygen(str(tmp_path / "keys"), "ops")
    shutil.copy(DATA / "example.net.zone", tmp_path)
    (tmp_path / "world.map").write_bytes((DATA / "example.map").read_bytes() + b"1.2.4.0/24 eu\n")
    mapping = (DATA / "example-mapping.toml").read_text().replace("example.map", "world.map")
    procs, ports = [], []
    for k in range(2):
        port = free_port()
        conf = tmp_path / f"s{k}.toml"
        conf.write_text(server_toml(port, tmp_path / f"state{k}", nats.url, mapping, workers=2))
        procs.append(subprocess.Popen([sys.executable, "-m", "pop53", "serve", "-c", str(conf)],
                                      stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / f"s{k}.log", "ab")))
        ports.append(port)
    yield tmp_path, nats, ports
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    nats.stop()


def answer_region(port: int) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(_q("e1.example.net.", 7), ("127.0.0.1", port))
            return region_of(s.recv(4096))[0]
        except OSError:
            return None


def test_every_answer_is_version_n_or_n_plus_1_never_mixed_never_lost(fleet):
    tmp_path, nats, ports = fleet
    for port in ports:
        assert wait_for(lambda: answer_region(port) == "eu", timeout=30), \
            (tmp_path / "s0.log").read_text()[-2000:]
    pub = Publisher([nats.url], fm.read_private(str(tmp_path / "keys" / "ops.key")),
                    sender="portal")
    base = (DATA / "example.map").read_bytes()
    stop = threading.Event()
    loads = [Load(port, stop) for port in ports]
    confirmed = [time.monotonic()]        # confirmed[k]: every server seen answering version k
    for t in loads:
        t.start()
    sent = []
    try:
        for k in range(1, VERSIONS + 1):
            data = base + f"1.2.4.0/24 {REGIONS[k % 3]}\n".encode()
            kind, _, _ = asyncio.run(pub.send_map("world", data, max_changes=k % 2))
            sent.append(kind)
            assert all(wait_for(lambda: answer_region(p) == REGIONS[k % 3], timeout=10)
                       for p in ports), f"version {k} not served"
            confirmed.append(time.monotonic())
    finally:
        stop.set()
        for t in loads:
            t.join(10)
    assert sent.count("mapdelta") >= VERSIONS // 2 - 1 and "map" in sent
    # Version k can be served from its publication (after k-1 was confirmed everywhere) until
    # k+1 is confirmed everywhere: at most two versions at any moment.  A query may answer any
    # version served at some moment between its send and its answer (a Python thread can be
    # paused between taking the time and sending).
    n = tight = 0
    for t in loads:
        for t_send, t_recv, region, problem in t.rows:
            assert problem is None, (problem, t_send)
            live = [k for k in range(VERSIONS + 1)
                    if (k == 0 or confirmed[k - 1] <= t_recv)
                    and (k == VERSIONS or confirmed[k + 1] >= t_send)]
            assert region in {REGIONS[k % 3] for k in live}, (region, live, t_send)
            tight += len(live) <= 2
            n += 1
    seen = {row[2] for t in loads for row in t.rows}
    assert n > 500 and seen == set(REGIONS), (n, seen)
    assert tight > 0.9 * n, (tight, n)      # almost every query spans N and N+1 at most
