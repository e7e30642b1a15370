"""Map files: one `PREFIX REGION` per line, IPv4 and IPv6, any lengths, overlaps allowed (the
longest prefix wins), `#` comments.  Parsed with file:line errors and swept into disjoint
ranges (`RegionTable`) off the hot path.

IPv6 is swept on the top 64 bits of the address; the rare /64s that hold longer prefixes get
a sub-table over their low 64 bits (`sub_*`), so any length up to /128 maps exactly while the
common case keeps 64-bit keys.
"""
from __future__ import annotations

import dataclasses
import socket

import numpy as np

from pop53 import _core
from pop53.errors import ConfigError

V4_TOP = (1 << 32) - 1
V6_TOP = (1 << 64) - 1
MAX_REGIONS = 65535


@dataclasses.dataclass(frozen=True)
class RegionTable:
    """A map compiled: disjoint ranges sorted by start, adjacent equal regions merged.  Range i
    covers [lo[i], lo[i+1] - 1] (the last one up to the top of the space).  reg = region id,
    an index into `regions`."""
    regions: tuple[str, ...]
    default: int
    lo4: np.ndarray         # uint32
    reg4: np.ndarray        # uint16
    lo6: np.ndarray         # uint64 (top 64 bits of the address)
    reg6: np.ndarray        # uint16
    prefixes: int           # how many prefixes the file had
    # /64s holding prefixes longer than /64: sub_key[j] (sorted top 64 bits) has the ranges
    # sub_lo/sub_reg[sub_off[j]:sub_off[j + 1]] over its low 64 bits (starting at 0)
    sub_key: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, np.uint64))
    sub_off: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.uint32))
    sub_lo: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, np.uint64))
    sub_reg: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, np.uint16))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.lo4, self.reg4, self.lo6, self.reg6, self.sub_key,
                                      self.sub_off, self.sub_lo, self.sub_reg))


def _fail(msg: str, path: str, line: int):
    raise ConfigError(msg, file=f"{path}:{line}")


def parse_map_lines(lines, path: str, regions: dict[str, int], allowed: set | None,
                    first_line: int = 1):
    """-> (v4 [start, length, region, line] lists, v6 likewise plus the starts' low 64 bits).
    `regions` grows as new names appear (name -> id); `allowed`: the declared regions."""
    s4, l4, r4, n4 = [], [], [], []
    s6, l6, r6, n6, o6 = [], [], [], [], []
    pton = socket.inet_pton
    AF4, AF6 = socket.AF_INET, socket.AF_INET6
    frombytes = int.from_bytes
    for lineno, raw in enumerate(lines, first_line):
        if "#" in raw:
            raw = raw[:raw.index("#")]
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 2:
            _fail(f"expected \"PREFIX REGION\", got {raw.strip()!r}", path, lineno)
        pfx, region = parts
        addr, slash, plen = pfx.partition("/")
        v6 = ":" in addr
        try:
            packed = pton(AF6 if v6 else AF4, addr)
        except OSError:
            _fail(f"bad prefix {pfx!r}: not an IP{'v6' if v6 else 'v4'} address", path, lineno)
        bits = 128 if v6 else 32
        if slash:
            if not plen.isdigit() or int(plen) > bits:
                _fail(f"bad prefix {pfx!r}: the length must be 0..{bits}", path, lineno)
            length = int(plen)
        else:
            length = bits
        value = frombytes(packed, "big")
        if value & ((1 << (bits - length)) - 1):
            _fail(f"bad prefix {pfx!r}: host bits set beyond /{length}", path, lineno)
        rid = regions.get(region)
        if rid is None:
            if allowed is not None and region not in allowed:
                _fail(f"unknown region {region!r} (the map declares {', '.join(sorted(allowed))})",
                      path, lineno)
            if len(regions) >= MAX_REGIONS:
                _fail(f"more than {MAX_REGIONS} regions", path, lineno)
            rid = regions[region] = len(regions)
        if v6:
            s6.append(value >> 64)
            o6.append(value & V6_TOP)
            l6.append(length)
            r6.append(rid)
            n6.append(lineno)
        else:
            s4.append(value)
            l4.append(length)
            r4.append(rid)
            n4.append(lineno)
    return (s4, l4, r4, n4), (s6, l6, r6, n6, o6)


def _sweep(family: tuple, bits: int, default: int, path: str, regions: list[str]):
    """Sorted, de-duplicated (conflicts are errors naming both lines), swept in C."""
    start = np.asarray(family[0], dtype=np.uint64)
    length = np.asarray(family[1], dtype=np.uint8)
    region = np.asarray(family[2], dtype=np.uint16)
    line = np.asarray(family[3], dtype=np.uint32)
    top = (1 << bits) - 1
    if len(start):
        # a parent sorts before its children: by start, then by length (shorter first).  IPv4
        # packs both in one key; a file already in that order is not sorted again.
        if bits == 32 and len(start) < (1 << 26):
            key = (start << np.uint64(6)) | length
            order = None
            if not np.all(key[1:] >= key[:-1]):
                # sorting values is about twice as fast as argsort: carry the index in the
                # low 26 bits (32 + 6 + 26 = 64)
                packed = np.sort((key << np.uint64(26)) | np.arange(len(key), dtype=np.uint64))
                order = (packed & np.uint64((1 << 26) - 1)).astype(np.intp)
        else:
            order = np.lexsort((length, start))
        if order is not None:
            start, length, region, line = start[order], length[order], region[order], line[order]
        dup = (start[1:] == start[:-1]) & (length[1:] == length[:-1])
        if dup.any():
            clash = np.nonzero(dup & (region[1:] != region[:-1]))[0]
            if len(clash):
                i = int(clash[0])
                _fail(f"duplicate prefix with a different region ({regions[region[i + 1]]!r}; "
                      f"line {int(line[i])} says {regions[region[i]]!r})", path,
                      int(max(line[i], line[i + 1])))
            keep = np.concatenate(([True], ~dup))
            start, length, region = start[keep], length[keep], region[keep]
        shift = (np.uint64(bits) - length.astype(np.uint64)).clip(0, 63)
        # a /0 spans the whole space (2**64 does not fit the shift)
        size = np.where(length == 0, np.uint64(top), (np.uint64(1) << shift) - np.uint64(1))
        end = start + size
    else:
        end = start
    lo, reg = _core.map_sweep(np.ascontiguousarray(start), np.ascontiguousarray(end),
                              np.ascontiguousarray(region), default, top)
    lo = np.frombuffer(lo, dtype=np.uint64)
    reg = np.frombuffer(reg, dtype=np.uint16)
    return lo, reg


def _initial_regions(default: str, declared) -> tuple[dict, set | None]:
    allowed = set(declared) if declared is not None else None
    if allowed is not None and default not in allowed:
        raise ConfigError(f"default region {default!r} is not among the declared regions",
                          file=None)
    regions: dict[str, int] = {default: 0}
    for r in sorted(allowed or ()):
        regions.setdefault(r, len(regions))
    return regions, allowed


def _table(v4, v6, regions: dict, path: str) -> RegionTable:
    names = list(regions)
    lo4, reg4 = _sweep(v4, 32, 0, path, names)
    start, length, region, line, low = (np.asarray(a, dtype=t) for a, t in zip(
        v6, (np.uint64, np.uint8, np.uint16, np.uint32, np.uint64)))
    short = length <= 64
    lo6, reg6 = _sweep((start[short], length[short], region[short], line[short]), 64, 0, path,
                       names)
    subs = _sub_tables(start[~short], low[~short], length[~short], region[~short],
                       line[~short], lo6, reg6, path, names)
    return RegionTable(regions=tuple(names), default=0, lo4=lo4.astype(np.uint32), reg4=reg4,
                       lo6=lo6, reg6=reg6, prefixes=len(v4[0]) + len(v6[0]), **subs)


def _sub_tables(hi, low, length, region, line, lo6, reg6, path, names) -> dict:
    """Prefixes longer than /64, per /64: swept over the low 64 bits, the /64's own region
    (from the main table) where none of them covers."""
    if not len(hi):
        return {}
    keys = np.unique(hi)
    dflt = reg6[np.searchsorted(lo6, keys, side="right") - 1]
    los, regs, off = [], [], [0]
    for key, d in zip(keys.tolist(), dflt.tolist()):
        m = hi == np.uint64(key)
        lo, reg = _sweep((low[m], length[m] - np.uint8(64), region[m], line[m]), 64, d, path,
                         names)
        los.append(lo)
        regs.append(reg)
        off.append(off[-1] + len(lo))
    return {"sub_key": keys, "sub_off": np.array(off, dtype=np.uint32),
            "sub_lo": np.concatenate(los), "sub_reg": np.concatenate(regs)}


def compile_map(lines, path: str, default: str, declared=None) -> RegionTable:
    """Parse (in Python) and sweep a map.  `declared`: the region names the map may use."""
    regions, allowed = _initial_regions(default, declared)
    v4, v6 = parse_map_lines(lines, path, regions, allowed)
    return _table(v4, v6, regions, path)


def compile_map_bytes(data: bytes, path: str, default: str, declared=None) -> RegionTable:
    """The same from the file's bytes, parsed in C (`_core.map_parse`); any line the C parser
    does not accept is re-read by the Python parser, whose message (file:line) is the error."""
    regions, allowed = _initial_regions(default, declared)
    out = _core.map_parse(data)
    if out[1] is None:
        bad = out[0]
        lines = data.split(b"\n")
        try:
            text = lines[bad - 1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text: {exc.reason}", file=f"{path}:{bad}") from None
        probe = dict(regions)
        parse_map_lines([text], path, probe, allowed, bad)   # raises with the line's message...
        # ...or the line is fine for Python (exotic blanks): parse the whole file there
        return compile_map(data.decode("utf-8").splitlines(), path, default, declared)
    (s4, l4, g4, n4), (s6, l6, g6, n6, o6), names, first = out
    remap = np.empty(len(names), dtype=np.uint16)
    for i, raw in enumerate(names):
        name = raw.decode("ascii")
        rid = regions.get(name)
        if rid is None:
            if allowed is not None:
                raise ConfigError(f"unknown region {name!r} (the map declares "
                                  f"{', '.join(sorted(allowed))})", file=f"{path}:{first[i]}")
            if len(regions) >= MAX_REGIONS:
                raise ConfigError(f"more than {MAX_REGIONS} regions", file=f"{path}:{first[i]}")
            rid = regions[name] = len(regions)
        remap[i] = rid

    def fam(s, ln, g, n):
        return (np.frombuffer(s, dtype=np.uint64), np.frombuffer(ln, dtype=np.uint8),
                remap[np.frombuffer(g, dtype=np.uint16)], np.frombuffer(n, dtype=np.uint32))

    return _table(fam(s4, l4, g4, n4), fam(s6, l6, g6, n6) + (np.frombuffer(o6, np.uint64),),
                  regions, path)


def load_map(path: str, default: str, declared=None) -> RegionTable:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read map file: {exc.strerror}", file=path) from None
    try:
        return compile_map_bytes(data, path, default, declared)
    except ConfigError as exc:
        if exc.file is None:
            raise ConfigError(exc.message, file=path) from None
        raise
