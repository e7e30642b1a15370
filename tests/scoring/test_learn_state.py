"""The learner's history on disk ([server] state): a restart keeps the resolvers learned so far;
windows that ended while the server was down count as empty; a file from another learn_window
or a damaged one is ignored (learning starts over) and never stops the server."""
from __future__ import annotations

import ipaddress
import os
import socket
import time

import dns.flags
import dns.message

from pop53 import _core
from pop53 import config as cfgmod
from pop53.scoring import learnstate
from pop53.scoring.learn import Learner
from pop53.serve.server import Server

from integ_support import INTEG_ZONE

V6 = int(ipaddress.ip_address("2001:db8:1:2::")) >> 72


def learner(windows=3, need=2, window=60.0):
    return Learner(_core.Scorer(), window=window, windows=windows, need=need)


def filled():
    lr = learner()
    lr.history.append((frozenset({0xC00002, 0x7F0400}), frozenset({V6})))
    lr.history.append((frozenset({0xC00002}), frozenset({V6})))
    lr.frozen = 1
    return lr


def test_round_trip(tmp_path):
    path = str(tmp_path / learnstate.FILE)
    learnstate.save(path, filled(), now=1000.0)
    assert not os.path.exists(path + ".tmp")
    back = learner()
    assert learnstate.load(path, back, now=1010.0) == 2
    assert list(back.history) == list(filled().history) and back.frozen == 1
    assert back.learned().v4 == {0xC00002} and back.learned().v6 == {V6}


def test_windows_missed_while_stopped_count_as_empty(tmp_path):
    path = str(tmp_path / learnstate.FILE)
    learnstate.save(path, filled(), now=1000.0)
    back = learner()
    assert learnstate.load(path, back, now=1000.0 + 60 * 1.5) == 2     # one window missed
    assert len(back.history) == 3 and back.history[-1] == (frozenset(), frozenset())
    assert back.learned().v4 == {0xC00002}          # still in 2 of the last 3
    back = learner()
    assert learnstate.load(path, back, now=1000.0 + 60 * 2.5) == 1     # two missed
    assert back.learned().v4 == frozenset()        # 192.0.2/24 now seen in 1 of the last 3
    assert learnstate.load(path, learner(), now=1000.0 + 60 * 10) == 0  # all of it too old


def test_other_window_or_damaged_file_starts_over(tmp_path, caplog):
    path = str(tmp_path / learnstate.FILE)
    learnstate.save(path, filled(), now=1000.0)
    assert learnstate.load(path, learner(window=30.0), now=1000.0) == 0
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:-3])                                   # truncated
    back = learner()
    assert learnstate.load(path, back, now=1000.0) == 0 and not back.history
    assert "truncated" in caplog.text
    with open(path, "wb") as f:
        f.write(b"\x00garbage\n")
    assert learnstate.load(path, learner(), now=1000.0) == 0
    assert learnstate.load(str(tmp_path / "absent"), learner()) == 0


def query():
    q = dns.message.make_query("www.integ.example.", "A")
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def test_a_restarted_server_knows_what_it_learned(tmp_path):
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "state": str(tmp_path / "state")},
           "scoring": {"learn_window": 0.15, "learn_windows": 3, "learn_min": 2},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}

    def known(server, a):
        h = server.scoring.scorer.holder
        return h is not None and h.known(socket.inet_aton(a))

    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        resolver.bind(("127.4.0.1", 0))
        resolver.settimeout(1)
        deadline = time.monotonic() + 5
        while not known(server, "127.4.0.1") and time.monotonic() < deadline:
            resolver.sendto(query(), server.addresses[0])
            assert resolver.recvfrom(4096)
            time.sleep(0.02)
        assert known(server, "127.4.0.1")
    finally:
        resolver.close()
        server.stop()
    assert os.path.exists(tmp_path / "state" / learnstate.FILE)
    again = Server(cfgmod.from_dict(doc, file="<test>"))
    again.start()
    try:
        # known from the first moment, before any window of the new process has ended
        assert known(again, "127.4.0.1") and not known(again, "127.5.0.1")
    finally:
        again.stop()
