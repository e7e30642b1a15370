"""`[[map]]`, `[[target]]` and `[[mapped]]` of the TOML configuration (docs/mapping.md).

    [[map]]
    name = "world"
    file = "maps/world.map"      # "PREFIX REGION" lines (pop53.mapping.mapfile)
    default = "us"               # the region of addresses no prefix covers
    key = "ecs_then_source"      # or "source_only", "ecs_only"
    ecs_trust = ["192.0.2.0/24"] # resolvers whose ECS is used (absent: every one)
    ecs_max_v4 = 24              # longest ECS source used (RFC 7871 §11.1); IPv6: ecs_max_v6 = 56
    regions = ["eu", "us"]       # optional: the regions the file may name

    [[target]]
    name = "eu1"
    addresses = ["192.0.2.10", "2001:db8::10"]
    host = "a1.w10.cdn.example."  # CNAME and NS resources
    up = true                      # the state before any `pop53 ctl target` (default up)

    [[mapped]]
    name = "www.cdn.example."
    map = "world"
    ttl = 20
    regions = { eu = ["eu1"], us = ["us1"] }
    type = "A"        # "A", "AAAA", absent: both; "CNAME"; "NS" (a mapped referral)
    fallback = ["us"] # regions tried, in order, when a region has no target up
    select = 0        # how many targets an answer holds (0: every one up)
    all_down = "configured"   # every target down: "configured" set, "servfail" or "nodata"
    selection = "ordered"     # or "sticky" / "weighted": a stable per-client-block choice of
                              # `select` (default 1) targets, weighted by [[target]] weight
    sticky_v4 = 24            # the client blocks a sticky choice is stable on (and the
    sticky_v6 = 48            # shortest ECS scope such an answer claims)

Every error names the file and the key path.  Map files are read by pop53.mapping.service.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os

import dns.name

from pop53.errors import ConfigError

KEY_MODES = ("ecs_then_source", "source_only", "ecs_only")
TYPES = ("A", "AAAA", "CNAME", "NS")
ALL_DOWN = ("configured", "servfail", "nodata")
SELECTIONS = ("ordered", "sticky", "weighted")
MAP_KEYS = {"name", "file", "default", "key", "ecs_trust", "ecs_max_v4", "ecs_max_v6", "regions"}
TARGET_KEYS = {"name", "addresses", "host", "up", "weight"}
MAPPED_KEYS = {"name", "map", "ttl", "regions", "type", "fallback", "select", "all_down",
               "selection", "sticky_v4", "sticky_v6"}


@dataclasses.dataclass(frozen=True)
class MapConfig:
    name: str
    file: str
    default: str
    key: str = "ecs_then_source"
    ecs_trust: tuple = ()
    ecs_max_v4: int = 24
    ecs_max_v6: int = 56
    regions: tuple | None = None


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    name: str
    addresses: tuple = ()
    host: str | None = None       # absolute, lowercased text form
    up: bool = True
    weight: int = 1               # share of sticky/weighted choices (relative)


@dataclasses.dataclass(frozen=True)
class MappedConfig:
    name: str                     # absolute, lowercased text form
    map: str
    ttl: int = 20
    regions: tuple = ()           # ((region, (target, ...)), ...) in configured order
    type: str | None = None       # None: A and AAAA
    fallback: tuple = ()
    select: int = 0
    all_down: str = "configured"
    selection: str = "ordered"
    sticky_v4: int = 24
    sticky_v6: int = 48

    @property
    def region_targets(self) -> dict:
        return dict(self.regions)


@dataclasses.dataclass
class MappingConfig:
    maps: dict                    # name -> MapConfig
    targets: dict                 # name -> TargetConfig
    mapped: list                  # [MappedConfig]
    source: str | None = None


class _Ctx:
    def __init__(self, file):
        self.file = file

    def fail(self, msg, key):
        raise ConfigError(msg, file=self.file, key=key)

    def get(self, t: dict, name: str, kind, default, key: str, required=False):
        if name not in t:
            if required:
                self.fail("missing", f"{key}.{name}")
            return default
        v = t[name]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(f"expected {want}, got {type(v).__name__} {v!r}", f"{key}.{name}")
        return v

    def table_list(self, doc: dict, name: str, allowed: set) -> list:
        raw = doc.get(name, [])
        if not isinstance(raw, list):
            self.fail(f"use [[{name}]] tables", name)
        for i, t in enumerate(raw):
            if not isinstance(t, dict):
                self.fail("must be a table", f"{name}[{i}]")
            unknown = set(t) - allowed
            if unknown:
                self.fail(f"unknown key(s): {', '.join(sorted(unknown))}", f"{name}[{i}]")
        return raw

    def dname(self, text, key) -> str:
        if not isinstance(text, str):
            self.fail("expected a domain name", key)
        try:
            n = dns.name.from_text(text)
        except Exception as exc:  # dnspython raises several types for bad names
            self.fail(f"bad domain name {text!r}: {exc}", key)
        if len(n.labels) > 63:
            self.fail("more than 62 labels", key)
        return n.to_text().lower()

    def str_list(self, t, name, key, default=()):
        v = t.get(name, list(default))
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.fail("expected a list of strings", f"{key}.{name}")
        return tuple(v)


def _map(c: _Ctx, t: dict, key: str, base_dir) -> MapConfig:
    name = c.get(t, "name", str, None, key, required=True)
    file = c.get(t, "file", str, None, key, required=True)
    if base_dir and not os.path.isabs(file):
        file = os.path.join(base_dir, file)
    mode = c.get(t, "key", str, "ecs_then_source", key)
    if mode not in KEY_MODES:
        c.fail(f"one of {', '.join(KEY_MODES)}, got {mode!r}", f"{key}.key")
    trust = c.str_list(t, "ecs_trust", key)
    if len(trust) > 32:
        c.fail("at most 32 prefixes", f"{key}.ecs_trust")
    for i, p in enumerate(trust):
        try:
            ipaddress.ip_network(p, strict=True)
        except ValueError as exc:
            c.fail(f"not a prefix: {exc}", f"{key}.ecs_trust[{i}]")
    m4 = c.get(t, "ecs_max_v4", int, 24, key)
    m6 = c.get(t, "ecs_max_v6", int, 56, key)
    if not 0 <= m4 <= 32:
        c.fail("must be within 0..32", f"{key}.ecs_max_v4")
    if not 0 <= m6 <= 128:
        c.fail("must be within 0..128", f"{key}.ecs_max_v6")
    regions = c.str_list(t, "regions", key) if "regions" in t else None
    default = c.get(t, "default", str, None, key, required=True)
    if regions is not None and default not in regions:
        c.fail(f"{default!r} is not among the map's regions", f"{key}.default")
    return MapConfig(name, file, default, mode, trust, m4, m6, regions)


def _target(c: _Ctx, t: dict, key: str) -> TargetConfig:
    name = c.get(t, "name", str, None, key, required=True)
    addrs = c.str_list(t, "addresses", key)
    out = []
    for i, a in enumerate(addrs):
        try:
            out.append(ipaddress.ip_address(a).compressed)
        except ValueError:
            c.fail(f"not an IP address: {a!r}", f"{key}.addresses[{i}]")
    host = c.dname(t["host"], f"{key}.host") if "host" in t else None
    if not out and host is None:
        c.fail("a target needs addresses or a host", key)
    weight = c.get(t, "weight", int, 1, key)
    if not 1 <= weight <= 65535:
        c.fail("must be within 1..65535", f"{key}.weight")
    return TargetConfig(name, tuple(out), host, c.get(t, "up", bool, True, key), weight)


def _mapped(c: _Ctx, t: dict, key: str, maps: dict, targets: dict, zones) -> MappedConfig:
    name = c.dname(t.get("name"), f"{key}.name")
    if zones is not None:
        n = dns.name.from_text(name)
        inside = [z for z in zones if n.is_subdomain(dns.name.from_text(z))]
        if not inside:
            c.fail(f"{name} is in no served zone", f"{key}.name")
    mname = c.get(t, "map", str, None, key, required=True)
    if mname not in maps:
        c.fail(f"no [[map]] named {mname!r}", f"{key}.map")
    ttl = c.get(t, "ttl", int, 20, key)
    if not 0 <= ttl <= 0x7FFFFFFF:
        c.fail("must be within 0..2147483647 (RFC 2181 §8)", f"{key}.ttl")
    rtype = c.get(t, "type", str, None, key)
    if rtype is not None:
        rtype = rtype.upper()
        if rtype not in TYPES:
            c.fail(f"one of {', '.join(TYPES)}, got {t['type']!r}", f"{key}.type")
    selection = c.get(t, "selection", str, "ordered", key)
    if selection not in SELECTIONS:
        c.fail(f"one of {', '.join(SELECTIONS)}, got {selection!r}", f"{key}.selection")
    sticky = []
    for fam, width, dflt in (("v4", 32, 24), ("v6", 64, 48)):
        n = c.get(t, f"sticky_{fam}", int, dflt, key)
        if not 0 <= n <= width:
            c.fail(f"must be within 0..{width}", f"{key}.sticky_{fam}")
        sticky.append(n)
    regions = c.get(t, "regions", dict, None, key, required=True)
    declared = maps[mname].regions
    out = []
    for region, names in regions.items():
        rkey = f"{key}.regions.{region}"
        if declared is not None and region not in declared:
            c.fail(f"unknown region {region!r} (map {mname!r} declares {', '.join(declared)})", rkey)
        if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
            c.fail("expected a non-empty list of target names", rkey)
        for i, tn in enumerate(names):
            tg = targets.get(tn)
            if tg is None:
                c.fail(f"no [[target]] named {tn!r}", f"{rkey}[{i}]")
            if rtype in ("CNAME", "NS") and tg.host is None:
                c.fail(f"target {tn!r} has no host (a {rtype} resource needs one)", f"{rkey}[{i}]")
            if rtype == "NS" and not tg.addresses:
                c.fail(f"target {tn!r} has no addresses for glue", f"{rkey}[{i}]")
        out.append((region, tuple(names)))
    fallback = c.str_list(t, "fallback", key)
    for i, f in enumerate(fallback):
        if f not in regions:
            c.fail(f"fallback region {f!r} has no targets here", f"{key}.fallback[{i}]")
    select = c.get(t, "select", int, 0 if selection == "ordered" else 1, key)
    if not 0 <= select <= 64:
        c.fail("must be within 0..64 (0: every target up)", f"{key}.select")
    if selection != "ordered" and select == 0:
        c.fail(f"selection = {selection!r} chooses `select` targets: give select >= 1",
               f"{key}.select")
    all_down = c.get(t, "all_down", str, "configured", key)
    if all_down not in ALL_DOWN:
        c.fail(f"one of {', '.join(ALL_DOWN)}, got {all_down!r}", f"{key}.all_down")
    if rtype is None or rtype in ("A", "AAAA"):
        fams = {4: "A", 6: "AAAA"}
        for fam, tname in fams.items():
            if rtype in (None, tname) and rtype is not None and not any(
                    ipaddress.ip_address(a).version == fam
                    for _, ns in out for tn in ns for a in targets[tn].addresses):
                c.fail(f"no target has an IPv{fam} address for type {tname}", f"{key}.regions")
    return MappedConfig(name, mname, ttl, tuple(out), rtype, fallback, select, all_down,
                        selection, *sticky)


def parse(doc: dict, file: str | None = None, base_dir: str | None = None,
          zones=None) -> MappingConfig | None:
    """The mapping tables of a configuration document, checked; None when there are none.
    zones: the served zone names (mapped names must lie inside one)."""
    if not any(k in doc for k in ("map", "target", "mapped")):
        return None
    c = _Ctx(file)
    maps: dict = {}
    for i, t in enumerate(c.table_list(doc, "map", MAP_KEYS)):
        m = _map(c, t, f"map[{i}]", base_dir)
        if m.name in maps:
            c.fail(f"map {m.name!r} is configured twice", f"map[{i}].name")
        maps[m.name] = m
    targets: dict = {}
    for i, t in enumerate(c.table_list(doc, "target", TARGET_KEYS)):
        tg = _target(c, t, f"target[{i}]")
        if tg.name in targets:
            c.fail(f"target {tg.name!r} is configured twice", f"target[{i}].name")
        targets[tg.name] = tg
    mapped = []
    seen = set()
    for i, t in enumerate(c.table_list(doc, "mapped", MAPPED_KEYS)):
        r = _mapped(c, t, f"mapped[{i}]", maps, targets, zones)
        if r.name in seen:
            c.fail(f"{r.name} is mapped twice", f"mapped[{i}].name")
        seen.add(r.name)
        if r.type == "NS" and zones is not None and r.name in {z.lower() for z in zones}:
            c.fail("an NS resource cannot be a zone apex", f"mapped[{i}].name")
        mapped.append(r)
    cuts = [dns.name.from_text(r.name) for r in mapped if r.type == "NS"]
    for i, r in enumerate(mapped):
        n = dns.name.from_text(r.name)
        below = [c for c in cuts if n != c and n.is_subdomain(c)]
        if below:
            c.fail(f"{r.name} is below the mapped delegation {below[0]} (occluded)",
                   f"mapped[{i}].name")
    return MappingConfig(maps, targets, mapped, source=file)


def check_zones(mcfg: MappingConfig, zones, online=()) -> None:
    """Mapped names against the zones' static data (ZoneData list): CNAME exclusivity (RFC 2181
    §10.1) holds with mapped data too, a mapped type is not also static, and no mapped name
    lies at or below a static delegation.  In a zone signed online (`online`: origins with
    dnssec_keys) the mapped types are expected at the name: they put it in the NSEC/NSEC3 chain
    (docs/dnssec-online.md) and are never served."""
    import dns.rdataclass
    import dns.rdatatype as T

    for i, res in enumerate(mcfg.mapped):
        key = f"mapped[{i}].name"
        name = dns.name.from_text(res.name)
        zd = max((z for z in zones if name.is_subdomain(z.origin)),
                 key=lambda z: len(z.origin.labels), default=None)
        if zd is None:
            continue
        if zd.origin not in online and zd.zone.get_rdataset(zd.origin, T.DNSKEY) is not None \
                and res.type != "NS":
            # an unsigned answer in a signed zone is bogus to every validator (RFC 4035 §5)
            raise ConfigError(f"{res.name} is mapped in the signed zone {zd.origin}: give the "
                              f"zone's signing keys (dnssec_keys) so its answers are signed",
                              file=mcfg.source, key=key)
        n = name
        while n != zd.origin:
            node = zd.zone.get_node(n)
            if node is not None and node.get_rdataset(dns.rdataclass.IN, T.NS) is not None and \
                    not (res.type == "NS" and n == name):
                raise ConfigError(f"{res.name} is at or below the static delegation {n}",
                                  file=mcfg.source, key=key)
            n = n.parent()
        node = zd.zone.get_node(name)
        if node is None:
            continue
        _no_clash(mcfg, i, {rds.rdtype for rds in node}, zd.origin in online,
                  f"{zd.source}:{zd.where(name) or '?'}")


def _no_clash(mcfg: MappingConfig, i: int, types: set, online: bool, where: str) -> None:
    """The static types at mapped resource i's name against what it maps: CNAME exclusivity
    (RFC 2181 §10.1) and no type both mapped and static (in a zone signed online the mapped
    types are expected there: they only put the name in the chain)."""
    import dns.rdatatype as T

    res = mcfg.mapped[i]
    mapped = {None: {T.A, T.AAAA}, "A": {T.A}, "AAAA": {T.AAAA}, "CNAME": {T.CNAME},
              "NS": {T.NS}}[res.type]
    clash = types & mapped
    if res.type == "CNAME":
        clash = types - {T.RRSIG, T.NSEC, T.NSEC3}
    elif T.CNAME in types:
        clash = {T.CNAME}
    if online:
        clash -= mapped
    if clash:
        what = ", ".join(sorted(T.to_text(t) for t in clash))
        raise ConfigError(f"{res.name} is mapped ({res.type or 'A/AAAA'}) and has static "
                          f"{what} in {where}", file=mcfg.source, key=f"mapped[{i}].name")


def check_image(mcfg: MappingConfig, image, online=()) -> None:
    """check_zones for a server, which holds compiled images rather than parsed zones: every
    static RRset at a mapped name is read back from the image (ANY over TCP gives them all,
    RFC 8482 §4.1), and a referral there means a static delegation at or above it.  Raises
    ConfigError naming the resource's config key; `serve` and every zone reload call it."""
    import dns.flags
    import dns.message
    import dns.rdatatype as T

    from pop53 import _core
    responder = _core.Responder()

    def ask(name):
        q = dns.message.make_query(name, T.ANY)
        _, wire = _core.answer(image.view, q.to_wire(), responder, True, b"\x7f\0\0\1")
        return dns.message.from_wire(wire) if wire else None

    def rdatas(r, name):
        return sorted((rr.rdtype, sorted(x.to_text() for x in rr)) for rr in r.answer
                      if rr.name == name)

    for i, res in enumerate(mcfg.mapped):
        name = dns.name.from_text(res.name)
        r = ask(name)
        if r is None:
            continue
        if r.answer and name.labels[0] != b"*":
            # a wildcard's synthesis is not data at the name: a made-up sibling gets the same
            sib = dns.name.Name((b"pop53-check-no-such-name",) + name.labels[1:])
            s = ask(sib)
            if s is not None and rdatas(s, sib) == rdatas(r, name):
                continue
        cut = next((rr.name for rr in r.authority if rr.rdtype == T.NS), None)
        if cut is not None and not r.flags & dns.flags.AA:
            if not (res.type == "NS" and cut == name):
                raise ConfigError(f"{res.name} is at or below the static delegation {cut}",
                                  file=mcfg.source, key=f"mapped[{i}].name")
            types = {T.NS}
        else:
            types = {rr.rdtype for rr in r.answer if rr.name == name}
        _no_clash(mcfg, i, types, any(name.is_subdomain(o) for o in online),
                  "the served zone's data")


