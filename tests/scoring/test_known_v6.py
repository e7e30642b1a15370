"""The known table's IPv6 side: a filter bitmap in front of the exact /56 hash table (sc_known).
The answer must stay exact: a filter false positive is still unknown, and a known /56 is found
wherever linear probing put it."""
from __future__ import annotations

import random

import dns.flags
import dns.message

from pop53 import _core
from pop53.scoring.known import KnownPrefixes, compile_table


def addr(key: int, host: int = 1) -> bytes:
    """An address inside the /56 `key` (its top 56 bits)."""
    return ((key << 72) | host).to_bytes(16, "big")


def query() -> bytes:
    q = dns.message.make_query("www.example.", "A")
    q.flags &= ~dns.flags.RD
    return q.to_wire()


BASE = 0x2001_0db8 << 24        # 2001:db8::/32, as a /56 key


def random_table(n: int, seed: int) -> tuple[set[int], _core.KnownTable]:
    rnd = random.Random(seed)
    keys = {BASE | rnd.randrange(1 << 24) for _ in range(n)}
    return keys, compile_table(KnownPrefixes(frozenset(), frozenset(keys)))


def test_filter_size_follows_the_keys_and_passes_every_known_56():
    keys, t = random_table(1000, 1)
    assert t.n_v6 == len(keys)
    assert t.v6_filter_bits == 1 << 17          # >= 128 bits a key, a power of two
    for k in keys:
        a = addr(k, 0xabcd)
        assert t.v6_filter(a) and t.known(a), hex(k)
    assert compile_table(KnownPrefixes(frozenset(), frozenset({BASE}))).v6_filter_bits == 1 << 16
    empty = _core.KnownTable(None, bytes(8 * 16))         # slots, none used: no filter
    assert empty.v6_filter_bits == 0 and not empty.known(addr(BASE))


def test_filter_false_positive_still_scores_unknown():
    keys, t = random_table(1000, 2)
    rnd = random.Random(3)
    passed, tries = [], 0
    while len(passed) < 30 and tries < 400_000:
        tries += 1
        k = BASE | rnd.randrange(1 << 24)
        if k not in keys and t.v6_filter(addr(k)):
            passed.append(k)
    # about 0.07% of the others pass the filter (two bits of a word, 128 bits a key): each is
    # answered by the exact table
    assert len(passed) == 30 and tries > 30 * 200, tries
    s = _core.Scorer()
    s.publish(t)
    for k in passed:
        assert not t.known(addr(k)), hex(k)
        assert s.classify(query(), addr(k, 7)) == "normal", hex(k)
    assert s.classify(query(), addr(min(keys), 7)) == "top"


def test_known_56_found_after_a_probe_collision():
    # two /56s whose first slot is the same in a 16-slot table: the second is one probe further
    first = BASE | 0x1200
    slot = _core.known_v6_slot(first, 15)[0]
    other = next(k for k in range(first + 1, first + 10000) if _core.known_v6_slot(k, 15)[0] == slot)
    t = compile_table(KnownPrefixes(frozenset(), frozenset({first, other})))
    assert t.n_v6 == 2 and len(t.owner6) == 16 * 8
    s = _core.Scorer()
    s.publish(t)
    for k in (first, other):
        assert t.known(addr(k)) and t.known(addr(k, (1 << 72) - 1))
        assert s.classify(query(), addr(k, 5)) == "top"
    # neighbours of both (the next /56s, a /56 colliding on the same slot) are not known
    third = next(k for k in range(other + 1, other + 10000) if _core.known_v6_slot(k, 15)[0] == slot)
    for k in (first + 1, other + 1, third, first - 1):
        assert not t.known(addr(k)), hex(k)


def test_dense_table_answers_exactly():
    # 1000 keys in 2048 slots: many were displaced by collisions; every answer is the set's
    keys, t = random_table(1000, 4)
    slots = {}
    for k in keys:
        slots.setdefault(_core.known_v6_slot(k, 2047)[0], []).append(k)
    assert any(len(v) > 1 for v in slots.values())
    rnd = random.Random(5)
    probe = list(keys) + [BASE | rnd.randrange(1 << 24) for _ in range(5000)] + [k ^ 1 for k in keys]
    for k in probe:
        assert t.known(addr(k, rnd.randrange(1 << 72))) == (k in keys), hex(k)
    # another /32 with the same low bits is another /56
    assert not any(t.known(addr((k ^ BASE) | (0x2001_0db9 << 24))) for k in list(keys)[:50])
