"""The cloud plan (`clouds.toml`): which clouds exist, which nameserver host and prefixes name
each, the enterprises and their zones, the shared zones and what each PoP advertises."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import dns.name

from pop53.config import read_toml
from pop53.errors import ConfigError

KNOWN = {"set_size", "shared_size", "max_per_pop", "cloud", "enterprise", "shared", "pop"}


@dataclass(frozen=True)
class Cloud:
    name: str
    ns: dns.name.Name                     # the nameserver host a delegation to this cloud names
    prefixes: tuple[ipaddress._BaseNetwork, ...]


@dataclass(frozen=True)
class Enterprise:
    name: str
    zones: tuple[dns.name.Name, ...]


@dataclass(frozen=True)
class Pop:
    name: str
    clouds: tuple[str, ...] = ()          # cloud names it advertises, as written
    prefixes: tuple[str, ...] = ()        # or the service prefixes its machines announce
    bird: tuple[str, ...] = ()            # or the BIRD configs of its machines (pop53-generated)


@dataclass
class Plan:
    clouds: list[Cloud]
    set_size: int = 6
    shared_size: int = 13
    max_per_pop: int = 2
    enterprises: list[Enterprise] = field(default_factory=list)
    shared: list[dns.name.Name] = field(default_factory=list)
    pops: list[Pop] = field(default_factory=list)
    file: str | None = None

    def index(self, name: str) -> int:
        for i, c in enumerate(self.clouds):
            if c.name == name:
                return i
        raise KeyError(name)

    def ns_of(self, clouds) -> set[dns.name.Name]:
        return {self.clouds[i].ns for i in clouds}

    def cloud_of_ns(self) -> dict[dns.name.Name, int]:
        return {c.ns: i for i, c in enumerate(self.clouds)}


def _table(doc: dict, key: str, file: str) -> list[dict]:
    items = doc.get(key, [])
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise ConfigError(f"[[{key}]] must be an array of tables", file=file, key=key)
    return items


def _keys(t: dict, allowed: set[str], where: str, file: str) -> None:
    extra = sorted(set(t) - allowed)
    if extra:
        raise ConfigError(f"unknown key {extra[0]!r} (expected one of {sorted(allowed)})",
                          file=file, key=f"{where}.{extra[0]}")


def _str_list(t: dict, key: str, where: str, file: str) -> tuple[str, ...]:
    v = t.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError("must be a list of strings", file=file, key=f"{where}.{key}")
    return tuple(v)


def _name(text, key: str, file: str) -> dns.name.Name:
    if not isinstance(text, str) or not text.endswith("."):
        raise ConfigError(f"{text!r} is not an absolute domain name (end it with a dot)",
                          file=file, key=key)
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{text!r}: {exc}", file=file, key=key) from None


def _int(doc: dict, key: str, default: int, file: str) -> int:
    v = doc.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError("must be a positive integer", file=file, key=key)
    return v


def parse_plan(doc: dict, file: str = "<plan>") -> Plan:
    """A validated Plan from a parsed TOML document.  Raises ConfigError naming the key."""
    extra = sorted(set(doc) - KNOWN)
    if extra:
        raise ConfigError(f"unknown table or key {extra[0]!r}", file=file, key=extra[0])
    clouds: list[Cloud] = []
    seen_ns: dict = {}
    owner: dict = {}
    for i, t in enumerate(_table(doc, "cloud", file)):
        where = f"cloud[{i}]"
        _keys(t, {"name", "ns", "prefixes"}, where, file)
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("missing name", file=file, key=f"{where}.name")
        if any(c.name == name for c in clouds):
            raise ConfigError(f"cloud {name!r} defined twice", file=file, key=f"{where}.name")
        ns = _name(t.get("ns"), f"{where}.ns", file)
        if ns in seen_ns:
            raise ConfigError(f"nameserver {ns} already names cloud {seen_ns[ns]!r}",
                              file=file, key=f"{where}.ns")
        seen_ns[ns] = name
        nets = []
        for p in _str_list(t, "prefixes", where, file):
            try:
                net = ipaddress.ip_network(p)
            except ValueError:
                raise ConfigError(f"invalid prefix {p!r}", file=file, key=f"{where}.prefixes") from None
            for other, oname in owner.items():
                if net.version == other.version and net.overlaps(other):
                    raise ConfigError(f"prefix {p} overlaps cloud {oname!r}'s {other}",
                                      file=file, key=f"{where}.prefixes")
            owner[net] = name
            nets.append(net)
        clouds.append(Cloud(name, ns, tuple(nets)))
    plan = Plan(clouds, _int(doc, "set_size", 6, file), _int(doc, "shared_size", 13, file),
                _int(doc, "max_per_pop", 2, file), file=file)
    if not clouds:
        raise ConfigError("no [[cloud]] defined", file=file, key="cloud")
    for key, size in (("set_size", plan.set_size), ("shared_size", plan.shared_size)):
        if size > len(clouds):
            raise ConfigError(f"{size} is more than the {len(clouds)} clouds defined",
                              file=file, key=key)
    zone_owner: dict = {}
    for i, t in enumerate(_table(doc, "enterprise", file)):
        where = f"enterprise[{i}]"
        _keys(t, {"name", "zones"}, where, file)
        name = t.get("name")
        if not isinstance(name, str) or not name or "\t" in name or "\n" in name:
            raise ConfigError("missing or invalid name", file=file, key=f"{where}.name")
        if any(e.name == name for e in plan.enterprises):
            raise ConfigError(f"enterprise {name!r} defined twice", file=file, key=f"{where}.name")
        zones = tuple(_name(z, f"{where}.zones", file) for z in _str_list(t, "zones", where, file))
        for z in zones:
            if z in zone_owner:
                raise ConfigError(f"zone {z} already belongs to {zone_owner[z]!r}",
                                  file=file, key=f"{where}.zones")
            zone_owner[z] = name
        plan.enterprises.append(Enterprise(name, zones))
    for i, t in enumerate(_table(doc, "shared", file)):
        _keys(t, {"zone"}, f"shared[{i}]", file)
        z = _name(t.get("zone"), f"shared[{i}].zone", file)
        if z in zone_owner:
            raise ConfigError(f"zone {z} is shared and belongs to {zone_owner[z]!r}",
                              file=file, key=f"shared[{i}].zone")
        plan.shared.append(z)
    for i, t in enumerate(_table(doc, "pop", file)):
        where = f"pop[{i}]"
        _keys(t, {"name", "clouds", "prefixes", "bird"}, where, file)
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("missing name", file=file, key=f"{where}.name")
        pop = Pop(name, _str_list(t, "clouds", where, file), _str_list(t, "prefixes", where, file),
                  _str_list(t, "bird", where, file))
        for c in pop.clouds:
            if not any(x.name == c for x in clouds):
                raise ConfigError(f"unknown cloud {c!r}", file=file, key=f"{where}.clouds")
        plan.pops.append(pop)
    return plan


def load_plan(path: str | Path) -> Plan:
    path = str(path)
    doc = read_toml(path)
    plan = parse_plan(doc, path)
    base = Path(path).parent
    plan.pops = [Pop(p.name, p.clouds, p.prefixes,
                     tuple(str(base / b) for b in p.bird)) for p in plan.pops]
    return plan
