"""The ECS scope oracle (issue 10): random overlapping prefix sets, v4 and v6, queries with every
source length.  A brute-force oracle gives the answer and the minimal uniform block k*; pop53's
compiled path must give the same answer and scope == k* (so scope >= k* always: no resolver
cache ever holds an answer for a block wider than the answer's).  Plus the anchors' failure
cases by name: a mixed /16, an unmatched region, /32 sources, the default region."""
from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings, strategies as st

from .mapkit import Mapping, addresses, breakpoints, minimal_block, prefixes_of, region_of, scope

REGIONS = ["a", "b", "c"]
# c answers like a: merged ranges must span the a/c boundary (the final answer is what counts)
TARGETS = {"ta": ["192.0.2.1", "2001:db8::1"], "tb": ["192.0.2.2", "2001:db8::2"]}
MAPPED = [{"name": "www.cdn.example.", "regions": {"a": ["ta"], "b": ["tb"], "c": ["ta"]}}]
ANSWER = {"a": ("192.0.2.1",), "b": ("192.0.2.2",), "c": ("192.0.2.1",)}
ANSWER6 = {"a": ("2001:db8::1",), "b": ("2001:db8::2",), "c": ("2001:db8::1",)}


@st.composite
def v4_prefixes(draw):
    """Prefixes clustered in 10.0.0.0/12 (so they nest and abut), some short ones over it."""
    out = []
    for _ in range(draw(st.integers(1, 10))):
        length = draw(st.sampled_from([0, 4, 8, 12, 13, 16, 20, 22, 23, 24, 25, 28, 31, 32]))
        base = (10 << 24) | draw(st.integers(0, (1 << 20) - 1))
        net = ipaddress.ip_network((base >> (32 - length) << (32 - length), length))
        out.append(f"{net} {draw(st.sampled_from(REGIONS))}")
    return out


@st.composite
def v6_prefixes(draw):
    """Short prefixes over 2001:db8::/32 and long ones (up to /128) clustered in sixteen /64s,
    so that they nest inside a /64 (the sub-tables) and abut across /64 boundaries."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.sampled_from([0, 16, 32, 33, 40, 48, 56, 60, 63, 64,
                                       65, 72, 96, 120, 127, 128]))
        if length <= 64:
            base = (0x20010DB8 << 96) | (draw(st.integers(0, (1 << 36) - 1)) << 60)
        else:
            low = draw(st.integers(0, (1 << 64) - 1)) & draw(st.sampled_from(
                [0xFFFF << 48, 0xFF00000000FF00FF, (1 << 64) - 1, 0]))
            base = (0x20010DB8 << 96) | (draw(st.integers(0, 15)) << 64) | low
        net = ipaddress.ip_network((base >> (128 - length) << (128 - length), length))
        out.append(f"{net} {draw(st.sampled_from(REGIONS))}")
    return out


def _dedupe(lines):
    """Conflicting duplicates are a load error (tested elsewhere); keep the first."""
    seen, out = set(), []
    for line in lines:
        p = line.split()[0]
        if p not in seen:
            seen.add(p)
            out.append(line)
    return out


def _near(draw, bps, bits):
    """A key near a breakpoint (where scopes are interesting) or anywhere."""
    if draw(st.booleans()):
        return draw(st.integers(0, (1 << bits) - 1))
    p = draw(st.sampled_from(bps))
    return max(0, min((1 << bits) - 1, p + draw(st.integers(-3, 3))))


def _check(m, lines, default, version, key_full, src, limit, answer_of):
    """Ask with ECS (key_full masked to src) and compare with the oracle."""
    bits_addr = 32 if version == 4 else 128
    bits_key = bits_addr
    prefixes = prefixes_of(lines)
    masked = key_full & ((((1 << src) - 1) << (bits_addr - src)) if src else 0)
    eff = min(src, limit)
    key = masked & ((((1 << eff) - 1) << (bits_addr - eff)) if eff else 0)
    addr = str(ipaddress.ip_address(masked) if version == 4 else ipaddress.IPv6Address(masked))
    qtype = "A" if version == 4 else "AAAA"
    reply = m.ask("www.cdn.example.", qtype, ecs=(addr, src), client="198.18.0.1")
    table = ANSWER if version == 4 else ANSWER6
    if src == 0:
        # RFC 7871 §7.1.2: no client address is used; the resolver's own (198.18.0.1, only
        # the /0 covers it) picks, and the scope is 0
        assert addresses(reply, qtype) == table[region_of(int(ipaddress.ip_address("198.18.0.1")), 4, prefixes, default)]
        assert scope(reply) == 0
        return
    expected = table[region_of(key, version, prefixes, default)]
    assert addresses(reply, qtype) == expected
    def f(k):
        return table[region_of(k, version, prefixes, default)]

    kstar = minimal_block(key, bits_key, f, breakpoints(prefixes, version, bits_key))
    want = kstar if src <= limit else min(kstar, limit)
    assert scope(reply) == want, (lines, addr, src, kstar)
    assert scope(reply) >= min(kstar, eff) if src > limit else scope(reply) >= kstar


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), v4_prefixes(), st.sampled_from(REGIONS), st.sampled_from([24, 32, 20]))
def test_scope_oracle_v4(data, lines, default, limit):
    lines = _dedupe(lines)
    m = Mapping(lines, default, TARGETS, MAPPED, ecs_max_v4=limit)
    bps = breakpoints(prefixes_of(lines), 4, 32)
    for _ in range(12):
        key = _near(data.draw, bps, 32)
        src = data.draw(st.integers(0, 32))
        _check(m, lines, default, 4, key, src, limit, ANSWER)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), v6_prefixes(), st.sampled_from(REGIONS), st.sampled_from([56, 64, 48, 96, 128]))
def test_scope_oracle_v6(data, lines, default, limit):
    lines = _dedupe(lines)
    m = Mapping(lines, default, TARGETS, MAPPED, ecs_max_v6=limit)
    bps = breakpoints(prefixes_of(lines), 6, 128)
    for _ in range(10):
        key = _near(data.draw, bps, 128)
        src = data.draw(st.integers(0, 128))
        _check(m, lines, default, 6, key, src, limit, ANSWER6)


# -- the anchors' failure cases, by name ----------------------------------------------------
def test_mixed_slash16_is_not_answered_at_slash16():
    """PowerDNS LUA copies the source length: a /16 that holds two answers must not be
    claimed whole.  The key's own uniform block is /24 here."""
    lines = ["10.1.0.0/16 a", "10.1.7.0/24 b"]
    m = Mapping(lines, "a", TARGETS, MAPPED)
    r = m.ask("www.cdn.example.", ecs=("10.1.0.0", 16))
    assert addresses(r) == ANSWER["a"]
    assert scope(r) == 22          # 10.1.0.0/22 is all "a"; /21 would hold 10.1.7.0/24
    r = m.ask("www.cdn.example.", ecs=("10.1.7.0", 16 + 8))
    assert addresses(r) == ANSWER["b"] and scope(r) == 24


def test_unmatched_region_scope_is_not_zero():
    """Knot answers /0 when no entry matches though more specific entries map elsewhere;
    the default answer's block must stop at the nearest mapped prefix."""
    lines = ["10.0.0.0/8 b"]
    m = Mapping(lines, "a", TARGETS, MAPPED)
    r = m.ask("www.cdn.example.", ecs=("11.2.3.0", 24))
    assert addresses(r) == ANSWER["a"]
    assert scope(r) == 8            # 11.0.0.0/8 is default; /7 = 10.0.0.0/7 is mixed
    r = m.ask("www.cdn.example.", ecs=("192.0.0.0", 8))
    assert scope(r) == 1            # 128.0.0.0/1 holds no mapped prefix


def test_slash32_sources_get_the_wide_block():
    """/32 sources (beyond the /24 limit) are cut to /24 and answered for the largest block,
    never splintered to /32."""
    m = Mapping(["10.0.0.0/8 b"], "a", TARGETS, MAPPED)
    r = m.ask("www.cdn.example.", ecs=("10.9.8.7", 32))
    assert addresses(r) == ANSWER["b"] and scope(r) == 8
    m = Mapping(["10.0.0.0/8 b", "10.9.8.0/25 a"], "a", TARGETS, MAPPED)
    r = m.ask("www.cdn.example.", ecs=("10.9.8.7", 32))
    # the /24 limit: the key is 10.9.8.0 ("a"), and only up to /24 may be claimed
    assert addresses(r) == ANSWER["a"] and scope(r) == 24


def test_default_region_everywhere():
    """No prefix at all: one answer for the whole space, scope 0 (RFC 7871 §7.2.1)."""
    m = Mapping([], "b", TARGETS, MAPPED)
    r = m.ask("www.cdn.example.", ecs=("10.9.8.0", 24))
    assert addresses(r) == ANSWER["b"] and scope(r) == 0
    m = Mapping(["0.0.0.0/0 b"], "a", TARGETS, MAPPED)
    r = m.ask("www.cdn.example.", ecs=("10.9.8.0", 24))
    assert addresses(r) == ANSWER["b"] and scope(r) == 0


def test_equal_final_answers_merge_across_regions():
    """Regions a and c give one answer: the block spans both."""
    m = Mapping(["10.0.0.0/9 a", "10.128.0.0/9 c", "0.0.0.0/0 b"], "b", TARGETS, MAPPED)
    r = m.ask("www.cdn.example.", ecs=("10.1.0.0", 24))
    assert addresses(r) == ANSWER["a"] and scope(r) == 8
