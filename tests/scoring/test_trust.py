"""Per-address history inside known prefixes (issue 13, spoofed known sources and water torture
relayed by known resolvers): an address of a known prefix becomes trusted when it is seen again
`trust_after_ms` into a calm stretch; when its prefix goes over `known_rate` only trusted
addresses stay top, in admit() and in the kernel stage (the eBPF program reads the same bits
through the mmapped trust map); a known address whose answers are mostly NXDOMAIN is demoted."""
from __future__ import annotations

import socket
import time
from functools import partial
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest

import pop53
from pop53 import _core
from pop53 import config as cfgmod
from pop53.scoring.known import KnownPrefixes
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import ask, ip, per_worker, query, scorer

CORE_ZONE = Path(__file__).resolve().parents[1] / "data" / "core.test.zone"
KNOWN = KnownPrefixes(frozenset({0x7F0100}), frozenset())      # 127.1.0.0/24
COARSE = 6              # CLOCK_MONOTONIC_COARSE (Linux; the time module does not name it)


_query, _ip, _scorer = query, ip, partial(scorer, KNOWN)


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
    time.sleep(0.02)                              # (the coarse clock can lag a jiffy or two)
    s.batch(64, ovfl=0)
    time.sleep(0.02)
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


def test_an_overflowing_priority_queue_keeps_addresses_with_no_history_out_for_a_second():
    """At a flood relayed through never-seen addresses of known prefixes the kernel stage sends
    them all to the normal socket once the known resolvers' own queue overflows, instead of
    each staying there until its first 32 answers demote it: the workers set a deadline
    (sc_prio_overflow) the steering program compares with its clock, and meanwhile only
    trusted addresses are top.  A queue that only waited (a stalled worker) is no flood."""
    s = _scorer(tick_ms=20, trust_after_ms=0)  # a tick: the batches since the last one
    w, old, new = _query(), _ip("127.1.0.7"), _ip("127.1.0.77")

    def tick(**batch) -> None:
        time.sleep(0.03)
        s.batch(**batch)

    s.batch(1)                                                   # starts the clock
    s.batch(1, ovfl=0, priority=True)                            # the drop counter's baseline
    assert s.overflow_until() == 0
    assert s.classify(w, old) == "top" and s.classify(w, old) == "top" and s.trusted(old)
    # the normal queue overloaded (it dropped) and a priority batch late: the known resolvers
    # are at risk (normal is cut) ...
    s.batch(64, delay_us=5000, priority=True)
    tick(n=64, ovfl=500)
    # ... and the priority queue waited for a whole tick: still no flood in it
    s.batch(64, delay_us=5000, priority=True)
    tick(n=64, delay_us=5000, priority=True)
    assert s.stats()["risk_ticks"] >= 2
    assert s.overflow_until() == 0 and s.stats()["overflow_ticks"] == 0
    assert s.classify(w, new) == "top"
    s.batch(64, delay_us=5000, priority=True)
    tick(n=64, ovfl=40, priority=True)         # the priority socket dropped
    now = time.clock_gettime(COARSE)
    assert s.stats()["overflow_ticks"] == 1
    assert now + 0.9 < s.overflow_until() <= now + 1.0 + 0.02
    # meanwhile only addresses with history are top: the kernel stage sends the others to the
    # normal socket, where they are cut with the normal class (a relayed flood's fresh relays)
    assert s.classify(w, new) == "normal" and s.classify(w, old) == "top"


def _torture(s, image, relay: bytes, n: int, zone: str = "integ.example.") -> list[str]:
    """Water torture relayed by `relay`: n random names of `zone`, every answer NXDOMAIN and
    seen by the second check (nothing cut: all answered)."""
    klasses = []
    for i in range(n):
        q = _query(f"r{i}x.{zone}")
        klasses.append(s.classify(q, relay))
        r = pop53.answer(image, q, (socket.inet_ntoa(relay), 5353))
        assert dns.message.from_wire(r).rcode() == dns.rcode.NXDOMAIN
        assert not s.nx_check(q, r, klasses[-1], relay)
    return klasses


def test_a_trusted_relay_is_demoted_only_for_the_attacked_zone_while_its_queue_copes():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=0, nx_rate=16)
    relay, real = _ip("127.1.0.30"), _ip("127.1.0.31")
    good, elsewhere = _query("www.integ.example."), _query("WWW.Core.Test.")
    assert s.classify(good, real) == "top" and s.classify(good, real) == "top"
    klasses = _torture(s, image, relay, 64)
    # demoted from its 33rd query on (32 NXDOMAINs, more than half of its answers; integ.example
    # went over nx_rate at its 17th)
    assert klasses == ["top"] * 32 + ["normal"] * 32
    assert s.stats()["nx_demoted"] == 32
    # trusted by history (its second query): it keeps its trust, so the kernel stage goes on
    # steering it to the priority socket, where its names in other zones stay top (any case:
    # the check lowercases as the lookup does)
    assert s.trusted(relay) and s.trusted(real)
    assert s.classify(good, relay) == "normal"     # its good names of that zone too: no telling
    assert s.classify(elsewhere, relay) == "top" and s.stats()["nx_spared"] == 1
    assert s.classify(good, real) == "top"
    # a new window: counts halve, the zone stays listed for a window after its last pressure
    s.new_window()
    assert s.classify(good, relay) == "normal"
    assert s.classify(elsewhere, relay) == "top"
    s.new_window()
    assert s.classify(good, relay) == "top"


def test_a_relay_leaves_the_priority_socket_when_cutting_the_rest_did_not_help():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=0, nx_rate=16)
    relay, elsewhere = _ip("127.1.0.30"), _query("www.core.test.")
    _torture(s, image, relay, 40)
    assert s.trusted(relay) and s.classify(elsewhere, relay) == "top"
    s.tick(True, top_at_risk=True)         # the priority socket dropped or waited: first the
    assert s.classify(elsewhere, relay) == "top"    # classes below top are cut, one a tick
    run = _core.RISK_RUN_MS / 1000

    def top_within_run(since: float) -> None:
        """Still top, the stretch at risk being shorter than RISK_RUN_MS (by the probe's real
        clock); a test process stalled past it (a busy machine, a collection) cannot tell."""
        top = s.classify(elsewhere, relay) == "top"
        if time.monotonic() - since >= run - 0.02:
            pytest.skip("the test stalled for RISK_RUN_MS: the run's start cannot be checked")
        assert top

    t0 = time.monotonic()
    for _ in range(60):
        s.tick(True, top_at_risk=True)     # all cut and still at risk, but not for long: a
    top_within_run(t0)                     # flood's start (untrusted relays queued)
    time.sleep(run + 0.02)
    s.tick(False, top_at_risk=False)       # a calm tick: the stretch at risk starts again
    t1 = time.monotonic()
    s.tick(True, top_at_risk=True)         # (normal, regained a little, is cut again)
    s.tick(True, top_at_risk=True)
    top_within_run(t1)
    time.sleep(run / 2)
    s.tick(True, top_at_risk=True)
    top_within_run(t1)
    time.sleep(run / 2 + 0.02)
    s.tick(True, top_at_risk=True)         # at risk with all cut for RISK_RUN_MS
    # a name in no zone under pressure (or a node of the attacked one: the probe has no image
    # to look in): no flood of its to take out of their queue (its count may be a past
    # attack's), still top and trusted ...
    assert s.classify(elsewhere, relay) == "top" and s.trusted(relay)
    # ... until a random name in the attacked zone: demoted as a whole, untrusted (the kernel
    # stage steers it to the normal socket), its prefix strict: out of the known resolvers' queue
    assert s.classify(_query("r99x.integ.example."), relay) == "normal"
    assert not s.trusted(relay) and s.strict(relay) and s.demoted(relay)
    # its real names stay top there (they were lost for the rest of the attack: cut with the
    # normal class, and trust came back only with calm); its random names do not
    spared = s.stats()["nx_spared"]
    assert s.classify(elsewhere, relay) == "top" and s.stats()["nx_spared"] == spared + 1
    assert s.classify(_query("r100x.integ.example."), relay) == "normal"
    assert not s.trusted(relay)
    # it stops relaying (its counts halve each window; the other resolvers still at risk, the
    # normal class cut): its trust comes back at its next query, without waiting for calm
    s.tick(True, top_at_risk=True)
    s.new_window()
    assert s.stats()["regained"] == 0
    assert s.classify(elsewhere, relay) == "top"
    assert s.trusted(relay) and not s.demoted(relay) and s.stats()["regained"] == 1


def test_a_relay_demoted_by_a_risk_run_returns_a_second_after_it_even_if_still_relaying():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=0, nx_rate=16)
    relay, elsewhere = _ip("127.1.0.30"), _query("www.core.test.")
    _torture(s, image, relay, 40)
    s.tick(True, top_at_risk=True)             # the classes below top are cut ...
    s.tick(True, top_at_risk=True)             # ... and the risk run starts
    time.sleep(_core.RISK_RUN_MS / 1000 + 0.02)
    s.tick(True, top_at_risk=True)
    assert not s.admit(_query("r99x.integ.example."), relay)
    assert s.demoted(relay) and not s.trusted(relay)
    # the priority socket is fine from now on, but the normal queue stays overloaded and the
    # relay's real names come from it (admitted top outside any priority batch): known
    # resolvers sharing it, which cuts the classes below top but is no risk run of their own
    # queue.  Counted as one, it renewed the run, and so the demotion, while the relay relayed
    end = time.monotonic() + 1.2
    i = 0
    while time.monotonic() < end:
        assert s.admit(elsewhere, relay)                           # top, from the normal socket
        assert not s.admit(_query(f"r{i}y.integ.example."), relay)    # still relaying: cut
        s.tick(True, top_at_risk=False)
        i += 1
        time.sleep(0.02)
    assert s.admit(elsewhere, relay)        # past the loop's end (a stall may have cut it short)
    assert s.stats()["share"]["normal"] == 0.0         # sharing still cut the normal class
    assert s.stats()["regained"] == 1 and s.trusted(relay) and not s.demoted(relay)
    # back in the known resolvers' queue as a trusted relay: its random names stay normal
    assert s.classify(_query("r100x.integ.example."), relay) == "normal" and s.trusted(relay)


def test_an_address_demoted_for_its_rate_regains_its_trust_below_it():
    s = _scorer(trust_after_ms=0, known_addr_rate=50)
    addr, w = _ip("127.1.0.40"), _query()
    assert s.classify(w, addr) == "top" and s.classify(w, addr) == "top" and s.trusted(addr)
    got = [s.classify(w, addr) for _ in range(110)]
    # over known_addr_rate: in a first window, at twice it (its 101st; the count halves at each
    # window, so a steady rate holds twice itself, test_the_address_rate_is_a_steady_rate)
    assert got == ["top"] * 98 + ["normal"] * 12
    assert not s.trusted(addr) and s.demoted(addr)
    s.tick(True, top_at_risk=True)            # under overload: trust by history would wait
    s.new_window()                            # for calm; its count halves below the rate
    assert s.classify(w, addr) == "top" and s.trusted(addr) and not s.demoted(addr)


def test_the_address_rate_is_a_steady_rate():
    # known_addr_rate 50 a second (window 1 s): an address asking 45 in every window stays top
    # window after window (its count, halved at each, holds near 90); one asking 60 is over
    # within a few windows (the count climbs toward 120, past twice the rate)
    s = _scorer(trust_after_ms=0, known_addr_rate=50)
    calm, busy, w = _ip("127.1.0.42"), _ip("127.1.0.43"), _query()
    over_at = None
    for window in range(8):
        assert all(s.classify(w, calm) == "top" for _ in range(45)), window
        got = [s.classify(w, busy) for _ in range(60)]
        if over_at is None and "normal" in got:
            over_at = window
        s.new_window()
    assert over_at is not None and 1 <= over_at <= 3
    assert s.trusted(calm) and not s.demoted(calm)


def test_a_demoted_address_not_seen_for_the_trust_ttl_is_forgotten():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(nx_rate=16, trust_after_ms=0, known_addr_rate=50)
    addr, w = _ip("127.1.0.41"), _query()
    s.classify(w, addr), s.classify(w, addr)
    for _ in range(110):
        s.classify(w, addr)
    assert s.demoted(addr) and not s.trusted(addr)
    time.sleep(0.01)
    s.age(0.005)                              # not seen for longer than the ttl
    assert not s.demoted(addr)
    s.tick(True, top_at_risk=True)
    s.new_window()                            # below its rate again, but overload: no history
    assert not s.trusted(addr) and s.stats()["regained"] == 0


def test_an_untrusted_relay_is_demoted_as_a_whole():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(nx_rate=16)                # trust_after_ms 1,000: no history yet
    relay = _ip("127.1.0.30")
    assert _torture(s, image, relay, 64) == ["top"] * 32 + ["normal"] * 32
    # its other names too: an untrusted address gains nothing by what it asks (a spoofer
    # would send random names of one zone to make its flood of another top)
    assert s.classify(_query("www.core.test."), relay) == "normal"
    assert s.stats()["nx_spared"] == 0 and not s.trusted(relay) and s.strict(relay)


def test_a_trusted_relay_is_not_demoted_where_no_zone_is_under_pressure():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=0)          # nx_rate 1,000 a second: 64 NXDOMAINs are no attack
    relay = _ip("127.1.0.30")
    assert _torture(s, image, relay, 64) == ["top"] * 64
    assert s.stats()["nx_demoted"] == 0 and s.stats()["nx_spared"] == 32
    assert s.trusted(relay)


def test_the_zones_under_pressure_are_matched_by_apex_not_by_suffix_text():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(trust_after_ms=0, nx_rate=16)
    relay = _ip("127.1.0.30")
    _torture(s, image, relay, 40, "core.test.")
    assert s.classify(_query("a.b.c.www.core.test."), relay) == "normal"
    assert s.classify(_query("core.test."), relay) == "normal"           # the apex itself
    for name in ("integ.example.", "xcore.test.", "test.", "core.test.integ.example."):
        assert s.classify(_query(name), relay) == "top", name
    # a question that does not parse is no hit (the lookup answers it as for anyone)
    assert s.classify(_query("www.core.test.")[:20], relay) == "top"


def test_a_demoted_relay_stays_demoted_while_it_is_cut():
    image = pop53.compile_zones([CORE_ZONE, INTEG_ZONE])
    s = _scorer(nx_rate=16)
    relay = _ip("127.1.0.30")
    _torture(s, image, relay, 40)
    assert s.classify(_query(), relay) == "normal"
    for _ in range(60):
        s.tick(True)                       # everything but top cut
    # its queries are dropped unanswered: counted as NXDOMAINs like its last answers, so its
    # share does not fall by itself window after window, and its zone stays under pressure
    for _ in range(4):
        assert not any(s.admit(_query(), relay) for _ in range(80))
        s.new_window()
    assert s.classify(_query(), relay) == "normal"


def test_the_kernel_stage_steers_only_trusted_addresses_of_a_strict_prefix(tmp_path):
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "steer": True, "steer_idle": False,
                       "known_rate": 2,
                       "window_ms": 10000, "trust_after_ms": 50, "known_addr_rate": 100},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    try:
        addr = server.addresses[0]
        assert server.scoring.steering == "ebpf" and server.scoring.trust_map is not None
        sc = server.scoring.scorer
        assert ask(addr, "127.1.0.7", 3) == 3
        time.sleep(0.1)
        assert ask(addr, "127.1.0.7", 3) == 3 and sc.trusted(_ip("127.1.0.7"))
        assert per_worker(server) == (0, 6)       # no history yet: the whole /24 is steered
        # .7 is trusted, so the /24 is strict: its other addresses go to the normal socket
        assert sc.strict(_ip("127.1.0.99"))
        assert ask(addr, "127.1.0.99", 30) == 30
        assert per_worker(server) == (30, 6)
        n0, p0 = per_worker(server)
        assert ask(addr, "127.1.0.7", 5) == 5     # trusted: still the priority socket
        assert ask(addr, "127.1.0.98", 5) == 5    # untrusted in a strict /24: the normal one
        assert per_worker(server) == (n0 + 5, p0 + 5)
        assert ask(addr, "127.2.0.5", 4) == 4     # unknown: normal
        assert per_worker(server) == (n0 + 9, p0 + 5)
        from pop53.scoring import metrics
        fams = {f.name: f.samples[0].value for f in metrics.families(server.workers)
                if f.samples and not f.samples[0].labels}
        assert fams["pop53_scoring_trusted_marks"] == 1
        assert fams["pop53_scoring_known_untrusted"] >= 10 + 5    # .99 past the rate, and .98
    finally:
        server.stop()


def test_the_kernel_stage_steers_only_trusted_addresses_after_a_priority_overflow(tmp_path):
    import struct
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n127.3.0.0/16\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "steer": True, "steer_idle": False,
                       "trust_after_ms": 50},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    try:
        addr = server.addresses[0]
        assert server.scoring.steering == "ebpf"
        buf, word = server.scoring.trust_map.buf, _core.TRUST_LAYOUT[6]
        assert ask(addr, "127.1.0.7", 3) == 3
        time.sleep(0.1)
        assert ask(addr, "127.1.0.7", 3) == 3
        assert server.scoring.scorer.trusted(_ip("127.1.0.7"))
        n0, p0 = per_worker(server)
        assert ask(addr, "127.3.5.1", 4) == 4          # no history, its /24 not strict: steered
        assert per_worker(server) == (n0, p0 + 4)
        # a worker's priority socket dropped: for a second only addresses with history are
        # steered there (the deadline on the kernel's coarse clock)
        until = time.clock_gettime_ns(COARSE) + 10 ** 9
        struct.pack_into("<Q", buf, word * 8, until)
        assert ask(addr, "127.3.5.1", 4) == 4          # to the normal socket, still answered
        assert ask(addr, "127.3.9.1", 4) == 4
        assert ask(addr, "127.1.0.7", 5) == 5          # trusted: the priority socket
        assert per_worker(server) == (n0 + 8, p0 + 9)
        struct.pack_into("<Q", buf, word * 8, until - 2 * 10 ** 9)      # past
        assert ask(addr, "127.3.5.1", 4) == 4
        assert per_worker(server) == (n0 + 8, p0 + 13)
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


def test_a_relaying_resolver_keeps_its_other_zones_and_real_names_in_a_real_worker(tmp_path):
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "steer": True, "steer_idle": False,
                       "window_ms": 10000,
                       "known_rate": 5000, "known_addr_rate": 5000, "trust_after_ms": 0,
                       "nx_rate": 2},                     # 20 NXDOMAINs a window: pressure
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)},
                    {"name": "core.test.", "file": str(CORE_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    try:
        addr = server.addresses[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind(("127.1.0.30", 0))
            c.settimeout(2)

            def ask(name: str) -> int:
                c.sendto(_query(name), addr)
                return dns.message.from_wire(c.recvfrom(4096)[0]).rcode()

            assert {ask(f"r{i}x.integ.example.") for i in range(40)} == {dns.rcode.NXDOMAIN}
            st = server.scoring.stats(server.workers)
            assert st["nx_demoted"] >= 1 and st["nx_spared"] == 0
            normal0, prio0 = per_worker(server)
            demoted0 = st["nx_demoted"]
            assert ask("www.core.test.") == dns.rcode.NOERROR       # another zone: top
            # the attacked zone: a real name is top (its node exists: sc_name_exists), a
            # random one demoted (answered all the same: nothing is cut)
            assert ask("www.integ.example.") == dns.rcode.NOERROR
            assert ask("r99x.integ.example.") == dns.rcode.NXDOMAIN
        st = server.scoring.stats(server.workers)
        assert st["nx_spared"] == 2 and st["nx_demoted"] == demoted0 + 1
        assert st["admitted"]["top"] >= 32 + 2 and st["admitted"]["normal"] >= 8 + 1
        # trusted (its second query) and nothing at risk: still the priority socket for its
        # real names; its random one went to the normal socket (its relay bit, the kernel
        # stage's name filter: test_relay_steer.py)
        assert server.scoring.scorer.trusted(_ip("127.1.0.30"))
        assert server.scoring.scorer.relaying(_ip("127.1.0.30"))
        assert per_worker(server) == (normal0 + 1, prio0 + 2)
        from pop53.scoring import metrics
        fams = {f.name: f.samples[0].value for f in metrics.families(server.workers)
                if f.samples and not f.samples[0].labels}
        assert fams["pop53_scoring_known_spared"] == 2
        assert fams["pop53_scoring_known_demoted"] == st["nx_demoted"]
    finally:
        server.stop()
