"""A PoP in network namespaces on one machine (the failover experiment on it: experiments.py).

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

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pop53.anycast import bird as birdmod
from pop53.lab.machine import Machine, agent_config, node_config, services
from pop53.lab.netns import Namespaces
from pop53.lab.process import (ETCD_PORT, MACHINE_AS, NS_PREFIX, ROUTER_AS, SERVICE4,
                               LabError, Proc, child_env, dns_server_command, server_kind,
                               write_lab_zone)

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
    feed_nodes: int = 0              # > 0: a NATS cluster and machines on the feed (lab/feed.py)
    feed_stale_after: float = 30.0   # also the agents' max_age for feed-status.json
    feed_delay: float = 600.0        # [feed] delay of the input_delayed machines
    server: str | None = None        # "pop53" | "knot" | None (auto)
    keep_dir: bool = False
    services: tuple[str, ...] = ()   # more anycast prefixes (other clouds) every machine announces
    plan: str | None = None          # a cloud plan (clouds.toml): the PoP must keep to it
    pop: str = "lab"                 # this PoP's name in the plan


def check_plan(cfg: LabConfig) -> None:
    """Refuse a PoP whose machines' BIRD configs would advertise more clouds than the plan's
    `max_per_pop` (or a prefix of no cloud), before anything is built (issue 13).  The check
    reads the BIRD config a machine would load, as `pop53 clouds check` reads deployed ones."""
    if cfg.plan is None:
        return
    from pop53.clouds.check import check_machine
    from pop53.clouds.plan import load_plan
    from pop53.errors import ConfigError

    m = Machine(1, "-", "10.53.1.2", "fd53:0:1::2", "10.53.1.1", "fd53:0:1::1", Path("-"))
    announced = birdmod.service_prefixes(birdmod.render_node_config(node_config(cfg, m)))
    try:
        problems = check_machine(load_plan(cfg.plan), cfg.pop, announced)
    except ConfigError as exc:
        raise LabError(str(exc)) from None
    if problems:
        raise LabError(f"the cloud plan refuses this PoP: {problems[-1]}")


class Lab:
    def __init__(self, cfg: LabConfig, workdir: str | os.PathLike | None = None):
        if not 1 <= cfg.machines <= 99:
            raise LabError("machines must be between 1 and 99")
        if not 1 <= cfg.clients <= 99:
            raise LabError("clients must be between 1 and 99")
        check_plan(cfg)
        self.cfg = cfg
        self.tag = secrets.token_hex(2)
        base = Path(workdir) if workdir else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}-{self.tag}-", dir=base))
        self.router_ns = f"{NS_PREFIX}-{self.tag}-r"
        self.net = Namespaces()
        self.machines: list[Machine] = []
        self.clients: list[str] = []
        self.router_bird: birdmod.BirdProcess | None = None
        self.router_procs: dict[str, Proc] = {}
        self.feed = None                 # pop53.lab.feed.NatsCluster with cfg.feed_nodes
        self.server = cfg.server or server_kind()
        self.zone = self.workdir / "pop53.lab.zone"

    @property
    def namespaces(self) -> list[str]:
        return self.net.names

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
    def build(self) -> None:
        cfg = self.cfg
        write_lab_zone(self.zone)
        r = self.net.add(self.router_ns)
        # The router forwards and hashes flows by L4 too (src/dst address and port), §3.1.
        self.net.sysctl(r, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                     "net.ipv4.fib_multipath_hash_policy=1",
                     "net.ipv6.fib_multipath_hash_policy=1")
        peers = []
        for i in range(1, cfg.machines + 1):
            ns = self.net.add(f"{NS_PREFIX}-{self.tag}-m{i}")
            self.net.attach(r, f"m{i}", ns, f"10.53.{i}", f"fd53:0:{i}")
            wd = self.workdir / f"m{i}"
            wd.mkdir()
            m = Machine(i, ns, f"10.53.{i}.2", f"fd53:0:{i}::2", f"10.53.{i}.1",
                        f"fd53:0:{i}::1", wd)
            self.machines.append(m)
            peers.append(birdmod.RouterPeer(f"m{i}_v4", m.link4, MACHINE_AS, m.router4))
            peers.append(birdmod.RouterPeer(f"m{i}_v6", m.link6, MACHINE_AS, m.router6))
        for j in range(1, cfg.clients + 1):
            ns = self.net.add(f"{NS_PREFIX}-{self.tag}-c{j}")
            self.net.attach(r, f"c{j}", ns, f"10.53.{100 + j}", f"fd53:1:{j}")
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
        if cfg.feed_nodes:
            from pop53.lab.feed import NatsCluster
            self.feed = NatsCluster(self, cfg.feed_nodes)
            self.feed.build()
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

    def _start_machine(self, m: Machine) -> None:
        from pop53.anycast.routes import ServiceRoutes

        cfg = self.cfg
        routes = ServiceRoutes(services(cfg), mode=cfg.signal, interface="lo", netns=m.ns)
        # The server binds the service addresses, so they must exist before it starts.  Without
        # an agent the machine announces right away; with one, the agent announces once its
        # first probe round passes, so here only the addresses are put in place.
        if cfg.agents:
            ServiceRoutes(services(cfg), mode="address", interface="lo", netns=m.ns).announce()
        else:
            routes.announce()
        listens = [p.split("/")[0] for p in services(cfg)] + ["127.0.0.1"]
        cmd = dns_server_command(self.server, zone=self.zone, listens=listens,
                                 identity=m.name, workdir=m.workdir)
        if self.feed is not None:
            from pop53.lab.feed import machine_command
            cmd = machine_command(self, m)
        m.procs["dns"] = Proc("dns", cmd, log=m.workdir / "dns.log", netns=m.ns)
        m.bird = birdmod.BirdProcess(m.workdir / "bird", birdmod.render_node_config(
            node_config(self.cfg, m)), netns=m.ns, name="bird")
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
        if cfg.max_zone_age > 0:
            (m.workdir / "zone-stamp").touch()
        text = agent_config(cfg, m, state)
        if self.feed is not None:
            from pop53.lab.feed import agent_staleness
            text += "\n".join(agent_staleness(self, m)) + "\n"
        self.agent_config_path(m).write_text(text)
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
                            "import sys;from pop53.lab.probe import query_identity;"
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
            p = Proc(f"c{j}", [sys.executable, "-m", "pop53.lab.probe", "client", "--target", target,
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
        if self.feed is not None:
            self.feed.stop()
        if self.router_bird:
            self.router_bird.stop()
        self.net.delete_all()
        if not self.cfg.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


if __name__ == "__main__":      # `python -m pop53.lab.pop client ...` (older labs): the probe
    from pop53.lab.probe import main
    sys.exit(main())
