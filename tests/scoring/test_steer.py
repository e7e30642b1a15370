"""The kernel stage: with `steer = true` each worker has a priority socket, and the reuseport
program sends known resolvers' datagrams there and nothing else: the eBPF program (a bitmap of
IPv4 /24s, an LPM trie of IPv6 /56s) where the kernel allows it, else classic BPF (IPv4 only);
it follows the known table across reloads."""
from __future__ import annotations

import logging
import os
import socket

from pop53 import config as cfgmod
from pop53.scoring import ebpf, steer
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import ask, per_worker


def _steered(tmp_path, listen: str, workers: int, known_text: str):
    """A server with the kernel stage on, not started yet, and its known-resolvers file."""
    known = tmp_path / "known.txt"
    known.write_text(known_text)
    # every reply stamped (the known resolvers' latency histogram counts each one)
    doc = {"server": {"listen": [listen], "workers": workers, "receive_timestamp_every": 1},
           # where the program steers, not where an idle worker waits (test_wake.py)
           "scoring": {"known_resolvers": str(known), "steer": True, "steer_idle": False},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    return Server(cfgmod.from_dict(doc, file="<test>")), known


def test_known_resolvers_reach_the_priority_sockets(tmp_path):
    server, known = _steered(tmp_path, "127.0.0.1:0", 2, "127.1.0.0/24\n10.9.8.0/24\n")
    server.start()
    try:
        addr = server.addresses[0]
        # each worker serves its normal socket and its priority socket, the latter first
        assert len(server.workers) == 2 and len(server.scoring.priority) == 2
        assert server.scoring.steering == "ebpf"
        assert ask(addr, "127.1.0.7", 20) == 20
        assert per_worker(server) == (0, 20)
        assert ask(addr, "127.2.0.7", 20) == 20
        assert per_worker(server) == (20, 20)
        assert sum(w.scoring_stats()["admitted"]["top"] for w in server.workers) == 20
        # the known resolvers' own latency (kernel stamp to send) counts priority replies only
        from pop53.scoring.service import ScoringService
        st = ScoringService.stats(server.workers)
        assert sum(st["priority_latency"]) == 20 and sum(st["priority_wait"]) >= 1
        # the queue-delay histogram has every priority batch, and of the normal socket's only
        # full ones (a short batch emptied the queue; none here: one query at a time)
        assert sum(st["queue_delay"]) == sum(st["priority_wait"])
        # a new table re-attaches the program
        known.write_text("127.3.0.0/24\n")
        server.reload()
        assert ask(addr, "127.3.0.7", 10) == 10 and ask(addr, "127.1.0.7", 10) == 10
        assert per_worker(server) == (30, 30)
    finally:
        server.stop()


def test_ebpf_steers_ipv6_by_56(tmp_path):
    # ::1 stands for ::/56
    server, known = _steered(tmp_path, "[::1]:0", 2, "::1\n192.0.2.0/24\n")
    server.start()
    try:
        addr = server.addresses[0]
        assert server.scoring.steering == "ebpf"
        assert ask(addr, "::1", 12) == 12
        assert per_worker(server) == (0, 12)
        known.write_text("2001:db8::/56\n")           # ::1 no longer known
        server.reload()
        assert ask(addr, "::1", 12) == 12
        assert per_worker(server) == (12, 12)
    finally:
        server.stop()


def test_without_ebpf_classic_bpf_steers_ipv4_and_says_so(tmp_path, monkeypatch, caplog):
    def refuse(*a):
        raise ebpf.EbpfUnavailable("bpf(2): Operation not permitted")
    monkeypatch.setattr(ebpf, "load", refuse)
    monkeypatch.setattr(steer, "_warned", set())
    server, known = _steered(tmp_path, "127.0.0.1:0", 1, "127.1.0.0/24\n")
    with caplog.at_level(logging.WARNING, logger="pop53.scoring"):
        server.start()
    try:
        assert server.scoring.steering == "cbpf"
        assert any("eBPF steering not allowed" in r.message and "no IPv6" in r.message
                   for r in caplog.records)
        addr = server.addresses[0]
        assert ask(addr, "127.1.0.9", 5) == 5 and ask(addr, "127.2.0.9", 5) == 5
        assert per_worker(server) == (5, 5)
    finally:
        server.stop()


def test_ebpf_program_verifies_for_many_prefixes():
    v4 = set(range(0x010000, 0x010000 + 50_000))                  # 50,000 /24s
    v6 = {ebpf.v6_key(f"2001:db8:{i:x}::") for i in range(1000)}
    fd = ebpf.load(8, v4, v6)
    assert fd >= 0
    os.close(fd)


def test_the_ipv4_bitmap_steers_exactly_the_known_24s():
    """The program's IPv4 bitmap (one bit per /24), on frames: each known /24 at a word's
    first and last bit and the ends of the address space, and their neighbours."""
    from bench.micro.steer_prog import frame, query
    known = ["0.0.0.0", "10.9.8.0", "10.9.63.0", "127.1.0.0", "255.255.255.0"]
    keys = {int.from_bytes(socket.inet_aton(a)[:3], "big") for a in known}
    assert {k & 63 for k in keys} >= {0, 63}
    fd = ebpf.load(4, keys, set())
    try:
        def block(src):
            return ebpf.test_run(fd, frame(src, query()))[0] // 4     # 1: priority
        for a in known:
            base = a.rsplit(".", 1)[0]
            assert block(f"{base}.1") == 1 and block(f"{base}.254") == 1, a
        for a in ("0.0.1.1", "10.9.7.255", "10.9.9.1", "10.9.62.1", "10.9.64.1", "127.1.1.1",
                  "127.0.255.1", "255.255.254.1", "11.9.8.1"):
            assert block(a) == 0, a
    finally:
        os.close(fd)


def test_after_a_priority_overflow_only_trusted_addresses_are_steered_in_both_families():
    """The program's overflow check (sc_prio_overflow's deadline in the trust map against
    bpf_ktime_get_coarse_ns), on frames: before the deadline an untrusted address of a known
    prefix that is not strict goes to the normal block and a trusted one to the priority
    block, IPv4 and IPv6; once it has passed, both are steered again."""
    import struct
    import time

    from bench.micro.steer_prog import frame, query
    from pop53 import _core
    tm = ebpf.TrustMap()
    sc = _core.Scorer()
    sc.use_trust_buffer(tm.buf)
    trusted, untrusted = ("127.1.0.7", "2001:db8:0:1::7"), ("127.1.0.8", "2001:db8:0:1::8")
    for a in trusted:
        sc.cookie_proven(socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a))
    fd = ebpf.load(4, {0x7F0100}, {ebpf.v6_key("2001:db8:0:1::")}, trust_fd=tm.fd)
    word = _core.TRUST_LAYOUT[6] * 8
    try:
        def block(src):
            return ebpf.test_run(fd, frame(src, query()))[0] // 4     # 1: priority
        assert [block(a) for a in trusted + untrusted] == [1, 1, 1, 1]
        now = time.clock_gettime_ns(6)                                 # CLOCK_MONOTONIC_COARSE
        struct.pack_into("<Q", tm.buf, word, now + 10 ** 9)
        assert [block(a) for a in trusted + untrusted] == [1, 1, 0, 0]
        assert block("127.2.0.8") == 0                                 # unknown: as ever
        struct.pack_into("<Q", tm.buf, word, now - 10 ** 6)
        assert [block(a) for a in trusted + untrusted] == [1, 1, 1, 1]
    finally:
        os.close(fd)
        tm.close()


def test_prologue_stays_within_the_classic_bpf_limits():
    prog = steer.prologue(4, range(0, 3 * steer.MAX_V4, 3))
    assert len(prog) == 2 * steer.MAX_V4 + 11
    from pop53.ecmp import reuseport
    assert len(reuseport.build_program(4, prog)) <= 4096
