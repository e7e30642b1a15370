"""Snapshots swap atomically under load and are reclaimed: an in-process server answers UDP
queries while another thread flips a target's liveness; every answer is exactly one of the two
configured answers (never a mix, never an error), and every retired snapshot is released once
the workers have passed a batch boundary.  A zone reload (a new image seed) republishes the
snapshot and mapped names keep answering."""
from __future__ import annotations

import threading
import time

import dns.edns
import dns.message
import dns.query

from pop53 import config as cfgmod
from pop53.serve.server import Server

ZONE = """$ORIGIN cdn.example.
$TTL 3600
@    SOA ns1 host 1 7200 3600 1209600 300
@    NS  ns1
ns1  A   192.0.2.53
"""


def _server(tmp_path):
    (tmp_path / "cdn.zone").write_text(ZONE)
    (tmp_path / "m.map").write_text("10.0.0.0/8 eu\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 2},
           "zone": [{"name": "cdn.example.", "file": str(tmp_path / "cdn.zone")}],
           "map": [{"name": "m", "file": str(tmp_path / "m.map"), "default": "us"}],
           "target": [{"name": "e1", "addresses": ["192.0.2.1"]},
                      {"name": "e2", "addresses": ["192.0.2.2"]},
                      {"name": "u1", "addresses": ["198.51.100.1"]}],
           "mapped": [{"name": "www.cdn.example.", "map": "m", "fallback": ["us"],
                       "regions": {"eu": ["e1", "e2"], "us": ["u1"]}}]}
    s = Server(cfgmod.from_dict(doc, file="test"))    # bind() retries a busy port itself
    s.start()
    return s


def test_liveness_flips_are_atomic_and_reclaimed(tmp_path):
    s = _server(tmp_path)
    try:
        host, port = s.addresses[0]
        q = dns.message.make_query("www.cdn.example.", "A", use_edns=0,
                                   options=[dns.edns.ECSOption("10.1.0.0", 24)])
        stop = threading.Event()
        flips = [0]

        def flip():
            while not stop.is_set() and flips[0] < 200:
                s.mapping.set_target("e2", flips[0] % 2 == 1)
                flips[0] += 1
                time.sleep(0.002)

        t = threading.Thread(target=flip)
        t.start()
        seen = set()
        deadline = time.monotonic() + 3
        n = 0
        while time.monotonic() < deadline and n < 600:
            r = dns.query.udp(q, host, port=port, timeout=2)
            got = tuple(sorted(x.address for rrs in r.answer for x in rrs))
            assert got in {("192.0.2.1", "192.0.2.2"), ("192.0.2.1",)}, got
            seen.add(got)
            n += 1
        stop.set()
        t.join(5)
        assert flips[0] > 10 and len(seen) == 2
        # every retired snapshot is released after the workers' batch boundaries
        deadline = time.monotonic() + 5
        while s.reclaim() and time.monotonic() < deadline:
            dns.query.udp(q, host, port=port, timeout=2)   # move the workers' epochs
            time.sleep(0.05)
        assert s.reclaim() == 0
        # a full compile publishes a new image (new seed): mapped names still answer (a reload
        # of unchanged files publishes nothing, and a patched image keeps its seed)
        seed = s.current_image.view.seed
        s.set_zones(dict(s.zones.data))
        assert s.current_image.view.seed != seed and s.mapping.seed == s.current_image.view.seed
        r = dns.query.udp(q, host, port=port, timeout=2)
        assert r.answer and r.answer[0][0].address.startswith("192.0.2.")
    finally:
        s.stop()
