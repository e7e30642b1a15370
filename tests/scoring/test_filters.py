"""Query scoring's filters one at a time, through the same C functions the worker loop runs
(`_core.Scorer.classify/admit/tick` on the scorer's probe state), and the known-resolvers file."""
from __future__ import annotations

import ipaddress
import time

import dns.edns
import dns.flags
import dns.message
import pytest

from pop53 import _core
from pop53.errors import ConfigError
from pop53.scoring.known import compile_table, parse_known
from pop53.scoring.settings import parse_settings


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def query(name="www.example.", rd=False, **kw) -> bytes:
    q = dns.message.make_query(name, "A", **kw)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


KNOWN = """\
# resolvers we have seen for months
192.0.2.7            # an address stands for its /24
198.51.100.0/23      # two /24s
2001:db8:1:2::53     # its /56
2001:db8:ff00::/48   # 256 /56s
"""


def scorer(**kw) -> _core.Scorer:
    s = _core.Scorer(**kw)
    s.publish(compile_table(parse_known(KNOWN)))
    return s


def test_known_file_compiles_to_24s_and_56s():
    known = parse_known(KNOWN)
    assert len(known.v4) == 3 and len(known.v6) == 1 + 256
    t = compile_table(known)
    for a in ("192.0.2.1", "192.0.2.255", "198.51.100.9", "198.51.101.200",
              "2001:db8:1:ff::1", "2001:db8:1::9", "2001:db8:ff00:ab00::1"):
        assert t.known(ip(a)), a
    for a in ("192.0.3.1", "198.51.102.1", "10.0.0.1", "2001:db8:1:100::1", "2001:db8:fe00::1",
              "::1"):
        assert not t.known(ip(a)), a


@pytest.mark.parametrize("line, why", [
    ("192.0.2.300", "does not appear to be an IPv4 or IPv6"),
    ("10.0.0.0/7", "shorter than /8"),
    ("2001:db8::/39", "shorter than /40"),
])
def test_known_file_errors_name_file_and_line(line, why):
    with pytest.raises(ConfigError) as e:
        parse_known(f"# ok\n192.0.2.1\n{line}\n", "known.txt")
    assert str(e.value).startswith("known.txt:3: ") and why in str(e.value)


def test_known_table_rejects_bad_shapes():
    with pytest.raises(ValueError):
        _core.KnownTable(b"\0" * 100, None)
    with pytest.raises(ValueError):
        _core.KnownTable(None, bytes(8 * 3))                          # not a power of two
    with pytest.raises(ValueError):
        _core.KnownTable(None, (5).to_bytes(8, "little") + bytes(8))  # a slot without its tag
    full = b"".join(_core.known_v6_slot(k, 1)[1].to_bytes(8, "little") for k in (1, 2))
    with pytest.raises(ValueError):
        _core.KnownTable(None, full)                                   # no empty slot


def test_known_source_is_top_unknown_normal():
    s = scorer()
    assert s.classify(query(), ip("192.0.2.99")) == "top"
    assert s.classify(query(), ip("2001:db8:ff00:1200::9")) == "top"
    assert s.classify(query(), ip("203.0.113.5")) == "normal"
    assert s.classify(query(), ip("2001:db8:2::1")) == "normal"
    s.publish(None)                      # no table: nobody is known
    assert s.classify(query(), ip("192.0.2.99")) == "normal"


@pytest.mark.parametrize("mutate", [
    lambda w: w[:2] + bytes([w[2] | 0x01]) + w[3:],          # RD
    lambda w: w[:2] + bytes([w[2] | 0x80]) + w[3:],          # QR
    lambda w: w[:2] + bytes([w[2] | 0x02]) + w[3:],          # TC
    lambda w: w[:3] + bytes([w[3] | 0x40]) + w[4:],          # Z
    lambda w: w[:2] + bytes([w[2] | (2 << 3)]) + w[3:],      # opcode STATUS
    lambda w: w[:5] + b"\x02" + w[6:],                       # QDCOUNT 2
    lambda w: w[:7] + b"\x01" + w[8:],                       # an answer in a query
    lambda w: w[:11] + b"\x03" + w[12:],                     # 3 additional records
    lambda w: w[:11],                                        # shorter than a header
])
def test_header_oddities(mutate):
    s = scorer()
    wire = query()
    assert s.classify(wire, ip("203.0.113.5")) == "normal"
    assert s.classify(mutate(wire), ip("203.0.113.6")) == "odd"
    # a known resolver stays on top whatever its header looks like
    assert s.classify(mutate(wire), ip("192.0.2.6")) == "top"


def test_rd_is_odd_only_when_configured():
    assert scorer(rd_odd=False).classify(query(rd=True), ip("203.0.113.5")) == "normal"


def test_source_sketch_marks_a_flooding_prefix():
    s = scorer(source_rate=50, known_rate=100, window_ms=1000)
    got = [s.classify(query(), ip(f"203.0.113.{i % 250}")) for i in range(60)]   # one /24
    assert got[:50] == ["normal"] * 50 and got[50:] == ["flood"] * 10
    assert s.classify(query(), ip("203.0.114.1")) == "normal"          # another /24
    # a known prefix over its own (higher) rate falls to normal: spoofed known sources
    got = [s.classify(query(), ip("192.0.2.1")) for i in range(110)]
    assert got[:100] == ["top"] * 100 and set(got[100:]) == {"normal"}
    s.new_window()
    assert s.classify(query(), ip("203.0.113.1")) == "normal"
    assert s.classify(query(), ip("192.0.2.1")) == "top"


def test_sketch_counts_ipv6_by_56():
    s = scorer(source_rate=20)
    got = [s.classify(query(), ip(f"2001:db8:5:{i:x}00::{i + 1:x}")) for i in range(25)]
    # 2001:db8:5:XX00:: with XX varying changes the 7th byte: different /56s, never flooding
    assert "flood" not in got
    got = [s.classify(query(), ip(f"2001:db8:5:7{i % 16:x}::{i + 1:x}")) for i in range(25)]  # one /56
    assert got[20:] == ["flood"] * 5


class Traffic:
    """One query of each class between controller ticks (source_rate=1 per window: a /24's
    second query is flooding)."""

    def __init__(self, s: _core.Scorer):
        self.s, self.n = s, 0
        s.classify(query(), ip("198.18.0.1"))          # 198.18.0.0/24 is over its rate now

    def __call__(self):
        self.n += 1
        a = ip(f"10.{self.n >> 8 & 255}.{self.n & 255}.1")   # a fresh /24 each time
        b = ip(f"10.{128 + (self.n >> 8 & 127)}.{self.n & 255}.1")
        got = (self.s.admit(query(), ip("192.0.2.1")), self.s.admit(query(), a),
               self.s.admit(query(rd=True), b), self.s.admit(query(), ip("198.18.0.1")))
        return dict(zip(("top", "normal", "odd", "flood"), got))


def test_controller_cuts_worst_class_first_and_recovers_slowly():
    s = scorer(recover=256, source_rate=1, known_rate=60000)
    traffic = Traffic(s)
    share = lambda: s.stats()["share"]
    assert traffic() == {"top": True, "normal": True, "odd": True, "flood": True}
    assert s.stats()["level"] == 0.0
    s.tick(True)
    assert share() == {"top": 1.0, "normal": 1.0, "odd": 1.0, "flood": 0.5}
    for _ in range(6):                   # 1/2 .. 1/64, then nothing
        traffic()
        s.tick(True)
    assert share()["flood"] == 0.0 and share()["odd"] == 1.0
    traffic()
    s.tick(True)
    assert share()["odd"] == 0.5
    for _ in range(13):                  # everything but the top class
        traffic()
        s.tick(True)
    assert share() == {"top": 1.0, "normal": 0.0, "odd": 0.0, "flood": 0.0}
    assert s.stats()["level"] == 3.0
    assert traffic() == {"top": True, "normal": False, "odd": False, "flood": False}
    s.tick(False)                        # calm: the best cut class first, additively
    assert share()["normal"] == 0.25 and share()["odd"] == 0.0
    for _ in range(3):
        s.tick(False)
    assert share()["normal"] == 1.0 and share()["odd"] == 0.0
    s.tick(False)
    assert share()["odd"] == 0.25
    st = s.stats()
    assert st["overload_ticks"] == 21 and st["ticks"] == 26
    assert st["dropped"]["top"] == 0 and st["admitted"]["top"] == 22


def test_controller_cuts_a_class_without_queries_at_once():
    s = scorer(source_rate=60000)
    for _ in range(3):
        s.admit(query(), ip("203.0.113.1"))           # only normal queries in this tick
    s.tick(True)
    # flood and odd had none: cut to nothing (never more admitted than a better class)
    assert s.stats()["share"] == {"top": 1.0, "normal": 0.5, "odd": 0.0, "flood": 0.0}
    s.tick(True)                         # no queries at all: nothing left to cut but normal
    assert s.stats()["share"]["normal"] == 0.0


def test_admission_follows_the_shares():
    s = scorer(source_rate=60000)
    odd = query(rd=True)
    s.admit(odd, ip("203.0.113.1"))
    s.tick(True)                         # flood had nothing: 0; odd 1/2
    res = [s.admit(odd, ip(f"203.0.113.{i % 200}")) for i in range(1000)]
    assert sum(res) == 500               # exactly every other: an accumulator, no randomness
    assert all(s.admit(query(), ip("203.0.113.9")) for _ in range(100))     # normal: all
    assert all(s.admit(odd, ip("192.0.2.9")) for _ in range(100))           # known: all
    st = s.stats()
    assert st["dropped"] == {"top": 0, "normal": 0, "odd": 500, "flood": 0}
    assert st["admitted"] == {"top": 100, "normal": 100, "odd": 501, "flood": 0}


def test_valid_cookie_lifts_a_client_over_the_cut():
    secret = bytes(range(16))
    responder = _core.Responder(cookie_secret=secret)
    s = scorer()
    for _ in range(60):
        s.tick(True)
    assert s.stats()["share"]["normal"] == 0.0
    client = ip("203.0.113.5")
    cc = b"\x01" * 8
    good = cc + _core.server_cookie(secret, cc, client, int(time.time()))
    bad = cc + _core.server_cookie(bytes(16), cc, client, int(time.time()))
    with_cookie = lambda c: query(use_edns=0, options=[dns.edns.CookieOption(c[:8], c[8:])])
    assert s.admit(with_cookie(good), client, responder)
    assert not s.admit(with_cookie(good), ip("203.0.113.6"), responder)   # not its address
    assert not s.admit(with_cookie(bad), client, responder)
    assert not s.admit(with_cookie(cc), client, responder)               # client cookie only
    assert not s.admit(query(), client, responder)
    assert not s.admit(with_cookie(good), client)                        # cookies off
    st = s.stats()
    assert st["lifted"] == 1 and st["admitted"]["top"] == 1 and st["dropped"]["normal"] == 5


def test_settings():
    assert parse_settings(None, "f") is None
    assert parse_settings({"enabled": False}, "f") is None
    got = parse_settings({"known_resolvers": "k.txt", "tick_ms": 5}, "f", "/etc/pop53")
    assert got["known_resolvers"] == "/etc/pop53/k.txt" and got["scorer"]["tick_ms"] == 5
    _core.Scorer(**got["scorer"])
    for raw, key in (({"tick_ms": 0}, "scoring.tick_ms"), ({"source_rate": "x"}, "scoring.source_rate"),
                     ({"source_rate": 100_000}, "scoring.source_rate")):
        with pytest.raises(ConfigError) as e:
            parse_settings(raw, "f")
        assert key in str(e.value)


def test_any_bytes_are_scored_and_none_crash():
    """Garbage, truncations and bit flips through the whole decision, with every class but top
    cut and cookies on (so the cookie parse runs on each): a class or a drop, never a crash."""
    import random
    rng = random.Random(13)
    s = scorer(source_rate=60000)
    for _ in range(60):
        s.tick(True)
    responder = _core.Responder(cookie_secret=bytes(16))
    q = query(use_edns=0, options=[dns.edns.CookieOption(b"\x01" * 8, b"\x02" * 16)])
    packets = [rng.randbytes(rng.randrange(0, 600)) for _ in range(2000)]
    packets += [q[:n] for n in range(len(q))]
    for _ in range(500):
        b = bytearray(q)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        packets.append(bytes(b))
    for p in packets:
        assert s.classify(p, ip("203.0.113.1")) in ("normal", "odd", "flood")
        assert s.admit(p, ip("203.0.113.1"), responder) is False
    assert s.stats()["lifted"] == 0


def test_runs_of_full_batches_mean_overload_and_idle_time_counts_as_calm():
    s = scorer(tick_ms=20, full_run=3, recover=32)
    s.batch(1)                                     # the first batch starts the clock
    for _ in range(3):
        s.batch(64)                                # three full batches in a row
    time.sleep(0.03)
    s.batch(64)                                    # the tick: overloaded
    st = s.stats()
    assert st["overload_ticks"] == 1 and st["share"]["flood"] == 0.0
    for _ in range(3):
        s.batch(5)                                 # not full: no run
    time.sleep(0.03)
    s.batch(5)
    assert s.stats()["overload_ticks"] == 1 and s.stats()["share"]["normal"] > 0   # calm: recovering
    for _ in range(60):
        s.tick(True)
    assert s.stats()["level"] == 3.0
    time.sleep(2.2)                                # idle: about 110 calm ticks missed
    s.batch(1)
    assert s.stats()["level"] == 0.0               # 3 classes x 32 ticks of recovery


def test_short_normal_batches_only_while_guarding_known_resolvers():
    """While known resolvers are served from the priority socket and the normal one has a
    backlog (or a class is cut), the worker takes a quarter batch from its normal socket at a
    time (a known resolver's query then waits behind 16 flood queries, not 64); with no known
    resolver asking it reads whole batches even while a class is cut (nobody to guard: short
    batches would only cost capacity).  Four full short batches are one step of a run, so the
    overload test means the same queue as before."""
    s = scorer(tick_ms=20, full_run=2, recover=1024)
    s.batch(1)
    assert s.normal_batch() == 64
    for _ in range(3):
        s.batch(64)                                # a backlog, no known resolver asking
    time.sleep(0.03)
    s.batch(64)                                    # the tick: overloaded, flood and odd cut
    st = s.stats()
    assert st["overload_ticks"] == 1 and st["share"]["flood"] == 0.0
    assert st["share"]["normal"] == 1.0 and s.normal_batch() == 64
    s.batch(2, priority=True)                      # a known resolver is served
    assert s.normal_batch() == 16
    for _ in range(7):
        s.batch(16, full=16)                       # 112 datagrams: one whole batch of run
    time.sleep(0.03)
    s.batch(16, full=16)                           # the tick: 128 = a run of 2 batches
    assert s.stats()["overload_ticks"] == 2
    s.batch(3, full=16)                            # the queue emptied: the run ends
    for _ in range(5):
        s.batch(16, full=16)                       # 80 datagrams: a run of one batch
    time.sleep(0.03)
    s.batch(3, full=16)                            # calm: the best cut class comes back at once
    assert s.stats()["overload_ticks"] == 2 and s.stats()["share"]["odd"] == 1.0
    assert s.normal_batch() == 16                  # (flood is still cut)
    s.tick(False)
    assert s.stats()["share"]["flood"] == 1.0 and s.normal_batch() == 64
    s.batch(16, full=16)                           # a backlog again: short batches at once,
    assert s.normal_batch() == 16                  # before a tick says so
