"""The known-resolver table: a file of prefixes, one a line, compiled for the data plane.

File format (`[scoring] known_resolvers = "FILE"`): one IPv4 or IPv6 address or prefix per
line; `#` starts a comment; blank lines are skipped.  The data plane knows resolvers by IPv4
/24 and IPv6 /56 (the granularity of the table and of the source sketch), so a longer prefix or
an address stands for its /24 or /56 and a shorter prefix for every /24 or /56 inside it (at
most a /8 or a /40: 65,536 entries).  A bad line is one error naming FILE:LINE.

Compiled form (`_core.KnownTable`): a bitmap of every IPv4 /24 (2 MiB, one bit read per query,
small enough to stay in the cache a flood's scattered sources hit; left out when the file has
no IPv4 line), and the /56 keys of IPv6 (the first 7 address
bytes as an integer) in an open-addressing hash table at most half full (one or two probes),
behind a filter bitmap that `_core.KnownTable` derives from it at load time (a flood's
sources are answered "unknown" by one bit; docs/scoring.md).
"""
from __future__ import annotations

import dataclasses
import ipaddress
from array import array

from pop53 import _core
from pop53.errors import ConfigError

V4_BITS = 24
V6_BITS = 56
V4_SHORTEST = 8
V6_SHORTEST = 40


@dataclasses.dataclass(frozen=True)
class KnownPrefixes:
    """The /24 and /56 keys of known resolvers (integers: the address's top 24 or 56 bits)."""
    v4: frozenset[int]
    v6: frozenset[int]

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    def union(self, other: "KnownPrefixes") -> "KnownPrefixes":
        return KnownPrefixes(self.v4 | other.v4, self.v6 | other.v6)


def _keys(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> range:
    bits, shortest, width = (V4_BITS, V4_SHORTEST, 32) if net.version == 4 else (V6_BITS, V6_SHORTEST, 128)
    if net.prefixlen < shortest:
        raise ValueError(f"shorter than /{shortest}: list the resolvers' own prefixes")
    base = int(net.network_address) >> (width - bits)
    return range(base, base + (1 << max(0, bits - net.prefixlen)))


def parse_known(text: str, path: str = "<known resolvers>") -> KnownPrefixes:
    """Parse the file's text; ConfigError naming path:line on the first bad line."""
    v4: set[int] = set()
    v6: set[int] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            net = ipaddress.ip_network(item, strict=False)
            (v4 if net.version == 4 else v6).update(_keys(net))
        except ValueError as exc:
            raise ConfigError(f"{item!r}: {exc}", file=f"{path}:{lineno}") from None
    return KnownPrefixes(frozenset(v4), frozenset(v6))


def format_known(known: KnownPrefixes, comment: str = "") -> str:
    """The table as a file `parse_known` reads back to the same keys (sorted, one a line)."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"{ipaddress.IPv4Address(k << (32 - V4_BITS))}/{V4_BITS}" for k in sorted(known.v4)]
    lines += [f"{ipaddress.IPv6Address(k << (128 - V6_BITS))}/{V6_BITS}" for k in sorted(known.v6)]
    return "\n".join(lines) + "\n"


def read_known(path: str) -> KnownPrefixes:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the known resolvers: {exc}", file=path) from None
    return parse_known(text, path)


def compile_table(known: KnownPrefixes) -> _core.KnownTable:
    """The immutable structure the workers read (see the module's docstring)."""
    v4 = None
    if known.v4:
        table = bytearray(1 << (V4_BITS - 3))
        for key in known.v4:
            table[key >> 3] |= 1 << (key & 7)
        v4 = bytes(table)
    v6 = None
    if known.v6:
        size = 16
        while size < 2 * len(known.v6):      # at most half full: one or two probes
            size *= 2
        slots = array("Q", bytes(8 * size))
        for key in sorted(known.v6):
            i, value = _core.known_v6_slot(key, size - 1)
            while slots[i]:
                i = (i + 1) & (size - 1)
            slots[i] = value
        v6 = slots.tobytes()
    return _core.KnownTable(v4, v6)
