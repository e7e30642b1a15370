"""A PoP in network namespaces on one machine, and the paper's failover experiment (§4.1).

Topology (all names start with ``p53a-<tag>-`` so concurrent labs never collide)::

    client c1 ──┐                        ┌── machine m1: DNS server + BIRD + agent
    client c2 ──┼── router r (BIRD, ECMP)┼── machine m2: DNS server + BIRD + agent
       ...      ┘   [etcd for the slots] └── ...

Addresses (10.53.0.0/16 and fd53::/16, only inside these namespaces):
  * service (anycast): 10.53.0.53/32 and fd53::53/128 on every machine;
  * machine i link: 10.53.i.0/24 (router .1, machine .2), fd53:0:i::/64;
  * client j link: 10.53.(100+j).0/24, fd53:1:j::/64.

The router learns the service prefix from each machine over eBGP (machines AS 65053, router
AS 65000) and installs one multipath route (BIRD ``merge paths``); the kernel hashes flows over
the machines with an L4 hash (fib_multipath_hash_policy=1), as the PoP router does in §3.1.

Every process is started by us and stopped by its PID; `Lab.teardown` always runs (context
manager) and deletes the namespaces.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pop53.anycast import bird as birdmod
from pop53.errors import Pop53Error

NS_PREFIX = "p53a"
SERVICE4 = "10.53.0.53/32"
SERVICE6 = "fd53::53/128"
ROUTER_AS = 65000
MACHINE_AS = 65053
LAB_ZONE = "pop53.lab."
ETCD_PORT = 2379
DNS_PORT = 53


class LabError(Pop53Error):
    """The lab could not be built or an experiment could not run."""


def _run(cmd: list[str], *, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)}: timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _src_path() -> str:
    """The directory holding the pop53 package, for PYTHONPATH of child processes."""
    import pop53

    return str(Path(pop53.__file__).parent.parent)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = _src_path() + (os.pathsep + env["PYTHONPATH"]
                                        if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- processes ---------------------------------------------------------------------------------

class Proc:
    """A child process stopped by its own PID (never by name: others run the same binaries)."""

    def __init__(self, name: str, cmd: list[str], *, log: Path, netns: str | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd  # exec: same PID
        with open(log, "ab") as f:
            self.popen = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env or child_env(),
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# -- the DNS server in a machine namespace -----------------------------------------------------

_POP53_SERVE: bool | None = None


def pop53_serve_available() -> bool:
    """True once the lead's `pop53 serve` exists (then the lab prefers it over Knot)."""
    global _POP53_SERVE
    if _POP53_SERVE is None:
        # `serve --help` proves the command exists; compiling the lab zone proves the data plane
        # it needs is built (a half-built tree would otherwise fail in every machine at once).
        # Either failing selects the Knot stand-in; the lab's first log line names the server.
        with tempfile.TemporaryDirectory(prefix=f"{NS_PREFIX}-probe-") as d:
            zone = Path(d) / "z.zone"
            write_lab_zone(zone)
            try:
                p = subprocess.run([sys.executable, "-m", "pop53", "serve", "--help"],
                                   capture_output=True, text=True, timeout=30, env=child_env())
                q = subprocess.run([sys.executable, "-c",
                                    f"import pop53; pop53.compile_zones([{str(zone)!r}])"],
                                   capture_output=True, text=True, timeout=60, env=child_env())
                _POP53_SERVE = (p.returncode == 0 and "--identity" in p.stdout
                                and q.returncode == 0)
            except (OSError, subprocess.TimeoutExpired):
                _POP53_SERVE = False
    return _POP53_SERVE


def server_kind() -> str:
    forced = os.environ.get("POP53_LAB_SERVER")
    if forced in ("pop53", "knot"):
        return forced
    return "pop53" if pop53_serve_available() else "knot"


def _fmt_listen(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def dns_server_command(kind: str, *, zone: Path, listens: list[str], identity: str,
                       workdir: Path, port: int = DNS_PORT) -> list[str]:
    """The command that runs one machine's DNS server.  The single switch between the stand-in
    (Knot, with NSID = identity) and pop53 itself."""
    if kind == "pop53":
        cmd = [sys.executable, "-m", "pop53", "serve", "--zone", str(zone), "--identity", identity,
               "--workers", "1"]
        for a in listens:
            cmd += ["--listen", _fmt_listen(a, port)]
        return cmd
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    rundir = workdir / "knot"
    (rundir / "db").mkdir(parents=True, exist_ok=True)
    listen = ", ".join(f"{a}@{port}" for a in listens)
    conf = rundir / "knot.conf"
    conf.write_text(f"""server:
    rundir: "{rundir}"
    pidfile: "{rundir}/knot.pid"
    listen: [ {listen} ]
    identity: "{identity}"
    nsid: "{identity}"
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{rundir}/db"
log:
  - target: stderr
    any: warning
zone:
  - domain: {LAB_ZONE}
    file: "{zone}"
    storage: "{rundir}"
    zonefile-sync: -1
    journal-content: none
""")
    return [knotd, "-c", str(conf)]


def write_lab_zone(path: Path, serial: int = 1) -> None:
    path.write_text(f"""$ORIGIN {LAB_ZONE}
$TTL 300
@   IN SOA ns1 hostmaster {serial} 3600 600 86400 300
@   IN NS ns1
ns1 IN A 10.53.0.53
ns1 IN AAAA fd53::53
www IN A 10.53.200.1
www IN AAAA fd53:200::1
""")


# -- DNS probing with NSID (RFC 5001) ----------------------------------------------------------

def nsid_query(qname: str = LAB_ZONE, qtype: int = 6, qid: int | None = None) -> bytes:
    """A wire-format query with an EDNS(0) OPT record carrying an empty NSID option (RFC 5001)."""
    qid = random.getrandbits(16) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0000, 1, 0, 0, 1)
    q = b"".join(bytes([len(l)]) + l.encode() for l in qname.rstrip(".").split(".") if l) + b"\0"
    q += struct.pack("!HH", qtype, 1)
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 4) + struct.pack("!HH", 3, 0)
    return header + q + opt


def parse_nsid(wire: bytes) -> tuple[int, str | None]:
    """(query id, NSID text or None) from a response; tolerant: returns None on anything odd."""
    import dns.message

    try:
        msg = dns.message.from_wire(wire)
    except Exception:  # noqa: BLE001 - a broken answer counts as "no identity"
        return (struct.unpack("!H", wire[:2])[0] if len(wire) >= 2 else -1), None
    for opt in msg.options:
        if opt.otype == 3:
            data = getattr(opt, "nsid", None) or getattr(opt, "data", b"")
            return msg.id, data.decode(errors="replace")
    return msg.id, None


def probe_client(target: str, port: int, interval: float, timeout: float, duration: float,
                 out: Path) -> None:
    """Send one NSID query every `interval` s (fresh socket = fresh source port, like resolvers
    that randomize ports, §3.1) until `duration` or SIGTERM; one CSV row per query:
    send time, answered (0/1), nsid, rtt ms.  Unanswered after `timeout` = a lost query."""
    stop = False

    def _term(*_a):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    fam = socket.AF_INET6 if ":" in target else socket.AF_INET
    pending: dict[socket.socket, tuple[float, int]] = {}
    end = time.time() + duration
    next_send = time.time()
    with open(out, "w", buffering=1) as f:
        f.write("t_send,answered,nsid,rtt_ms\n")
        while (not stop and time.time() < end) or pending:
            now = time.time()
            if not stop and now >= next_send and now < end:
                s = socket.socket(fam, socket.SOCK_DGRAM)
                s.setblocking(False)
                qid = random.getrandbits(16)
                try:
                    s.sendto(nsid_query(qid=qid), (target, port))
                    pending[s] = (now, qid)
                except OSError:
                    f.write(f"{now:.6f},0,,\n")
                    s.close()
                next_send += interval
                if next_send < now:
                    next_send = now + interval
            wait = max(0.0, min(next_send - time.time(), 0.05))
            r, _, _ = select.select(list(pending), [], [], wait) if pending else ([], [], [])
            if not pending:
                time.sleep(wait)
            now = time.time()
            for s in r:
                t0, qid = pending[s]
                try:
                    wire = s.recv(4096)
                except OSError:
                    continue
                rid, nsid = parse_nsid(wire)
                if rid != qid:
                    continue
                f.write(f"{t0:.6f},1,{nsid or ''},{(now - t0) * 1000:.2f}\n")
                del pending[s]
                s.close()
            for s, (t0, _q) in list(pending.items()):
                if now - t0 > timeout:
                    f.write(f"{t0:.6f},0,,\n")
                    del pending[s]
                    s.close()
            if stop and time.time() > end + timeout + 1:
                break


def query_identity(target: str, port: int = DNS_PORT, timeout: float = 1.0) -> str | None:
    fam = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        qid = random.getrandbits(16)
        try:
            s.sendto(nsid_query(qid=qid), (target, port))
            wire = s.recv(4096)
        except OSError:
            return None
    rid, nsid = parse_nsid(wire)
    return nsid if rid == qid else None


# -- the lab -----------------------------------------------------------------------------------

@dataclass
class LabConfig:
    machines: int = 2
    clients: int = 2
    signal: str = "address"          # how machines announce (pop53.anycast.routes modes)
    bfd: bool = True
    hold_time: int = 3
    keepalive_time: int = 1
    agents: bool = True
    slots: int = 1                   # K, cluster-wide suspension slots (etcd in the router ns)
    etcd: bool = True
    agent_interval: float = 0.3
    fail_after: int = 3              # N consecutive failures -> suspend
    pass_after: int = 3              # M consecutive passes -> announce
    lease_ttl: int = 3
    max_zone_age: float = 0.0        # > 0: agents flag the zone file as stale beyond this age
    never_suspend: tuple[int, ...] = ()
    input_delayed: tuple[int, ...] = ()
    server: str | None = None        # "pop53" | "knot" | None (auto)
    keep_dir: bool = False


@dataclass
class Machine:
    index: int
    ns: str
    link4: str
    link6: str
    router4: str
    router6: str
    workdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    bird: birdmod.BirdProcess | None = None

    @property
    def name(self) -> str:
        return f"m{self.index}"


class Lab:
    def __init__(self, cfg: LabConfig, workdir: str | os.PathLike | None = None):
        if not 1 <= cfg.machines <= 99:
            raise LabError("machines must be between 1 and 99")
        if not 1 <= cfg.clients <= 99:
            raise LabError("clients must be between 1 and 99")
        self.cfg = cfg
        self.tag = secrets.token_hex(2)
        base = Path(workdir) if workdir else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}-{self.tag}-", dir=base))
        self.router_ns = f"{NS_PREFIX}-{self.tag}-r"
        self.namespaces: list[str] = []
        self.machines: list[Machine] = []
        self.clients: list[str] = []
        self.router_bird: birdmod.BirdProcess | None = None
        self.router_procs: dict[str, Proc] = {}
        self.server = cfg.server or server_kind()
        self.zone = self.workdir / "pop53.lab.zone"

    # context manager: teardown always runs
    def __enter__(self) -> "Lab":
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    # -- building --------------------------------------------------------------------------
    def _ns(self, name: str) -> str:
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def _sysctl(self, ns: str, *kv: str) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *kv])

    def _link(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        _run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
              "netns", ns_b])
        _run(["ip", "-n", ns_a, "link", "set", name_a, "up"])
        _run(["ip", "-n", ns_b, "link", "set", name_b, "up"])

    def _addr(self, ns: str, dev: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        _run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev, *extra])

    def build(self) -> None:
        cfg = self.cfg
        write_lab_zone(self.zone)
        r = self._ns(self.router_ns)
        # The router forwards and hashes flows by L4 too (src/dst address and port), §3.1.
        self._sysctl(r, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                     "net.ipv4.fib_multipath_hash_policy=1",
                     "net.ipv6.fib_multipath_hash_policy=1")
        peers = []
        for i in range(1, cfg.machines + 1):
            ns = self._ns(f"{NS_PREFIX}-{self.tag}-m{i}")
            self._link(r, f"m{i}", ns, "up0")
            self._addr(r, f"m{i}", f"10.53.{i}.1/24")
            self._addr(r, f"m{i}", f"fd53:0:{i}::1/64")
            self._addr(ns, "up0", f"10.53.{i}.2/24")
            self._addr(ns, "up0", f"fd53:0:{i}::2/64")
            _run(["ip", "-n", ns, "route", "add", "default", "via", f"10.53.{i}.1"])
            _run(["ip", "-n", ns, "-6", "route", "add", "default", "via", f"fd53:0:{i}::1"])
            wd = self.workdir / f"m{i}"
            wd.mkdir()
            m = Machine(i, ns, f"10.53.{i}.2", f"fd53:0:{i}::2", f"10.53.{i}.1",
                        f"fd53:0:{i}::1", wd)
            self.machines.append(m)
            peers.append(birdmod.RouterPeer(f"m{i}_v4", m.link4, MACHINE_AS, m.router4))
            peers.append(birdmod.RouterPeer(f"m{i}_v6", m.link6, MACHINE_AS, m.router6))
        for j in range(1, cfg.clients + 1):
            ns = self._ns(f"{NS_PREFIX}-{self.tag}-c{j}")
            self._link(r, f"c{j}", ns, "up0")
            self._addr(r, f"c{j}", f"10.53.{100 + j}.1/24")
            self._addr(r, f"c{j}", f"fd53:1:{j}::1/64")
            self._addr(ns, "up0", f"10.53.{100 + j}.2/24")
            self._addr(ns, "up0", f"fd53:1:{j}::2/64")
            _run(["ip", "-n", ns, "route", "add", "default", "via", f"10.53.{100 + j}.1"])
            _run(["ip", "-n", ns, "-6", "route", "add", "default", "via", f"fd53:1:{j}::1"])
            self.clients.append(ns)
        rcfg = birdmod.RouterConfig(router_id="10.53.0.1", local_as=ROUTER_AS, peers=peers,
                                    hold_time=cfg.hold_time, keepalive_time=cfg.keepalive_time,
                                    bfd=cfg.bfd)
        self.router_bird = birdmod.BirdProcess(self.workdir / "router",
                                               birdmod.render_router_config(rcfg),
                                               netns=r, name="bird")
        self.router_bird.start()
        if cfg.agents and cfg.etcd:
            self._start_etcd()
        for m in self.machines:
            self._start_machine(m)

    def _start_etcd(self) -> None:
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        data = self.workdir / "etcd"
        clients = ",".join(f"http://{m.router4}:{ETCD_PORT}" for m in self.machines)
        p = Proc("etcd", [etcd, "--name", "lab", "--data-dir", str(data),
                          "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT},{clients}",
                          "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                          "--listen-peer-urls", "http://127.0.0.1:2380",
                          "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                          "--initial-cluster", "lab=http://127.0.0.1:2380",
                          "--log-level", "warn"],
                 log=self.workdir / "etcd.log", netns=self.router_ns)
        self.router_procs["etcd"] = p
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not p.alive():
                raise LabError(f"etcd exited: {p.tail()}")
            # etcd listens inside the router namespace; check from there.
            rc = subprocess.run(["ip", "netns", "exec", self.router_ns, sys.executable, "-c",
                                 "import sys;from pop53.anycast.coord import EtcdClient;"
                                 f"sys.exit(0 if EtcdClient(['http://127.0.0.1:{ETCD_PORT}'],"
                                 "timeout=1).healthy() else 1)"],
                                env=child_env(), capture_output=True, timeout=15).returncode
            if rc == 0:
                return
            time.sleep(0.3)
        raise LabError(f"etcd did not become healthy: {p.tail()}")

    def _machine_node_config(self, m: Machine) -> birdmod.NodeConfig:
        cfg = self.cfg
        return birdmod.NodeConfig(
            router_id=m.link4, local_as=MACHINE_AS,
            neighbors=[birdmod.Neighbor(m.link4, m.router4, ROUTER_AS, "up_v4"),
                       birdmod.Neighbor(m.link6, m.router6, ROUTER_AS, "up_v6")],
            service=[SERVICE4, SERVICE6], signal=cfg.signal, interface="lo",
            role="input-delayed" if m.index in cfg.input_delayed else "normal",
            hold_time=cfg.hold_time, keepalive_time=cfg.keepalive_time, bfd=cfg.bfd)

    def _start_machine(self, m: Machine) -> None:
        from pop53.anycast.routes import ServiceRoutes

        cfg = self.cfg
        routes = ServiceRoutes([SERVICE4, SERVICE6], mode=cfg.signal, interface="lo",
                               netns=m.ns)
        # The server binds the service addresses, so they must exist before it starts.  Without
        # an agent the machine announces right away; with one, the agent announces once its
        # first probe round passes, so here only the addresses are put in place.
        if cfg.agents:
            ServiceRoutes([SERVICE4, SERVICE6], mode="address", interface="lo",
                          netns=m.ns).announce()
        else:
            routes.announce()
        listens = [SERVICE4.split("/")[0], SERVICE6.split("/")[0], "127.0.0.1"]
        cmd = dns_server_command(self.server, zone=self.zone, listens=listens,
                                 identity=m.name, workdir=m.workdir)
        m.procs["dns"] = Proc("dns", cmd, log=m.workdir / "dns.log", netns=m.ns)
        m.bird = birdmod.BirdProcess(m.workdir / "bird", birdmod.render_node_config(
            self._machine_node_config(m)), netns=m.ns, name="bird")
        m.bird.start()
        self.wait_dns(m)
        if cfg.agents:
            if cfg.signal == "address":
                # In address mode the address *is* the announcement: take it away again (the
                # server's sockets stay bound) and let the agent put it back.
                routes.withdraw()
            self._start_agent(m)

    def agent_config_path(self, m: Machine) -> Path:
        return m.workdir / "agent.toml"

    def _start_agent(self, m: Machine) -> None:
        cfg = self.cfg
        state = m.workdir / "agent"
        state.mkdir(exist_ok=True)
        lines = [
            f'name = "{m.name}"',
            f"interval = {cfg.agent_interval}",
            "timeout = 0.5",
            "slow_ms = 400",
            f"fail_after = {cfg.fail_after}",
            f"pass_after = {cfg.pass_after}",
            f'state_dir = "{state}"',
            f"never_suspend = {'true' if m.index in cfg.never_suspend else 'false'}",
            f'server = "127.0.0.1:{DNS_PORT}"',
            f'zones = ["{LAB_ZONE}"]',
            "tcp = true",
            "",
            "[routes]",
            f'addresses = ["{SERVICE4}", "{SERVICE6}"]',
            f'mode = "{cfg.signal}"',
            'interface = "lo"',
            "",
            "[[cases]]",
            f'qname = "www.{LAB_ZONE}"',
            'qtype = "A"',
            'expect = ["10.53.200.1"]',
        ]
        if cfg.etcd:
            lines += ["", "[etcd]", f'endpoints = ["http://{m.router4}:{ETCD_PORT}"]',
                      'prefix = "/pop53/lab"', f"slots = {cfg.slots}",
                      f"lease_ttl = {cfg.lease_ttl}"]
        if cfg.max_zone_age > 0:
            lines += ["", "[staleness]", 'source = "file-mtime"',
                      f'files = {{ "{LAB_ZONE}" = "{m.workdir / "zone-stamp"}" }}',
                      f"max_age = {cfg.max_zone_age}"]
            (m.workdir / "zone-stamp").touch()
        self.agent_config_path(m).write_text("\n".join(lines) + "\n")
        m.procs["agent"] = Proc("agent", [sys.executable, "-m", "pop53", "agent", "run",
                                          "--config", str(self.agent_config_path(m))],
                                log=m.workdir / "agent.log", netns=m.ns)

    def wait_dns(self, m: Machine, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = m.procs["dns"]
            if not p.alive():
                raise LabError(f"{m.name}: DNS server ({self.server}) exited: {p.tail()}")
            if self.identity_in(m.ns, "127.0.0.1") == m.name:
                return
            time.sleep(0.1)
        raise LabError(f"{m.name}: DNS server ({self.server}) did not answer with its NSID "
                       f"within {timeout}s: {m.procs['dns'].tail()}")

    def identity_in(self, ns: str, target: str) -> str | None:
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                            "import sys;from pop53.lab.pop import query_identity;"
                            f"print(query_identity({target!r}) or '')"],
                           capture_output=True, text=True, timeout=15, env=child_env())
        return p.stdout.strip() or None

    # -- observation -----------------------------------------------------------------------
    def router_nexthops(self, prefix: str = SERVICE4) -> list[str]:
        from pop53.anycast.routes import fib_nexthops
        return fib_nexthops(prefix, netns=self.router_ns)

    def machines_in_fib(self, prefix: str = SERVICE4) -> list[str]:
        hops = set(self.router_nexthops(prefix))
        return [m.name for m in self.machines if m.link4 in hops or m.link6 in hops]

    def wait_fib(self, predicate, timeout: float = 20.0, prefix: str = SERVICE4) -> list[str]:
        deadline = time.monotonic() + timeout
        last: list[str] = []
        while time.monotonic() < deadline:
            last = self.machines_in_fib(prefix)
            if predicate(last):
                return last
            time.sleep(0.05)
        raise LabError(f"router FIB for {prefix} did not reach the expected state within "
                       f"{timeout}s; last: {last}\n{self.diagnose()}")

    def diagnose(self) -> str:
        """BGP sessions and agent states, for error messages."""
        out = []
        try:
            if self.router_bird:
                out.append(self.router_bird.control.cmd("show", "protocols"))
        except Exception as exc:  # noqa: BLE001 - diagnostics must not mask the real error
            out.append(f"router birdc: {exc}")
        for m in self.machines:
            st = self.agent_state(m)
            if st:
                out.append(f"{m.name}: agent {st.get('state')}: {st.get('reason')}")
            for name, p in m.procs.items():
                if not p.alive():
                    out.append(f"{m.name}: {name} exited: {p.tail(500)}")
        return "\n".join(out)

    def agent_state(self, m: Machine) -> dict | None:
        try:
            return json.loads((m.workdir / "agent" / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def drain(self, m: Machine, on: bool) -> None:
        f = m.workdir / "agent" / "drain"
        if on:
            f.write_text("lab\n")
        else:
            f.unlink(missing_ok=True)

    def wait_agent(self, m: Machine, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = self.agent_state(m)
            if st and predicate(st):
                return st
            p = m.procs.get("agent")
            if p and not p.alive():
                raise LabError(f"{m.name}: agent exited: {p.tail()}")
            time.sleep(0.05)
        raise LabError(f"{m.name}: agent did not reach the expected state in {timeout}s: {st}")

    def start_clients(self, duration: float, interval: float = 0.1, timeout: float = 1.0,
                      target: str = SERVICE4.split("/")[0]) -> list[tuple[str, Proc, Path]]:
        out = []
        for j, ns in enumerate(self.clients, 1):
            f = self.workdir / f"client{j}.csv"
            p = Proc(f"c{j}", [sys.executable, "-m", "pop53.lab.pop", "client", "--target", target,
                               "--interval", str(interval), "--timeout", str(timeout),
                               "--duration", str(duration), "--out", str(f)],
                     log=self.workdir / f"client{j}.log", netns=ns)
            out.append((f"c{j}", p, f))
        return out

    # -- teardown --------------------------------------------------------------------------
    def teardown(self) -> None:
        for m in self.machines:
            for p in m.procs.values():
                try:
                    p.stop()
                except Exception:  # noqa: BLE001 - keep tearing down
                    pass
            if m.bird:
                m.bird.stop()
        for p in self.router_procs.values():
            p.stop()
        if self.router_bird:
            self.router_bird.stop()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.namespaces.clear()
        if not self.cfg.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def read_client_log(path: Path) -> list[tuple[float, bool, str]]:
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append((float(r["t_send"]), r["answered"] == "1", r["nsid"]))
    rows.sort()
    return rows


# -- the failover experiment (§4.1) ------------------------------------------------------------

@dataclass
class Event:
    t: float
    kind: str        # "withdraw" | "announce"
    machine: str
    round: int


def measure_gaps(events: list[Event], logs: dict[str, list[tuple[float, bool, str]]],
                 end: float) -> list[dict]:
    """One row per client per event.

    withdraw of X at t: like §4.1 (Figure 7b) the gap runs from the first query that got no
    answer (t_0) to the next answered query (t_Y); 0 if no query was lost (instantly rerouted).
    `shift_ms` is when this client's traffic last reached X after t.
    announce of X at t: like Figure 7a, the gap is t_X - t, the time until this client's first
    answer from X; empty if X never answered this client before the next event.
    """
    rows = []
    for k, ev in enumerate(events):
        t_end = events[k + 1].t if k + 1 < len(events) else end
        for client, log in logs.items():
            win = [q for q in log if ev.t <= q[0] < t_end]
            lost = [q for q in win if not q[1]]
            row = {"event": ev.kind, "machine": ev.machine, "client": client, "round": ev.round,
                   "t_event": f"{ev.t:.6f}", "queries": len(win), "lost": len(lost)}
            if ev.kind == "withdraw":
                if lost:
                    t0 = lost[0][0]
                    after = [q for q in win if q[0] > t0 and q[1]]
                    gap = ((after[0][0] - t0) * 1000) if after else (t_end - t0) * 1000
                    row["gap_start"] = f"{t0:.6f}"
                    row["gap_end"] = f"{after[0][0]:.6f}" if after else f"{t_end:.6f}"
                else:
                    gap = 0.0
                    row["gap_start"] = row["gap_end"] = ""
                hits = [q for q in win if q[1] and q[2] == ev.machine]
                row["shift_ms"] = f"{(hits[-1][0] - ev.t) * 1000:.1f}" if hits else "0.0"
                row["gap_ms"] = f"{gap:.1f}"
            else:
                hits = [q for q in win if q[1] and q[2] == ev.machine]
                row["gap_ms"] = f"{(hits[0][0] - ev.t) * 1000:.1f}" if hits else ""
                row["gap_start"] = row["gap_end"] = ""
                row["shift_ms"] = ""
            rows.append(row)
    return rows


CSV_FIELDS = ["event", "machine", "gap_ms", "client", "round", "t_event", "queries", "lost",
              "shift_ms", "gap_start", "gap_end"]


def write_failover_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def plot_failover_cdf(rows: list[dict], path: Path, title: str) -> None:
    """CDF of failover time per event kind, like the paper's Figure 8."""
    try:
        import matplotlib
    except ImportError:
        # the runtime install leaves the charting library out (the `bench` extra has it)
        raise Pop53Error("the failover chart needs matplotlib: pip install 'pop53[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("announce", "-"), ("withdraw", "--")):
        vals = sorted(float(r["gap_ms"]) / 1000 for r in rows
                      if r["event"] == kind and r["gap_ms"] != "")
        if not vals:
            continue
        ys = [(i + 1) / len(vals) for i in range(len(vals))]
        ax.step([0.0] + vals, [0.0] + ys, style, where="post", label=f"{kind} (n={len(vals)})")
    ax.set_xlabel("failover time (s)")
    ax.set_ylabel("CDF of measurements")
    ax.set_ylim(0, 1.02)
    # A little room left of 0 so an all-zero CDF (no query lost) stays visible.
    ax.set_xlim(left=-0.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for kind in ("withdraw", "announce"):
        vals = sorted(float(r["gap_ms"]) for r in rows if r["event"] == kind and r["gap_ms"] != "")
        if not vals:
            continue

        def pct(p: float) -> float:
            return vals[min(len(vals) - 1, max(0, math.ceil(p * len(vals)) - 1))]

        out[kind] = {"n": len(vals), "median_ms": pct(0.5), "p90_ms": pct(0.9),
                     "max_ms": vals[-1], "under_1s": sum(v < 1000 for v in vals) / len(vals),
                     "lost": sum(int(r["lost"]) for r in rows if r["event"] == kind)}
    return out


def run_failover(*, machines: int, rounds: int, out: Path, clients: int = 2,
                 hold: float = 2.5, signal_mode: str = "address", bfd: bool = True,
                 interval: float = 0.1, log=print, workdir: str | None = None) -> dict:
    """Withdraw and re-announce every machine in turn (through its agent's drain switch), while
    clients query the anycast address every `interval` s; write failover.csv and failover.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if machines < 2:
        raise LabError("failover needs at least 2 machines (someone must keep answering)")
    cfg = LabConfig(machines=machines, clients=clients, signal=signal_mode, bfd=bfd,
                    agents=True, etcd=False, agent_interval=0.2, pass_after=1, fail_after=3)
    events: list[Event] = []
    with Lab(cfg, workdir) as lab:
        log(f"lab {lab.tag}: {machines} machines, {clients} clients, server={lab.server}, "
            f"signal={signal_mode}, bfd={bfd}")
        lab.wait_fib(lambda ms: len(ms) == machines, timeout=30)
        duration = rounds * machines * 2 * hold + 3 * hold + 5
        cl = lab.start_clients(duration=duration, interval=interval)
        try:
            time.sleep(hold)
            for rnd in range(1, rounds + 1):
                for m in lab.machines:
                    for kind in ("withdraw", "announce"):
                        before = time.time()
                        lab.drain(m, kind == "withdraw")
                        want = "drained" if kind == "withdraw" else "serving"
                        st = lab.wait_agent(m, lambda s: s["state"] == want and
                                            s.get("last_change", {}).get("time", 0) >= before,
                                            timeout=10)
                        t_ev = st["last_change"]["time"]
                        events.append(Event(t_ev, kind, m.name, rnd))
                        log(f"round {rnd}: {kind} {m.name} at +{t_ev - before:.3f}s")
                        time.sleep(hold)
            end = time.time()
            time.sleep(1.5)
        finally:
            for _n, p, _f in cl:
                p.stop(timeout=10)
        logs = {n: read_client_log(f) for n, _p, f in cl}
    rows = measure_gaps(events, logs, end)
    write_failover_csv(rows, out / "failover.csv")
    plot_failover_cdf(rows, out / "failover.png",
                      f"pop53 lab failover: {machines} machines, {rounds} rounds, {signal_mode}")
    with open(out / "queries.json", "w") as f:
        json.dump({"events": [e.__dict__ for e in events],
                   "clients": {n: l for n, l in logs.items()}}, f)
    return {"rows": rows, "events": events, "logs": logs, "summary": summarize(rows)}


# -- scenarios ---------------------------------------------------------------------------------

def _losses(logs: dict[str, list[tuple[float, bool, str]]], t_from: float, t_to: float
            ) -> list[tuple[str, float]]:
    return [(c, q[0]) for c, log in logs.items() for q in log if t_from <= q[0] < t_to and not q[1]]


def _answered_by(logs: dict[str, list[tuple[float, bool, str]]], t_from: float, t_to: float
                 ) -> dict[str, int]:
    out: dict[str, int] = {}
    for log in logs.values():
        for t, ok, nsid in log:
            if ok and t_from <= t < t_to:
                out[nsid] = out.get(nsid, 0) + 1
    return dict(sorted(out.items()))


def run_kill_server(*, machines: int = 3, clients: int = 2, log=print,
                    workdir: str | None = None) -> dict:
    """Kill one machine's DNS server: its agent fails N rounds, takes a slot and withdraws; the
    router drops it; clients lose only the queries hashed to it before that.  Then restart the
    server: after M passes the agent announces again."""
    cfg = LabConfig(machines=machines, clients=clients, signal="route", agents=True, etcd=True,
                    slots=1, agent_interval=0.3, fail_after=3, pass_after=3)
    checks: dict[str, bool] = {}
    with Lab(cfg, workdir) as lab:
        log(f"lab {lab.tag}: {machines} machines, server={lab.server}, agents with K=1")
        lab.wait_fib(lambda ms: len(ms) == machines, timeout=30)
        for m in lab.machines:
            lab.wait_agent(m, lambda s: s["state"] == "serving")
        victim = lab.machines[0]
        cl = lab.start_clients(duration=60)
        try:
            time.sleep(2)
            t_kill = time.time()
            victim.procs["dns"].signal(signal.SIGKILL)
            log(f"killed {victim.name}'s DNS server (pid {victim.procs['dns'].pid})")
            st = lab.wait_agent(victim, lambda s: s["state"] == "suspended", timeout=15)
            t_susp = st["last_change"]["time"]
            lab.wait_fib(lambda ms: victim.name not in ms, timeout=10)
            t_fib = time.time()
            log(f"agent {victim.name}: suspended after {t_susp - t_kill:.2f}s "
                f"(slot {st['slot']}): {st['reason']}")
            log(f"router FIB without {victim.name} after {t_fib - t_kill:.2f}s")
            time.sleep(2)
            t_restart = time.time()
            victim.procs["dns"] = Proc("dns", dns_server_command(
                lab.server, zone=lab.zone, listens=[SERVICE4.split("/")[0],
                                                    SERVICE6.split("/")[0], "127.0.0.1"],
                identity=victim.name, workdir=victim.workdir), log=victim.workdir / "dns2.log",
                netns=victim.ns)
            st2 = lab.wait_agent(victim, lambda s: s["state"] == "serving", timeout=20)
            lab.wait_fib(lambda ms: victim.name in ms, timeout=10)
            log(f"server restarted; agent announced again after "
                f"{st2['last_change']['time'] - t_restart:.2f}s: {st2['reason']}")
            time.sleep(1.5)
            t_end = time.time()
        finally:
            for _n, p, _f in cl:
                p.stop(timeout=10)
        logs = {n: read_client_log(f) for n, _p, f in cl}
    lost_before = _losses(logs, 0, t_kill)
    lost_outage = _losses(logs, t_kill, t_susp + 1.0)
    lost_after = _losses(logs, t_susp + 1.0, t_end)
    # A round costs at most interval + one timeout per transport (missing -> rest skipped).
    bound = cfg.fail_after * (cfg.agent_interval + 2 * 0.5) + 1.0
    checks[f"agent suspended within N rounds (+1s): {bound:.1f}s"] = t_susp - t_kill <= bound
    checks["no lost query before the kill"] = not lost_before
    checks["no lost query once withdrawn (+1s)"] = not lost_after
    checks["victim answers again after restart"] = \
        _answered_by(logs, t_restart, t_end).get(victim.name, 0) > 0
    log(f"lost queries: {len(lost_outage)} between kill and withdrawal, {len(lost_after)} after")
    return {"checks": checks, "t_detect": t_susp - t_kill, "t_fib": t_fib - t_kill,
            "lost": len(lost_outage)}


def run_freeze_bird(*, machines: int = 2, clients: int = 2, bfd: bool = True, log=print,
                    workdir: str | None = None, hold_time: int = 3) -> dict:
    """Freeze a machine (SIGSTOP its BIRD and its DNS server: a hung machine).  The router can
    only notice through BGP: BFD (3 x 100 ms) or the hold timer (`hold_time` s) bounds how long
    it keeps sending queries there."""
    cfg = LabConfig(machines=machines, clients=clients, signal="route", agents=False, etcd=False,
                    bfd=bfd, hold_time=hold_time)
    bound = 0.3 if bfd else float(hold_time)
    with Lab(cfg, workdir) as lab:
        log(f"lab {lab.tag}: {machines} machines, server={lab.server}, "
            f"{'BFD 3x100ms' if bfd else f'no BFD, hold time {hold_time}s'}")
        lab.wait_fib(lambda ms: len(ms) == machines, timeout=30)
        victim = lab.machines[0]
        cl = lab.start_clients(duration=60)
        try:
            time.sleep(2)
            t_freeze = time.time()
            victim.bird.signal(signal.SIGSTOP)
            victim.procs["dns"].signal(signal.SIGSTOP)
            lab.wait_fib(lambda ms: victim.name not in ms, timeout=hold_time + 10)
            t_fib = time.time()
            log(f"froze {victim.name} (BIRD pid {victim.bird.pid}, DNS pid "
                f"{victim.procs['dns'].pid}); router dropped it after {t_fib - t_freeze:.2f}s")
            time.sleep(1.5)
            victim.bird.signal(signal.SIGCONT)
            victim.procs["dns"].signal(signal.SIGCONT)
            t_thaw = time.time()
            lab.wait_fib(lambda ms: victim.name in ms, timeout=30)
            log(f"thawed; back in the FIB after {time.time() - t_thaw:.2f}s")
            time.sleep(1)
            t_end = time.time()
        finally:
            for _n, p, _f in cl:
                p.stop(timeout=10)
        logs = {n: read_client_log(f) for n, _p, f in cl}
    lost = _losses(logs, t_freeze, t_thaw)
    last_lost = max((t for _c, t in lost), default=t_freeze) - t_freeze
    slack = 1.0
    checks = {f"router dropped the frozen machine within {bound:g}s + {slack:g}s":
              t_fib - t_freeze <= bound + slack,
              f"clients' last lost query within {bound:g}s + {slack:g}s of the freeze":
              last_lost <= bound + slack,
              "no lost query before the freeze": not _losses(logs, 0, t_freeze)}
    log(f"lost {len(lost)} queries; last one sent {last_lost:.2f}s after the freeze")
    return {"checks": checks, "t_fib": t_fib - t_freeze, "last_lost": last_lost,
            "lost": len(lost), "bound": bound}


def run_mass_failure(*, machines: int = 12, fail: int = 10, slots: int = 3, clients: int = 3,
                     settle: float = 6.0, log=print, workdir: str | None = None) -> dict:
    """Fail `fail` machines at once while only K=`slots` may suspend.  The failure is stale
    metadata (§4.2.2): the lab stops refreshing their zone stamps.  Exactly K withdraw; the rest
    report that they want to suspend and keep answering (§4.2.1: "always return an answer")."""
    import threading

    if not 0 < fail <= machines:
        raise LabError("--fail must be between 1 and --machines")
    max_age = 3.0
    cfg = LabConfig(machines=machines, clients=clients, signal="route", agents=True, etcd=True,
                    slots=slots, agent_interval=0.5, fail_after=3, pass_after=3,
                    max_zone_age=max_age, lease_ttl=3)
    stop = threading.Event()
    failed: set[int] = set()
    result: dict = {}
    with Lab(cfg, workdir) as lab:
        def refresh() -> None:  # the metadata pipeline, delivering to healthy machines only
            while not stop.wait(0.5):
                for m in lab.machines:
                    if m.index not in failed:
                        os.utime(m.workdir / "zone-stamp")
        th = threading.Thread(target=refresh, daemon=True)
        th.start()
        try:
            log(f"lab {lab.tag}: {machines} machines, server={lab.server}, K={slots}")
            lab.wait_fib(lambda ms: len(ms) == machines, timeout=60)
            for m in lab.machines:
                lab.wait_agent(m, lambda s: s["state"] == "serving", timeout=30)
            cl = lab.start_clients(duration=120)
            try:
                time.sleep(2)
                victims = lab.machines[:fail]
                t_fail = time.time()
                failed.update(m.index for m in victims)
                log(f"metadata stops reaching {', '.join(m.name for m in victims)}")
                deadline = time.monotonic() + max_age + 3 * 0.5 + 15
                while time.monotonic() < deadline:
                    states = {m.name: (lab.agent_state(m) or {}).get("state") for m in lab.machines}
                    if sum(s == "suspended" for s in states.values()) == min(slots, fail) and \
                            sum(s == "wants-suspend" for s in states.values()) == fail - min(slots, fail):
                        break
                    time.sleep(0.1)
                t_settled = time.time()
                # Hold: the number withdrawn must stay exactly K the whole time.
                fib_counts = []
                susp_counts = []
                t_hold_end = time.monotonic() + settle
                while time.monotonic() < t_hold_end:
                    fib_counts.append(len(lab.machines_in_fib()))
                    sts = [lab.agent_state(m) or {} for m in lab.machines]
                    susp_counts.append(sum(s.get("state") == "suspended" for s in sts))
                    time.sleep(0.2)
                t_end = time.time()
                sts = {m.name: lab.agent_state(m) or {} for m in lab.machines}
                fib = lab.machines_in_fib()
                holders = {}
                for n, s in sts.items():
                    if s.get("slot") is not None:
                        holders[s["slot"]] = n
            finally:
                for _n, p, _f in cl:
                    p.stop(timeout=10)
            logs = {n: read_client_log(f) for n, _p, f in cl}
        finally:
            stop.set()
            th.join(2)
    k = min(slots, fail)
    suspended = sorted(n for n, s in sts.items() if s.get("state") == "suspended")
    wanting = sorted(n for n, s in sts.items() if s.get("state") == "wants-suspend")
    answered = _answered_by(logs, t_settled, t_end)
    lost = _losses(logs, t_fail, t_end)
    for n in sorted(sts, key=lambda x: int(x[1:])):
        log(f"  {n}: {sts[n].get('state'):14s} slot={sts[n].get('slot')} "
            f"{'in FIB' if n in fib else 'withdrawn'}; {sts[n].get('reason', '')[:110]}")
    log(f"suspended: {suspended}; slots: {holders}; want to suspend but may not: {wanting}")
    log(f"router FIB: {len(fib)} machines; answered clients while settled: {answered}")
    checks = {
        f"exactly {k} suspended": len(suspended) == k,
        f"exactly {k} withdrawn from the router FIB": len(fib) == machines - k,
        f"withdrawn count stayed {k} for {settle:g}s": set(fib_counts) == {machines - k}
        and set(susp_counts) == {k},
        f"{fail - k} failed machines want to suspend and keep answering":
            len(wanting) == fail - k and all(answered.get(n, 0) > 0 for n in wanting),
        "no query lost": not lost,
    }
    result.update(checks=checks, suspended=suspended, wanting=wanting, fib=fib,
                  answered=answered, lost=len(lost), holders=holders)
    return result


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pop53.lab.pop")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client", help="query the anycast address periodically (lab internal)")
    c.add_argument("--target", required=True)
    c.add_argument("--port", type=int, default=DNS_PORT)
    c.add_argument("--interval", type=float, default=0.1)
    c.add_argument("--timeout", type=float, default=1.0)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    probe_client(a.target, a.port, a.interval, a.timeout, a.duration, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
