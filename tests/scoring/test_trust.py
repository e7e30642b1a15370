"""Per-address history inside known prefixes (issue 13, spoofed known sources and water torture
relayed by known resolvers): an address of a known prefix becomes trusted when it is seen again
`trust_after_ms` into a calm stretch; when its prefix goes over `known_rate` only trusted
addresses stay top, in admit() and in the kernel stage (the eBPF program reads the same bits
through the mmapped trust map); a known address whose answers are mostly NXDOMAIN is demoted."""
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
from pop53.scoring.known import KnownPrefixes, compile_table
from pop53.serve.server import Server

from integ_support import INTEG_ZONE

CORE_ZONE = Path(__file__).resolve().parents[1] / "data" / "core.test.zone"
KNOWN = KnownPrefixes(frozenset({0x7F0100}), frozenset())      # 127.1.0.0/24


def _query(name: str = "www.integ.example.") -> bytes:
    q = dns.message.make_query(name, "A")
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def _ip(a: str) -> bytes:
    return socket.inet_aton(a)


def _scorer(**kw) -> _core.Scorer:
    s = _core.Scorer(**kw)
    s.publish(compile_table(KNOWN))
    return s


def test_spoofed_addresses_in_a_known_prefix_do_not_demote_its_trusted_resolver():
    s = _scorer(known_rate=50, trust_after_ms=40)
    w = _query()
    assert s.classify(w, _ip("127.1.0.1")) == "top" and not s.trusted(_ip("127.1.0.1"))
    time.sleep(0.06)
    assert s.classify(w, _ip("127.1.0.1")) == "top" and s.trusted(_ip("127.1.0.1"))
    # spoofed sources elsewhere in the /24 push it over known_rate ...
    got = [s.classify(w, _ip(f"127.1.0.{100 + i % 150}")) for i in range(300)]
    assert got[:40] == ["top"] * 40 and set(got[60:]) == {"normal"}
    assert s.strict(_ip("127.1.0.9")) and not s.strict(_ip("127.2.0.9"))
    # ... the trusted resolver stays top, an untrusted address of the prefix does not
    assert s.classify(w, _ip("127.1.0.1")) == "top"
    assert s.classify(w, _ip("127.1.0.2")) == "normal"
    assert s.stats()["untrusted"] >= 241
    # a new window: the flood goes on (the server absorbs it, no overload), so the prefix goes
    # over its rate again and restarts its untrusted addresses' first sightings: no trust
    s.new_window()
    assert s.classify(w, _ip("127.1.0.100")) == "top"          # first sighting
    for i in range(300):
        s.classify(w, _ip(f"127.1.0.{100 + i % 150}"))
    time.sleep(0.06)
    s.new_window()
    assert s.classify(w, _ip("127.1.0.100")) == "top" and not s.trusted(_ip("127.1.0.100"))
    time.sleep(0.06)                 # the flood stopped: a calm trust_after_ms later, trusted
    assert s.classify(w, _ip("127.1.0.100")) == "top" and s.trusted(_ip("127.1.0.100"))
    assert s.strict(_ip("127.1.0.9"))
    s.clear_strict()
    assert not s.strict(_ip("127.1.0.9"))


def test_an_overload_between_two_sightings_withholds_trust():
    s = _scorer(trust_after_ms=30, tick_ms=1)
    w = _query()
    s.batch(1)                                    # starts the clock
    assert s.classify(w, _ip("127.1.0.50")) == "top"          # first sighting (a spoofer's)
    time.sleep(0.005)
    s.batch(64, ovfl=0)
    time.sleep(0.005)
    s.batch(64, ovfl=500)                         # kernel drops: an overload tick
    assert s.stats()["overload_ticks"] >= 1
    for _ in range(30):                           # nothing is cut any more (the tick cut only
        s.tick(False)                             # idle classes) and the address is back
    time.sleep(0.04)
    s.batch(1)
    assert s.classify(w, _ip("127.1.0.50")) == "top"
    assert not s.trusted(_ip("127.1.0.50"))       # its first sighting was before the overload
    time.sleep(0.04)
    s.batch(1)
    assert s.classify(w, _ip("127.1.0.50")) == "top"
    assert s.trusted(_ip("127.1.0.50"))           # a whole calm stretch later: trusted


def test_a_known_address_answered_mostly_nxdomain_is_demoted():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=0)
    relay, real = _ip("127.1.0.30"), _ip("127.1.0.31")
    good = _query("www.integ.example.")
    klasses = []
    for i in range(64):
        # water torture relayed by .30: random names, every answer NXDOMAIN
        q = _query(f"r{i}x.integ.example.")
        klasses.append(s.classify(q, relay))
        r = pop53.answer(image, q, ("127.1.0.30", 5353))
        assert dns.message.from_wire(r).rcode() == dns.rcode.NXDOMAIN
        assert not s.nx_check(q, r, klasses[-1], relay)     # nothing cut: answered, counted
        assert s.classify(good, real) == "top"
    # demoted from its 33rd query on (32 NXDOMAINs, more than half of its answers)
    assert klasses == ["top"] * 32 + ["normal"] * 32
    assert s.stats()["nx_demoted"] == 32 and not s.trusted(relay)
    # out of the priority socket too: its prefix is strict (the kernel stage steers only the
    # prefix's trusted addresses), the other resolver of the /24 is trusted
    assert s.strict(relay) and s.trusted(real)
    assert s.classify(good, relay) == "normal"          # its good names too: no telling apart
    assert s.classify(good, real) == "top"
    # counts halve at each window: still demoted in the next one, back in the one after
    s.new_window()
    assert s.classify(good, relay) == "normal"
    s.new_window()
    assert s.classify(good, relay) == "top"


def test_a_demoted_relay_stays_demoted_while_it_is_cut():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer()
    relay = _ip("127.1.0.30")
    for i in range(40):
        q = _query(f"r{i}x.integ.example.")
        c = s.classify(q, relay)
        s.nx_check(q, pop53.answer(image, q, ("127.1.0.30", 5353)), c, relay)
    assert s.classify(_query(), relay) == "normal"
    for _ in range(60):
        s.tick(True)                       # everything but top cut
    # its queries are dropped unanswered: counted as NXDOMAINs like its last answers, so its
    # share does not fall by itself window after window
    for _ in range(4):
        assert not any(s.admit(_query(), relay) for _ in range(80))
        s.new_window()
    assert s.classify(_query(), relay) == "normal"


def _per_worker(server) -> tuple[int, int]:
    udp = sum(w.stats()["udp"] for w in server.workers)
    prio = sum(w.scoring_stats()["priority_received"] for w in server.workers)
    return udp - prio, prio


def _ask(addr, src: str, n: int) -> int:
    got = 0
    for _ in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            s.settimeout(2)
            s.sendto(_query(), addr)
            got += bool(dns.message.from_wire(s.recvfrom(4096)[0]).answer)
    return got


def test_the_kernel_stage_steers_only_trusted_addresses_of_a_strict_prefix(tmp_path):
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "steer": True, "known_rate": 2,
                       "window_ms": 10000, "trust_after_ms": 50, "known_addr_rate": 100},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    try:
        addr = server.addresses[0]
        assert server.scoring.steering == "ebpf" and server.scoring.trust_map is not None
        sc = server.scoring.scorer
        assert _ask(addr, "127.1.0.7", 3) == 3
        time.sleep(0.1)
        assert _ask(addr, "127.1.0.7", 3) == 3 and sc.trusted(_ip("127.1.0.7"))
        assert _per_worker(server) == (0, 6)       # no history yet: the whole /24 is steered
        # .7 is trusted, so the /24 is strict: its other addresses go to the normal socket
        assert sc.strict(_ip("127.1.0.99"))
        assert _ask(addr, "127.1.0.99", 30) == 30
        assert _per_worker(server) == (30, 6)
        n0, p0 = _per_worker(server)
        assert _ask(addr, "127.1.0.7", 5) == 5     # trusted: still the priority socket
        assert _ask(addr, "127.1.0.98", 5) == 5    # untrusted in a strict /24: the normal one
        assert _per_worker(server) == (n0 + 5, p0 + 5)
        assert _ask(addr, "127.2.0.5", 4) == 4     # unknown: normal
        assert _per_worker(server) == (n0 + 9, p0 + 5)
        from pop53.scoring import metrics
        fams = {f.name: f.samples[0].value for f in metrics.families(server.workers)
                if f.samples and not f.samples[0].labels}
        assert fams["pop53_scoring_trusted_marks"] == 1
        assert fams["pop53_scoring_known_untrusted"] >= 10 + 5    # .99 past the rate, and .98
    finally:
        server.stop()


def test_a_valid_cookie_trusts_its_address():
    import dns.edns
    secret = bytes(range(16))
    responder = _core.Responder(cookie_secret=secret)
    s = _scorer(known_rate=20)
    for _ in range(60):
        s.tick(True)                       # everything but top cut
    for i in range(40):                    # spoofed sources put the known /24 over its rate
        s.classify(_query(), _ip(f"127.1.0.{100 + i}"))
    real, other = _ip("127.1.0.5"), _ip("127.1.0.6")
    cc = b"\x02" * 8

    def with_cookie(client):
        sc = _core.server_cookie(secret, cc, client, int(time.time()))
        q = dns.message.make_query("www.integ.example.", "A", use_edns=0,
                                   options=[dns.edns.CookieOption(cc, sc)])
        q.flags &= ~dns.flags.RD
        return q.to_wire()

    assert not s.admit(_query(), real, responder)          # untrusted in a strict /24: cut
    assert not s.admit(with_cookie(other), real, responder)  # another address's cookie
    assert not s.trusted(real)
    assert s.admit(with_cookie(real), real, responder) and s.trusted(real)
    # from now on top without a cookie too, and steered (its trust bit is the kernel's)
    assert s.classify(_query(), real) == "top"
    assert s.admit(_query(), real, responder) and not s.admit(_query(), other, responder)
