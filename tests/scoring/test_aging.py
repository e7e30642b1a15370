"""Aging of the per-address trust and of strict prefixes (issue 13): a trusted address that
stops asking loses its trust after `trust_ttl`; strict prefixes relax after `strict_calm` without
overload, and a prefix whose trusted address still asks is strict again at its next query.  The
same C functions as the worker loop (`Scorer.classify` on the probe state), and the control
plane's `TrustAging` on a scripted clock."""
from __future__ import annotations

import time

import dns.flags
import dns.message
import pytest

from pop53 import _core
from pop53.errors import ConfigError
from pop53.scoring.aging import TrustAging
from pop53.scoring.known import KnownPrefixes, compile_table
from pop53.scoring.service import ScoringService
from pop53.scoring.settings import parse_settings

from test_trust import _ip

# 127.1.0.0/24 and 127.2.0.0/24
TABLE = compile_table(KnownPrefixes(frozenset({0x7F0100, 0x7F0200}), frozenset()))


def _scorer(**kw) -> _core.Scorer:
    """A scorer reading TABLE."""
    scorer = _core.Scorer(**kw)
    scorer.publish(TABLE)
    return scorer


def _wire() -> bytes:
    q = dns.message.make_query("www.example.", "A")
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def test_an_address_that_stops_asking_loses_its_trust_one_that_asks_keeps_it():
    s = _scorer(trust_after_ms=0)
    w = _wire()
    for a in ("127.1.0.1", "127.1.0.2"):
        s.classify(w, _ip(a))
        time.sleep(0.01)
        s.classify(w, _ip(a))
        assert s.trusted(_ip(a))
    assert s.age(0.6) == 0                 # both seen just now
    for _ in range(10):                    # only .2 keeps asking
        time.sleep(0.1)
        s.classify(w, _ip("127.1.0.2"))
    assert s.age(0.6) == 1
    assert not s.trusted(_ip("127.1.0.1")) and s.trusted(_ip("127.1.0.2"))
    # its history starts again: trusted when seen again after trust_after_ms of calm
    s.classify(w, _ip("127.1.0.1"))
    assert not s.trusted(_ip("127.1.0.1"))
    time.sleep(0.01)
    s.classify(w, _ip("127.1.0.1"))
    assert s.trusted(_ip("127.1.0.1"))


def test_a_cookie_proven_address_ages_from_its_proof():
    s = _scorer()
    s.cookie_proven(_ip("127.1.0.7"))
    assert s.trusted(_ip("127.1.0.7")) and s.age(5) == 0
    time.sleep(0.3)
    assert s.age(0.1) == 1 and not s.trusted(_ip("127.1.0.7"))


def test_strict_prefixes_relax_and_come_back_with_a_trusted_address_asking():
    s = _scorer(known_rate=20, trust_after_ms=0)
    w = _wire()
    s.classify(w, _ip("127.1.0.1"))
    time.sleep(0.01)
    s.classify(w, _ip("127.1.0.1"))                       # trusted: its /24 turns strict
    for i in range(40):                                   # 127.2.0.0/24: over its rate, no trust
        s.classify(w, _ip(f"127.2.0.{10 + i}"))
    assert s.strict(_ip("127.1.0.9")) and s.strict(_ip("127.2.0.9"))
    assert s.clear_strict() >= 1
    assert not s.strict(_ip("127.1.0.9")) and not s.strict(_ip("127.2.0.9"))
    s.new_window()
    s.classify(w, _ip("127.2.0.99"))                      # an untrusted address: stays relaxed
    assert not s.strict(_ip("127.2.0.9"))
    s.classify(w, _ip("127.1.0.1"))                       # the trusted resolver asks again
    assert s.strict(_ip("127.1.0.9")) and not s.strict(_ip("127.2.0.9"))


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_trust_aging_relaxes_after_calm_only_and_sweeps_on_schedule():
    s = _scorer(known_rate=20)
    w = _wire()
    for i in range(40):
        s.classify(w, _ip(f"127.2.0.{10 + i}"))          # over its rate: strict
    clock = _Clock()
    aging = TrustAging(s, trust_ttl=3600, strict_calm=60, clock=clock)
    assert aging.every == 60.0
    aging.step(5)
    for ticks in (6, 7, 8):                 # overloaded now and then: never 60 s of calm
        clock.t += 40
        aging.step(ticks)
        assert s.strict(_ip("127.2.0.9")) and aging.relaxed == 0
    clock.t += 59
    aging.step(8)
    assert s.strict(_ip("127.2.0.9"))
    clock.t += 2                            # 61 s without a new overload tick
    aging.step(8)
    assert not s.strict(_ip("127.2.0.9")) and aging.relaxed == 1


def test_aging_settings():
    st = parse_settings({}, "f.toml")
    assert st["aging"] == {"trust_ttl": 86400.0, "strict_calm": 600.0}
    st = parse_settings({"trust_ttl": 30, "strict_calm": 2.5}, "f.toml")
    assert ScoringService(st).aging.trust_ttl == 30.0 and ScoringService(st).aging.strict_calm == 2.5
    for bad in ({"trust_ttl": 0}, {"trust_ttl": True}, {"strict_calm": "x"},
                {"trust_ttl": 31 * 86400}):
        with pytest.raises(ConfigError) as e:
            parse_settings(bad, "f.toml")
        assert "scoring." + next(iter(bad)) in str(e.value)


def test_a_running_server_relaxes_strict_prefixes_after_calm(tmp_path):
    """The wiring: the server's housekeeping thread runs the aging (strict_calm = 1 s here)."""
    from pop53 import config as cfgmod
    from pop53.serve.server import Server
    from integ_support import INTEG_ZONE
    known = tmp_path / "known.txt"
    known.write_text("127.2.0.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(known), "known_rate": 20, "strict_calm": 1},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    server = Server(cfgmod.from_dict(doc, file="<test>"))
    server.start()
    try:
        s = server.scoring.scorer
        for i in range(40):                                   # over its rate: strict
            s.classify(_wire(), _ip(f"127.2.0.{10 + i}"))
        assert s.strict(_ip("127.2.0.9"))
        end = time.monotonic() + 5
        while s.strict(_ip("127.2.0.9")) and time.monotonic() < end:
            time.sleep(0.1)
        assert not s.strict(_ip("127.2.0.9")) and server.scoring.aging.relaxed >= 1
    finally:
        server.stop()
