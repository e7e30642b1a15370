"""The servers bench/attack puts under a flood, each on one loopback port, pinned to CPU 0 and
(with a quota) inside one cgroup that caps them to a fraction of that core:

- pop53: one worker, `[scoring]` with the known list and the kernel stage (`steer = true`);
- Knot: one UDP worker, mod-rrl (rate-limit 200, slip 2, the known prefixes whitelisted);
- NSD: one server process, RRL (rrl-ratelimit 200, slip 2; NSD has no source whitelist);
- dnsdist in front of NSD (RRL off behind it): dynamic blocks, query rate 200/s and NXDOMAIN
  rate 100/s per source for 10 s, the known prefixes excluded.

With cookies (`--cookies`) pop53 answers DNS COOKIEs (`[server] cookies = true`) and Knot
loads mod-cookies (whose valid cookies exempt a client from mod-rrl); NSD 4.6 and dnsdist 1.7
have no cookie knob here.  The "plain" variant of each (no scoring, no RRL, no blocks) is what the capacity run uses.
Every server gets the same information: the known resolvers' prefixes (KNOWN; with
`--unlisted` only RELAYS, so the measured resolvers are unknown clients).  "pop53-nocheck" is
pop53 with `steer_cookies = false`: no cookie check in the kernel stage, so cookie clients
outside the known prefixes stay in the normal socket.  "pop53-nowake" is pop53 with
`steer_idle = false`: its workers poll both sockets instead of reading the wake words;
"pop53-wake" has `steer_idle = true` (the wake words: the default again since session 15,
off in session 14);
"pop53-kstamps" has `kernel_stamps = true`: the controller's queue delay from kernel receive
stamps, which hold the kernel's stamping of every packet on."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message

from bench.data import ORIGIN

ROOT = Path(__file__).resolve().parents[2]
RELAYS = "127.3.0.0/16"                      # the known resolvers relaying water torture
KNOWN = ("127.1.0.0/24", RELAYS)             # the resolvers we ask from, the relaying ones
# a second zone every server hosts: the target of the water torture that the measured resolvers
# relay too (their own names are in the benchmark zone)
ATTACKED = "attacked.test."


def attacked_zone(work: Path) -> Path:
    """The small zone ATTACKED, written into `work`: its random subdomains are NXDOMAIN."""
    path = work / "attacked.test.zone"
    path.write_text(f"$ORIGIN {ATTACKED}\n$TTL 300\n"
                    "@ IN SOA ns1 hostmaster 1 7200 900 1209600 300\n"
                    "@ IN NS ns1\nns1 IN A 192.0.2.53\nwww IN A 192.0.2.80\n")
    return path


SERVERS = ("pop53", "knot", "nsd", "dnsdist")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t.bind(("127.0.0.1", port))
        return port


class CpuCap:
    """Gives the servers `share` of CPU 0, so that one flood core can offer several times their
    capacity.  Two ways (`how`):

    - "steal" (bench/attack/steal.c): a SCHED_FIFO process on CPU 0 wakes every `period_us`
      and spins until it has taken 1 - share of the time, so the servers run in slices and are
      kept off for a fraction of a millisecond at a time, as on a slower core;
    - "quota": a cgroup cpu quota of 1 ms per 1/share ms.  The kernel enforces it at its
      accounting points (the 4 ms ticks for a task that never sleeps), so a busy server
      overruns and is then throttled for 4-12 ms at a time (bench/results/attack-stalls.md).

    Either way the servers run in a cgroup (v1 cpu controller) whose weight (`weight`,
    cpu.shares) puts a woken server ahead of the machine's other work on CPU 0.  `share` 0: no
    cap.  Everything is removed (the stealer stopped by its PID) on close."""

    def __init__(self, share: float, weight: int = 1024, how: str = "quota",
                 period_us: int = 1000):
        self.path, self.how, self.share, self.period_us = None, how, share, period_us
        self.weight = weight
        self.stealer, self._stealer_dir = None, None
        if share <= 0:
            return
        if how not in ("quota", "steal"):
            raise ValueError(f"cpu cap: how must be quota or steal, not {how!r}")
        base = Path("/sys/fs/cgroup/cpu")
        self.path = base / f"pop53-bench-attack-{os.getpid()}"
        self.path.mkdir()
        try:
            if how == "quota":
                self.period_us = int(round(1000 / share))
                (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (self.path / "cpu.cfs_quota_us").write_text("1000")
            # the group's weight against the machine's other work on CPU 0: a high weight makes
            # a woken server run first, up to its quota (a core of its own, as a real server
            # has); the default 1024 lets any busy task on CPU 0 delay it by a scheduler slice
            (self.path / "cpu.shares").write_text(str(weight))
            if how == "steal":
                self._start_stealer()
        except OSError:
            self.close()
            raise

    def _start_stealer(self):
        self._stealer_dir = tempfile.TemporaryDirectory(prefix="pop53-steal-")
        binary = Path(self._stealer_dir.name) / "steal"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(Path(__file__).with_name("steal.c"))],
                       check=True)
        # bounded: it exits by itself after two hours if close() is never reached
        self.stealer = subprocess.Popen(
            ["taskset", "-c", "0", str(binary), f"{1 - self.share:.4f}", str(self.period_us), "7200"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.2)
        if self.stealer.poll() is not None:
            raise OSError(f"steal: {self.stealer.stderr.read().strip()}")

    def describe(self) -> str:
        """How the servers are capped, for a report's header."""
        if self.path is None:
            return ""
        if self.how == "steal":
            return (f", capped to {self.share:g} of it (bench/attack/steal.c: a SCHED_FIFO task on "
                    f"CPU 0 takes {1 - self.share:g} of it, waking every {self.period_us} us; the "
                    f"servers' cgroup has cpu.shares {self.weight})")
        return (f", capped to {self.share:g} of it (cgroup cpu quota 1 ms per "
                f"{self.period_us / 1000:g} ms, cpu.shares {self.weight})")

    def duty(self) -> str | None:
        """flood.c's -d for a flood on CPU 0 that takes the stealer's place while it runs (the
        cap's half of the CPU then floods instead of spinning), None without a stealer."""
        if self.stealer is None:
            return None
        return f"{1 - self.share:.4f}:{self.period_us}:{self.stealer.pid}"

    def resume(self):
        """Continue the stealer a flood stopped (flood.c does on exit; this is for one that
        was killed)."""
        if self.stealer is not None and self.stealer.poll() is None:
            os.kill(self.stealer.pid, signal.SIGCONT)

    def throttled_ns(self) -> int:
        """The time the cap kept the servers off so far: the cgroup's throttled time (cpu.stat
        throttled_time) with a quota, the stealer's CPU time when stealing; 0 without a cap."""
        if self.path is None:
            return 0
        if self.stealer is not None:
            try:
                return int(Path(f"/proc/{self.stealer.pid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return 0
        st = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(st.get("throttled_time", 0))

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run pinned to CPU 0 inside the cgroup (children inherit both)."""
        pinned = ["taskset", "-c", "0"] + argv
        if self.path is None:
            return pinned
        return ["sh", "-c", f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"', "cap"] + pinned

    def close(self):
        if self.stealer is not None:
            if self.stealer.poll() is None:
                self.stealer.terminate()
            try:
                self.stealer.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.stealer.kill()
                self.stealer.communicate()
            self.stealer = None
        if self._stealer_dir is not None:
            self._stealer_dir.cleanup()
            self._stealer_dir = None
        if self.path is not None:
            for _ in range(50):
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


def _zones(work: Path, zone: Path) -> list[tuple[str, Path]]:
    return [(ORIGIN, zone), (ATTACKED, attacked_zone(work))]


def _pop53(work: Path, zone: Path, port: int, plain: bool, cookies: bool = False,
           known=KNOWN, extra: str = "") -> list[str]:
    path = work / "known.txt"
    path.write_text("".join(f"{p}\n" for p in known))
    scoring = "" if plain else (f'[scoring]\nknown_resolvers = "{path}"\nsteer = true\n'
                                + extra)
    (work / "pop53.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\n'
        + ("cookies = true\n" if cookies else "") + f'\n{scoring}\n'
        + "".join(f'[[zone]]\nname = "{o}"\nfile = "{z}"\n' for o, z in _zones(work, zone)))
    return [sys.executable, "-m", "pop53", "serve", "--config", str(work / "pop53.toml")]


def _knot(work: Path, zone: Path, port: int, plain: bool, cookies: bool = False,
          known=KNOWN) -> list[str]:
    (work / "db").mkdir(exist_ok=True)
    rrl = "" if plain else (
        "mod-rrl:\n  - id: default\n    rate-limit: 200\n    slip: 2\n"
        f"    whitelist: [{', '.join(known)}]\n")
    mods = ([] if plain else ["mod-rrl/default"]) + (["mod-cookies"] if cookies else [])
    # mod-cookies first: a valid server cookie exempts the client from mod-rrl
    module = f"    module: [{', '.join(reversed(mods))}]\n" if mods else ""
    (work / "knot.conf").write_text(
        f"server:\n    rundir: \"{work}\"\n    listen: 127.0.0.1@{port}\n"
        "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
        "log:\n  - target: stderr\n    any: warning\n"
        f"database:\n    storage: \"{work / 'db'}\"\n{rrl}"
        f"template:\n  - id: default\n    storage: \"{work}\"\n    zonefile-sync: -1\n"
        "    zonefile-load: whole\n    journal-content: none\n"
        "zone:\n" + "".join(f"  - domain: {o}\n    file: \"{z}\"\n{module}"
                             for o, z in _zones(work, zone)))
    return ["knotd", "-c", str(work / "knot.conf")]


def _nsd_conf(work: Path, zone: Path, port: int, rrl: bool) -> Path:
    limits = ("    rrl-ratelimit: 200\n    rrl-slip: 2\n    rrl-whitelist-ratelimit: 2000\n"
              if rrl else "    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n")
    conf = work / "nsd.conf"
    conf.write_text(
        f"server:\n    server-count: 1\n    ip-address: 127.0.0.1@{port}\n"
        f"    do-ip6: no\n    username: \"\"\n    chroot: \"\"\n    zonesdir: \"{work}\"\n"
        f"    database: \"\"\n    zonelistfile: \"{work / 'zone.list'}\"\n"
        f"    xfrdfile: \"{work / 'xfrd.state'}\"\n    xfrdir: \"{work}\"\n"
        f"    pidfile: \"{work / 'nsd.pid'}\"\n    logfile: \"{work / 'nsd.log'}\"\n"
        f"    verbosity: 0\n{limits}"
        f"remote-control:\n    control-enable: no\n"
        + "".join(f"zone:\n    name: {o}\n    zonefile: \"{z}\"\n" for o, z in _zones(work, zone)))
    return conf


def _nsd(work: Path, zone: Path, port: int, plain: bool, cookies: bool = False,
         known=KNOWN) -> list[str]:
    return ["nsd", "-d", "-c", str(_nsd_conf(work, zone, port, not plain))]


def _dnsdist(work: Path, zone: Path, port: int, plain: bool, cookies: bool = False,
             known=KNOWN) -> list[list[str]]:
    back = free_port()
    blocks = "" if plain else (
        "local dbr = dynBlockRulesGroup()\n"
        'dbr:setQueryRate(200, 1, "query rate", 10, DNSAction.Drop)\n'
        'dbr:setRCodeRate(DNSRCode.NXDOMAIN, 100, 1, "nxdomain rate", 10, DNSAction.Drop)\n'
        f"dbr:excludeRange({{{', '.join(repr(p) for p in known)}}})\n"
        "function maintenance() dbr:apply() end\n")
    (work / "dnsdist.conf").write_text(
        f'setLocal("127.0.0.1:{port}", {{reusePort=true}})\n'
        'setACL({"0.0.0.0/0"})\n'
        f'local s = newServer({{address="127.0.0.1:{back}", checkInterval=3600}})\n'
        "s:setUp()\n" + blocks)
    nsd = ["nsd", "-d", "-c", str(_nsd_conf(work, zone, back, False))]
    return [nsd, ["dnsdist", "--supervised", "--disable-syslog", "-C", str(work / "dnsdist.conf")]]


_BUILD = {"pop53": _pop53, "knot": _knot, "nsd": _nsd, "dnsdist": _dnsdist,
          "pop53-nocheck": lambda *a, **kw: _pop53(*a, **kw, extra="steer_cookies = false\n"),
          "pop53-nowake": lambda *a, **kw: _pop53(*a, **kw, extra="steer_idle = false\n"),
          "pop53-kstamps": lambda *a, **kw: _pop53(*a, **kw, extra="kernel_stamps = true\n"),
          "pop53-wake": lambda *a, **kw: _pop53(*a, **kw, extra="steer_idle = true\n"),
          "pop53-nonames": lambda *a, **kw: _pop53(*a, **kw, extra="steer_names = false\n")}


def missing(name: str) -> str | None:
    need = {"pop53": [], "pop53-nocheck": [], "pop53-nowake": [], "pop53-kstamps": [], "pop53-wake": [],
            "pop53-nonames": [], "knot": ["knotd"], "nsd": ["nsd"],
            "dnsdist": ["nsd", "dnsdist"]}[name]
    gone = [b for b in need if not shutil.which(b)]
    return f"{', '.join(gone)} not installed" if gone else None


class Running:
    """A started server (one or two processes), stopped by PID."""

    def __init__(self, name: str, work: Path, zone: Path, probe: str, cap: CpuCap,
                 plain: bool = False, cookies: bool = False, known=KNOWN):
        self.name, self.port = name, free_port()
        work.mkdir(parents=True, exist_ok=True)
        argvs = _BUILD[name](work, zone, self.port, plain, cookies, known=known)
        if not isinstance(argvs[0], list):
            argvs = [argvs]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.procs = []
        self.log = work / "server.log"
        with open(self.log, "ab") as err:
            for argv in argvs:
                self.procs.append(subprocess.Popen(cap.wrap(argv), stdin=subprocess.DEVNULL,
                                                   stdout=err, stderr=err, env=env, cwd=work))
                time.sleep(0.3)
        if not self._ready(probe):
            self.stop()
            raise RuntimeError(f"{name} did not answer:\n{self.log.read_text(errors='replace')[-2000:]}")

    def sched_ns(self) -> dict:
        """Per thread of the server's processes: (CPU time, run-queue wait) so far in ns
        (schedstat); the wait is time it was runnable while another task had its CPU."""
        out = {}
        for p in self.procs:
            try:
                tids = os.listdir(f"/proc/{p.pid}/task")
            except OSError:
                continue
            for t in tids:
                try:
                    with open(f"/proc/{p.pid}/task/{t}/schedstat") as f:
                        r, w, _ = map(int, f.read().split())
                except (OSError, ValueError):
                    continue
                out[t] = (r, w)
        return out


    def _ready(self, probe: str, timeout: float = 30) -> bool:
        q = dns.message.make_query(probe, "A").to_wire()
        end = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.9.0.1", 0))
            s.settimeout(0.2)
            while time.monotonic() < end:
                if any(p.poll() is not None for p in self.procs):
                    return False
                try:
                    s.sendto(q, ("127.0.0.1", self.port))
                    s.recvfrom(4096)
                    return True
                except OSError:
                    time.sleep(0.1)
        return False

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def ksoftirqd_ns(cpu: int = 0) -> int:
    """CPU time so far of the CPU's softirq thread (network receive work the kernel deferred
    from the senders' context: it competes with the server for that CPU)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
            except OSError:
                continue
    return 0


def host_steal_ns(cpu: int = 0) -> int:
    """The time the hypervisor ran something else while this VM's CPU wanted to run (/proc/stat
    steal, in USER_HZ ticks of 10 ms), so far: the machine is a shared VM, and a stolen
    millisecond delays the server like any other."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8]) * 10_000_000
    return 0


def busiest(s0: dict, s1: dict, seconds: float, throttled: float, softirq: float,
            stolen: float = 0.0) -> tuple:
    """ms a second of the busiest thread (the UDP worker) on CPU and waiting for CPU, the
    cap's time (throttled or stolen by the stealer), ksoftirqd's CPU time, the other threads'
    CPU time and the host's steal from CPU 0, between two sched_ns samples."""
    deltas = [(r - s0.get(t, (0, 0))[0], w - s0.get(t, (0, 0))[1]) for t, (r, w) in s1.items()]
    run, wait = max(deltas, default=(0, 0))
    others = sum(r for r, _ in deltas) - run
    return tuple(x / 1e6 / seconds for x in (run, wait, throttled, softirq, others, stolen))
