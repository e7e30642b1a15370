"""The direct-indexed IPv4 layout of large views (ext/maptable.pxi) against the indexed binary
search it replaces: the same answer and the same ECS scope for every key, on maps whose blocks
are uniform, split into a few ranges, or crowded with /32s, with ranges crossing blocks."""
import ipaddress
import random

import numpy as np
import pytest

from pop53 import _core
from pop53.mapping import snapshot

from .mapkit import Mapping

REGIONS = "abcdefgh"
TARGETS = {c: [f"192.0.2.{i + 1}"] for i, c in enumerate(REGIONS)}
MAPPED = [{"name": "www.cdn.example.", "type": "A", "regions": {c: [c] for c in REGIONS}}]


def _lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    nets = {}
    crowd = rng.getrandbits(16) << 16           # one /16 full of /32s and /28s
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            plen = rng.choice([28, 32])
            a = crowd | rng.getrandbits(16)
        else:
            plen = rng.choice([1, 8, 12, 15, 16, 17, 20, 24, 24, 31, 32])
            a = rng.getrandbits(32)
        nets[ipaddress.ip_network((a >> (32 - plen) << (32 - plen), plen))] = rng.choice(REGIONS)
    return [f"{k} {v}" for k, v in nets.items()]


def _both(monkeypatch, lines, default="a"):
    monkeypatch.setattr(snapshot, "DIR_MIN", 1 << 40)
    old = Mapping(lines, default, TARGETS, MAPPED)
    monkeypatch.setattr(snapshot, "DIR_MIN", 1)
    new = Mapping(lines, default, TARGETS, MAPPED)
    d = new.snap.refs[4][0][2]
    assert isinstance(d, _core.MapDir4) and old.snap.refs[4][0][0] is not None
    return old, new, d


@pytest.mark.parametrize("seed,n", [(1, 0), (2, 3), (3, 400), (4, 6000)])
def test_direct_index_agrees_with_the_search(monkeypatch, seed, n):
    old, new, d = _both(monkeypatch, _lines(seed, n))
    lo4 = old.snap.refs[4][0][0]
    rng = random.Random(seed)
    keys = {0, (1 << 32) - 1}
    for x in lo4.tolist():
        keys.update((x, max(0, x - 1), min(x + 1, (1 << 32) - 1)))
    keys.update(rng.getrandbits(32) for _ in range(5000))
    keys.update((rng.getrandbits(16) << 16) | rng.choice([0, 0xFFFF]) for _ in range(500))
    for k in sorted(keys):
        b = k.to_bytes(4, "big")
        assert new.snap.lookup(0, b) == old.snap.lookup(0, b), hex(k)
    if n == 6000:
        assert d.n_cells > 0 and d.bits == 16


def test_answers_through_core_answer_agree(monkeypatch):
    """End to end (core_answer, ECS echo): the same addresses and scopes from both layouts,
    sources /0../32 and a source address without ECS."""
    old, new, _ = _both(monkeypatch, _lines(7, 3000))
    rng = random.Random(7)
    for _ in range(300):
        a = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        ecs = (a, rng.randint(0, 32)) if rng.random() < 0.9 else None
        x, y = old.ask("www.cdn.example.", ecs=ecs), new.ask("www.cdn.example.", ecs=ecs)
        assert x.answer == y.answer and x.rcode() == y.rcode()
        assert [o.to_text() for o in x.options] == [o.to_text() for o in y.options]


def test_bad_tables_are_refused():
    lo = np.array([0, 10, 20], dtype=np.uint32)
    val = np.array([0, 1, 2], dtype=np.uint16)
    with pytest.raises(ValueError):
        _core.MapDir4(np.array([0, 20, 10], dtype=np.uint32), val, 16)
    with pytest.raises(ValueError):
        _core.MapDir4(np.array([5, 10, 20], dtype=np.uint32), val, 16)
    with pytest.raises(ValueError):
        _core.MapDir4(lo, val, 12)              # cells keep 16 low bits
    d = _core.MapDir4(lo, val, 16)
    assert d.max_val == 2 and d.n_cells == 4   # one block of three ranges: header + 3


def test_prefetch_hint_finds_the_view_and_key_and_reads_any_bytes(monkeypatch):
    """The worker's batch prefetch (map_prefetch) guesses each query's view and key from the
    raw packet: right for the plain cases, and any truncated or garbled packet is read safely
    (a wrong guess only costs the head start)."""
    import dns.edns
    import dns.message

    monkeypatch.setattr(snapshot, "DIR_MIN", 1)
    m = Mapping(_lines(9, 50), "a", TARGETS, MAPPED)

    def wire(name, qtype="A", ecs=None):
        opts = [dns.edns.ECSOption(*ecs)] if ecs else []
        return dns.message.make_query(name, qtype, use_edns=0 if ecs else None,
                                      options=opts).to_wire()

    hint = lambda w: _core.map_prefetch_hint(m.snap, w)  # noqa: E731
    assert hint(wire("www.cdn.example.", ecs=("10.1.2.3", 24))) == (0, 0x0A010200)
    assert hint(wire("WwW.CDN.example.", ecs=("10.1.2.3", 16))) == (0, 0x0A010000)
    assert hint(wire("www.cdn.example.", ecs=("10.1.2.3", 32))) == (0, 0x0A010200)  # max /24
    assert hint(wire("www.cdn.example.")) == (0, 1 << 32)          # the source address keys it
    assert hint(wire("www.cdn.example.", "AAAA", ("10.1.2.3", 24))) is None   # no AAAA view
    assert hint(wire("sta.cdn.example.", ecs=("10.1.2.3", 24))) is None
    rng = random.Random(9)
    good = wire("www.cdn.example.", ecs=("10.1.2.3", 24))
    for i in range(len(good) + 1):
        hint(good[:i])
    for _ in range(3000):
        b = bytearray(good[:rng.randrange(len(good) + 8)])
        for _ in range(rng.randrange(1, 4)):
            if b:
                b[rng.randrange(len(b))] = rng.getrandbits(8)
        got = hint(bytes(b))
        assert got is None or (got[0] == 0 and 0 <= got[1] <= 1 << 32)
    # the indexed search of smaller tables gets the head start too; tables without an index
    # (under 64 ranges: a few cache lines) do not
    monkeypatch.setattr(snapshot, "DIR_MIN", 1 << 40)
    m = Mapping(_lines(9, 400), "a", TARGETS, MAPPED)
    assert m.snap.refs[4][0][2] is not None
    assert hint(good) == (0, 0x0A010200)
    m = Mapping(_lines(9, 3), "a", TARGETS, MAPPED)
    assert m.snap.refs[4][0][2] is None and hint(good) is None


def test_batch_prefetch_only_for_tables_larger_than_l2(monkeypatch):
    """map_prefetch costs about as much as the lookup it helps while a view's IPv4 tables fit
    in the core's L2 cache (the profile at 1k prefixes): the snapshot turns it on only for a
    view of at least 1 MiB (mapsnap.pxi PF_MIN_BYTES), indexed search or direct index."""
    monkeypatch.setattr(snapshot, "DIR_MIN", 1 << 40)
    m = Mapping(_lines(9, 400), "a", TARGETS, MAPPED)
    assert m.snap.refs[4][0][2] is not None and m.snap.prefetch_views == 0   # a few KiB
    monkeypatch.setattr(snapshot, "DIR_MIN", 1)
    m = Mapping(_lines(9, 400), "a", TARGETS, MAPPED)
    d = m.snap.refs[4][0][2]
    assert d.nbytes < 1 << 20 and m.snap.prefetch_views == 0                  # 2**16 words
    monkeypatch.setattr(snapshot, "DIR_BITS", (18, 18))
    m = Mapping(_lines(9, 400), "a", TARGETS, MAPPED)
    d = m.snap.refs[4][0][2]
    assert d.bits == 18 and d.nbytes >= 1 << 20 and m.snap.prefetch_views == 1
