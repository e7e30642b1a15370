"""Sticky and weighted selection (docs/mapping.md): `select` targets chosen per client block by
rendezvous hashing, in proportion to the targets' weights, stable across rebuilds and machines,
moving only the clients of a target that goes down; and the ECS scope stays honest: every
address of the block a reply claims gets that same answer.  Also IPv4-mapped IPv6 clients and
the mapped-replies counters."""
from __future__ import annotations

import collections
import ipaddress
import random

import dns.edns
import dns.message

from pop53 import _core

from .mapkit import Mapping, addresses, image, scope

LINES = ["10.0.0.0/8 eu", "10.1.0.0/16 us", "10.1.2.0/24 eu"]
TARGETS = {f"eu{i}": [f"192.0.2.{i}"] for i in range(1, 5)}
TARGETS["us1"] = ["198.51.100.1"]
REGIONS = {"eu": ["eu1", "eu2", "eu3", "eu4"], "us": ["us1"]}


def sticky(selection="sticky", **extra):
    return [{"name": "www.cdn.example.", "regions": REGIONS, "selection": selection, **extra}]


def blocks(n, seed=1, net="10.128.0.0/9"):
    """n distinct /24 ECS client blocks inside eu's part of 10/8 (no us hole there)."""
    rng = random.Random(seed)
    base = ipaddress.ip_network(net)
    out = set()
    while len(out) < n:
        out.add(str(base.network_address + (rng.getrandbits(base.max_prefixlen - base.prefixlen) & ~0xFF)))
    return sorted(out)


def test_sticky_picks_one_target_per_block_spread_evenly_and_stable():
    m = Mapping(LINES, "us", TARGETS, sticky())
    seen = collections.Counter()
    first = {}
    for b in blocks(2000):
        r = m.ask("www.cdn.example.", ecs=(b, 24))
        a = addresses(r)
        assert len(a) == 1 and a[0].startswith("192.0.2.")
        assert scope(r) == 24          # eu's run is far wider than /24: the sticky block rules
        seen[a[0]] += 1
        first[b] = a
    assert set(seen) == {f"192.0.2.{i}" for i in range(1, 5)}
    assert all(350 <= v <= 650 for v in seen.values()), seen     # 500 expected each
    m.rebuild()      # same inputs, new snapshot: the same choices (no per-build randomness)
    assert all(addresses(m.ask("www.cdn.example.", ecs=(b, 24))) == a for b, a in first.items())


def test_weighted_follows_the_weights():
    m = Mapping(LINES, "us", TARGETS, sticky("weighted"), weights={"eu1": 6, "eu2": 2})
    seen = collections.Counter(addresses(m.ask("www.cdn.example.", ecs=(b, 24)))[0]
                               for b in blocks(4000, seed=2))
    total = sum(seen.values())
    share = {k: v / total for k, v in seen.items()}
    # weights 6:2:1:1 -> 0.6, 0.2, 0.1, 0.1 (1,024 buckets, 4,000 blocks: a few % of noise)
    assert abs(share["192.0.2.1"] - 0.6) < 0.05, share
    assert abs(share["192.0.2.2"] - 0.2) < 0.04, share
    assert abs(share["192.0.2.3"] - 0.1) < 0.03 and abs(share["192.0.2.4"] - 0.1) < 0.03, share


def test_a_target_going_down_moves_only_its_own_clients():
    m = Mapping(LINES, "us", TARGETS, sticky())
    bs = blocks(1500, seed=3)
    before = {b: addresses(m.ask("www.cdn.example.", ecs=(b, 24))) for b in bs}
    m.live["eu3"] = False
    m.rebuild()
    after = {b: addresses(m.ask("www.cdn.example.", ecs=(b, 24))) for b in bs}
    moved = [b for b in bs if before[b] != after[b]]
    assert moved and all(before[b] == ("192.0.2.3",) for b in moved)
    assert all(after[b] != ("192.0.2.3",) for b in bs)
    assert len(moved) == sum(1 for b in bs if before[b] == ("192.0.2.3",))


def test_select_two_of_four():
    m = Mapping(LINES, "us", TARGETS, sticky(select=2))
    pairs = collections.Counter(addresses(m.ask("www.cdn.example.", ecs=(b, 24)))
                                for b in blocks(1200, seed=4))
    assert all(len(p) == 2 for p in pairs) and len(pairs) == 6     # every pair of four
    assert min(pairs.values()) > 100                                 # 200 expected each


def test_every_address_of_the_claimed_scope_gets_the_same_answer():
    """sticky_v4 = 20: a reply claims at least /20, and every /24 inside the claimed block gets
    the same answer; inside the us hole (a /16 with an eu /24) the run's own scope is longer."""
    m = Mapping(LINES, "us", TARGETS, sticky(sticky_v4=20))
    rng = random.Random(5)
    for b in blocks(150, seed=6, net="10.0.0.0/8") + ["10.1.2.0", "10.1.3.0"]:
        r = m.ask("www.cdn.example.", ecs=(b, 24))
        s = scope(r)
        assert s >= 16
        block = ipaddress.ip_network(f"{b}/{s}", strict=False)
        probes = {block.network_address, block.broadcast_address - 255}
        probes |= {block.network_address + (rng.getrandbits(32 - s) & ~0xFF) for _ in range(3)}
        for p in probes:
            assert addresses(m.ask("www.cdn.example.", ecs=(str(p), 24))) == addresses(r), (b, s, p)


def test_sticky_applies_to_ipv6_clients_and_the_source_address():
    lines = ["2001:db8::/32 eu"]
    targets = {k: v + [f"2001:db8::{i}"] for i, (k, v) in enumerate(TARGETS.items(), 1)}
    m = Mapping(lines, "eu", targets, sticky(sticky_v6=48))
    got = collections.Counter()
    for i in range(400):
        r = m.ask("www.cdn.example.", "AAAA", ecs=(f"2001:db8:{i:x}::", 48))
        assert scope(r) == 48 and len(addresses(r, "AAAA")) == 1
        got[addresses(r, "AAAA")] += 1
    assert len(got) == 4
    # without ECS the source address picks, by its own block
    answers = {addresses(m.ask("www.cdn.example.", client=f"10.200.{i}.7")) for i in range(64)}
    assert len(answers) > 1


def _ask_mapped_v6(m, ecs_addr, plen, client="192.0.2.1"):
    q = dns.message.make_query("www.cdn.example.", "A", use_edns=0,
                               options=[dns.edns.ECSOption(ecs_addr, plen)])
    _, wire = _core.answer(image().view, q.to_wire(), _core.Responder(), False, (client, 53),
                           m.snap)
    return dns.message.from_wire(wire)


def test_ipv4_mapped_ecs_is_looked_up_as_ipv4_with_an_ipv6_scope():
    lines = ["10.0.0.0/8 eu", "10.1.0.0/16 us"]
    m = Mapping(lines, "us", {"eu1": ["192.0.2.1"], "us1": ["198.51.100.1"]},
                [{"name": "www.cdn.example.", "regions": {"eu": ["eu1"], "us": ["us1"]}}])
    v4 = m.ask("www.cdn.example.", ecs=("10.1.2.0", 24))
    v6 = _ask_mapped_v6(m, "::ffff:10.1.2.0", 120)
    assert addresses(v6) == addresses(v4) == ("198.51.100.1",)
    assert scope(v4) == 16 and scope(v6) == 96 + 16
    eu4 = m.ask("www.cdn.example.", ecs=("10.9.0.0", 16))
    eu = _ask_mapped_v6(m, "::ffff:10.9.0.0", 112)
    assert addresses(eu) == addresses(eu4) == ("192.0.2.1",)
    assert scope(eu4) == 13 and scope(eu) == 96 + 13       # 10.8.0.0/13 lies inside eu
    # a /96 or shorter over ::ffff:0:0 is not an IPv4 client block: IPv6 (the default here)
    assert addresses(_ask_mapped_v6(m, "::ffff:0:0", 96)) == ("198.51.100.1",)


def test_ipv4_mapped_source_address_is_ipv4():
    lines = ["10.0.0.0/8 eu"]
    m = Mapping(lines, "us", {"eu1": ["192.0.2.1"], "us1": ["198.51.100.1"]},
                [{"name": "www.cdn.example.", "regions": {"eu": ["eu1"], "us": ["us1"]}}])
    assert addresses(m.ask("www.cdn.example.", client="::ffff:10.3.4.5")) == ("192.0.2.1",)
    assert addresses(m.ask("www.cdn.example.", client="::ffff:11.3.4.5")) == ("198.51.100.1",)


def test_mapped_replies_are_counted_by_key():
    m = Mapping(["10.0.0.0/8 eu"], "us", {"eu1": ["192.0.2.1"], "us1": ["198.51.100.1"]},
                [{"name": "www.cdn.example.", "regions": {"eu": ["eu1"], "us": ["us1"]}}],
                ecs_trust=["192.0.2.0/24"])
    counters = _core.Counters()

    def ask(ecs, client):
        opts = [dns.edns.ECSOption(*ecs)] if ecs else []
        q = dns.message.make_query("www.cdn.example.", "A", use_edns=0, options=opts)
        counters.answer(image().view, q.to_wire(), _core.Responder(), False,
                        ipaddress.ip_address(client).packed, m.snap)

    ask(("10.0.0.0", 24), "192.0.2.1")       # trusted ECS
    ask(("10.0.0.0", 24), "192.0.2.1")
    ask(None, "10.0.0.1")                    # the source address
    ask(("10.0.0.0", 24), "203.0.113.9")     # ECS from a resolver not trusted
    q = dns.message.make_query("sta.cdn.example.", "A")
    counters.answer(image().view, q.to_wire(), _core.Responder(), False, b"\x0a\0\0\1", m.snap)
    assert counters.stats()["mapped"] == {"ecs": 2, "source": 1, "default": 0, "ecs_untrusted": 1}
