"""Response rate limiting (ext/rrl.pxi), decision by decision with explicit seconds: the bucket
keys (client prefix, response kind, name), the refill, slip replies, and any bytes as a reply."""
from __future__ import annotations

import socket
import struct
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings, strategies as st

import pop53
from pop53 import _core

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def image():
    return pop53.compile_zones([DATA / "core.test.zone", DATA / "other.test.zone"])


def reply(image, name, rdtype="A", edns=False):
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    return pop53.answer(image, q.to_wire(), ("127.0.0.1", 5353))


def v4(addr: str, port: int = 5353) -> bytes:
    """A sockaddr_in padded to 28 bytes (what recvmmsg leaves in sockaddr_storage)."""
    return struct.pack("=HH4s", socket.AF_INET, socket.htons(port), socket.inet_aton(addr)).ljust(28, b"\0")


def v6(addr: str, port: int = 5353) -> bytes:
    return struct.pack("=HHI16sI", socket.AF_INET6, socket.htons(port), 0,
                       socket.inet_pton(socket.AF_INET6, addr), 0)


def run(rl, sa, wire, now, n):
    return [rl.account(sa, wire, now)[0] for _ in range(n)]


def test_rate_per_second_then_slip_and_drop(image):
    rl = _core.RateLimiter(5, slip=2)
    wire = reply(image, "www.core.test.")
    got = run(rl, v4("192.0.2.1"), wire, 100, 11)
    assert got == ["pass"] * 5 + ["drop", "slip"] * 3
    # a second later the refill only pays the flood's debt: still limited
    assert run(rl, v4("192.0.2.1"), wire, 101, 1) == ["drop"]
    rl2 = _core.RateLimiter(5, slip=2)
    run(rl2, v4("192.0.2.1"), wire, 100, 5)
    assert run(rl2, v4("192.0.2.1"), wire, 101, 5) == ["pass"] * 5    # not over: full refill
    assert run(rl2, v4("192.0.2.1"), wire, 101, 1) != ["pass"]


def test_a_flood_stays_limited_until_it_slows_down(image):
    rl = _core.RateLimiter(10, slip=0)
    wire = reply(image, "www.core.test.")
    sa = v4("198.51.100.7")
    for second in range(100, 105):
        got = run(rl, sa, wire, second, 100)
        if second == 100:
            assert got.count("pass") == 10
        else:
            # 10 refilled per second against a debt of 10: nothing gets through a steady flood
            assert got.count("pass") == 0, second
    assert run(rl, sa, wire, 107, 10) == ["pass"] * 10                 # it stopped: recovered


def test_prefixes_share_a_bucket_and_other_clients_do_not(image):
    rl = _core.RateLimiter(3, slip=0)
    wire = reply(image, "www.core.test.")
    assert run(rl, v4("192.0.2.1"), wire, 1, 3) == ["pass"] * 3
    assert run(rl, v4("192.0.2.200"), wire, 1, 1) == ["drop"]           # same /24
    assert run(rl, v4("192.0.3.1"), wire, 1, 3) == ["pass"] * 3         # another /24
    # IPv6: /56 by default; an IPv4-mapped client counts as its IPv4 address
    assert run(rl, v6("2001:db8:0:100::1"), wire, 1, 3) == ["pass"] * 3
    assert run(rl, v6("2001:db8:0:1ff::9"), wire, 1, 1) == ["drop"]     # same /56
    assert run(rl, v6("2001:db8:0:200::1"), wire, 1, 1) == ["pass"]     # another /56
    assert run(rl, v6("::ffff:192.0.2.77"), wire, 1, 1) == ["drop"]     # = 192.0.2.0/24
    # a /32 setting separates hosts
    host = _core.RateLimiter(1, slip=0, ipv4_prefix=32)
    assert run(host, v4("192.0.2.1"), wire, 1, 2) == ["pass", "drop"]
    assert run(host, v4("192.0.2.2"), wire, 1, 1) == ["pass"]


def test_response_kinds_and_their_names(image):
    rl = _core.RateLimiter(1)
    kind = lambda *a, **k: rl.classify(reply(image, *a, **k))  # noqa: E731
    assert kind("www.core.test.")[0] == "answer"
    assert kind("www.core.test.", "MX")[0] == "nodata"
    assert kind("nope.core.test.")[0] == "nxdomain"
    assert kind("host.deleg.core.test.")[0] == "referral"
    assert kind("www.not-ours.example.")[0] == "error"                 # REFUSED
    # NXDOMAIN is keyed by the zone (the SOA owner), so a random-subdomain flood is one bucket;
    # answers are keyed by the query name
    assert kind("a1.core.test.")[1] == kind("zz9.core.test.")[1] == kind("x.y.core.test.")[1]
    assert kind("nope.other.test.")[1] != kind("nope.core.test.")[1]
    assert kind("www.core.test.")[1] != kind("mail.core.test.")[1]
    # a referral is keyed by the delegation point, not the name below it
    assert kind("a.deleg.core.test.")[1] == kind("b.c.deleg.core.test.")[1]
    # case does not make a new bucket (0x20 randomisation)
    assert kind("WwW.CoRe.TeSt.")[1] == kind("www.core.test.")[1]


def test_random_subdomains_share_one_bucket(image):
    rl = _core.RateLimiter(5, slip=0)
    sa = v4("203.0.113.5")
    got = [rl.account(sa, reply(image, f"r{i}.core.test."), 7)[0] for i in range(20)]
    assert got.count("pass") == 5
    # answers for distinct names are distinct buckets
    rl2 = _core.RateLimiter(1, slip=0)
    got = [rl2.account(sa, reply(image, n), 7)[0] for n in ("www.core.test.", "mail.core.test.")]
    assert got == ["pass", "pass"]


def test_slip_reply_is_an_empty_truncated_answer(image):
    rl = _core.RateLimiter(1, slip=1)
    sa = v4("192.0.2.9")
    for edns in (False, True):
        wire = reply(image, "www.core.test.", edns=edns)
        rl = _core.RateLimiter(1, slip=1)
        assert rl.account(sa, wire, 1, edns=edns)[0] == "pass"
        verdict, out = rl.account(sa, wire, 1, edns=edns, payload=1232)
        assert verdict == "slip"
        m = dns.message.from_wire(out)
        orig = dns.message.from_wire(wire)
        assert m.flags & dns.flags.TC and m.id == orig.id
        assert m.question == orig.question and not m.answer and not m.authority
        assert (m.edns >= 0) == edns and (not edns or m.payload == 1232)
        assert len(out) < len(wire)


def test_slip_zero_and_one(image):
    wire = reply(image, "www.core.test.")
    none = _core.RateLimiter(1, slip=0)
    assert run(none, v4("192.0.2.1"), wire, 1, 6) == ["pass"] + ["drop"] * 5
    every = _core.RateLimiter(1, slip=1)
    assert run(every, v4("192.0.2.1"), wire, 1, 4) == ["pass"] + ["slip"] * 3


@pytest.mark.parametrize("kw", [dict(rate=0), dict(rate=1, slip=-1), dict(rate=1, ipv4_prefix=33),
                                dict(rate=1, table_size=1000), dict(rate=1, table_size=512)])
def test_bad_settings(kw):
    with pytest.raises(ValueError):
        _core.RateLimiter(**kw)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=600), st.integers(0, 3))
def test_any_bytes_as_a_reply_get_a_decision(raw, now):
    """The reply is ours, but nothing in the limiter may read past it whatever it holds
    (compression loops, bad labels, short headers); slip rewrites stay inside it."""
    rl = _core.RateLimiter(1, slip=1)
    sa = v4("192.0.2.1")
    for _ in range(2):
        verdict, out = rl.account(sa, raw, now, edns=True)
        assert verdict in ("pass", "slip", "drop")
        if verdict == "slip":
            assert len(out) <= max(len(raw), 12) + 11
    rl.classify(raw)


@pytest.mark.parametrize("rrl,key,message", [
    ({"rate": -1}, "rrl.rate", "within 0..1000000"),
    ({"rate": 5, "slip": 101}, "rrl.slip", "within 0..100"),
    ({"rate": 5, "ipv4_prefix": 33}, "rrl.ipv4_prefix", "within 0..32"),
    ({"rate": 5, "table_size": 3000}, "rrl.table_size", "power of two"),
    ({"rate": "fast"}, "rrl.rate", "expected int"),
    ({"rate": 5, "burst": 9}, "rrl.burst", "unknown key"),
    ({"rate": 5, "exempt": ["10.0.0.0/8", "nonsense"]}, "rrl.exempt[1]", "not an address prefix"),
])
def test_rrl_config_errors_name_the_key(rrl, key, message):
    from pop53 import config
    from pop53.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        config.from_dict({"server": {}, "rrl": rrl}, file="pop53.toml")
    assert err.value.key == key and message in str(err.value) and "pop53.toml" in str(err.value)


def test_rrl_config_off_and_on():
    from pop53 import config
    assert config.from_dict({"server": {}}).rrl is None
    assert config.from_dict({"server": {}, "rrl": {"rate": 0}}).rrl is None
    on = config.from_dict({"server": {}, "rrl": {"rate": 20}}).rrl
    assert on == {"rate": 20, "slip": 2, "ipv4_prefix": 24, "ipv6_prefix": 56, "table_size": 65536,
                  "exempt": ("127.0.0.0/8", "::1/128")}
    _core.RateLimiter(**on)


def test_exempt_prefixes_are_never_limited(image):
    wire = reply(image, "www.core.test.")
    rl = _core.RateLimiter(1, slip=0, exempt=("127.0.0.0/8", "::1/128", "198.51.100.0/25"))
    assert run(rl, v4("127.0.0.1"), wire, 1, 20) == ["pass"] * 20
    assert run(rl, v6("::1"), wire, 1, 20) == ["pass"] * 20
    assert run(rl, v6("::ffff:127.0.0.9"), wire, 1, 5) == ["pass"] * 5          # v4-mapped
    assert run(rl, v4("198.51.100.127"), wire, 1, 5) == ["pass"] * 5            # inside the /25
    assert run(rl, v4("198.51.100.128"), wire, 1, 3) == ["pass", "drop", "drop"]  # outside it
    assert run(rl, v6("::2"), wire, 1, 2) == ["pass", "drop"]
