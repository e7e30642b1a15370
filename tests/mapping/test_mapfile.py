"""Map files: the C parser (`_core.map_parse`, used for files) and the Python parser agree on
every table and every error message; the sweep agrees with a brute-force longest-prefix
match."""
from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pop53.errors import ConfigError
from pop53.mapping.mapfile import compile_map, compile_map_bytes

from .mapkit import prefixes_of, region_of


def _same(a, b):
    names_a = [a.regions[r] for r in a.reg4] + [a.regions[r] for r in a.reg6]
    names_b = [b.regions[r] for r in b.reg4] + [b.regions[r] for r in b.reg6]
    assert list(a.lo4) == list(b.lo4) and list(a.lo6) == list(b.lo6) and names_a == names_b
    assert a.prefixes == b.prefixes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, 32),
                          st.sampled_from(["eu", "us", "ap-south", "x_1"]),
                          st.sampled_from(["", "  # note", "\t#", "\r"])), max_size=40),
       st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, 64),
                          st.sampled_from(["eu", "us"])), max_size=10))
def test_c_and_python_parsers_agree_and_match_the_oracle(v4, v6):
    lines, seen = ["# header", ""], set()
    for addr, plen, reg, tail in v4:
        net = ipaddress.ip_network((addr >> (32 - plen) << (32 - plen), plen))
        if net not in seen:
            seen.add(net)
            lines.append(f"{net}\t{reg}{tail}")
    for addr, plen, reg in v6:
        net = ipaddress.ip_network(((addr >> (64 - plen) << (64 - plen)) << 64, plen))
        if net not in seen:
            seen.add(net)
            lines.append(f"  {net} {reg}")
    text = "\n".join(lines)
    a = compile_map(text.splitlines(), "m.map", "us")
    b = compile_map_bytes(text.encode(), "m.map", "us")
    _same(a, b)
    # every range start agrees with a brute-force longest-prefix match
    pf = prefixes_of(lines)
    for lo, reg in zip(b.lo4, b.reg4):
        assert region_of(int(lo), 4, pf, "us") == b.regions[reg]
    for lo, reg in zip(b.lo6, b.reg6):
        assert region_of(int(lo) << 64, 6, pf, "us") == b.regions[reg]


@pytest.mark.parametrize("bad", [
    "10.0.0.1/8 eu", "10.0.0.0/33 eu", "010.0.0.0/8 eu", "10.0.0.0/08x eu", "1.2.3.4.5 eu",
    "2001:db8::4000:0:0:0/65 eu", "2001:db8::1/64 eu",
    "2001:db8::1/127 eu", "10.0.0.0/8", "10.0.0.0/8 eu us", "/8 eu",
    "10.0.0.0/ eu", "10.0.0.0/8 r\u00e9gion",
])
def test_c_and_python_errors_agree(bad):
    text = f"10.0.0.0/8 eu\n# c\n{bad}\n"
    with pytest.raises(ConfigError) as a:
        compile_map(text.splitlines(), "m.map", "us", ["eu", "us"])
    with pytest.raises(ConfigError) as b:
        compile_map_bytes(text.encode(), "m.map", "us", ["eu", "us"])
    assert str(a.value) == str(b.value) and str(b.value).startswith("m.map:3: ")


def test_unknown_region_and_duplicates_from_the_c_path():
    with pytest.raises(ConfigError, match=r"^m.map:2: unknown region 'ap'"):
        compile_map_bytes(b"10.0.0.0/8 eu\n11.0.0.0/8 ap\n", "m.map", "us", ["eu", "us"])
    with pytest.raises(ConfigError, match=r"^m.map:3: duplicate prefix"):
        compile_map_bytes(b"10.0.0.0/8 eu\n9.0.0.0/8 us\n10.0.0.0/8 us\n", "m.map", "us")


def test_large_random_map_bytes_per_prefix():
    """At most 24 bytes per prefix (the issue's bar): 2 x ranges x (key + 2-byte region)."""
    rng = random.Random(5)
    nets = {}
    for _ in range(20000):
        plen = rng.choice([8, 12, 16, 20, 24, 28, 32])
        nets[ipaddress.ip_network((rng.getrandbits(32) >> (32 - plen) << (32 - plen), plen))] = \
            f"r{rng.randrange(30)}"
    t = compile_map_bytes("".join(f"{n} {r}\n" for n, r in nets.items()).encode(), "m", "r0")
    assert t.nbytes <= 24 * len(nets)
    assert np.all(np.diff(t.lo4.astype(np.int64)) > 0) and t.lo4[0] == 0


@pytest.mark.parametrize("n", [50, 3000, 40000])
def test_indexed_search_agrees_with_bisect(n):
    """The top-bits index (sized to the table) and the plain binary search find the same
    range as a bisect over the merged starts, v4 and v6, including both ends of the space."""
    import bisect

    from .mapkit import Mapping

    rng = random.Random(n)
    lines = {}
    for _ in range(n):
        plen = rng.choice([8, 16, 20, 24, 28, 32])
        lines[str(ipaddress.ip_network((rng.getrandbits(32) >> (32 - plen) << (32 - plen), plen)))] = \
            rng.choice("abcdefgh")
        plen = rng.choice([16, 32, 48, 64])
        lines[str(ipaddress.ip_network(((rng.getrandbits(64) >> (64 - plen) << (64 - plen)) << 64,
                                        plen)))] = rng.choice("abcdefgh")
    targets = {c: [f"192.0.2.{i + 1}"] for i, c in enumerate("abcdefgh")}
    m = Mapping([f"{p} {r}" for p, r in lines.items()], "a", targets,
                [{"name": "www.cdn.example.", "type": "A",
                  "regions": {c: [c] for c in "abcdefgh"}}])
    lo4, val4, idx4, lo6, val6, idx6 = m.snap.refs[4][0][:6]
    assert (idx4 is not None) == (len(lo4) >= 64)
    keys4 = [0, (1 << 32) - 1] + [rng.getrandbits(32) for _ in range(3000)] + [int(x) for x in lo4[:500]]
    for k in keys4:
        i = bisect.bisect_right(lo4.tolist() if n == 50 else lo4, k) - 1
        assert m.snap.lookup(0, k.to_bytes(4, "big"))[0] == val4[i]
    keys6 = [0, (1 << 64) - 1] + [rng.getrandbits(64) for _ in range(3000)] + [int(x) for x in lo6[:500]]
    for k in keys6:
        i = int(np.searchsorted(lo6, np.uint64(k), side="right")) - 1
        assert m.snap.lookup(0, k.to_bytes(8, "big") + bytes(8))[0] == val6[i]


def test_long_ipv6_prefixes_get_sub_tables_and_the_c_path_agrees():
    """Prefixes longer than /64 (up to /128) map exactly: a sub-table over the low 64 bits of
    their /64, the /64's own region where none of them covers; C and Python parse alike."""
    text = ("2001:db8::/32 eu\n2001:db8:0:1::/64 us\n2001:db8:0:1::8000:0:0/81 ap\n"
            "2001:db8:0:1::8000:0:1/128 eu\n2001:db8:0:2::1/128 ap\n")
    a = compile_map(text.splitlines(), "m.map", "us")
    b = compile_map_bytes(text.encode(), "m.map", "us")
    for x in (a, b):
        assert list(x.sub_key) == [0x20010DB800000001, 0x20010DB800000002]
        regs = [x.regions[r] for r in x.sub_reg]
        assert [int(v) for v in x.sub_lo[:4]] == [0, 0x8000 << 32, (0x8000 << 32) | 1,
                                                  (0x8000 << 32) | 2]
        assert regs[:5] == ["us", "ap", "eu", "ap", "us"]      # ...then the /64 past the /81
        assert regs[5:] == ["eu", "ap", "eu"]                     # 2001:db8:0:2::/64 is eu
    assert all((a.sub_lo == b.sub_lo) & (a.sub_reg == b.sub_reg))
