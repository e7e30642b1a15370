"""The monitoring agent: probe the local nameserver, self-suspend on failure, within limits.

Paper §4.2.1: "an on-machine monitoring agent continually runs a suite of tests against the
nameserver" (a query per zone plus regression tests for known failure cases) and detects missing,
slow and incorrect answers, including answers from stale data (§4.2.2).  On failure it
self-suspends: it makes the BGP speaker withdraw the anycast prefix (here: `pop53.anycast.routes`, which
BIRD follows).  Mass suspension is prevented by a cluster-wide limit (`pop53.anycast.coord`: K slots in
etcd) and by machines that never self-suspend (the input-delayed ones, §4.2.3).

State machine (one `tick` per probe interval)::

    starting --pass--> serving --fail--> degraded --N fails--+--slot--> suspended
                          ^                  |               |            |
                          +------pass--------+               +-no slot--> wants-suspend
                          +------------------- M passes (slot released) --+   (announced)
    any --drain file--> drained --drain removed--> serving

Invariant: the routes are withdrawn only in `suspended` (while a slot is held, or no
coordination is configured) and in `drained` (an operator's explicit decision).
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from pop53.errors import ConfigError, Pop53Error

STATES = ("starting", "serving", "degraded", "wants-suspend", "suspended", "drained")
FAILURE_KINDS = ("missing", "wrong", "slow", "stale")


class AgentError(Pop53Error):
    """The agent cannot run (bad state directory, cannot write its state...)."""


# -- configuration -----------------------------------------------------------------------------

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
    file = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=file) from None
    return config_from_dict(raw, file=file)


_TOP_KEYS = {"name", "server", "zones", "cases", "interval", "timeout", "slow_ms", "fail_after",
             "pass_after", "udp", "tcp", "never_suspend", "state_dir", "metrics", "routes",
             "etcd", "staleness"}


def config_from_dict(raw: dict, *, file: str = "<config>") -> AgentConfig:
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}", file=file, key=sorted(unknown)[0])
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
        extra = set(c) - {"qname", "qtype", "rcode", "expect"}
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(extra)}", file=file, key=k + sorted(extra)[0])
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
    if cfg.metrics:
        parse_hostport(cfg.metrics, 9154, key="metrics", file=file)
    r = g("routes", dict, None)
    if r is not None:
        extra = set(r) - {"addresses", "mode", "interface", "table", "netns"}
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(extra)}", file=file,
                              key="routes." + sorted(extra)[0])
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
    e = g("etcd", dict, None)
    if e is not None:
        extra = set(e) - {"endpoints", "prefix", "slots", "lease_ttl", "timeout"}
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(extra)}", file=file,
                              key="etcd." + sorted(extra)[0])
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
        extra = set(s) - {"source", "max_age", "files", "path"}
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(extra)}", file=file,
                              key="staleness." + sorted(extra)[0])
        sc = StalenessConfig(_typed(s, "source", str, "none", file=file, path="staleness."),
                             _typed(s, "max_age", float, 0.0, file=file, path="staleness."),
                             dict(_typed(s, "files", dict, {}, file=file, path="staleness.")),
                             _typed(s, "path", str, None, file=file, path="staleness."))
        if sc.source not in STALENESS_SOURCES:
            raise ConfigError(f"unknown source {sc.source!r} (known: {sorted(STALENESS_SOURCES)})",
                              file=file, key="staleness.source")
        cfg.staleness = sc
    return cfg


# -- staleness sources (pluggable) -------------------------------------------------------------

class StalenessSource(Protocol):
    """Anything that can tell how old each zone's data is (seconds; None = unknown/never)."""

    def ages(self) -> dict[str, float | None]: ...


class NoStaleness:
    def ages(self) -> dict[str, float | None]:
        return {}


class FileMtimeStaleness:
    """Age = now - mtime of a file per zone (the zone file, the compiled image, a stamp file that
    the metadata pipeline touches on every successful update)."""

    def __init__(self, files: dict[str, str]):
        self.files = {(z if z.endswith(".") else z + "."): p for z, p in files.items()}

    def ages(self) -> dict[str, float | None]:
        now = time.time()
        out: dict[str, float | None] = {}
        for z, p in self.files.items():
            try:
                out[z] = max(0.0, now - os.stat(p).st_mtime)
            except OSError:
                out[z] = None
        return out


class XfrStatusStaleness:
    """The transfer engine's state file (`pop53.anycast.staleness`, ``xfr-status.json``): per-zone age.
    A file that is itself not being rewritten makes every zone unknown (the engine is stuck)."""

    def __init__(self, path: str, max_file_age: float = 10.0):
        self.path = path
        self.max_file_age = max_file_age

    def ages(self) -> dict[str, float | None]:
        from pop53.anycast.staleness import read_state

        try:
            st = read_state(self.path)
        except (OSError, ValueError):
            return {"*": None}
        now = time.time()
        zones = st.get("zones") or {}
        if now - float(st.get("time", 0)) > self.max_file_age:
            return {z: None for z in zones} or {"*": None}
        if st.get("role") == "delayed":
            return {}  # input-delayed machines are exempt (§4.2.3)
        out: dict[str, float | None] = {}
        for z, info in zones.items():
            age = info.get("age")
            out[z] = None if age is None else float(age)
        return out


STALENESS_SOURCES: dict[str, Callable[[StalenessConfig], StalenessSource]] = {
    "none": lambda c: NoStaleness(),
    "file-mtime": lambda c: FileMtimeStaleness(c.files),
    "xfr-status": lambda c: XfrStatusStaleness(c.path or "xfr-status.json"),
}


def register_staleness_source(name: str, factory: Callable[[StalenessConfig], StalenessSource]
                              ) -> None:
    """Plug in another source of zone age (for example a metrics endpoint)."""
    STALENESS_SOURCES[name] = factory


# -- probing -----------------------------------------------------------------------------------

@dataclass
class Failure:
    kind: str            # one of FAILURE_KINDS
    what: str            # "udp SOA pop53.lab."
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}: {self.detail}"


@dataclass
class ProbeResult:
    time: float
    ok: bool
    failures: list[Failure]
    queries: int
    max_rtt_ms: float


class Prober:
    """One round of the test suite against the local server (paper §4.2.1)."""

    def __init__(self, cfg: AgentConfig, staleness: StalenessSource | None = None):
        self.cfg = cfg
        self.host, self.port = cfg.server_addr()
        self.staleness = staleness or STALENESS_SOURCES[cfg.staleness.source](cfg.staleness)

    def _query(self, proto: str, qname: str, qtype: str) -> tuple[dns.message.Message | None,
                                                                  float, str | None]:
        q = dns.message.make_query(qname, qtype, use_edns=0)
        t0 = time.monotonic()
        try:
            if proto == "udp":
                r = dns.query.udp(q, self.host, port=self.port, timeout=self.cfg.timeout,
                                  ignore_unexpected=True)
            else:
                r = dns.query.tcp(q, self.host, port=self.port, timeout=self.cfg.timeout)
        except dns.exception.Timeout:
            return None, (time.monotonic() - t0) * 1000, "no answer (timeout)"
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            return None, (time.monotonic() - t0) * 1000, f"no answer ({exc.__class__.__name__}: {exc})"
        return r, (time.monotonic() - t0) * 1000, None

    def run(self) -> ProbeResult:
        fails: list[Failure] = []
        n = 0
        max_rtt = 0.0
        protos = [p for p, on in (("udp", self.cfg.udp), ("tcp", self.cfg.tcp)) if on]
        checks: list[tuple[str, str, Case | None]] = [(z, "SOA", None) for z in self.cfg.zones]
        checks += [(c.qname, c.qtype, c) for c in self.cfg.cases]
        for proto in protos:
            for k, (qname, qtype, case) in enumerate(checks):
                what = f"{proto} {qtype} {qname}"
                r, rtt, err = self._query(proto, qname, qtype)
                n += 1
                max_rtt = max(max_rtt, rtt)
                if r is None:
                    left = len(checks) - k - 1
                    # A server that does not answer one query over this transport will not
                    # answer the next either; waiting out every timeout would only delay the
                    # suspension decision by len(checks) x timeout per round.
                    fails.append(Failure("missing", what, (err or "no answer") +
                                         (f"; {left} more {proto} checks skipped" if left else "")))
                    break
                if rtt > self.cfg.slow_ms:
                    fails.append(Failure("slow", what, f"{rtt:.0f} ms > {self.cfg.slow_ms:.0f} ms"))
                problem = self._check(r, qname, qtype, case)
                if problem:
                    fails.append(Failure("wrong", what, problem))
        if self.cfg.staleness.max_age > 0:
            for zone, age in sorted(self.staleness.ages().items()):
                if age is None:
                    fails.append(Failure("stale", zone, "age unknown (no data or source silent)"))
                elif age > self.cfg.staleness.max_age:
                    fails.append(Failure("stale", zone, f"data is {age:.1f} s old > "
                                                       f"{self.cfg.staleness.max_age:g} s"))
        return ProbeResult(time.time(), not fails, fails, n, max_rtt)

    @staticmethod
    def _check(r: dns.message.Message, qname: str, qtype: str, case: Case | None) -> str | None:
        want_rcode = dns.rcode.from_text(case.rcode) if case else dns.rcode.NOERROR
        if r.rcode() != want_rcode:
            return f"rcode {dns.rcode.to_text(r.rcode())}, expected {dns.rcode.to_text(want_rcode)}"
        name = dns.name.from_text(qname)
        rdtype = dns.rdatatype.from_text(qtype)
        if case is None:
            # RFC 1034 §4.3.2 / RFC 1035 §4.1.1: the zone's own SOA comes with AA set.
            if not r.flags & dns.flags.AA:
                return "SOA answer without AA (not authoritative for the zone)"
            if not any(rr.name == name and rr.rdtype == dns.rdatatype.SOA for rr in r.answer):
                return "no SOA record in the answer section"
            return None
        if case.expect is None:
            return None
        got = sorted(rd.to_text() for rr in r.answer if rr.name == name and rr.rdtype == rdtype
                     for rd in rr)
        want = sorted(case.expect)
        if got != want:
            return f"answer {got}, expected {want}"
        return None


# -- metrics -----------------------------------------------------------------------------------

class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.state = Gauge("pop53_agent_state", "1 for the agent's current state", ["state"],
                           registry=self.registry)
        self.announced = Gauge("pop53_agent_announced", "1 if the service routes are announced",
                               registry=self.registry)
        self.slot = Gauge("pop53_agent_slot", "suspension slot held (-1: none)",
                          registry=self.registry)
        self.wants = Gauge("pop53_agent_wants_suspend",
                           "1 if the agent would suspend but may not (no slot, etcd down, "
                           "never-suspend)", registry=self.registry)
        self.fails = Gauge("pop53_agent_consecutive_failures", "consecutive failed probe rounds",
                           registry=self.registry)
        self.passes = Gauge("pop53_agent_consecutive_passes", "consecutive passed probe rounds",
                            registry=self.registry)
        self.rounds = Counter("pop53_agent_probe_rounds", "probe rounds by result", ["result"],
                              registry=self.registry)
        self.failures = Counter("pop53_agent_probe_failures", "failed checks by kind", ["kind"],
                                registry=self.registry)
        self.transitions = Counter("pop53_agent_transitions", "state changes by target state",
                                   ["to"], registry=self.registry)
        self.rtt = Gauge("pop53_agent_probe_max_rtt_seconds", "slowest answer of the last round",
                         registry=self.registry)
        for s in STATES:
            self.state.labels(s).set(0)
        for k in FAILURE_KINDS:
            self.failures.labels(k)
        self.slot.set(-1)

    def serve(self, hostport: str) -> None:
        from prometheus_client import start_http_server

        host, port = parse_hostport(hostport, 9154, key="metrics")
        start_http_server(port, addr=host, registry=self.registry)

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


# -- the agent ---------------------------------------------------------------------------------

class Agent:
    """The state machine.  `routes` (pop53.anycast.routes.ServiceRoutes-like: announce/withdraw) and
    `slots` (pop53.anycast.coord.SlotClient-like) are injectable; None means "not configured"."""

    def __init__(self, cfg: AgentConfig, *, routes=None, slots=None, prober: Prober | None = None,
                 staleness: StalenessSource | None = None, metrics: Metrics | None = None):
        self.cfg = cfg
        if routes is None and cfg.routes is not None:
            from pop53.anycast.routes import ServiceRoutes

            routes = ServiceRoutes(cfg.routes.addresses, mode=cfg.routes.mode,
                                   interface=cfg.routes.interface, table=cfg.routes.table,
                                   netns=cfg.routes.netns)
        if slots is None and cfg.etcd is not None:
            from pop53.anycast.coord import SlotClient

            slots = SlotClient(cfg.etcd.endpoints, holder=cfg.name, slots=cfg.etcd.slots,
                               prefix=cfg.etcd.prefix, ttl=cfg.etcd.lease_ttl,
                               timeout=cfg.etcd.timeout)
        self.routes = routes
        self.slots = slots
        self.prober = prober or Prober(cfg, staleness)
        self.metrics = metrics or Metrics()
        self.state = "starting"
        self.reason = "agent started; waiting for the first probe round"
        self.announced: bool | None = None
        self.fails = 0
        self.passes = 0
        self.wants_suspend = False
        self.last: ProbeResult | None = None
        self.last_change: dict | None = None
        self.history: list[dict] = []
        self.route_error: str | None = None
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)

    # routes
    def _set_routes(self, announce: bool) -> bool:
        if self.routes is None:
            if self.announced != announce:
                self.last_change = {"time": time.time(), "done": time.time(),
                                    "action": "announce" if announce else "withdraw",
                                    "changes": []}
            self.announced = announce
            return True
        from pop53.errors import RouteError

        t0 = time.time()  # the event time is when the change was started (paper §4.1: t_L)
        try:
            changed = self.routes.announce() if announce else self.routes.withdraw()
            self.route_error = None
        except RouteError as exc:
            self.route_error = str(exc)
            return False
        if changed or self.announced is None or self.announced != announce:
            self.announced = announce
            self.last_change = {"time": t0, "done": time.time(),
                                "action": "announce" if announce else "withdraw",
                                "changes": changed}
        return True

    def _transition(self, to: str, reason: str) -> None:
        if to != self.state:
            self.history.append({"time": time.time(), "from": self.state, "to": to,
                                 "reason": reason})
            del self.history[:-50]
            self.metrics.transitions.labels(to).inc()
        self.state = to
        self.reason = reason

    def _slot_held(self) -> int | None:
        return self.slots.held if self.slots is not None else None

    def _release_slot(self) -> None:
        if self.slots is not None:
            self.slots.release()  # also drops a lease whose slot already expired

    def draining(self) -> bool:
        return self.cfg.drain_file.exists()

    def tick(self, result: ProbeResult | None = None) -> None:
        """One probe round and the transitions it causes."""
        res = result if result is not None else self.prober.run()
        self.last = res
        self.metrics.rounds.labels("pass" if res.ok else "fail").inc()
        for f in res.failures:
            self.metrics.failures.labels(f.kind).inc()
        self.metrics.rtt.set(res.max_rtt_ms / 1000)
        if res.ok:
            self.passes += 1
            self.fails = 0
        else:
            self.fails += 1
            self.passes = 0
        self.step_drain()
        if self.state != "drained":
            self._step(res)
        self._publish()

    def step_drain(self) -> bool:
        """Apply the maintenance switch; True if it changed something.  Cheap: the run loop
        calls it between probe rounds so a drain takes effect within ~50 ms."""
        if self.draining():
            if self.state != "drained":
                why = (self.cfg.drain_file.read_text(errors="replace").strip()
                       if self.cfg.drain_file.exists() else "")
                self._set_routes(False)
                # A drain is an operator's decision, not a self-suspension: it needs no slot,
                # and we give back any slot we held so another machine may use it.
                self._release_slot()
                self.wants_suspend = False
                self._transition("drained", f"maintenance drain ({self.cfg.drain_file}"
                                 + (f": {why}" if why else "") + ")")
                self._publish()
                return True
            return False
        if self.state == "drained":
            self._set_routes(True)
            self.fails = 0
            self._transition("serving", "drain switch removed; announced again")
            self._publish()
            return True
        return False

    def _why(self, res: ProbeResult) -> str:
        first = "; ".join(str(f) for f in res.failures[:3])
        more = f" (+{len(res.failures) - 3} more)" if len(res.failures) > 3 else ""
        return first + more

    def _step(self, res: ProbeResult) -> None:
        cfg = self.cfg
        if self.state == "suspended":
            held = self._slot_held()
            if self.slots is not None:
                if held is not None:
                    self.slots.keepalive()
                    held = self._slot_held()
                if held is None:
                    # Without a slot we may not stay withdrawn: another machine may hold it.
                    self._set_routes(True)
                    self.wants_suspend = not res.ok
                    err = self.slots.last_error or "slot lost"
                    self._transition("wants-suspend" if not res.ok else "serving",
                                     f"announced again: {err}")
                    return
            if self.passes >= cfg.pass_after:
                self._set_routes(True)
                self._release_slot()
                self.wants_suspend = False
                self._transition("serving", f"{self.passes} consecutive passes; announced again")
                return
            self._set_routes(False)
            if not res.ok:
                self.reason = f"suspended (slot {held}): {self._why(res)}"
            return
        # starting / serving / degraded / wants-suspend: we are (or become) announced
        if res.ok:
            self.wants_suspend = False
            self._set_routes(True)
            if self.state != "serving":
                self._transition("serving", "probes pass")
            return
        if self.fails < cfg.fail_after:
            if self.state == "starting":
                # Not announced yet and failing: nothing to withdraw, nothing to suspend.
                self.reason = f"starting; failing ({self.fails}/{cfg.fail_after}): {self._why(res)}"
                return
            self._set_routes(True)
            self._transition("degraded", f"{self.fails}/{cfg.fail_after} failed rounds: "
                             f"{self._why(res)}")
            return
        # N consecutive failures: we want to self-suspend.
        self.wants_suspend = True
        why = f"{self.fails} consecutive failed rounds: {self._why(res)}"
        if cfg.never_suspend:
            self._set_routes(True)
            self._transition("wants-suspend", f"never-suspend machine, keeps answering; {why}")
            return
        slot = None
        if self.slots is not None:
            from pop53.anycast.coord import CoordUnavailable

            try:
                slot = self.slots.acquire()
            except CoordUnavailable as exc:
                self._set_routes(True)
                self._transition("wants-suspend", f"etcd unreachable, may not suspend ({exc}); "
                                 f"{why}")
                return
            if slot is None:
                self._set_routes(True)
                self._transition("wants-suspend", f"no free suspension slot "
                                 f"({self.slots.last_error}); {why}")
                return
        if not self._set_routes(False):
            self._release_slot()
            self._transition("wants-suspend", f"withdraw failed ({self.route_error}); {why}")
            return
        self.wants_suspend = False
        self._transition("suspended", f"self-suspended" +
                         (f" holding slot {slot}" if slot is not None else
                          " (no cluster limit configured)") + f": {why}")

    # status
    def status(self) -> dict:
        held = self._slot_held()
        return {
            "name": self.cfg.name,
            "pid": os.getpid(),
            "updated": time.time(),
            "state": self.state,
            "reason": self.reason,
            "announced": self.announced,
            "wants_suspend": self.wants_suspend,
            "never_suspend": self.cfg.never_suspend,
            "draining": self.draining(),
            "slot": held,
            "slots": ({"endpoints": self.cfg.etcd.endpoints, "k": self.cfg.etcd.slots,
                       "last_error": self.slots.last_error}
                      if self.cfg.etcd and self.slots is not None else None),
            "consecutive_failures": self.fails,
            "consecutive_passes": self.passes,
            "fail_after": self.cfg.fail_after,
            "pass_after": self.cfg.pass_after,
            "route_error": self.route_error,
            "last_probe": ({"time": self.last.time, "ok": self.last.ok,
                            "queries": self.last.queries, "max_rtt_ms": round(self.last.max_rtt_ms, 2),
                            "failures": [asdict(f) for f in self.last.failures]}
                           if self.last else None),
            "last_change": self.last_change,
            "history": self.history[-10:],
        }

    def _publish(self) -> None:
        m = self.metrics
        for s in STATES:
            m.state.labels(s).set(1 if s == self.state else 0)
        m.announced.set(1 if self.announced else 0)
        held = self._slot_held()
        m.slot.set(held if held is not None else -1)
        m.wants.set(1 if self.wants_suspend else 0)
        m.fails.set(self.fails)
        m.passes.set(self.passes)
        path = self.cfg.state_file
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.status(), indent=1))
            os.replace(tmp, path)  # atomic: `status` never reads half a file
        except OSError as exc:
            raise AgentError(f"cannot write agent state {path}: {exc}") from None

    def run(self, stop: threading.Event, max_rounds: int | None = None) -> None:
        rounds = 0
        if self.slots is not None:
            self.slots.keepalive_forever(stop)
        while not stop.is_set():
            t0 = time.monotonic()
            self.tick()
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                return
            while not stop.is_set():
                left = self.cfg.interval - (time.monotonic() - t0)
                if left <= 0:
                    break
                if self.step_drain():
                    break
                stop.wait(min(left, 0.05))


def run_agent(cfg: AgentConfig, *, max_rounds: int | None = None) -> int:
    """`pop53 agent run`: run until SIGTERM/SIGINT.  The routes stay as they are on exit (a
    suspended machine's slot frees when its lease expires, §4.2.1 via pop53.anycast.coord)."""
    agent = Agent(cfg)
    if cfg.metrics:
        agent.metrics.serve(cfg.metrics)
    stop = threading.Event()

    def _stop(*_a):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.run(stop, max_rounds=max_rounds)
    return 0


def read_status(state_dir: str | os.PathLike) -> dict:
    path = Path(state_dir) / "state.json"
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise AgentError(f"no agent state at {path} ({exc.strerror}); is the agent running "
                         f"with state_dir = {state_dir!r}?") from None
    except ValueError as exc:
        raise AgentError(f"{path}: unreadable agent state ({exc})") from None


def format_status(st: dict) -> str:
    lines = [f"agent {st['name']} (pid {st.get('pid')}), updated "
             f"{time.time() - st.get('updated', 0):.1f}s ago",
             f"  state:      {st['state']}",
             f"  why:        {st['reason']}",
             f"  announced:  {st['announced']}",
             f"  slot held:  {st['slot'] if st['slot'] is not None else 'none'}"
             + (f" (K={st['slots']['k']})" if st.get("slots") else " (no cluster limit)"),
             f"  wants to suspend: {st['wants_suspend']}; never-suspend: {st['never_suspend']};"
             f" draining: {st['draining']}",
             f"  consecutive failures {st['consecutive_failures']}/{st['fail_after']}, "
             f"passes {st['consecutive_passes']}/{st['pass_after']}"]
    if st.get("slots") and st["slots"].get("last_error"):
        lines.append(f"  slots:      {st['slots']['last_error']}")
    if st.get("route_error"):
        lines.append(f"  route error: {st['route_error']}")
    lp = st.get("last_probe")
    if lp:
        lines.append(f"  last probe: {'pass' if lp['ok'] else 'FAIL'}, {lp['queries']} queries, "
                     f"slowest {lp['max_rtt_ms']} ms")
        for f in lp["failures"][:10]:
            lines.append(f"    {f['kind']}: {f['what']}: {f['detail']}")
    for h in st.get("history", [])[-5:]:
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(h['time']))} "
                     f"{h['from']} -> {h['to']}: {h['reason']}")
    return "\n".join(lines)
