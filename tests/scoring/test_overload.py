"""The controller's reaction on a real server: `pop53 serve` (one UDP worker) on loopback,
flooded by a bounded loop of random-subdomain queries from 64 unknown sources (127.2.X.1, 64 /24s)
while a known resolver (127.1.0.1, listed in the known-resolvers file) keeps asking.

A Python flood on this shared machine cannot outrun the worker by itself, so the overload is
made the way a starved CPU makes it: the server is stopped (SIGSTOP) for 300 ms while the flood
fills its socket queue past overflowing, then continued.  The worker then sees the kernel's
drop counter move and a run of full batches: the controller cuts the unknown sources, never the
known resolver, whose queries queued behind the backlog are answered.  With the kernel stage
(`steer = true`) the known resolver's datagrams sit in their own socket's queue, which the flood
cannot fill: what it sent during the stall is answered too."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.flags
import dns.message
import pytest

from integ_support import INTEG_ZONE, free_port, metric, scrape

HERE = Path(__file__).resolve().parent


def _config(tmp_path, port, mport, steer: bool = False) -> str:
    known = tmp_path / "known.txt"
    known.write_text("# the test's resolver\n127.1.0.0/24\n")
    conf = tmp_path / "pop53.toml"
    conf.write_text(f"""\
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
metrics = "127.0.0.1:{mport}"

[scoring]
known_resolvers = "{known}"
tick_ms = 10
full_run = 2
steer = {"true" if steer else "false"}

[[zone]]
name = "integ.example."
file = "{INTEG_ZONE}"
""")
    return str(conf)


class Resolver(threading.Thread):
    """The known resolver: one query every 2 ms from 127.1.0.1 (RD=0), answers counted by id
    and by when the query was sent (bounded in time)."""

    def __init__(self, addr, seconds: float):
        super().__init__(daemon=True)
        self.addr, self.seconds = addr, seconds
        self.sent: dict[int, float] = {}
        self.answered: set[int] = set()

    def run(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.1.0.1", 0))
        s.settimeout(0.002)
        q = dns.message.make_query("www.integ.example.", "A")
        q.flags &= ~dns.flags.RD
        end = time.monotonic() + self.seconds
        qid = 0
        try:
            while time.monotonic() < end + 1.0:
                if time.monotonic() < end:
                    qid += 1
                    q.id = qid
                    self.sent[qid] = time.monotonic()
                    s.sendto(q.to_wire(), self.addr)
                try:
                    while True:
                        r = dns.message.from_wire(s.recvfrom(4096)[0])
                        assert r.answer
                        self.answered.add(r.id)
                except socket.timeout:
                    pass
        finally:
            s.close()


@pytest.mark.parametrize("steer", [False, True], ids=["batch-stage", "kernel-stage"])
def test_flood_is_cut_known_resolver_answered(serve, tmp_path, steer):
    port, mport = free_port(), free_port()
    sp = serve(_config(tmp_path, port, mport, steer))
    addr = ("127.0.0.1", port)
    resolver = Resolver(addr, 2.5)
    flood = subprocess.Popen([sys.executable, str(HERE / "flood.py"), str(port), "2.5", "400000", "64"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        resolver.start()
        time.sleep(0.5)
        os.kill(sp.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(0.3)
        os.kill(sp.pid, signal.SIGCONT)
        resumed = time.monotonic()
        resolver.join(10)
        sent_flood = int(flood.communicate(timeout=10)[0] or 0)
    finally:
        os.kill(sp.pid, signal.SIGCONT)
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    fam = scrape(("127.0.0.1", mport))
    dropped = {c: metric(fam, "pop53_scoring_dropped", **{"class": c}) for c in ("top", "normal", "odd", "flood")}
    admitted = {c: metric(fam, "pop53_scoring_admitted", **{"class": c}) for c in ("top", "normal", "odd", "flood")}
    info = (sent_flood, dropped, admitted, metric(fam, "pop53_scoring_kernel_drops"),
            metric(fam, "pop53_scoring_overload_ticks"))
    # the overload was seen and the unknown sources were cut, the known resolver never
    assert metric(fam, "pop53_scoring_kernel_drops") > 0, info
    assert metric(fam, "pop53_scoring_overload_ticks") > 0, info
    assert dropped["normal"] + dropped["flood"] > 0, info
    assert dropped["top"] == 0, info
    # with the kernel stage, while cut the worker entered the scheduler after its normal
    # batches (yield_when_cut); without it known resolvers share the normal queue: no yield
    assert (metric(fam, "pop53_scoring_yields") > 0) == steer, info
    # every known query that reached the socket was admitted (the kernel may drop some while
    # the server is stopped and the queue is full: the kernel stage is not built yet)
    assert admitted["top"] <= len(resolver.sent)
    after = [i for i, t in resolver.sent.items() if t > resumed + 0.05]
    assert after and sum(i in resolver.answered for i in after) >= 0.95 * len(after), \
        (len(after), sum(i in resolver.answered for i in after), info)
    before = [i for i, t in resolver.sent.items() if t < stopped]
    assert sum(i in resolver.answered for i in before) >= 0.95 * len(before)
    if steer:
        # its own socket's queue never filled: even what it sent during the stall is answered
        during = [i for i, t in resolver.sent.items() if stopped < t < resumed]
        assert during and sum(i in resolver.answered for i in during) >= 0.95 * len(during), \
            (len(during), sum(i in resolver.answered for i in during), info)
        assert len(resolver.answered) >= 0.95 * len(resolver.sent)
    assert sp.proc.poll() is None
