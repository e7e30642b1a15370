"""The worker socket that answers a flow is the one the emulator predicts: pop53's own UDP
workers with the reuseport cBPF program attached (server.reuseport_bpf), flows told apart by
which worker's C counters moved (issue 5: "likewise for the worker socket inside one machine")."""
from __future__ import annotations

import random
import socket
import time

import dns.message

from pop53 import config
from pop53.ecmp import reuseport
from pop53.serve.server import Server

ZONE = "src/pop53/data/example.com.zone"


def test_pop53_workers_match_the_predicted_socket(repo):
    workers = 4
    cfg = config.from_dict({"server": {"listen": ["127.0.0.1:0"], "workers": workers,
                                       "reuseport_bpf": True},
                            "zone": [{"name": "example.com.", "file": str(repo / ZONE)}]})
    s = Server(cfg)
    s.start()
    try:
        host, port = s.addresses[0]
        q = dns.message.make_query("www.example.com.", "A").to_wire()
        rng = random.Random(53)
        agree = total = 0
        for _ in range(300):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind(("127.0.0.1", 0))
            c.settimeout(2)
            sport = c.getsockname()[1]
            before = [w.stats()["queries"] for w in s.workers]
            c.sendto(q, (host, port))
            c.recv(4096)
            c.close()
            # the reply was sent by the worker after counting: find whose counter moved
            deadline = time.monotonic() + 1
            while True:
                moved = [i for i, w in enumerate(s.workers) if w.stats()["queries"] != before[i]]
                if moved or time.monotonic() > deadline:
                    break
            assert len(moved) == 1, moved
            total += 1
            agree += moved[0] == reuseport.predict_socket("127.0.0.1", sport, host, port, workers)
            if rng.random() < 0.1:
                time.sleep(0.001)
        assert total == 300 and agree == total, f"{agree} of {total} flows agree"
    finally:
        s.stop()
