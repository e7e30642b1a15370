"""The relay check of the kernel stage (issue 13, water torture relayed by trusted resolvers):
the workers set a trusted relay's relay bit in the trust map at its first random name of a zone
under NXDOMAIN pressure; the steering program then sends that address's names that are no node
of a served zone (the name filter, filled from each image before it is published) to the normal
socket, and its real names, in any case, still to the priority socket."""
from __future__ import annotations

import os
import random
import socket
import time
from functools import partial
from pathlib import Path

import dns.message
import dns.name

import pop53
from pop53 import _core
from pop53 import config as cfgmod
from pop53.scoring import ebpf
from pop53.scoring.ebpf_relay import NameFilter
from pop53.scoring.known import KnownPrefixes
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import ip, per_worker, query, scorer

CORE_ZONE = Path(__file__).resolve().parents[1] / "data" / "core.test.zone"
KNOWN = KnownPrefixes(frozenset({0x7F0100}),                   # 127.1.0.0/24
                      frozenset({ebpf.v6_key("2001:db8:0:1::")}))
_scorer = partial(scorer, KNOWN)


def _packed(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)


def _relaying(s, image, relay: bytes | str, n: int = 64) -> None:
    """`relay` trusted by history, then n random names of integ.example. from it, each answered
    NXDOMAIN and counted by the second check."""
    text = relay if isinstance(relay, str) else socket.inet_ntoa(relay)
    relay = _packed(text)
    for _ in range(2):
        assert s.classify(query("www.core.test."), relay) == "top"
    for i in range(n):
        q = query(f"r{i}x.integ.example.")
        k = s.classify(q, relay)
        s.nx_check(q, pop53.answer(image, q, (text, 5353)), k, relay)


def test_a_trusted_relay_gets_its_relay_bit_and_loses_it_when_it_stops():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=0, nx_rate=16)
    relay, other = ip("127.1.0.30"), ip("127.1.0.31")
    _relaying(s, image, other, 8)                 # a few NXDOMAINs: no relay
    _relaying(s, image, relay)
    assert s.trusted(relay) and s.relaying(relay)
    assert s.trusted(other) and not s.relaying(other)
    # it stops: its counts halve each window until its NXDOMAINs are no longer most of its
    # answers; its next query then clears the bit
    for _ in range(3):
        s.new_window()
        for _ in range(8):
            s.classify(query("www.core.test."), relay)
    assert not s.relaying(relay) and s.trusted(relay)
    _relaying(s, image, relay)
    assert s.relaying(relay)
    s.clear_strict()                              # relaxed after calm: forgotten with strict
    assert not s.relaying(relay)


def test_an_untrusted_relay_gets_no_relay_bit():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=10 ** 6, nx_rate=16)        # no address earns trust here
    relay = ip("127.1.0.30")
    _relaying(s, image, relay)
    assert not s.trusted(relay) and not s.relaying(relay)


def _frame_block(fd, src: str, name: str) -> int:
    from bench.micro.steer_prog import frame
    return ebpf.test_run(fd, frame(src, query(name)))[0] // 4       # 1: the priority block


def test_the_program_steers_a_relays_real_names_only():
    """On frames: a relaying trusted address's names of served zones (any case) reach the
    priority block, its random names the normal block; another trusted address's random
    names still the priority block; without the name filter the relay's too."""
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    tm, nf = ebpf.TrustMap(), NameFilter()
    s = _scorer(trust_after_ms=0, nx_rate=16)
    s.use_trust_buffer(tm.buf)
    _relaying(s, image, ip("127.1.0.30"))
    _relaying(s, image, ip("127.1.0.31"), 8)
    assert s.relaying(ip("127.1.0.30")) and not s.relaying(ip("127.1.0.31"))
    assert nf.fill(image.view) > 10
    v6 = set(KNOWN.v6)
    fds = [ebpf.load(4, {0x7F0100}, v6, trust_fd=tm.fd, names_fd=nf.fd),
           ebpf.load(4, {0x7F0100}, v6, trust_fd=tm.fd)]
    try:
        block = partial(_frame_block, fds[0])
        assert block("127.1.0.30", "www.integ.example.") == 1
        assert block("127.1.0.30", "WWW.Integ.EXAMPLE.") == 1
        assert block("127.1.0.30", "integ.example.") == 1
        assert block("127.1.0.30", "www.core.test.") == 1
        assert block("127.1.0.30", "r9999x.integ.example.") == 0
        assert block("127.1.0.30", "nowhere.invalid.") == 0       # no zone of ours: not a node
        assert block("127.1.0.31", "r9999x.integ.example.") == 1
        assert _frame_block(fds[1], "127.1.0.30", "r9999x.integ.example.") == 1
        # IPv6: the same check after the same bit
        _relaying(s, image, "2001:db8:0:1::30")
        assert s.relaying(_packed("2001:db8:0:1::30"))
        assert block("2001:db8:0:1::30", "Www.Integ.Example.") == 1
        assert block("2001:db8:0:1::30", "r9999x.integ.example.") == 0
        assert _frame_block(fds[1], "2001:db8:0:1::30", "r9999x.integ.example.") == 1
        # an image without integ.example.: its names are random names now
        nf.fill(pop53.compile_zones([CORE_ZONE]).view)
        assert block("127.1.0.30", "www.integ.example.") == 0
        assert block("127.1.0.30", "www.core.test.") == 1
    finally:
        for fd in fds:
            os.close(fd)
        tm.close()
        nf.close()


def test_the_filter_hashes_as_the_program_does_for_names_of_every_length(tmp_path):
    """The name filter's hash in C and in the program agree for names of 1-255 bytes, mixed
    case and bytes beyond ASCII letters; names not in the zone are not in it."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_"
    names = set()
    while len(names) < 120:
        labels, length = [], rng.randrange(1, 230)
        while sum(len(x) + 1 for x in labels) < length:
            labels.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 63))))
        name = ".".join(labels) + ".relay.test."
        try:
            if len(dns.name.from_text(name).to_wire()) <= 254:     # room for "q" in front
                names.add(name)
        except dns.name.NameTooLong:
            pass
    zone = tmp_path / "relay.test.zone"
    zone.write_text("$ORIGIN relay.test.\n$TTL 60\n@ SOA ns hostmaster 1 60 60 60 60\n@ NS ns\n"
                    "ns A 127.0.0.1\n" + "".join(f"{n} A 127.0.0.2\n" for n in sorted(names)))
    image = pop53.compile_zones([zone])
    tm, nf = ebpf.TrustMap(), NameFilter()
    s = _scorer(trust_after_ms=0, nx_rate=16)
    s.use_trust_buffer(tm.buf)
    for _ in range(2):
        s.classify(query("relay.test."), ip("127.1.0.30"))
    for i in range(64):                      # water torture of relay.test. through it
        q = query(f"r{i}x.relay.test.")
        s.nx_check(q, pop53.answer(image, q, ("127.1.0.30", 5353)),
                   s.classify(q, ip("127.1.0.30")), ip("127.1.0.30"))
    assert s.relaying(ip("127.1.0.30"))
    nf.fill(image.view)
    fd = ebpf.load(4, {0x7F0100}, set(), trust_fd=tm.fd, names_fd=nf.fd)
    try:
        for n in sorted(names):
            mixed = "".join(c.upper() if rng.random() < 0.5 else c for c in n)
            assert _frame_block(fd, "127.1.0.30", mixed) == 1, n
            assert _core.name_filter_has(nf.buf, dns.name.from_text(n).to_wire())
            assert _frame_block(fd, "127.1.0.30", "q" + n) == 0, n
    finally:
        os.close(fd)
        tm.close()
        nf.close()


def _send(addr, src: str, names: list[str]) -> int:
    """Each name asked once from `src` (a fresh port each); returns how many got a reply."""
    got = 0
    for name in names:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as so:
            so.bind((src, 0))
            so.settimeout(2)
            so.sendto(query(name), addr)
            got += dns.message.from_wire(so.recvfrom(4096)[0]) is not None
    return got


def test_a_real_relays_random_names_reach_the_normal_socket_and_its_real_names_the_priority(tmp_path):
    """A served zone, the kernel stage on, real sockets: a trusted resolver relays water
    torture; once the worker set its relay bit, its random names arrive in the normal socket
    and its real names in the priority socket.  The filter follows a reload's new name."""
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n")
    zone = tmp_path / "integ.example.zone"
    zone.write_text(INTEG_ZONE.read_text())
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "steer": True, "steer_idle": False,
                       "trust_after_ms": 50, "nx_rate": 16},
           "zone": [{"name": "integ.example.", "file": str(zone)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    try:
        addr, relay = server.addresses[0], "127.1.0.30"
        assert server.scoring.names is not None and server.scoring.names.settle()
        assert server.scoring.names.names > 3
        assert _send(addr, relay, ["www.integ.example."]) == 1
        time.sleep(0.1)
        assert _send(addr, relay, ["www.integ.example."]) == 1
        assert server.scoring.scorer.trusted(ip(relay))
        assert _send(addr, relay, [f"r{i}x.integ.example." for i in range(80)]) == 80
        assert server.scoring.scorer.relaying(ip(relay))
        before = per_worker(server)
        assert _send(addr, relay, [f"s{i}y.integ.example." for i in range(20)]) == 20
        assert _send(addr, relay, ["www.integ.example.", "WWW.INTEG.example."] * 5) == 10
        after = per_worker(server)
        assert (after[0] - before[0], after[1] - before[1]) == (20, 10)
        from pop53.scoring import metrics
        fams = {f.name: f for f in metrics.families(server.workers, server.scoring.scorer)}
        assert fams["pop53_scoring_relays"].samples[0].value == 1
        # a reload adds a name: it is a real name from then on
        zone.write_text(INTEG_ZONE.read_text() + "\nnew1 60 IN A 192.0.2.77\n")
        assert server.reload() and server.scoring.names.settle()
        before = per_worker(server)
        assert _send(addr, relay, ["new1.integ.example."]) == 1
        after = per_worker(server)
        assert (after[0] - before[0], after[1] - before[1]) == (0, 1)
    finally:
        server.stop()


def test_the_filler_thread_fills_from_the_newest_image_asked_for():
    """follow() returns at once; the thread fills from the newest view asked for, and close()
    stops it."""
    both = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    core = pop53.compile_zones([CORE_ZONE])
    integ = dns.name.from_text("www.integ.example.").to_wire()
    core_name = dns.name.from_text("www.core.test.").to_wire()
    nf = NameFilter()
    try:
        nf.follow(both.view)
        assert nf.settle() and _core.name_filter_has(nf.buf, integ)
        for _ in range(5):
            nf.follow(both.view)
        nf.follow(core.view)
        assert nf.settle()
        assert _core.name_filter_has(nf.buf, core_name) and not _core.name_filter_has(nf.buf, integ)
        nf.follow(None)
        assert nf.settle() and nf.names == 0 and not _core.name_filter_has(nf.buf, core_name)
    finally:
        nf.close()
    assert not nf._thread.is_alive()
