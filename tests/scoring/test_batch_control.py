"""With scoring on, a worker asks the kernel for the control data of each normal batch's first
datagram only (its receive stamp is the controller's queue delay) and reads the drop counter
once a tick (SO_MEMINFO) instead of a control message with every datagram: the kernel's
per-datagram put_cmsg was a share of the scored path's cost at full speed.  A wildcard bind
still gets every query's IP_PKTINFO (replies leave from the address queried)."""
from __future__ import annotations

import socket

import dns.flags
import dns.message

from pop53 import _core
from pop53 import config as cfgmod
from pop53.serve.server import Server

from integ_support import INTEG_ZONE, make_query, with_id


def _scored(listen: str) -> Server:
    doc = {"server": {"listen": [listen], "workers": 1},
           "scoring": {},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    return Server(cfgmod.from_dict(doc, file="<test>"))


def test_a_scored_batch_reads_its_first_datagrams_stamp_only():
    server = _scored("127.0.0.1:0")
    server.start()
    try:
        addr = server.addresses[0]
        q = dns.message.make_query("www.integ.example.", "A")
        q.flags &= ~dns.flags.RD
        wire = q.to_wire()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            for _ in range(3):          # bursts: the worker reads several per batch
                for k in range(100):
                    s.sendto(with_id(wire, k), addr)
                got = 0
                for _ in range(100):
                    s.recvfrom(4096)
                    got += 1
                assert got == 100
        w = server.workers[0]
        counts, _ = _core.latency_from_kernel([w])
        batches, replies = w.stats()["batches"], w.stats()["replies"]
        assert replies >= 300 and batches < replies, (batches, replies)
        # one stamp per batch reaches the latency histogram: the others carried none
        assert sum(counts) == batches, (sum(counts), batches, replies)
        # the controller read every batch's delay from that one stamp
        assert sum(w.scoring_stats()["queue_delay"]) == batches
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
