"""BIRD 2 configuration and state for a PoP machine (and the lab's PoP router).

pop53 never speaks BGP itself (paper §3.1, Figure 6: the machine's BGP speaker is a separate
daemon).  This module writes BIRD configuration and reads BIRD's state through ``birdc -s SOCKET``.
Every BIRD we start has its own control socket (-s) and pidfile (-P), so several run side by side
in network namespaces or temporary directories, and each is stopped by its own PID.

What the node configuration exports:
  * the service prefixes, learned either from the service interface (``direct``; signal mode
    ``address``) or from the dedicated signal table (``kernel table 53`` + ``learn``; signal mode
    ``route``), see `pop53.anycast.routes`;
  * with a per-role MED: ``normal`` machines send `MED_NORMAL`, ``input-delayed`` machines a worse
    (higher) MED, so the router only uses them when no normal machine announces (paper §4.2.3);
  * with short hold/keepalive timers and, optionally, BFD so a frozen machine is removed fast.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pop53.errors import ConfigError, Pop53Error

MED_NORMAL = 100
MED_INPUT_DELAYED = 1000
ROLES = {"normal": MED_NORMAL, "input-delayed": MED_INPUT_DELAYED}


class BirdError(Pop53Error):
    """BIRD could not be started, configured or queried."""


@dataclass(frozen=True)
class Neighbor:
    """One BGP session: our local address, the peer's address and AS."""

    local: str
    peer: str
    peer_as: int
    name: str | None = None


@dataclass
class NodeConfig:
    """Everything BIRD needs to announce one machine's service prefixes to its router(s)."""

    router_id: str
    local_as: int
    neighbors: list[Neighbor]
    service: list[str]                 # service addresses, e.g. "10.53.0.53/32", "fd53::53/128"
    signal: str = "route"              # "route" (table `signal_table`) or "address" (interface)
    signal_table: int = 53
    interface: str = "lo"              # service interface (for signal "address")
    role: str = "normal"
    med: int | None = None             # overrides the role's MED
    hold_time: int = 3                 # seconds; RFC 4271 §4.2: 0 or >= 3
    keepalive_time: int = 1
    connect_retry: int = 1
    bfd: bool = False
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3

    def validate(self) -> None:
        try:
            ipaddress.IPv4Address(self.router_id)
        except ValueError:
            raise ConfigError(f"router id {self.router_id!r} is not an IPv4 address",
                              key="bird.router_id") from None
        if self.role not in ROLES:
            raise ConfigError(f"unknown role {self.role!r} (expected {sorted(ROLES)})",
                              key="bird.role")
        if self.signal not in ("route", "address"):
            raise ConfigError(f"unknown signal {self.signal!r}", key="bird.signal")
        if self.hold_time != 0 and self.hold_time < 3:
            # RFC 4271 §4.2: the hold time MUST be either zero or at least three seconds.
            raise ConfigError("hold time must be 0 or >= 3 seconds (RFC 4271 4.2)",
                              key="bird.hold_time")
        if self.hold_time and not 1 <= self.keepalive_time < self.hold_time:
            raise ConfigError("keepalive time must be >= 1 and below the hold time",
                              key="bird.keepalive_time")
        if not self.service:
            raise ConfigError("no service prefixes", key="bird.service")
        for s in self.service:
            try:
                ipaddress.ip_interface(s)
            except ValueError:
                raise ConfigError(f"invalid service prefix {s!r}", key="bird.service") from None
        for n in self.neighbors:
            for a in (n.local, n.peer):
                try:
                    ipaddress.ip_address(a)
                except ValueError:
                    raise ConfigError(f"invalid neighbor address {a!r}",
                                      key="bird.neighbors") from None

    @property
    def effective_med(self) -> int:
        return self.med if self.med is not None else ROLES[self.role]


def _prefix_set(prefixes: list[str], version: int) -> str:
    nets = [str(ipaddress.ip_interface(p).network) for p in prefixes]
    nets = [n for n in nets if ipaddress.ip_network(n).version == version]
    return "[ " + ", ".join(nets) + " ]" if nets else ""


def _ident(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s)


def _bfd_protocol(interval_ms: int, multiplier: int) -> str:
    """BIRD's BFD protocol on every interface (both ends of a session use the same timers)."""
    iv = interval_ms
    return f"""protocol bfd pop53_bfd {{
  interface "*" {{ min rx interval {iv} ms; min tx interval {iv} ms; idle tx interval {max(iv, 1000)} ms; multiplier {multiplier}; }};
}}"""


def render_node_snippet(cfg: NodeConfig) -> str:
    """The pop53 part of a machine's BIRD config: service prefix sources, export filters, BGP."""
    cfg.validate()
    out: list[str] = ["# --- generated by pop53 (pop53.anycast.bird.render_node_snippet); do not edit ---"]
    sets = {4: _prefix_set(cfg.service, 4), 6: _prefix_set(cfg.service, 6)}
    for v in (4, 6):
        if sets[v]:
            out.append(f"define POP53_SERVICE{v} = {sets[v]};")
    med = cfg.effective_med
    if cfg.signal == "route":
        # The agent adds/deletes a route to each service prefix in this table (pop53.anycast.routes);
        # `learn` makes BIRD import routes it did not install itself.
        for v in (4, 6):
            if sets[v]:
                out.append(f"""protocol kernel pop53_signal{v} {{
  kernel table {cfg.signal_table};
  learn;
  scan time 10;
  ipv{v} {{ import where net ~ POP53_SERVICE{v}; export none; }};
}}""")
    else:
        chans = "\n".join(f"  ipv{v} {{ import where net ~ POP53_SERVICE{v}; }};"
                          for v in (4, 6) if sets[v])
        out.append(f"""protocol direct pop53_direct {{
  interface "{cfg.interface}";
{chans}
}}""")
    for v in (4, 6):
        if sets[v]:
            # MED: lower is preferred (RFC 4271 9.1.2.2 c); input-delayed machines advertise a
            # worse MED so the router uses them only when no normal machine announces (§4.2.3).
            out.append(f"""filter pop53_export{v} {{
  if net ~ POP53_SERVICE{v} then {{ bgp_med = {med}; accept; }}
  reject;
}}""")
    if cfg.bfd:
        out.append(_bfd_protocol(cfg.bfd_interval_ms, cfg.bfd_multiplier))
    for i, n in enumerate(cfg.neighbors):
        v = ipaddress.ip_address(n.peer).version
        if not sets[v]:
            continue
        name = _ident(n.name or f"pop53_up{i}_v{v}")
        out.append(f"""protocol bgp {name} {{
  local {n.local} as {cfg.local_as};
  neighbor {n.peer} as {n.peer_as};
  hold time {cfg.hold_time};
  keepalive time {cfg.keepalive_time};
  connect retry time {cfg.connect_retry};
  error wait time 1, 10;
  {"bfd on;" if cfg.bfd else "bfd off;"}
  ipv{v} {{ import none; export filter pop53_export{v}; }};
}}""")
    out.append("# --- end pop53 ---")
    return "\n".join(out) + "\n"


def render_node_config(cfg: NodeConfig, *, log: str | None = None) -> str:
    """A complete bird.conf for a machine: router id, device protocol and the pop53 snippet."""
    head = [f"router id {cfg.router_id};",
            f'log "{log}" all;' if log else "log stderr { warning, error, fatal };",
            "protocol device { scan time 10; }"]
    return "\n".join(head) + "\n" + render_node_snippet(cfg)


@dataclass
class RouterPeer:
    name: str
    peer: str
    peer_as: int
    local: str


@dataclass
class RouterConfig:
    """The lab's PoP router: learns service prefixes from machines, installs them with ECMP."""

    router_id: str
    local_as: int
    peers: list[RouterPeer] = field(default_factory=list)
    hold_time: int = 3
    keepalive_time: int = 1
    bfd: bool = False
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3
    max_paths: int = 16


def render_router_config(cfg: RouterConfig, *, log: str | None = None) -> str:
    """BIRD config for the PoP router: BGP from every machine, ECMP (`merge paths`) to the FIB."""
    out = [f"router id {cfg.router_id};",
           f'log "{log}" all;' if log else "log stderr { warning, error, fatal };",
           "protocol device { scan time 10; }"]
    for v in (4, 6):
        # merge paths: equally good BGP routes (same AS path length, origin, MED...) become one
        # multipath route in the kernel, which hashes flows across machines (paper §3.1 ECMP).
        out.append(f"""protocol kernel pop53_fib{v} {{
  merge paths on limit {cfg.max_paths};
  ipv{v} {{ import none; export all; }};
}}""")
    if cfg.bfd:
        out.append(_bfd_protocol(cfg.bfd_interval_ms, cfg.bfd_multiplier))
    for p in cfg.peers:
        v = ipaddress.ip_address(p.peer).version
        out.append(f"""protocol bgp {_ident(p.name)} {{
  local {p.local} as {cfg.local_as};
  neighbor {p.peer} as {p.peer_as};
  hold time {cfg.hold_time};
  keepalive time {cfg.keepalive_time};
  connect retry time 1;
  error wait time 1, 10;
  {"bfd on;" if cfg.bfd else "bfd off;"}
  ipv{v} {{ import all; export none; }};
}}""")
    return "\n".join(out) + "\n"


# -- birdc -------------------------------------------------------------------------------------

def birdc(socket_path: str | os.PathLike, *args: str, timeout: float = 5.0,
          netns: str | None = None) -> str:
    """Run one birdc command against the BIRD listening on `socket_path`; return its output."""
    exe = shutil.which("birdc")
    if not exe:
        raise BirdError("birdc not found (Debian package bird2)")
    cmd = [exe, "-s", str(socket_path), *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BirdError(f"birdc {' '.join(args)}: no answer within {timeout}s") from None
    if proc.returncode != 0 or "Unable to connect" in proc.stdout:
        raise BirdError(f"birdc -s {socket_path} {' '.join(args)}: "
                        f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def parse_protocols(text: str) -> dict[str, dict[str, str]]:
    """Parse ``show protocols`` into {name: {proto, table, state, since, info}}."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("BIRD ") or line.startswith("Name "):
            continue
        parts = line.split(None, 5)
        if len(parts) < 4:
            continue
        name, proto, table, state = parts[:4]
        rest = parts[4:]
        since = rest[0] if rest else ""
        info = rest[1] if len(rest) > 1 else ""
        # `since` may be "12:34:56.789" or a date plus time; info is the BGP state (Established).
        m = re.match(r"(\S+)\s+(.*)", (" ".join(rest)))
        if m and re.match(r"\d{2}:\d{2}:\d{2}", m.group(1)):
            since, info = m.group(1), m.group(2)
        out[name] = {"proto": proto, "table": table, "state": state, "since": since,
                     "info": info.strip()}
    return out


def parse_routes(text: str) -> list[str]:
    """Prefixes listed by ``show route ...`` (one per network, in order)."""
    nets = []
    for line in text.splitlines():
        m = re.match(r"^([0-9a-fA-F:.]+/\d+)\s", line)
        if m:
            nets.append(m.group(1))
    return nets


class BirdControl:
    """Reads a running BIRD's state through birdc."""

    def __init__(self, socket_path: str | os.PathLike, netns: str | None = None):
        self.socket_path = str(socket_path)
        self.netns = netns

    def cmd(self, *args: str, timeout: float = 5.0) -> str:
        return birdc(self.socket_path, *args, timeout=timeout, netns=self.netns)

    def protocols(self) -> dict[str, dict[str, str]]:
        return parse_protocols(self.cmd("show", "protocols"))

    def established(self) -> list[str]:
        return sorted(n for n, p in self.protocols().items()
                      if p["proto"] == "BGP" and p["info"].startswith("Established"))

    def exported(self, protocol: str) -> list[str]:
        """Prefixes BIRD currently exports to BGP session `protocol`."""
        return parse_routes(self.cmd("show", "route", "export", protocol))

    def routes(self, *filters: str) -> list[str]:
        return parse_routes(self.cmd("show", "route", *filters))

    def configure(self) -> str:
        return self.cmd("configure")


class BirdProcess:
    """One BIRD daemon with its own config, control socket and pidfile, stopped by PID."""

    def __init__(self, workdir: str | os.PathLike, config_text: str, *, netns: str | None = None,
                 name: str = "bird"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.netns = netns
        self.conf = self.workdir / f"{name}.conf"
        self.socket = self.workdir / f"{name}.ctl"
        self.pidfile = self.workdir / f"{name}.pid"
        self.logfile = self.workdir / f"{name}.log"
        self.conf.write_text(config_text)
        self.proc: subprocess.Popen | None = None

    @property
    def control(self) -> BirdControl:
        return BirdControl(self.socket)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def check_config(self) -> None:
        exe = shutil.which("bird") or "/usr/sbin/bird"
        proc = subprocess.run([exe, "-p", "-c", str(self.conf)], capture_output=True, text=True,
                              timeout=10)
        if proc.returncode != 0:
            raise BirdError(f"{self.conf}: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("bird") or "/usr/sbin/bird"
        self.check_config()
        cmd = [exe, "-f", "-c", str(self.conf), "-s", str(self.socket), "-P", str(self.pidfile)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]  # `ip netns exec` execs: same PID
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BirdError(f"bird exited with {self.proc.returncode}: "
                                f"{self.logfile.read_text(errors='replace')[-2000:]}")
            if self.socket.exists():
                try:
                    self.control.cmd("show", "status", timeout=2)
                    return
                except BirdError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise BirdError(f"bird did not open its control socket {self.socket} within {timeout}s")

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a frozen BIRD cannot handle SIGTERM
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None


_SERVICE_SET = re.compile(r"^define POP53_SERVICE[46] = \[([^\]]*)\];", re.M)


def service_prefixes(text: str) -> list[str]:
    """The service prefixes a pop53-generated BIRD config exports (the inverse of the
    `define POP53_SERVICE4/6` lines render_node_snippet writes)."""
    return [p.strip() for m in _SERVICE_SET.finditer(text) for p in m.group(1).split(",")
            if p.strip()]
