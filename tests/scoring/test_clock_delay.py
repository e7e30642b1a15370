"""The controller's queue delay without kernel stamps (the default, [scoring] kernel_stamps =
false): a bound from the worker's clock, every datagram in a queue having arrived after the
worker last found that queue empty.  The point of it: no socket of the server asks the kernel
for receive stamps, so the kernel does not stamp every packet the machine receives (about 3% of
a reply at full speed, docs/scoring.md).  Whether the kernel stamps is seen from a probe socket
that reports software stamps without asking for them (SOF_TIMESTAMPING_SOFTWARE alone): its
datagrams carry one only while some socket of the machine holds the kernel's stamping on."""
from __future__ import annotations

import socket
import struct
import time

import dns.message
import pytest

from pop53 import _core
from pop53 import config as cfgmod
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import ask, held

SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SLOW = next(b for b, le in enumerate(_core.QUEUE_DELAY_BOUNDS_US) if le > 65_536)


def _kernel_stamping() -> bool:
    """Whether the kernel stamps received packets now: a datagram to a probe socket that only
    reports software stamps comes with one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(2)
        probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_SOFTWARE)
        tx.sendto(b"probe", probe.getsockname())
        _, anc, _, _ = probe.recvmsg(64, 256)
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and any(struct.unpack("qq", data[:16])):
            return True
    return False


def _server(tmp_path, **scoring) -> Server:
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "receive_timestamps": False},
           "scoring": {"known_resolvers": str(known), "steer": True, **scoring},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    return Server(cfgmod.from_dict(doc, file="<test>"))


@pytest.mark.parametrize("kernel_stamps", [False, True])
def test_the_kernel_stamps_packets_only_with_kernel_stamps(tmp_path, kernel_stamps):
    if _kernel_stamping():
        pytest.skip("another socket of this machine holds the kernel's receive stamping on")
    server = _server(tmp_path, kernel_stamps=kernel_stamps)
    server.start()
    try:
        addr = server.addresses[0]
        # known resolvers (priority socket) and unknown clients (normal socket) answered
        assert ask(addr, "127.1.0.7", 10) == 10 and ask(addr, "127.2.0.7", 10) == 10
        time.sleep(0.1)         # the kernel flips its switch from a work queue
        assert _kernel_stamping() == kernel_stamps
    finally:
        server.stop()
    time.sleep(0.1)
    assert not _kernel_stamping()


@pytest.mark.parametrize("steer_idle", [True, False])
def test_known_resolvers_queued_behind_a_held_worker_count_as_waiting(tmp_path, steer_idle):
    """Held while three known resolvers queue: the priority batch's bound covers the hold (it
    counts from the worker's last look at the priority queue, before it stopped)."""
    server = _server(tmp_path, steer_idle=steer_idle)
    server.start()
    known = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        addr = server.addresses[0]
        assert ask(addr, "127.2.0.7", 1) == 1       # the worker has looked at its queues
        for s in known:
            s.bind(("127.1.0.7", 0))
            s.settimeout(2)
        q = dns.message.make_query("www.integ.example.", "A", flags=0).to_wire()
        held(server, 0.15, lambda: [s.sendto(q, addr) for s in known])
        for s in known:
            assert s.recvfrom(4096)
        st = server.workers[0].scoring_stats()
        assert st["priority_received"] == 3
        assert sum(st["priority_wait"][SLOW:]) >= 1, st["priority_wait"]
    finally:
        for s in known:
            s.close()
        server.stop()


def test_an_idle_workers_wake_up_is_no_wait(tmp_path):
    """An idle worker waiting in poll (steer_idle = false) for 0.3 s, then a known resolver:
    the bound starts at the wake-up, so the wait is short, not the idle time."""
    server = _server(tmp_path, steer_idle=False)
    server.start()
    try:
        addr = server.addresses[0]
        assert ask(addr, "127.1.0.7", 1) == 1
        time.sleep(0.3)
        before = server.workers[0].scoring_stats()["priority_wait"]
        assert ask(addr, "127.1.0.7", 3) == 3
        st = server.workers[0].scoring_stats()
        grew = [a - b for a, b in zip(st["priority_wait"], before)]
        assert sum(grew) == 3 and sum(grew[SLOW:]) == 0, grew
        assert st["risk_ticks"] == 0
    finally:
        server.stop()
