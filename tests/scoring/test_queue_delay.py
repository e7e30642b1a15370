"""Issue 13's queue-delay input and the per-zone NXDOMAIN check: the controller reacts to the
queue delay of each batch's oldest datagram (a standing queue, not a burst), the histogram of it
moves on a real server whose worker was held, and pop53's own NXDOMAIN replies for a zone under
pressure are dropped after the answer only while the query's class is being cut."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode

import pop53
from pop53 import _core
from pop53 import config as cfgmod
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import held

CORE_ZONE = Path(__file__).resolve().parents[1] / "data" / "core.test.zone"


def test_a_standing_queue_cuts_a_burst_does_not():
    # full_run high: only the queue delay can say "overloaded" here
    s = _core.Scorer(tick_ms=20, delay_target_us=2000, full_run=1000)
    s.batch(1, delay_us=50)                        # the first batch starts the clock
    s.admit(b"\0" * 12, b"\xcb\0\x71\x01")         # an odd query: the class that has traffic
    s.batch(64, delay_us=9000)                     # a burst: one late full batch ...
    s.batch(64, delay_us=3000)
    s.batch(5, delay_us=2500)                      # ... then the queue emptied
    time.sleep(0.03)
    s.batch(64, delay_us=4000)                     # the tick: calm
    st = s.stats()
    assert st["overload_ticks"] == 0 and st["delay_ticks"] == 0 and st["level"] == 0.0
    for _ in range(3):                             # a standing queue: every batch waited 5 ms
        s.admit(b"\0" * 12, b"\xcb\0\x71\x01")
        s.batch(64, delay_us=5000)
        s.batch(3, delay_us=8000, priority=True)   # the priority queue emptying says nothing
    time.sleep(0.03)
    s.batch(64, delay_us=5000)
    st = s.stats()
    assert st["overload_ticks"] == 1 and st["delay_ticks"] == 1
    assert st["share"]["flood"] == 0.0 and st["share"]["odd"] == 0.5 and st["share"]["top"] == 1.0
    # a late wake-up of an idle worker (small batches, each late) is not a standing queue
    for _ in range(3):
        s.batch(1, delay_us=9000)
    time.sleep(0.03)
    s.batch(1, delay_us=9000)
    assert s.stats()["overload_ticks"] == 1
    # the histogram: bucket b counts batches whose oldest datagram waited < 16 us << b
    hist = s.stats()["queue_delay"]
    bounds = _core.QUEUE_DELAY_BOUNDS_US
    assert sum(hist) == 16
    assert hist[next(b for b, le in enumerate(bounds) if 5000 < le)] == 4 + 3      # 5 and 8 ms
    assert hist[next(b for b, le in enumerate(bounds) if 9000 < le)] == 1 + 4


def test_kernel_drops_are_counted_per_socket():
    s = _core.Scorer()
    s.batch(1, ovfl=0)
    s.batch(1, ovfl=7)                             # the normal socket's counter moved by 7
    s.batch(1, ovfl=2, priority=True)              # the priority socket's own counter
    st = s.stats()
    assert st["kernel_drops"] == 7 and st["kernel_drops_priority"] == 2
    assert st["priority_received"] == 1


def test_queue_delay_histogram_moves_on_a_held_worker(tmp_path):
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"steer": True, "queue_ms": 2},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(2)
    try:
        addr = server.addresses[0]
        q = dns.message.make_query("www.integ.example.", "A")
        q.flags &= ~dns.flags.RD
        c.sendto(q.to_wire(), addr)
        assert c.recvfrom(4096)
        st = server.workers[0].scoring_stats()
        # a short batch emptied the queue: the controller reads no delay for it (ext/udp_loop.pxi)
        assert sum(st["queue_delay"]) == 0
        slow = next(b for b, le in enumerate(_core.QUEUE_DELAY_BOUNDS_US) if le > 65_536)
        # 64 queue (as many as the 2 ms queue holds at least): one full batch, whose newest
        # datagram's wait is its delay
        held(server, 0.15, lambda: [c.sendto(q.to_wire(), addr) for _ in range(64)])
        for _ in range(64):
            assert c.recvfrom(4096)
        st = server.workers[0].scoring_stats()
        assert sum(st["queue_delay"][slow:]) == sum(st["queue_delay"]) == 1, st["queue_delay"]
        assert st["queue_delay_last_us"] >= 100_000
        # the metric: a histogram with the same counts
        from pop53.scoring import metrics
        fam = {f.name: f for f in metrics.families(server.workers)}["pop53_scoring_queue_delay_seconds"]
        inf = [s.value for s in fam.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
        assert inf == [sum(st["queue_delay"])]
        # the queue was sized from the measured work: far below the server's 4 MiB
        svc, normal = server.scoring, server.net.udp_socks[0]
        prio = svc.priority[normal.fileno()]
        rcv = normal.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert rcv < 4 << 20 and rcv == 2 * max(2304, svc.sized[normal.fileno()] // 2)
        # the priority queue: four times as much, also bounded
        assert abs(svc.sized[prio.fileno()] - min(4 << 20, 4 * svc.sized[normal.fileno()])) <= 4
    finally:
        c.close()
        server.stop()


def test_sized_queue_follows_measured_cost():
    from pop53.scoring.service import ScoringService
    from pop53.scoring.settings import parse_settings
    svc = ScoringService(parse_settings({"queue_ms": 2, "steer": True}, "f"))
    assert 256 <= svc.truesize <= 16384
    assert svc.queue_for(500.0) == int(4000 * svc.truesize)        # 2 ms at 500 ns a query
    assert svc.queue_for(250.0) == min(8 << 20, int(8000 * svc.truesize))
    assert svc.queue_for(1e6) == 64 * svc.truesize                    # never below 64 datagrams
    # at most what the server's own sockets hold (4 MiB asked, doubled by the kernel); a
    # priority socket at most 4 MiB
    assert svc.queue_for(1.0) == 8 << 20 and svc.queue_for(1.0, 8.0, priority=True) == 4 << 20
    assert ScoringService(parse_settings({"queue_ms": 0, "steer": True}, "f")).queue_ms == 0
    # without the kernel stage known resolvers share the normal queue: it keeps its 4 MiB
    assert ScoringService(parse_settings({"queue_ms": 2}, "f")).queue_ms == 0


def _nx(image, name: str) -> tuple[bytes, bytes]:
    q = dns.message.make_query(name, "A")
    q.flags &= ~dns.flags.RD
    wire = q.to_wire()
    reply = pop53.answer(image, wire, ("192.0.2.1", 5353))
    return wire, reply


def test_nxdomain_pressure_per_zone_drops_only_while_the_class_is_cut():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _core.Scorer(nx_rate=5, window_ms=1000)
    s.batch(1)                        # the first batch starts the clock and the window
    q, r = _nx(image, "nope1.core.test.")
    assert dns.message.from_wire(r).rcode() == dns.rcode.NXDOMAIN
    # under the rate, or nothing cut: never dropped
    for i in range(20):
        assert not s.nx_check(*_nx(image, f"x{i}.core.test."), "normal")
    s.tick(True)                      # no traffic in the tick: flood, odd, normal cut to nothing
    assert s.stats()["share"]["normal"] == 0.0
    # core.test. is over its rate: its NXDOMAINs from a cut class are dropped ...
    assert s.nx_check(*_nx(image, "random-1.core.test."), "normal")
    assert s.nx_check(*_nx(image, "random-2.core.test."), "flood")
    # ... a positive answer in it is not, nor a known resolver's NXDOMAIN (its share is whole)
    wq = dns.message.make_query("www.core.test.", "A").to_wire()
    assert not s.nx_check(wq, pop53.answer(image, wq, ("192.0.2.1", 5353)), "normal")
    assert not s.nx_check(*_nx(image, "random-3.core.test."), "top")
    # another zone has no pressure: its NXDOMAINs still go out
    for i in range(4):
        assert not s.nx_check(*_nx(image, f"r{i}.integ.example."), "normal")
    # still overloaded with every class cut: the known resolvers' NXDOMAIN share is halved
    s.tick(True)
    assert s.stats()["nx_share"] == 0.5
    dropped = sum(s.nx_check(*_nx(image, f"t{i}.core.test."), "top") for i in range(10))
    assert dropped == 5
    st = s.stats()["nx_dropped"]
    assert st == {"top": 5, "normal": 1, "odd": 0, "flood": 1}
    s.tick(False)                     # calm: it recovers alongside the classes
    assert s.stats()["nx_share"] > 0.5 and s.stats()["share"]["normal"] > 0
