"""One changed zone among many: from the reload command to the new serial answered, pop53 beside
Knot (`knotc zone-reload ZONE`) and NSD (`nsd-control reload ZONE`) in one run (issue 14 point 2).

    python3 -m bench.zone_reload                      # 1,000 zones, 9 rounds
    python3 -m bench.zone_reload --zones 1000 --rounds 9 --out bench/results/zone_reload

Each server serves its own copy of the same N small zones (21 records each) on a loopback port.
A round picks a zone at random, rewrites its file with the next serial in every server's copy,
then, one server after the other (the order rotates each round), runs that server's reload
command for the zone and polls the zone's SOA over UDP (every 1 ms) until the new serial is
answered: the time is from just before the command starts to that answer.  pop53 is measured
two ways: `pop53-ctl zone-reload ZONE` (what an operator types: scripts/pop53-ctl set up as pip
installs it, which runs the client under `python -S`; it includes the interpreter's start-up)
and the same command sent on the control socket from this process (what knotc and
nsd-control, small C programs, cost).  Medians over the
rounds; the machine's load average is recorded before and after.  Not a test: nothing here
asserts a time.

With `--big RECORDS` every server also serves `big.bench.` (RECORDS A records) and three cases
are measured side by side: one small zone changed (as above, the big zone present), the big
zone changed (`knotc zone-reload big.bench.`, `nsd-control reload big.bench.`, `pop53 ctl
zone-reload big.bench.`), and a zone added to the configuration (`knotc reload` after knot.conf
gained it, `nsd-control reconfig` after nsd.conf did, `pop53 ctl reload` after the TOML did),
each until the changed or added zone's SOA answers.

    python3 -m bench.zone_reload --zones 1000 --big 1000000 --rounds 5 --big-rounds 2 --add-rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query

from .peers import procs
from .peers.run import free_port

REPO = Path(__file__).resolve().parents[1]


def zone_text(name: str, serial: int) -> str:
    lines = [f"$ORIGIN {name}", "$TTL 300", f"@ IN SOA ns1 hostmaster {serial} 3600 600 86400 300",
             "@ IN NS ns1", "@ IN NS ns2", "ns1 IN A 192.0.2.1", "ns2 IN A 192.0.2.2",
             "@ IN A 192.0.2.10", "www IN CNAME @", "@ IN MX 10 mail", "mail IN A 192.0.2.20"]
    lines += [f"h{j} IN A 198.51.100.{j}" for j in range(10)]
    return "\n".join(lines) + "\n"


BIG = "big.bench."


def big_zone_text(serial: int, records: int) -> str:
    head = (f"$ORIGIN {BIG}\n$TTL 300\n@ IN SOA ns1 hostmaster {serial} 3600 600 86400 300\n"
            "@ IN NS ns1\nns1 IN A 192.0.2.1\n")
    return head + "".join(f"h{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n"
                          for i in range(records))


def write_big(d: Path, serial: int, records: int) -> None:
    (d / f"{BIG}zone").write_text(big_zone_text(serial, records))


def names(n: int) -> list[str]:
    return [f"z{i:04d}.bench." for i in range(n)]


def write_zones(d: Path, zones: list[str], serial: int = 1) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for z in zones:
        (d / f"{z}zone").write_text(zone_text(z, serial))


def soa_serial(port: int, zone: str) -> int | None:
    try:
        r = dns.query.udp(dns.message.make_query(zone, "SOA"), "127.0.0.1", port=port, timeout=0.2)
        return r.answer[0][0].serial if r.answer else None
    except Exception:
        return None


def wait_serial(port: int, zone: str, serial: int, limit: float = 120.0) -> float | None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if soa_serial(port, zone) == serial:
            return time.monotonic()
        time.sleep(0.001)
    return None


class Server:
    key = ""

    def __init__(self, work: Path, zones: list[str], big: int = 0):
        self.work, self.zones, self.port = work, list(zones), free_port()
        shutil.rmtree(work, ignore_errors=True)
        write_zones(work / "zones", zones)
        if big:
            write_big(work / "zones", 1, big)
            self.zones.append(BIG)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = self.configure()
        self.log = open(self.work / "server.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.work, start_new_session=True, env=self.env())
        if wait_serial(self.port, self.zones[-1], 1, 1800) is None:
            raise SystemExit(f"{self.key} did not start: see {self.work / 'server.log'}")

    def env(self):
        return None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.log.close()

    def reload(self, zone: str) -> None:
        subprocess.run(self.command(zone), check=True, capture_output=True, timeout=900,
                       env=self.cli_env())

    def cli_env(self):
        return None

    def add_zone(self, zone: str) -> None:
        """The zone's file is written; the configuration gains it, then the reload command."""
        self.zones.append(zone)
        self.configure()
        subprocess.run(self.add_command(), check=True, capture_output=True, timeout=900,
                       env=self.cli_env())


class Knot(Server):
    key = "knot"

    def configure(self):
        w = self.work
        (w / "db").mkdir(exist_ok=True)
        zones = "".join(f"  - domain: {z}\n    file: \"{w / 'zones' / (z + 'zone')}\"\n"
                        for z in self.zones)
        (w / "knot.conf").write_text(
            f"server:\n    rundir: \"{w}\"\n    listen: 127.0.0.1@{self.port}\n"
            f"control:\n    listen: \"{w / 'knot.sock'}\"\n"
            f"log:\n  - target: stderr\n    any: warning\n"
            f"database:\n    storage: \"{w / 'db'}\"\n"
            f"template:\n  - id: default\n    storage: \"{w}\"\n    zonefile-sync: -1\n"
            f"    zonefile-load: whole\n    journal-content: none\n"
            f"zone:\n{zones}")
        return ["knotd", "-c", str(w / "knot.conf")]

    def command(self, zone):
        return ["knotc", "-c", str(self.work / "knot.conf"), "zone-reload", zone]

    def add_command(self):
        return ["knotc", "-c", str(self.work / "knot.conf"), "reload"]


class NSD(Server):
    key = "nsd"

    def configure(self):
        w = self.work
        zones = "".join(f"zone:\n    name: {z}\n    zonefile: \"{w / 'zones' / (z + 'zone')}\"\n"
                        for z in self.zones)
        (w / "nsd.conf").write_text(
            f"server:\n    server-count: 1\n    ip-address: 127.0.0.1@{self.port}\n"
            f"    do-ip6: no\n    username: \"\"\n    chroot: \"\"\n    zonesdir: \"{w}\"\n"
            f"    database: \"\"\n    zonelistfile: \"{w / 'zone.list'}\"\n"
            f"    xfrdfile: \"{w / 'xfrd.state'}\"\n    xfrdir: \"{w}\"\n"
            f"    pidfile: \"{w / 'nsd.pid'}\"\n    logfile: \"{w / 'nsd.log'}\"\n"
            f"    verbosity: 0\n    rrl-ratelimit: 0\n"
            f"remote-control:\n    control-enable: yes\n    control-interface: \"{w / 'nsd.sock'}\"\n"
            f"{zones}")
        return ["nsd", "-d", "-c", str(w / "nsd.conf")]

    def command(self, zone):
        return ["nsd-control", "-c", str(self.work / "nsd.conf"), "reload", zone]

    def add_command(self):
        return ["nsd-control", "-c", str(self.work / "nsd.conf"), "reconfig"]


def cli_env(pycache: Path) -> dict:
    """The environment of a pop53 CLI run: this tree's sources, byte-compiled once into
    `pycache` as pip byte-compiles an installed package (with PYTHONDONTWRITEBYTECODE, as on
    this machine, every start would compile them again: ~20 ms at load 7)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


class Pop53(Server):
    key = "pop53"

    def configure(self):
        w = self.work
        zones = "".join(f"[[zone]]\nname = \"{z}\"\nfile = \"{w / 'zones' / (z + 'zone')}\"\n"
                        for z in self.zones)
        (w / "pop53.toml").write_text(
            f"[server]\nlisten = [\"127.0.0.1:{self.port}\"]\nworkers = 1\n"
            f"control = \"{w / 'pop53.sock'}\"\nstate = \"{w / 'state'}\"\n{zones}")
        return [sys.executable, "-m", "pop53", "serve", "-c", str(w / "pop53.toml")]

    def env(self):
        return dict(os.environ, PYTHONPATH=str(REPO / "src"))

    def ctl(self) -> str:
        """scripts/pop53-ctl as pip installs it: beside a `pop53` console script naming this
        interpreter; it runs the client under `python -S` (docs/splice-publish.md)."""
        bin_ = self.work / "bin"
        if not (bin_ / "pop53-ctl").exists():
            bin_.mkdir(parents=True, exist_ok=True)
            (bin_ / "pop53").write_text(f"#!{sys.executable}\n")
            shutil.copyfile(REPO / "scripts" / "pop53-ctl", bin_ / "pop53-ctl")
            (bin_ / "pop53-ctl").chmod(0o755)
        return str(bin_ / "pop53-ctl")

    def cli_env(self):
        return cli_env(self.work / "pycache")

    def command(self, zone):
        return [self.ctl(), "-s", str(self.work / "pop53.sock"), "zone-reload", zone]

    def add_command(self):
        return [self.ctl(), "-s", str(self.work / "pop53.sock"), "reload"]


class Pop53Socket(Pop53):
    """The same server's control socket from this process (no interpreter start-up)."""
    key = "pop53-socket"

    def __init__(self, of: Pop53):
        self.work, self.zones, self.port, self.proc = of.work, of.zones, of.port, None
        self.of = of

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    verb = "zone-reload"

    def add_zone(self, zone: str) -> None:
        self.zones.append(zone)
        self.configure()
        verb, self.verb = self.verb, "reload"
        try:
            self.reload(zone)
        finally:
            self.verb = verb

    def reload(self, zone: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.work / "pop53.sock"))
            s.sendall((f"{self.verb} {zone}" if self.verb == "zone-reload" else self.verb).encode()
                      + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        if not json.loads(reply).get("ok"):
            raise RuntimeError(reply)


class Pop53Baseline(Pop53):
    """Another pop53 tree (e.g. /work/main/src, before this change), `zone-reload` on its
    control socket."""
    key = "pop53-baseline"

    def __init__(self, work: Path, zones: list[str], src: str, big: int = 0):
        super().__init__(work, zones, big)      # the same zones, the big one too
        self.src = src

    def env(self):
        return dict(os.environ, PYTHONPATH=self.src)

    reload = Pop53Socket.reload
    verb = "zone-reload"


class Pop53SocketAll(Pop53Socket):
    """`reload` on the control socket: the config file read again and every zone's files
    hashed to find the one that changed."""
    key = "pop53-socket-all"
    verb = "reload"


def interpreter_start(n: int = 5) -> float:
    """Median wall time of `python3 -c pass` now: what any Python CLI pays before its code."""
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        out.append(time.monotonic() - t0)
    return statistics.median(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zones", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--big", type=int, default=0, metavar="RECORDS",
                   help="also serve big.bench. with this many records; measure its change and "
                        "a zone added by config reload too")
    p.add_argument("--big-rounds", type=int, default=2)
    p.add_argument("--add-rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=53)
    p.add_argument("--work", default=str(REPO / "bench" / "results" / "raw" / "zone_reload"))
    p.add_argument("--baseline", metavar="SRC",
                   help="also a pop53 run from this source tree (PYTHONPATH), e.g. the main branch")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "zone_reload"))
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    zones = names(args.zones)
    work = Path(args.work)
    load_before = os.getloadavg()
    pop = Pop53(work / "pop53", zones, args.big)
    servers = [pop, Pop53Socket(pop), Pop53SocketAll(pop), Knot(work / "knot", zones, args.big),
               NSD(work / "nsd", zones, args.big)]
    if args.baseline:
        servers.append(Pop53Baseline(work / "pop53-baseline", zones, args.baseline, args.big))
    started = []
    cases = {"small": {s.key: [] for s in servers}}
    if args.big:
        cases["big"] = {s.key: [] for s in servers if s.key not in ("pop53-socket-all", "pop53-baseline")}
        cases["add"] = {s.key: [] for s in servers if s.key not in ("pop53-socket-all", "pop53-baseline")}
    startup = {}
    serial = 1
    added = 0
    try:
        for s in servers:
            t0 = time.monotonic()
            s.start()
            started.append(s)
            if s.proc is not None:
                startup[s.key] = time.monotonic() - t0
            print(f"{s.key}: up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        plan = [("small", args.rounds)] + ([("big", args.big_rounds), ("add", args.add_rounds)]
                                           if args.big else [])
        for case, rounds in plan:
            members = [s for s in servers if s.key in cases[case]]
            for r in range(rounds):
                order = members[r % len(members):] + members[:r % len(members)]
                for s in order:
                    serial += 1
                    if case == "small":
                        zone = rng.choice(zones)
                        (s.work / "zones" / f"{zone}zone").write_text(zone_text(zone, serial))
                        t0 = time.monotonic()
                        s.reload(zone)
                    elif case == "big":
                        zone = BIG
                        write_big(s.work / "zones", serial, args.big)
                        t0 = time.monotonic()
                        s.reload(zone)
                    else:
                        added += 1
                        zone = f"added{added:03d}.bench."
                        (s.work / "zones" / f"{zone}zone").write_text(zone_text(zone, serial))
                        t0 = time.monotonic()
                        s.add_zone(zone)
                    seen = wait_serial(s.port, zone, serial, 1800)
                    if seen is None:
                        raise SystemExit(f"{s.key}: serial {serial} of {zone} never answered")
                    cases[case][s.key].append(seen - t0)
                    print(f"{case} round {r} {s.key:13s} {zone} {seen - t0:.4f} s", file=sys.stderr)
    finally:
        for s in started:
            s.stop()
    load_after = os.getloadavg()
    python = interpreter_start()
    versions = {"knot": subprocess.run(["knotd", "-V"], capture_output=True, text=True).stdout.splitlines()[0],
                "nsd": subprocess.run(["nsd", "-v"], capture_output=True, text=True).stderr.splitlines()[0]}
    result = {"zones": args.zones, "big": args.big, "rounds": args.rounds, "times": cases["small"],
              "cases": cases, "startup": startup,
              "load_before": load_before, "load_after": load_after, "versions": versions,
              "python_start": python,
              "command": "python3 -m bench.zone_reload " + " ".join(argv or sys.argv[1:])}
    write(result, Path(args.out))
    return 0


LABELS = {"pop53": "pop53 (`pop53-ctl ...` CLI: scripts/pop53-ctl, python -S)",
          "pop53-socket": "pop53 (the same command on the control socket, no CLI start-up)",
          "pop53-socket-all": "pop53 (`reload` on the control socket: config + every zone hashed)",
          "pop53-baseline": "pop53 before (`zone-reload` on the control socket, --baseline tree)",
          "knot": "Knot (`knotc ...`)", "nsd": "NSD (`nsd-control ...`)"}
SHORT = {"pop53": "pop53 ctl", "pop53-socket": "pop53 socket", "pop53-socket-all":
         "pop53 socket\nreload (all)", "pop53-baseline": "pop53 before", "knot": "knotc",
         "nsd": "nsd-control"}


def _titles(result: dict) -> dict:
    n, big = result["zones"], result.get("big", 0)
    with_big = f" (and big.bench., {big:,} records)" if big else ""
    return {"small": (f"One small zone changed among {n}{with_big}: `zone-reload ZONE` "
                      "(`nsd-control reload ZONE`)"),
            "big": f"big.bench. ({big:,} records) changed among {n + 1}: `zone-reload big.bench.`",
            "add": (f"A zone added to the configuration ({n + 1} zones{with_big} before): "
                    "`knotc reload`, `nsd-control reconfig`, `pop53 ctl reload`")}


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    cases = result.get("cases") or {"small": result["times"]}
    lb, la = result["load_before"], result["load_after"]
    lines = [f"# Reload command -> new serial answered: pop53, Knot, NSD ({result['zones']} zones"
             + (f" + one of {result['big']:,} records)" if result.get("big") else ")"),
             "", f"Command: `{result['command']}`  ",
             f"Machine: {os.cpu_count()} cores shared with other work; load average "
             f"{lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} before, {la[0]:.2f} / {la[1]:.2f} / "
             f"{la[2]:.2f} after (1 / 5 / 15 min).  ",
             f"{result['versions']['knot']}; {result['versions']['nsd']}.  ",
             "Servers alternated (the order rotates each round); small zones 21 records; the "
             "time is from the command's start to the first UDP SOA answer with the new serial "
             "(polled every 1 ms)."]
    titles = _titles(result)
    for case, t in cases.items():
        med = {k: statistics.median(v) for k, v in t.items() if v}
        lines += ["", f"## {titles[case]}", "", f"{len(next(iter(t.values())))} rounds.", "",
                  "| server | median (s) | min | max | vs Knot |", "|---|---|---|---|---|"]
        for k, v in t.items():
            if v:
                lines.append(f"| {LABELS[k]} | {med[k]:.4f} | {min(v):.4f} | {max(v):.4f} | "
                             f"{med[k] / med['knot']:.2f}x |")
        lines += ["", "Per round (s): " + "; ".join(
            f"{k}: " + ", ".join(f"{x:.4f}" for x in v) for k, v in t.items())]
    if result.get("startup"):
        lines += ["", "Start-up to the last zone answered (s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in result["startup"].items())]
    lines += ["", f"`{sys.executable} -c pass` alone took {result['python_start']:.3f} s "
              "(median of 5, same load): most of the CLI row is the interpreter's start-up "
              "(with its site-packages .pth files), which knotc and nsd-control (C) do not pay.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(len(cases), 1, figsize=(7.5, 2.6 * len(cases)), squeeze=False)
    for ax, (case, t) in zip(axes[:, 0], cases.items()):
        keys = [k for k in t if t[k]]
        ax.boxplot([[x * 1000 for x in t[k]] for k in keys], orientation="horizontal")
        ax.set_yticks(range(1, len(keys) + 1), [SHORT[k] for k in keys])
        ax.set_xscale("log")
        ax.set_title({"small": "one small zone changed", "big": "the big zone changed",
                      "add": "a zone added by config reload"}[case], fontsize=10)
    axes[-1, 0].set_xlabel("reload command -> new serial answered (ms, log scale)")
    fig.suptitle(f"{result['zones']} zones" + (f" + {result['big']:,} records" if result.get("big")
                                                else "") + f" (load {lb[0]:.1f}-{la[0]:.1f})")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
