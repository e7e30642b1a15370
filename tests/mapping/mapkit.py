"""Helpers for the mapping tests: build a mapping snapshot in-process from map lines and
[[target]]/[[mapped]] tables, ask pop53 (the real C answer path) with ECS, and a brute-force
oracle (longest-prefix match by linear scan; minimal uniform block by checking every
breakpoint) that shares no code with pop53's sweep, merge or scope computation."""
from __future__ import annotations

import ipaddress
import os
import tempfile

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype

import pop53
from pop53 import _core
from pop53.mapping.config import parse
from pop53.mapping.mapfile import compile_map
from pop53.mapping.snapshot import SnapshotBuilder

ZONE = """$ORIGIN cdn.example.
$TTL 3600
@    SOA ns1 host 1 7200 3600 1209600 300
@    NS  ns1
ns1  A   192.0.2.53
www  TXT "static beside mapped A/AAAA"
sta  A   192.0.2.99
"""
_image = None


def image():
    global _image
    if _image is None:
        fd, path = tempfile.mkstemp(suffix=".zone")
        with os.fdopen(fd, "w") as f:
            f.write(ZONE)
        try:
            _image = pop53.compile_zones([path])
        finally:
            os.unlink(path)
    return _image


class Mapping:
    """One map ("m") and some mapped resources over it, compiled; `live` may be changed and
    `rebuild()` called, as a liveness change does in a server."""

    def __init__(self, lines, default, targets: dict, mapped: list, live=None, weights=None,
                 **map_keys):
        doc = {"map": [{"name": "m", "file": "unused.map", "default": default, **map_keys}],
               "target": [{"name": n, "addresses": list(a[0]) if isinstance(a, tuple) else a,
                           **({"host": a[1]} if isinstance(a, tuple) else {}),
                           **({"weight": weights[n]} if weights and n in weights else {})}
                          for n, a in targets.items()],
               "mapped": [{"map": "m", **m} for m in mapped]}
        self.cfg = parse(doc, "test.toml", zones=["cdn.example."])
        self.table = compile_map(lines, "test.map", default, self.cfg.maps["m"].regions)
        self.builder = SnapshotBuilder(self.cfg, {"m": self.table})
        self.live = dict(live or {n: True for n in targets})
        self.rebuild()

    def rebuild(self):
        self.snap = self.builder.build(lambda t: self.live[t], image().view.seed)
        return self.snap

    def ask(self, name, qtype="A", ecs=None, client="192.0.2.1", tcp=False):
        """ecs: (address, source length) or None.  Returns the parsed reply."""
        opts = [dns.edns.ECSOption(ecs[0], ecs[1])] if ecs is not None else []
        q = dns.message.make_query(name, qtype, use_edns=0, options=opts)
        act, wire = _core.answer(image().view, q.to_wire(), _core.Responder(), tcp,
                                 (client, 5300), self.snap)
        assert wire is not None
        return dns.message.from_wire(wire)


def addresses(reply, qtype="A") -> tuple:
    t = dns.rdatatype.from_text(qtype)
    return tuple(sorted(r.address for rrs in reply.answer if rrs.rdtype == t for r in rrs))


def scope(reply):
    for o in reply.options:
        if o.otype == 8:
            return o.scopelen
    return None


def ecs_echo(reply):
    for o in reply.options:
        if o.otype == 8:
            return o
    return None


# -- the brute-force oracle -----------------------------------------------------------------
def prefixes_of(lines):
    out = []
    for line in lines:
        line = line.split("#")[0].split()
        if line:
            out.append((ipaddress.ip_network(line[0]), line[1]))
    return out


def region_of(x: int, version: int, prefixes, default) -> str:
    """Longest prefix match by linear scan; x is a full 32- or 128-bit address."""
    best, reg = -1, default
    addr = ipaddress.ip_address(x) if version == 4 else ipaddress.IPv6Address(x)
    for net, r in prefixes:
        if net.version == version and addr in net and net.prefixlen > best:
            best, reg = net.prefixlen, r
    return reg


def minimal_block(key: int, bits: int, f, breakpoints) -> int:
    """k*: the shortest L such that f is constant on the aligned /L block around key
    (key and breakpoints in a `bits`-wide space; f is piecewise constant between them)."""
    for L in range(bits + 1):
        lo = key & (((1 << L) - 1) << (bits - L)) if L else 0
        hi = lo | ((1 << (bits - L)) - 1)
        v = f(lo)
        if all(f(p) == v for p in breakpoints if lo <= p <= hi):
            return L
    raise AssertionError("unreachable: a /bits block is a single key")


def breakpoints(prefixes, version: int, bits: int) -> list:
    """Starts and ends+1 of every prefix, in a `bits`-wide key space (IPv6: the top `bits`
    bits of the address)."""
    shift = 0 if version == 4 else 128 - bits
    out = {0}
    for net, _ in prefixes:
        if net.version != version:
            continue
        s = int(net.network_address) >> shift
        e = int(net.broadcast_address) >> shift
        out.add(s)
        if e + 1 < (1 << bits):
            out.add(e + 1)
    return sorted(out)
