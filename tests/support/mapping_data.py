"""One description of a mapped service, written out for pop53 and for each mapping peer.

The description has the shape of pop53's issue-10 TOML (``[[map]]`` with a map file of
``PREFIX REGION`` lines, ``[[target]]``, ``[[mapped]]``), so the same data drives pop53 and the
reference servers:

- :func:`write_pop53` writes the pop53 config (TOML + zone file + map files);
- :func:`write_gdnsd`, :func:`knot_geo_conf`, :func:`pdns_geo_yaml` write the peers' data
  (used by ``tests/support/mapping_peers.py``);
- :class:`Oracle` answers by brute force what a correct server must return for a client: the
  region of the longest prefix covering the looked-up address (else the map's default), and the
  smallest ECS scope k* whose aligned block around that address maps to that one region
  (RFC 7871 §7.2.1: SCOPE PREFIX-LENGTH covers every address that gets the same answer).

Only the data plane shape is modelled: every target is up (liveness, fallback and the CNAME/NS
resource kinds are pop53-only and not comparable with the peers).  Each region gets targets of
its own, so "same region" and "same final answer" are the same thing.
"""
from __future__ import annotations

import bisect
import dataclasses
import ipaddress
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

#: gdnsd maps these IPv6 spaces onto IPv4 (v4compat, v4mapped, SIIT, WKP, Teredo, 6to4;
#: gdnsd-plugin-geoip(8) "IPv4 Compatible Addresses"), so it does not answer for them as IPv6.
#: Generated IPv6 data and queries stay out of them.
GDNSD_V4LIKE = tuple(ipaddress.ip_network(n) for n in (
    "::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "2001::/32", "2002::/16"))

#: Where random IPv6 data lives: far from every space above.
V6_SPACE = ipaddress.ip_network("2a00::/8")


@dataclass(frozen=True)
class Target:
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Mapped:
    name: str                               # absolute, inside the zone
    map: str
    ttl: int
    regions: dict[str, tuple[str, ...]]     # region -> target names


@dataclass
class MapSpec:
    name: str
    entries: list[tuple[Net, str]]          # (prefix, region), overlaps allowed
    default: str
    key: str = "ecs_then_source"

    def regions(self) -> list[str]:
        return sorted({r for _, r in self.entries} | {self.default})


@dataclass
class MappingSpec:
    origin: str
    maps: list[MapSpec]
    targets: list[Target]
    mapped: list[Mapped]
    soa_ttl: int = 3600
    #: The benchmark's baseline: every mapped name becomes a plain A/AAAA RRset holding the
    #: default region's answer, and no server is told about maps (same zone, same queries).
    static: bool = False

    def as_static(self) -> "MappingSpec":
        return dataclasses.replace(self, static=True)

    def map(self, name: str) -> MapSpec:
        return next(m for m in self.maps if m.name == name)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def answer(self, mapped: Mapped, region: str, family: int) -> frozenset[str]:
        """The addresses of ``region``'s targets of one family (4: A, 6: AAAA)."""
        out = set()
        for t in mapped.regions.get(region, ()):
            out.update(a for a in self.target(t).addresses
                       if ipaddress.ip_address(a).version == family)
        return frozenset(str(ipaddress.ip_address(a)) for a in out)

    def region_addresses(self, mapped: Mapped, region: str) -> tuple[list[str], list[str]]:
        v4 = sorted(self.answer(mapped, region, 4), key=ipaddress.ip_address)
        v6 = sorted(self.answer(mapped, region, 6), key=ipaddress.ip_address)
        return v4, v6

    def zone_text(self) -> str:
        text = (f"$ORIGIN {self.origin}\n$TTL {self.soa_ttl}\n"
                f"@ SOA ns1 hostmaster 1 7200 1800 259200 900\n@ NS ns1\n"
                f"ns1 A 192.0.2.53\n")
        if self.static:
            for mp in self.mapped:
                v4, v6 = self.region_addresses(mp, self.map(mp.map).default)
                text += "".join(f"{mp.name} {mp.ttl} A {a}\n" for a in v4)
                text += "".join(f"{mp.name} {mp.ttl} AAAA {a}\n" for a in v6)
        return text


# --------------------------------------------------------------------------------------------
# The oracle


class Oracle:
    """Brute-force answers for one map: longest-prefix match by a linear scan, and the disjoint
    ranges between every prefix start and end swept from it (an independent model of what a
    compiled map must hold)."""

    def __init__(self, m: MapSpec) -> None:
        self.map = m
        self.by_family = {4: [], 6: []}
        for net, region in m.entries:
            self.by_family[net.version].append((net, region))
        self._ranges = {f: self._sweep(f) for f in (4, 6)}

    def region(self, addr) -> str:
        addr = ipaddress.ip_address(addr)
        best, best_len = self.map.default, -1
        for net, region in self.by_family[addr.version]:
            if addr in net and net.prefixlen > best_len:
                best, best_len = region, net.prefixlen
        return best

    def _sweep(self, family: int):
        top = 2 ** (32 if family == 4 else 128)
        cuts = {0}
        for net, _ in self.by_family[family]:
            cuts.add(int(net.network_address))
            end = int(net.broadcast_address) + 1
            if end < top:
                cuts.add(end)
        cuts = sorted(cuts)
        cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        starts, regions = [], []
        for c in cuts:
            r = self.region(cls(c))
            if regions and regions[-1] == r:
                continue                      # merge runs with the same answer
            starts.append(c)
            regions.append(r)
        return starts, regions

    def scope(self, addr) -> int:
        """k*: the shortest prefix length whose aligned block around ``addr`` has one region."""
        addr = ipaddress.ip_address(addr)
        bits = addr.max_prefixlen
        starts, _ = self._ranges[addr.version]
        a = int(addr)
        i = bisect.bisect_right(starts, a) - 1
        lo = starts[i]
        hi = (starts[i + 1] - 1) if i + 1 < len(starts) else 2 ** bits - 1
        for length in range(bits + 1):
            size = 1 << (bits - length)
            b_lo = a & ~(size - 1)
            if b_lo >= lo and b_lo + size - 1 <= hi:
                return length
        return bits  # unreachable: a /max block is one address

    def expect(self, ecs: tuple[str, int] | None, source: str = "127.0.0.1"):
        """(region, scope) for a query from ``source`` carrying ``ecs`` = (address, SOURCE
        PREFIX-LENGTH) or None.  Scope None: no ECS in the query, none in the reply.  SOURCE 0
        (RFC 7871 §7.1.2): answer for the source address, scope 0."""
        if ecs is None:
            return self.region(source), None
        addr, length = ecs
        if length == 0:
            return self.region(source), 0
        a = lookup_address(addr, length)
        return self.region(a), self.scope(a)


def lookup_address(addr: str, length: int):
    """The ECS address masked to its SOURCE PREFIX-LENGTH (the first address of the prefix)."""
    a = ipaddress.ip_address(addr)
    return ipaddress.ip_network(f"{a}/{length}", strict=False).network_address


# --------------------------------------------------------------------------------------------
# Generators of maps


def random_prefix(rng: random.Random, family: int, lo: int, hi: int) -> Net:
    if family == 4:
        length = rng.randint(lo, hi)
        a = rng.getrandbits(32)
        return ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{length}", strict=False)
    length = rng.randint(max(lo, V6_SPACE.prefixlen), hi)
    a = int(V6_SPACE.network_address) | rng.getrandbits(128 - V6_SPACE.prefixlen)
    return ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{length}", strict=False)


def random_map(rng: random.Random, n: int, regions: list[str], default: str, *,
               v6_share: float = 0.3, name: str = "world", clustered: bool = True) -> MapSpec:
    """``n`` overlapping prefixes of random lengths; ``clustered`` puts most of them under a
    few /8s so they nest and overlap (a uniform spread over 2^32 hardly ever overlaps)."""
    roots4 = [rng.randrange(1, 224) for _ in range(3)]
    entries, seen = [], set()
    while len(entries) < n:
        fam = 6 if rng.random() < v6_share else 4
        if fam == 4:
            net = random_prefix(rng, 4, 8, 32)
            if clustered and rng.random() < 0.8:
                a = (rng.choice(roots4) << 24) | rng.getrandbits(24)
                net = ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{rng.randint(8, 32)}",
                                           strict=False)
        else:
            # pop53 maps IPv6 on its top 64 bits (docs/mapping.md): longer prefixes are
            # the hand-picked v6 map's business (gdnsd against the oracle)
            net = random_prefix(rng, 6, 8, 64)
        if net in seen:
            continue
        seen.add(net)
        entries.append((net, rng.choice(regions)))
    return MapSpec(name, entries, default)


def dense_map(n: int, regions: list[str], default: str, *, seed: int = 1,
              name: str = "world") -> MapSpec:
    """``n`` disjoint /24s (IPv4) spread over 1.0.0.0-223.255.255.255, region by a seeded
    choice: the benchmark's map (like a BGP-derived map: many /24s)."""
    rng = random.Random(seed)
    space = 223 * 65536                         # /24s from 1.0.0.0 up
    picks = rng.sample(range(65536, 65536 + space), n)
    entries = [(ipaddress.IPv4Network((p << 8, 24)), regions[rng.randrange(len(regions))])
               for p in picks]
    return MapSpec(name, entries, default)


def simple_spec(m: MapSpec, *, origin: str = "cdn.example.", label: str = "www",
                ttl: int = 20, extra_regions: Iterable[str] = ()) -> MappingSpec:
    """One mapped name answering from ``m``: every region gets one target with one IPv4 and one
    IPv6 address of its own (192.0.2.0/24 ... and 2001:db8::/32 documentation space, RFC 5737
    and RFC 3849), so different regions always give different answers."""
    regions = sorted(set(m.regions()) | set(extra_regions))
    targets = []
    for i, r in enumerate(regions):
        hi, lo = divmod(i + 1, 250)
        targets.append(Target(f"{r}1", (f"198.18.{hi}.{lo}", f"2001:db8::{i + 1:x}")))
    mapped = Mapped(f"{label}.{origin}", m.name, ttl, {r: (f"{r}1",) for r in regions})
    return MappingSpec(origin, [m], targets, [mapped])


# --------------------------------------------------------------------------------------------
# Writers


def map_file_text(m: MapSpec) -> str:
    lines = [f"# map {m.name}: PREFIX REGION, longest prefix wins (default {m.default})"]
    lines += [f"{net} {region}" for net, region in m.entries]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so a server watching it never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _q(s: str) -> str:
    return json.dumps(s)   # a TOML basic string for ASCII text


def pop53_toml(spec: MappingSpec, *, listen: str, zone_file: str, map_files: dict[str, str],
               workers: int = 1, identity: str = "pop53-mapping", extra: str = "") -> str:
    """pop53's config (issue 10 shapes).  ``extra`` is appended verbatim (e.g. a [server]-level
    ECS limit once pop53 has the key)."""
    L = ["[server]", f"listen = [{_q(listen)}]", f"workers = {workers}",
         f"identity = {_q(identity)}", "", "[[zone]]", f"name = {_q(spec.origin)}",
         f"file = {_q(zone_file)}", ""]
    for m in ([] if spec.static else spec.maps):
        L += ["[[map]]", f"name = {_q(m.name)}", f"file = {_q(map_files[m.name])}",
              f"default = {_q(m.default)}", f"key = {_q(m.key)}", ""]
    for t in ([] if spec.static else spec.targets):
        L += ["[[target]]", f"name = {_q(t.name)}",
              "addresses = [" + ", ".join(_q(a) for a in t.addresses) + "]", ""]
    for mp in ([] if spec.static else spec.mapped):
        regions = ", ".join(f"{_q(r)} = [" + ", ".join(_q(t) for t in ts) + "]"
                            for r, ts in sorted(mp.regions.items()))
        L += ["[[mapped]]", f"name = {_q(mp.name)}", f"map = {_q(mp.map)}", f"ttl = {mp.ttl}",
              f"regions = {{ {regions} }}", ""]
    return "\n".join(L) + extra


def write_pop53(spec: MappingSpec, directory: Path, *, listen: str, **kw) -> Path:
    """Zone file, one map file per map and config.toml in ``directory``; returns the config."""
    directory.mkdir(parents=True, exist_ok=True)
    zone = directory / "zone"
    zone.write_text(spec.zone_text())
    files = {}
    for m in spec.maps:
        p = directory / f"{m.name}.map"
        write_atomic(p, map_file_text(m))
        files[m.name] = str(p)
    cfg = directory / "config.toml"
    cfg.write_text(pop53_toml(spec, listen=listen, zone_file=str(zone), map_files=files, **kw))
    return cfg


def _relative(name: str, origin: str) -> str:
    if name == origin:
        return "@"
    if not name.endswith("." + origin):
        raise ValueError(f"{name} is not inside {origin}")
    return name[:-len(origin) - 1]


def _defaults(m: MapSpec) -> list[tuple[Net, str]]:
    """/0 entries carrying the default region, for servers whose "no match" is not a region:
    gdnsd (otherwise its default is the whole datacenter list, a different dclist from
    [default], and it would not merge the two), Knot (no view, no answer) and PowerDNS."""
    have = {net for net, _ in m.entries}
    return [(n, m.default) for n in (ipaddress.ip_network("0.0.0.0/0"),
                                     ipaddress.ip_network("::/0")) if n not in have]


def gdnsd_nets_text(m: MapSpec) -> str:
    return "".join(f"{net} => {region}\n" for net, region in m.entries + _defaults(m))


def write_gdnsd(spec: MappingSpec, directory: Path, *, port: int, host: str = "127.0.0.1",
                threads: int = 1) -> dict[str, Path]:
    """gdnsd 3.x config directory: config, zones/<origin>, geoip/<map>.nets (a nets file that
    gdnsd watches and reloads by itself).  Returns {map name: nets file}."""
    (directory / "zones").mkdir(parents=True, exist_ok=True)
    (directory / "geoip").mkdir(exist_ok=True)
    nets = {}
    maps = []
    for m in spec.maps:
        p = directory / "geoip" / f"{m.name}.nets"
        write_atomic(p, gdnsd_nets_text(m))
        nets[m.name] = p
        dcs = [m.default] + [r for r in m.regions() if r != m.default]
        maps.append(f"      {m.name} => {{\n        datacenters => [ {', '.join(dcs)} ]\n"
                    f"        nets => {_q(str(p))}\n      }}\n")
    resources, records = [], []
    for i, mp in enumerate(spec.mapped):
        dcmap = []
        for region in spec.map(mp.map).regions():
            v4, v6 = spec.region_addresses(mp, region)
            parts = []
            if v4:
                parts.append("addrs_v4 => { " + ", ".join(
                    f"a{j} => {a}" for j, a in enumerate(v4)) + " }")
            if v6:
                parts.append("addrs_v6 => { " + ", ".join(
                    f"a{j} => {_q(a)}" for j, a in enumerate(v6)) + " }")
            dcmap.append(f"          {region} => {{ {', '.join(parts)} }}\n")
        resources.append(f"      r{i} => {{\n        map => {mp.map}\n        dcmap => {{\n"
                         + "".join(dcmap) + "        }\n      }\n")
        records.append(f"{_relative(mp.name, spec.origin)} {mp.ttl} DYNA geoip!r{i}\n")
    run = directory / "run"
    conf = (f"options => {{\n  listen => [ {_q(f'{host}:{port}')} ]\n"
            f"  udp_threads => {threads}\n  tcp_threads => 1\n"
            f"  run_dir => {_q(str(run))}\n  state_dir => {_q(str(directory / 'state'))}\n}}\n")
    if spec.static:
        records = []
    else:
        conf += ("plugins => {\n  geoip => {\n    maps => {\n" + "".join(maps) + "    }\n"
                 "    resources => {\n" + "".join(resources) + "    }\n  }\n}\n")
    (directory / "config").write_text(conf)
    (directory / "zones" / spec.origin.rstrip(".")).write_text(
        spec.zone_text() + "ns2 A 192.0.2.54\n@ NS ns2\n" + "".join(records))
    return nets


def knot_geo_conf(spec: MappingSpec) -> str:
    """mod-geoip's response file in ``mode: subnet`` (one view per prefix, ``net:`` key)."""
    L = []
    for mp in spec.mapped:
        m = spec.map(mp.map)
        L.append(f"{mp.name}:")
        for net, region in m.entries + _defaults(m):
            v4, v6 = spec.region_addresses(mp, region)
            L.append(f"  - net: {net}")
            L += [f"    A: {a}" for a in v4]
            L += [f"    AAAA: {a}" for a in v6]
    return "\n".join(L) + "\n"


def pdns_geo_yaml(spec: MappingSpec) -> str:
    """The PowerDNS geoip backend's zones file: one record set per (mapped name, region) under
    ``<region>.<i>.geo.<origin>``, and a service whose netmask keys pick them (no GeoIP database:
    the ``default`` key and netmask keys need none)."""
    o = spec.origin.rstrip(".")
    if spec.static:
        return _pdns_static_yaml(spec, o)
    L = ["domains:", f"- domain: {o}", f"  ttl: {spec.mapped[0].ttl if spec.mapped else 60}",
         "  records:", f"    {o}:",
         f"      - soa: ns1.{o} hostmaster.{o} 1 7200 1800 259200 900",
         f"      - ns: ns1.{o}", f"    ns1.{o}:", "      - a: 192.0.2.53"]
    services = []
    for i, mp in enumerate(spec.mapped):
        m = spec.map(mp.map)
        for region in m.regions():
            v4, v6 = spec.region_addresses(mp, region)
            L.append(f"    {region}.{i}.geo.{o}:")
            L += [f"      - a:\n          content: {a}\n          ttl: {mp.ttl}" for a in v4]
            L += [f"      - aaaa:\n          content: {a}\n          ttl: {mp.ttl}" for a in v6]
        services.append(f"    {mp.name.rstrip('.')}:")
        services.append(f"      default: {m.default}.{i}.geo.{o}")
        services += [f"      {_q(str(net))}: {region}.{i}.geo.{o}" for net, region in m.entries]
    return "\n".join(L + ["  services:"] + services) + "\n"


def pdns_lua_zone_text(spec: MappingSpec) -> str:
    """A zone for PowerDNS with LUA records (bind backend, ``enable-lua-records``): one
    ``view()`` per mapped name and type, entries longest prefix first (view() takes the first
    matching netmask), the default region last under 0.0.0.0/0 and ::/0."""
    text = spec.zone_text()
    if spec.static:
        return text
    for mp in spec.mapped:
        m = spec.map(mp.map)
        order = sorted(m.entries, key=lambda e: -e[0].prefixlen)
        for rtype, fam in (("A", 4), ("AAAA", 6)):
            pairs = []
            for net, region in order + [(ipaddress.ip_network("0.0.0.0/0"), m.default),
                                        (ipaddress.ip_network("::/0"), m.default)]:
                addrs = ",".join(f"'{a}'" for a in sorted(spec.answer(mp, region, fam)))
                pairs.append(f"{{{{'{net}'}}, {{{addrs}}}}}")
            text += f'{mp.name} {mp.ttl} IN LUA {rtype} "view({{{", ".join(pairs)}}})"\n'
    return text


def _pdns_static_yaml(spec: MappingSpec, o: str) -> str:
    L = ["domains:", f"- domain: {o}", "  ttl: 60", "  records:", f"    {o}:",
         f"      - soa: ns1.{o} hostmaster.{o} 1 7200 1800 259200 900",
         f"      - ns: ns1.{o}", f"    ns1.{o}:", "      - a: 192.0.2.53"]
    for mp in spec.mapped:
        v4, v6 = spec.region_addresses(mp, spec.map(mp.map).default)
        L.append(f"    {mp.name.rstrip('.')}:")
        L += [f"      - a:\n          content: {a}\n          ttl: {mp.ttl}" for a in v4]
        L += [f"      - aaaa:\n          content: {a}\n          ttl: {mp.ttl}" for a in v6]
    return "\n".join(L + ["  services: {}"]) + "\n"


@dataclass
class Query:
    """One test query: qtype A or AAAA, ECS (address, source length) or None."""
    qtype: str
    ecs: tuple[str, int] | None = None
    note: str = field(default="", compare=False)


# --------------------------------------------------------------------------------------------
# The differential corpus (tests/differential/test_mapping_vs_gdnsd.py, bench/mapping_scopes.py)


CORPUS_REGIONS = ["as", "eu", "us", "sa"]


def _map(name: str, default: str, pairs) -> MapSpec:
    return MapSpec(name, [(ipaddress.ip_network(p), r) for p, r in pairs], default)


def hand_maps() -> dict[str, MapSpec]:
    """Each names a failure the anchors show (issue 10); see docs/mapping-peers.md."""
    return {
        # Nested overlaps, each level flipping the region; a /32 inside.
        "nested": _map("world", "us", [
            ("10.0.0.0/8", "eu"), ("10.128.0.0/9", "as"), ("10.128.0.0/16", "eu"),
            ("10.128.0.0/24", "us"), ("10.128.0.7/32", "as"), ("10.200.0.0/13", "sa")]),
        # A mixed /16: most of it maps to eu, two /24s elsewhere; the rest of the world (and
        # 20.0.0.0/8, no entry at all beside mapped space) falls to the default.
        "mixed16": _map("world", "us", [
            ("20.1.0.0/16", "eu"), ("20.1.7.0/24", "as"), ("20.1.200.0/24", "us"),
            ("20.2.0.0/15", "sa"), ("21.0.0.0/8", "eu")]),
        # Unmatched region: the queried block has no entry but more specific entries map
        # elsewhere (Knot answers /0 here), and the default region also appears explicitly.
        "unmatched": _map("world", "eu", [
            ("30.0.0.0/24", "as"), ("30.0.64.0/18", "us"), ("30.0.128.0/25", "eu"),
            ("31.255.255.255/32", "sa")]),
        # IPv6: nested down to a /128, with IPv4 entries beside.
        "v6": _map("world", "us", [
            ("2a00:1::/32", "eu"), ("2a00:1:2::/48", "as"), ("2a00:1:2:3::/64", "eu"),
            ("2a00:1:2:3::1/128", "as"), ("2a00:ff00::/24", "sa"), ("40.0.0.0/8", "as")]),
    }


def random_maps() -> dict[str, MapSpec]:
    return {f"random{seed}": random_map(random.Random(seed), 40, CORPUS_REGIONS, "us")
            for seed in (1, 2, 3)}


def corpus_maps() -> dict[str, MapSpec]:
    """The differential corpus: the hand-picked maps and three seeded random ones."""
    return {**hand_maps(), **random_maps()}


def _points(m: MapSpec) -> list[ipaddress._BaseAddress]:
    """Addresses at every edge of every prefix: first, last, one before, one after, middle."""
    out = set()
    for net, _ in m.entries:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        top = 2 ** net.max_prefixlen - 1
        cls = type(net.network_address)
        for a in (lo, hi, lo - 1, hi + 1, (lo + hi) // 2):
            if 0 <= a <= top:
                out.add(cls(a))
    return sorted(out, key=lambda a: (a.version, int(a)))


def _usable(addr) -> bool:
    return addr.version == 4 or not any(addr in n for n in GDNSD_V4LIKE)


def corpus_queries(name: str, m: MapSpec) -> list[Query]:
    """ECS of every source length at every edge point of the hand-picked maps (a seeded sample
    of lengths for the random maps, to keep the run in seconds), the qtype alternating A/AAAA;
    plus queries without ECS."""
    rng = random.Random(name)
    qs = [Query("A"), Query("AAAA")]
    for i, a in enumerate(_points(m)):
        if not _usable(a):
            continue
        bits = a.max_prefixlen
        lengths = range(bits + 1)
        if name.startswith("random"):
            lengths = sorted(rng.sample(range(bits + 1), 12 if a.version == 4 else 24))
        for length in lengths:
            if a.version == 6 and 0 < length < 16:
                # A short IPv6 source looks up 2a00:: and friends, whose aligned blocks reach
                # gdnsd's v4-like spaces (2001::/32, 2002::/16); those are not IPv6 to gdnsd.
                continue
            qs.append(Query("A" if (i + length) % 2 else "AAAA", (str(a), length)))
    return qs
