"""The kernel stage's wake words (`[scoring] steer_idle`, on by default): the steering program
counts each worker's priority datagrams in a word of a shared map, the worker reads its
priority socket only when something is pending there, and while its normal queue is empty it
waits in its normal socket's receive as a worker without scoring does, the program sending it
its known resolvers there meanwhile (at most WAKE_REDIR_MAX, in case it does not run)."""
from __future__ import annotations

import logging
import os
import socket
import struct

import dns.message

from pop53 import _core
from pop53 import config as cfgmod
from pop53.scoring import ebpf, steer
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import ask, held, per_worker

from bench.micro.steer_prog import frame, query

SLOTS, STRIDE, SLEEP_BIT, ON_BIT, REDIR_SHIFT, REDIR_MAX = _core.WAKE_LAYOUT
COUNT = (1 << REDIR_SHIFT) - 1


def _word(wm, slot: int) -> int:
    return struct.unpack_from("<Q", wm.buf, slot * STRIDE * 8)[0]


def _set(wm, slot: int, value: int) -> None:
    struct.pack_into("<Q", wm.buf, slot * STRIDE * 8, value)


def test_the_program_counts_priority_datagrams_and_sends_them_to_a_waiting_worker():
    wm = ebpf.WakeMap()
    try:
        workers, first = 2, 5
        fd = ebpf.load(workers, {0x7F0100}, set(), wake=(wm.fd, first))
        known, unknown = frame("127.1.0.9", query()), frame("127.2.0.9", query())
        prio, _ = ebpf.test_run(fd, known)
        k = prio - workers                                  # the worker it hashes to
        assert workers <= prio < 2 * workers and _word(wm, first + k) == 1
        assert ebpf.test_run(fd, unknown)[0] < workers and _word(wm, first + k) == 1
        assert all(_word(wm, s) == 0 for s in range(SLOTS) if s != first + k)
        # the worker waits in its normal socket: the next ones go there, uncounted, up to the cap
        _set(wm, first + k, 1 | 1 << SLEEP_BIT | 1 << ON_BIT)
        for i in range(REDIR_MAX):
            assert ebpf.test_run(fd, known)[0] == k
            assert _word(wm, first + k) == 1 | (i + 1) << REDIR_SHIFT | 1 << SLEEP_BIT | 1 << ON_BIT
        # a worker that does not wake for them (stopped, starved): the priority socket again
        assert ebpf.test_run(fd, known)[0] == prio
        assert _word(wm, first + k) & COUNT == 2
        # awake: counted and steered
        _set(wm, first + k, 2 | 1 << ON_BIT)
        assert ebpf.test_run(fd, known)[0] == prio and _word(wm, first + k) & COUNT == 3
        os.close(fd)
    finally:
        wm.close()


def _server(tmp_path, **scoring) -> Server:
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "steer": True, "steer_idle": True,
                       **scoring},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    return Server(cfgmod.from_dict(doc, file="<test>"))


def test_an_idle_worker_waits_in_its_normal_socket_and_gets_its_known_resolvers_there(tmp_path):
    server = _server(tmp_path)
    server.start()
    try:
        svc = server.scoring
        assert svc.steering == "ebpf" and svc.wake_map is not None and svc.woken == {0}
        slot = svc.wake_slot[server.net.udp_socks[0].fileno()]
        assert _word(svc.wake_map, slot) >> ON_BIT & 1
        addr = server.addresses[0]
        assert ask(addr, "127.1.0.9", 5) == 5 and ask(addr, "127.2.0.9", 3) == 3
        # the queries find the worker waiting in its receive, so the known ones come through
        # the normal socket uncounted (one may beat the worker back to its receive on a busy
        # machine: it is then counted and read from the priority socket)
        normal, prio = per_worker(server)
        assert normal + prio == 8 and prio <= 2
        assert _word(svc.wake_map, slot) & COUNT == prio
        assert server.workers[0].scoring_stats()["idle_sleeps"] >= normal
    finally:
        server.stop()


def test_a_busy_worker_takes_its_known_resolvers_from_the_priority_socket(tmp_path):
    """Held (not waiting in a receive) while a flood of unknown clients and a few known
    resolvers queue: the program counts the known ones for the priority socket, and the worker
    reads them there first, before the flood's backlog."""
    server = _server(tmp_path)
    server.start()
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.2.0.9", 0))
    flood.settimeout(2)
    known = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        addr = server.addresses[0]
        q = dns.message.make_query("www.integ.example.", "A").to_wire()
        n0, p0 = per_worker(server)

        def send():
            for _ in range(200):
                flood.sendto(q, addr)
            for i, s in enumerate(known):
                s.bind((f"127.1.0.{20 + i}", 0))
                s.settimeout(2)
                s.sendto(q, addr)

        held(server, 0.1, send)
        for s in known:
            assert dns.message.from_wire(s.recvfrom(4096)[0]).answer
        got = 0
        while got < 200:
            flood.recvfrom(4096)
            got += 1
        normal, prio = per_worker(server)
        assert prio - p0 == 3 and normal - n0 == 200
        slot = server.scoring.wake_slot[server.net.udp_socks[0].fileno()]
        assert _word(server.scoring.wake_map, slot) & COUNT == 3
        # whichever socket the next one takes (the worker may not be waiting yet), the count
        # and the priority socket's reads agree
        assert ask(addr, "127.1.0.30", 1) == 1
        assert _word(server.scoring.wake_map, slot) & COUNT == per_worker(server)[1] - p0
    finally:
        flood.close()
        for s in known:
            s.close()
        server.stop()


def test_steer_idle_false_keeps_the_poll(tmp_path):
    server = _server(tmp_path, steer_idle=False)
    server.start()
    try:
        assert server.scoring.wake_map is None and not server.scoring.wake_slot
        assert ask(server.addresses[0], "127.1.0.9", 3) == 3
        assert per_worker(server) == (0, 3)
        assert server.workers[0].scoring_stats()["idle_sleeps"] == 0
    finally:
        server.stop()


def test_a_kernel_refusing_the_wake_words_gets_the_program_without_them(tmp_path, monkeypatch,
                                                                         caplog):
    real = ebpf._wake_epilogue

    def unknown_atomic(a, *args):
        real(a, *args)
        a.op(0xC3 | 0x18, 0, 1, 0, 0xF0)         # an atomic operation no kernel knows
    monkeypatch.setattr(ebpf, "_wake_epilogue", unknown_atomic)
    monkeypatch.setattr(steer, "_warned", set())
    server = _server(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pop53.scoring"):
        server.start()
    try:
        assert server.scoring.steering == "ebpf" and not server.scoring.woken
        assert any("wake words" in r.message for r in caplog.records)
        assert ask(server.addresses[0], "127.1.0.9", 3) == 3
        assert per_worker(server) == (0, 3)
        assert server.workers[0].scoring_stats()["idle_sleeps"] == 0
    finally:
        server.stop()
