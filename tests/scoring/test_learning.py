"""Learning known resolvers: the workers mark the sources they answer in the window's seen set
(not flooding or odd ones, nothing while any class is cut); a prefix seen in `need` of the last
`windows` windows becomes known; an overloaded window is not counted (frozen)."""
from __future__ import annotations

import ipaddress
import socket
import time

import dns.flags
import dns.message

from pop53 import _core
from pop53 import config as cfgmod
from pop53.scoring.learn import Learner
from pop53.serve.server import Server

from integ_support import INTEG_ZONE, wait_for


def ip(text):
    return ipaddress.ip_address(text).packed


def query(rd=False):
    q = dns.message.make_query("www.integ.example.", "A")
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


def test_workers_mark_answered_sources_only_when_calm():
    s = _core.Scorer(source_rate=2)
    seen = _core.SeenSet()
    assert s.swap_seen(seen) is None
    for _ in range(3):                                     # the third is flooding: not marked
        s.admit(query(), ip("192.0.2.1"))
    s.admit(query(rd=True), ip("198.51.100.1"))           # odd: not marked
    s.admit(query(), ip("2001:db8:1:2::1"))
    v4, v6 = seen.keys()
    assert v4 == [0xC00002] and v6 == [int(ipaddress.ip_address("2001:db8:1:2::")) >> 72]
    s.tick(True)                                           # overload: a class is cut
    s.admit(query(), ip("203.0.113.1"))
    assert seen.keys()[0] == [0xC00002]
    assert s.swap_seen(None) is seen


def test_learner_counts_windows_and_freezes_under_overload():
    learner = Learner(_core.Scorer(), window=1.0, windows=3, need=2)
    sets = []
    for addrs in (["192.0.2.1", "198.51.100.1"], ["192.0.2.9"], ["203.0.113.1"], ["203.0.113.2"]):
        s = _core.Scorer()
        seen = _core.SeenSet()
        s.swap_seen(seen)
        for a in addrs:
            s.admit(query(), ip(a))
        sets.append(seen)
    assert learner.close(sets[0], False).v4 == frozenset()
    assert learner.close(sets[1], False).v4 == {0xC00002}       # 2 of the last 3
    assert learner.close(sets[2], True) is None and learner.frozen == 1   # overloaded
    # 203.0.113.0/24 was seen twice, but once in the frozen window: not known
    assert learner.close(sets[3], False).v4 == {0xC00002}
    # one more window without 192.0.2.0/24: the last three hold only one sighting of it
    assert learner.close(_core.SeenSet(), False).v4 == frozenset()


def test_server_learns_a_returning_resolver(tmp_path):
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"learn_window": 0.15, "learn_windows": 3, "learn_min": 2},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    once = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        resolver.bind(("127.4.0.1", 0))
        resolver.settimeout(1)
        once.bind(("127.5.0.1", 0))
        once.settimeout(1)
        addr = server.addresses[0]
        once.sendto(query(), addr)
        assert once.recvfrom(4096)
        known = lambda a: server.scoring.scorer.holder is not None and \
            server.scoring.scorer.holder.known(socket.inet_aton(a))
        deadline = time.monotonic() + 5
        while not known("127.4.0.1") and time.monotonic() < deadline:
            resolver.sendto(query(), addr)
            assert resolver.recvfrom(4096)
            time.sleep(0.02)
        assert known("127.4.0.1") and not known("127.5.0.1")
        before = server.workers[0].scoring_stats()["admitted"]["top"]
        resolver.sendto(query(), addr)
        assert resolver.recvfrom(4096)
        assert wait_for(lambda: server.workers[0].scoring_stats()["admitted"]["top"] == before + 1, 2)
    finally:
        resolver.close()
        once.close()
        server.stop()
