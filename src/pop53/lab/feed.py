"""The feed in the PoP lab: a NATS JetStream cluster in its own namespaces and pop53 machines
that subscribe to it (issue 11).

Topology added to pop.py's (names ``p53a-<tag>-nK``)::

    NATS node n1 (10.53.151.2) ──┐
    NATS node n2 (10.53.152.2) ──┼── router r ── machines m1..mN (pop53 serve + [feed])
    NATS node n3 (10.53.153.2) ──┘          └── clients (the publisher runs in c1)

The nodes form one cluster over the lab's network (routes on port 6222 through the router);
the stream is created with one replica per node, so it stays available with one node down.
Every machine lists all nodes in `[feed] servers` and serves the embedded mapping example
(`e1.example.net.`, map `world`, targets eu1/eu2/us1/ap1) next to the lab zone; it also listens
on its link address so a prober can ask each machine directly.  Processes are stopped by PID.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from pop53.lab.process import (DNS_PORT, SERVICE4, SERVICE6, LabError, Proc, _fmt_listen,
                               child_env)

CLIENT_PORT = 4222
ROUTE_PORT = 6222
DATA = Path(__file__).resolve().parents[1] / "data"
KEY_NAME = "lab"


def node_addr(k: int) -> str:
    return f"10.53.{150 + k}.2"


class NatsCluster:
    """`n` nats-server nodes, one per namespace, clustered over the lab network."""

    def __init__(self, lab, n: int):
        if not 1 <= n <= 9:
            raise LabError("feed_nodes must be between 1 and 9")
        self.lab = lab
        self.n = n
        self.namespaces: list[str] = []
        self.procs: dict[int, Proc] = {}
        self.heartbeat: Proc | None = None
        self.dir = lab.workdir / "nats"

    @property
    def urls(self) -> list[str]:
        return [f"nats://{node_addr(k)}:{CLIENT_PORT}" for k in range(1, self.n + 1)]

    def build(self) -> None:
        lab = self.lab
        for k in range(1, self.n + 1):
            ns = lab.net.add(f"{lab.router_ns[:-2]}-n{k}")
            lab.net.attach(lab.router_ns, f"n{k}", ns, f"10.53.{150 + k}", f"fd53:2:{k}")
            self.namespaces.append(ns)
        for k in range(1, self.n + 1):
            self.start(k)
        self.wait_ready()
        if lab.cfg.agents:       # the agents read the feed's staleness: keep it fresh
            self.start_heartbeats()

    def start_heartbeats(self, every: float = 0.5) -> Proc:
        """`pop53 publish heartbeat` every `every` s from the first client (stop it by PID:
        `self.heartbeat.stop()`, and every normal machine's feed goes stale)."""
        priv, _ = key_paths(self.lab)
        cmd = [sys.executable, "-m", "pop53", "publish", "--key", str(priv), "--sender",
               "lab-heartbeat"]
        for u in self.urls:
            cmd += ["--server", u]
        self.heartbeat = Proc("heartbeat", cmd + ["heartbeat", "--every", str(every), "--count",
                                                  "1000000"],
                              log=self.dir / "heartbeat.log", netns=self.lab.clients[0])
        return self.heartbeat

    def _conf(self, k: int) -> Path:
        d = self.dir / f"n{k}"
        d.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats-route://{node_addr(j)}:{ROUTE_PORT}"
                           for j in range(1, self.n + 1) if j != k)
        cluster = (f"cluster {{\n  name: pop53lab\n  listen: {node_addr(k)}:{ROUTE_PORT}\n"
                   f"  routes: [ {routes} ]\n}}\n") if self.n > 1 else ""
        conf = d / "nats.conf"
        conf.write_text(f"server_name: n{k}\nlisten: {node_addr(k)}:{CLIENT_PORT}\n"
                        "max_payload: 64MB\nmax_pending: 256MB\n"
                        f"jetstream {{ store_dir: \"{d / 'js'}\" }}\n{cluster}")
        return conf

    def start(self, k: int) -> None:
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.procs[k] = Proc(f"nats{k}", [exe, "-c", str(self._conf(k))],
                             log=self.dir / f"n{k}.log", netns=self.namespaces[k - 1])

    def kill(self, k: int) -> int:
        """SIGKILL node k (by its PID); returns the PID."""
        import signal

        p = self.procs[k]
        p.signal(signal.SIGKILL)
        p.popen.wait(10)
        return p.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until JetStream answers and the stream exists with one replica per node."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for k, p in self.procs.items():
                if not p.alive():
                    raise LabError(f"nats node n{k} exited: {p.tail()}")
            r = self.run_in_client(["stream", "--servers", ",".join(self.urls),
                                    "--replicas", str(self.n)], timeout=30)
            if r.returncode == 0:
                return
            last = (r.stderr or r.stdout).strip()[-500:]
            time.sleep(0.5)
        raise LabError(f"the NATS cluster did not form within {timeout}s: {last}")

    def run_in_client(self, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`python -m pop53.lab.feedprobe ARGS` in the first client's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.lab.clients[0], sys.executable, "-m",
                               "pop53.lab.feedprobe", *args], capture_output=True, text=True,
                              timeout=timeout, env=child_env())

    def probe(self, out: Path, kind: str, *, count: int, **opts) -> Proc:
        """Start the publisher/prober (feedprobe run) in the first client's namespace against
        every machine's link address; it writes its JSON result to `out`."""
        priv, _ = key_paths(self.lab)
        args = ["run", "--servers", ",".join(self.urls), "--key", str(priv), "--machines",
                ",".join(m.link4 for m in self.lab.machines), "--kind", kind, "--count",
                str(count), "--example-map", str(DATA / "example.map"), "--out", str(out)]
        for k, v in opts.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        return Proc(f"feedprobe-{kind}", [sys.executable, "-m", "pop53.lab.feedprobe", *args],
                    log=out.with_suffix(".log"), netns=self.lab.clients[0])

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for p in self.procs.values():
            p.stop()


def key_paths(lab) -> tuple[Path, Path]:
    """The lab's feed signing key (made once per lab)."""
    from pop53.feed.message import keygen

    d = lab.workdir / "keys"
    priv, pub = d / f"{KEY_NAME}.key", d / f"{KEY_NAME}.pub"
    if not priv.exists():
        keygen(str(d), KEY_NAME)
    return priv, pub


def agent_staleness(lab, m) -> list[str]:
    """The agent's [staleness] lines: the feed's status file as a source (stale beyond
    `feed_stale_after`), beside the zone stamp when the lab has one."""
    path = m.workdir / "state" / "feed-status.json"
    src = (f'sources = [{{ source = "xfr-status", path = "{path}", '
           f"max_age = {lab.cfg.feed_stale_after} }}]")
    return [src] if lab.cfg.max_zone_age > 0 else ["", "[staleness]", src]


def machine_command(lab, m) -> list[str]:
    """`pop53 serve -c` with the lab zone, the mapping example and `[feed]` on every node."""
    _, pub = key_paths(lab)
    wd = m.workdir
    for f in ("example.net.zone", "example.map"):
        shutil.copy(DATA / f, wd / f)
    listens = [SERVICE4.split("/")[0], SERVICE6.split("/")[0], "127.0.0.1", m.link4]
    servers = ", ".join(f'"{u}"' for u in lab.feed.urls)
    listen = ", ".join(f'"{_fmt_listen(a, DNS_PORT)}"' for a in listens)
    conf = wd / "pop53.toml"
    conf.write_text(f"""[server]
listen = [{listen}]
workers = 1
state = "{wd / 'state'}"
[[zone]]
name = "pop53.lab."
file = "{lab.zone}"
[[zone]]
name = "example.net."
file = "example.net.zone"
[feed]
servers = [{servers}]
trusted_keys = ["{pub}"]
stale_after = {lab.cfg.feed_stale_after}
{f"delay = {lab.cfg.feed_delay}" if m.index in lab.cfg.input_delayed else ""}
{(DATA / 'example-mapping.toml').read_text()}""")
    return [sys.executable, "-m", "pop53", "serve", "-c", str(conf), "--identity", m.name]
