"""With scoring on, the controller takes one queue delay per full batch of the normal socket,
not one per datagram.  By default it is the worker's clock's bound (every datagram queued after
the worker last found the queue empty: from then to the batch), and the socket has no
SO_TIMESTAMPNS (the kernel would stamp every packet of the machine).  With kernel_stamps it is
a kernel receive stamp, still not one per datagram: the socket keeps the last read datagram's
stamp (SIOCGSTAMPNS) and the worker reads it after each full batch.  Either way the drop
counters are read once a tick (SO_MEMINFO), and a wildcard bind still gets every query's
IP_PKTINFO (replies leave from the address queried)."""
from __future__ import annotations

import socket
import time

import pytest

from pop53 import _core
from pop53 import config as cfgmod
from pop53.serve.server import Server

from integ_support import INTEG_ZONE, make_query, with_id

PAUSE = 0.3
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _scored(listen: str, kernel_stamps: bool = False) -> Server:
    doc = {"server": {"listen": [listen], "workers": 1},
           "scoring": {"kernel_stamps": kernel_stamps},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    return Server(cfgmod.from_dict(doc, file="<test>"))


@pytest.mark.parametrize("kernel_stamps", [False, True])
def test_a_full_batch_gives_the_controller_its_newest_datagrams_wait(kernel_stamps):
    server = _scored("127.0.0.1:0", kernel_stamps)
    server.start()
    try:
        addr = server.addresses[0]
        sock = server.net.udp_socks[0]
        assert sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) == 0
        w, t = server.workers[0], server.net.threads[0]
        before = sum(w.scoring_stats()["queue_delay"])
        # no reader for PAUSE: 200 queries queue (three full batches of 64 and 8)
        w.stop()
        t.join(2)
        assert not t.is_alive()
        base = make_query("www.integ.example.", "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            for k in range(200):
                c.sendto(with_id(base, k), addr)
            time.sleep(PAUSE)
            server.net.threads[0] = server.net._thread(0, w, t.name)
            server.net.threads[0].start()
            assert len({c.recv(4096)[:2] for _ in range(200)}) == 200
        qd = w.scoring_stats()["queue_delay"]
        counts, _ = _core.latency_from_kernel([w])
        # bucket b: < 16 us << b; b >= 14: >= 262 ms.  The three full batches each gave one
        # delay, their newest datagram's PAUSE (or more: the clock's bound counts from the
        # worker's last empty read, before it stopped); the short batch emptied the queue: none
        assert sum(qd) - before == 3, qd
        assert sum(qd[14:]) == 3, qd
        if not kernel_stamps:
            return      # the latency histogram is sampled one second in 16 (kstamp.pxi)
        # the total-latency histogram: one reply per full batch (bounds 2**(10+k) ns: k >= 18
        # is >= 0.268 s)
        assert sum(counts) == 3 and sum(counts[18:]) == 3, counts
    finally:
        server.stop()


def test_a_scored_wildcard_worker_still_replies_from_the_address_queried():
    server = _scored("0.0.0.0:0")
    server.start()
    try:
        port = server.addresses[0][1]
        base = make_query("www.integ.example.", "A")
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.53"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2.0)
                for k in range(20):     # a burst: datagrams after a batch's first too
                    sock.sendto(with_id(base, k), (host, port))
                for _ in range(20):
                    _, src = sock.recvfrom(4096)
                    assert src[:2] == (host, port)
    finally:
        server.stop()
