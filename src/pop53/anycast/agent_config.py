"""The monitoring agent's TOML configuration (pop53.anycast.agent): probes, routes, etcd slots,
staleness; every error names the file and the key path."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.rcode
import dns.rdatatype

from pop53.anycast.probe import STALENESS_SOURCES
from pop53.config import read_toml
from pop53.errors import ConfigError, Pop53Error


class AgentError(Pop53Error):
    """The agent cannot run (bad state directory, cannot write its state...)."""


@dataclass
class Case:
    """A regression test: a query and the answer it must get."""

    qname: str
    qtype: str = "A"
    rcode: str = "NOERROR"
    expect: list[str] | None = None      # rdata texts of the answer RRset (order-free); None: any


@dataclass
class RoutesConfig:
    addresses: list[str]
    mode: str = "route"
    interface: str | None = None
    table: int = 53
    netns: str | None = None


@dataclass
class EtcdConfig:
    endpoints: list[str]
    prefix: str = "/pop53"
    slots: int = 1
    lease_ttl: int = 10
    timeout: float = 1.0


@dataclass
class StalenessConfig:
    source: str = "none"                 # see STALENESS_SOURCES
    max_age: float = 0.0                 # seconds; 0 = do not check
    files: dict[str, str] = field(default_factory=dict)   # file-mtime: zone -> path
    path: str | None = None              # xfr-status: the engine's state file
    # More sources (the transfer engine's status, the feed's feed-status.json, ...): each
    # with its own source/max_age/files/path; the machine is stale if any of them is.
    sources: list["StalenessConfig"] = field(default_factory=list)


@dataclass
class AgentConfig:
    name: str
    server: str = "127.0.0.1:53"
    zones: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    interval: float = 1.0
    timeout: float = 1.0
    slow_ms: float = 500.0
    fail_after: int = 3
    pass_after: int = 5
    udp: bool = True
    tcp: bool = True
    never_suspend: bool = False
    state_dir: str = "/run/pop53-agent"
    metrics: str | None = None           # "127.0.0.1:9154": Prometheus exposition
    log_format: str = "text"             # "text" | "json": the decision lines (pop53.logs)
    routes: RoutesConfig | None = None
    etcd: EtcdConfig | None = None
    staleness: StalenessConfig = field(default_factory=StalenessConfig)

    @property
    def drain_file(self) -> Path:
        return Path(self.state_dir) / "drain"

    @property
    def state_file(self) -> Path:
        return Path(self.state_dir) / "state.json"

    def server_addr(self) -> tuple[str, int]:
        return parse_hostport(self.server, 53, key="server")


def parse_hostport(text: str, default_port: int, *, key: str, file: str | None = None
                   ) -> tuple[str, int]:
    t = text.strip()
    try:
        if t.startswith("["):
            host, _, rest = t[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        elif t.count(":") == 1:
            host, p = t.split(":")
            port = int(p)
        else:
            host, port = t, default_port
        ipaddress.ip_address(host)
        if not 0 < port < 65536:
            raise ValueError("port out of range")
    except ValueError as exc:
        raise ConfigError(f"invalid address {text!r}: {exc}", file=file, key=key) from None
    return host, port


def _typed(d: dict, key: str, typ, default, *, file: str, path: str):
    v = d.get(key, default)
    if v is default:
        return v
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
        raise ConfigError(f"expected {typ.__name__}, got {type(v).__name__}", file=file,
                          key=f"{path}{key}")
    return v


def load_config(path: str | os.PathLike) -> AgentConfig:
    """Read and validate the agent's TOML configuration (errors name file and key)."""
    return config_from_dict(read_toml(path), file=str(path))


_TOP_KEYS = {"name", "server", "zones", "cases", "interval", "timeout", "slow_ms", "fail_after",
             "pass_after", "udp", "tcp", "never_suspend", "state_dir", "metrics", "log_format",
             "routes", "etcd", "staleness"}


def _only(table: dict, known, path: str, file: str) -> None:
    """Reject the keys of `table` (at key path `path`) that are not `known`."""
    extra = sorted(set(table) - set(known))
    if extra:
        raise ConfigError(f"unknown key(s) {extra}", file=file, key=path + extra[0])


def config_from_dict(raw: dict, *, file: str = "<config>") -> AgentConfig:
    _only(raw, _TOP_KEYS, "", file)
    g = lambda k, t, d, p="": _typed(raw, k, t, d, file=file, path=p)  # noqa: E731
    name = g("name", str, None)
    if not name:
        raise ConfigError("missing (the machine's name, reported in status and etcd)",
                          file=file, key="name")
    cfg = AgentConfig(name=name)
    cfg.server = g("server", str, cfg.server)
    parse_hostport(cfg.server, 53, key="server", file=file)
    zones = g("zones", list, [])
    for i, z in enumerate(zones):
        if not isinstance(z, str) or not z:
            raise ConfigError("zone names must be non-empty strings", file=file, key=f"zones[{i}]")
    cfg.zones = [z if z.endswith(".") else z + "." for z in zones]
    for i, c in enumerate(g("cases", list, [])):
        k = f"cases[{i}]."
        if not isinstance(c, dict):
            raise ConfigError("must be a table", file=file, key=f"cases[{i}]")
        _only(c, {"qname", "qtype", "rcode", "expect"}, k, file)
        qname = _typed(c, "qname", str, None, file=file, path=k)
        if not qname:
            raise ConfigError("missing", file=file, key=k + "qname")
        qtype = _typed(c, "qtype", str, "A", file=file, path=k).upper()
        try:
            dns.rdatatype.from_text(qtype)
        except dns.exception.DNSException:
            raise ConfigError(f"unknown type {qtype!r}", file=file, key=k + "qtype") from None
        rcode = _typed(c, "rcode", str, "NOERROR", file=file, path=k).upper()
        try:
            dns.rcode.from_text(rcode)
        except dns.exception.DNSException:
            raise ConfigError(f"unknown rcode {rcode!r}", file=file, key=k + "rcode") from None
        expect = _typed(c, "expect", list, None, file=file, path=k)
        cfg.cases.append(Case(qname if qname.endswith(".") else qname + ".", qtype, rcode,
                              [str(x) for x in expect] if expect is not None else None))
    if not cfg.zones and not cfg.cases:
        raise ConfigError("nothing to probe: configure zones and/or cases", file=file, key="zones")
    cfg.interval = g("interval", float, cfg.interval)
    cfg.timeout = g("timeout", float, cfg.timeout)
    cfg.slow_ms = g("slow_ms", float, cfg.slow_ms)
    cfg.fail_after = g("fail_after", int, cfg.fail_after)
    cfg.pass_after = g("pass_after", int, cfg.pass_after)
    for k in ("interval", "timeout", "slow_ms"):
        if getattr(cfg, k) <= 0:
            raise ConfigError("must be > 0", file=file, key=k)
    for k in ("fail_after", "pass_after"):
        if getattr(cfg, k) < 1:
            raise ConfigError("must be >= 1", file=file, key=k)
    cfg.udp = g("udp", bool, cfg.udp)
    cfg.tcp = g("tcp", bool, cfg.tcp)
    if not (cfg.udp or cfg.tcp):
        raise ConfigError("at least one of udp/tcp must be true", file=file, key="udp")
    cfg.never_suspend = g("never_suspend", bool, cfg.never_suspend)
    cfg.state_dir = g("state_dir", str, cfg.state_dir)
    cfg.metrics = g("metrics", str, None)
    cfg.log_format = g("log_format", str, cfg.log_format)
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"must be \"text\" or \"json\", not {cfg.log_format!r}", file=file,
                          key="log_format")
    if cfg.metrics:
        parse_hostport(cfg.metrics, 9154, key="metrics", file=file)
    r = g("routes", dict, None)
    if r is not None:
        _only(r, {"addresses", "mode", "interface", "table", "netns", "plan", "pop"}, "routes.", file)
        addrs = _typed(r, "addresses", list, [], file=file, path="routes.")
        for i, a in enumerate(addrs):
            try:
                ipaddress.ip_interface(a)
            except (ValueError, TypeError):
                raise ConfigError(f"invalid address {a!r}", file=file,
                                  key=f"routes.addresses[{i}]") from None
        if not addrs:
            raise ConfigError("missing", file=file, key="routes.addresses")
        mode = _typed(r, "mode", str, "route", file=file, path="routes.")
        if mode not in ("route", "address"):
            raise ConfigError(f"must be 'route' or 'address', not {mode!r}", file=file,
                              key="routes.mode")
        cfg.routes = RoutesConfig(addrs, mode, _typed(r, "interface", str, None, file=file,
                                                       path="routes."),
                                  _typed(r, "table", int, 53, file=file, path="routes."),
                                  _typed(r, "netns", str, None, file=file, path="routes."))
        _check_clouds(r, addrs, file)
    e = g("etcd", dict, None)
    if e is not None:
        _only(e, {"endpoints", "prefix", "slots", "lease_ttl", "timeout"}, "etcd.", file)
        eps = _typed(e, "endpoints", list, [], file=file, path="etcd.")
        if not eps or not all(isinstance(x, str) and x.startswith("http") for x in eps):
            raise ConfigError("must be a non-empty list of http:// URLs", file=file,
                              key="etcd.endpoints")
        ec = EtcdConfig(eps, _typed(e, "prefix", str, "/pop53", file=file, path="etcd."),
                        _typed(e, "slots", int, 1, file=file, path="etcd."),
                        _typed(e, "lease_ttl", int, 10, file=file, path="etcd."),
                        _typed(e, "timeout", float, 1.0, file=file, path="etcd."))
        if ec.slots < 0:
            raise ConfigError("must be >= 0", file=file, key="etcd.slots")
        if ec.lease_ttl < 2:
            raise ConfigError("must be >= 2 seconds", file=file, key="etcd.lease_ttl")
        cfg.etcd = ec
    s = g("staleness", dict, None)
    if s is not None:
        cfg.staleness = _staleness(s, "staleness.", file, None)
        for i, sub in enumerate(_typed(s, "sources", list, [], file=file, path="staleness.")):
            k = f"staleness.sources[{i}]"
            if not isinstance(sub, dict):
                raise ConfigError("must be a table", file=file, key=k)
            cfg.staleness.sources.append(_staleness(sub, k + ".", file, cfg.staleness.max_age))
    return cfg


def _check_clouds(r: dict, addrs: list[str], file: str) -> None:
    """`[routes] plan` + `pop`: refuse to announce a prefix of no cloud, or a cloud that would
    make this PoP advertise more than the plan's `max_per_pop` (issue 13; pop53.clouds)."""
    plan_path = _typed(r, "plan", str, None, file=file, path="routes.")
    pop = _typed(r, "pop", str, None, file=file, path="routes.")
    if plan_path is None and pop is None:
        return
    if plan_path is None or pop is None:
        raise ConfigError("give both plan and pop", file=file, key="routes.plan" if plan_path is None else "routes.pop")
    from pop53.clouds.check import check_machine
    from pop53.clouds.plan import load_plan
    if not Path(plan_path).is_absolute() and file and not file.startswith("<"):
        plan_path = str(Path(file).parent / plan_path)
    problems = check_machine(load_plan(plan_path), pop, addrs)
    if problems:
        raise ConfigError(f"the cloud plan refuses these routes: {problems[0]}", file=file,
                          key="routes.addresses")


def _staleness(s: dict, path: str, file: str, max_age: float | None) -> StalenessConfig:
    """One staleness source; a listed one (`max_age` given) inherits the table's max_age."""
    _only(s, {"source", "max_age", "files", "path"} | ({"sources"} if max_age is None else set()),
          path, file)
    sc = StalenessConfig(_typed(s, "source", str, "none", file=file, path=path),
                         _typed(s, "max_age", float, max_age or 0.0, file=file, path=path),
                         dict(_typed(s, "files", dict, {}, file=file, path=path)),
                         _typed(s, "path", str, None, file=file, path=path))
    if sc.source not in STALENESS_SOURCES:
        raise ConfigError(f"unknown source {sc.source!r} (known: {sorted(STALENESS_SOURCES)})",
                          file=file, key=path + "source")
    if max_age is not None and sc.source != "none" and sc.max_age <= 0:
        raise ConfigError("must be > 0 (set it here or in [staleness])", file=file,
                          key=path + "max_age")
    return sc


