"""The peer benchmark: one command, ``python -m bench.peers``, reproduces every number.

For each server (Knot DNS, NSD, BIND, PowerDNS, pop53, asyncio+dnspython), one at a time and
alternating the order run by run (the machine is shared and noisy; medians of the runs are
reported):

1. ``pinned``: the server (one worker) pinned to CPU 1 — every thread re-pinned after start,
   since Knot pins its UDP workers itself — and dnsperf pinned to CPU 0.  Reported: answered
   queries/s, and the server's CPU seconds per answered query from the utime+stime deltas in
   /proc/PID/stat over the run (the ranking metric: dnsperf saturates one core first).
2. ``multi``: each server's multi-core configuration, nothing pinned.
3. ``memory``: the 1,000,000-name zone: time from exec until the server answers a query for
   the zone, and resident memory (PSS and VmRSS summed over the process tree) after a short
   query run.

With ``--tcp 20,200`` the run measures DNS over TCP instead (``dnsperf -m tcp``, modes
``tcp-20`` and ``tcp-200``: the pinned setup with that many connections) and writes tcp.md and
tcp.png (report_tcp.py).

Every server and every dnsperf run is bounded in time, and every server is stopped by its PID.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .. import data
from . import dnsperf, procs, report, report_tcp, tcp_idle
from .servers import REPO, all_peers

SERVER_CPU = 1
CLIENT_CPU = 0


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (several people run servers here)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port found")


def _nx_share(queries: Path) -> float:
    lines = queries.read_text().splitlines()
    return sum(1 for ln in lines if ln.startswith("nx-")) / len(lines)


def _rcode_check(res: dnsperf.Result, nx_share: float) -> str:
    """'' if the answers look right (only NOERROR and NXDOMAIN, NXDOMAIN at the mix's share),
    else what is wrong: a server that answers fast but wrongly must not rank first."""
    if not res.completed:
        return "no answers"
    other = {k: v for k, v in res.rcodes.items() if k not in ("NOERROR", "NXDOMAIN")}
    if other:
        return "unexpected rcodes " + ", ".join(f"{k} {v}" for k, v in other.items())
    share = res.rcodes.get("NXDOMAIN", 0) / res.completed
    if abs(share - nx_share) > 0.02:
        return f"NXDOMAIN share {share:.3f}, expected {nx_share:.3f}"
    return ""


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.work = data.RAW_DIR / "peers" / stamp
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.work / "bench.log", "w")

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def save(self, result: dict) -> Path:
        """Write the raw result so far (a run cut short still leaves its data behind)."""
        path = self.work / "result.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
        return path

    # -- one server process --------------------------------------------------------------

    def start(self, peer, zone: Path, probe_name: str, multi: bool, pinned: bool, tag: str,
              state: Path | None = None, slots: int | None = None):
        work = self.work / tag
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        launch = (peer.launch_slots(work, zone, port, slots) if slots
                  else peer.launch(work, zone, port, multi, state))
        argv = launch.argv
        if pinned:
            argv = ["taskset", "-c", str(SERVER_CPU)] + argv
        logf = open(work / "server.log", "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=launch.cwd, env=launch.env, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        logf.close()
        try:
            ready = dnsperf.wait_ready(proc, port, probe_name, self.a.load_timeout,
                                       any_answer=peer.probe_any)
        except BaseException as exc:
            procs.stop(proc)
            tail = (work / "server.log").read_text(errors="replace")[-600:]
            raise RuntimeError(f"{peer.name}: {exc}; log tail: {tail!r}") from None
        return proc, port, ready - t0, launch

    # -- the three measurements ----------------------------------------------------------

    def throughput(self, peer, ds: data.Dataset, mode: str, run: int) -> dict:
        tcp = mode.startswith("tcp-")         # tcp-N: pinned, dnsperf -m tcp -c N
        pinned = mode == "pinned" or tcp
        tag = f"{mode}-{peer.key}-{run}"
        proc, port, load_s, launch = self.start(peer, ds.zone, ds.probe, mode == "multi",
                                                pinned, tag)
        out = {"peer": peer.key, "mode": mode, "run": run, "settings": launch.settings,
               "load_s": load_s}
        try:
            client_cpu = CLIENT_CPU if pinned else None
            kw = dict(clients=int(mode[4:]) if tcp else self.a.clients,
                      # TCP: at least one query in flight per connection
                      outstanding=max(self.a.outstanding, int(mode[4:])) if tcp
                      else self.a.outstanding,
                      threads=1 if pinned else self.a.multi_threads, cpu=client_cpu,
                      max_qps=self.a.max_qps, edns=self.a.edns,
                      transport="tcp" if tcp else "udp")
            if pinned:
                out["threads_pinned"] = procs.pin(procs.tree(proc.pid), {SERVER_CPU})
            if self.a.warmup > 0:
                dnsperf.run(port, ds.queries, self.a.warmup, **kw)
            if pinned:
                # Again: servers may start threads lazily (on first queries).
                out["threads_pinned"] = procs.pin(procs.tree(proc.pid), {SERVER_CPU})
            pids = procs.tree(proc.pid)
            cpu0, busy0, t0 = procs.cpu_seconds(pids), procs.core_busy(), time.monotonic()
            res = dnsperf.run(port, ds.queries, self.a.duration, **kw)
            wall = time.monotonic() - t0
            pids_after = procs.tree(proc.pid)
            cpu1, busy1 = procs.cpu_seconds(pids_after), procs.core_busy()
            if proc.poll() is not None:
                raise RuntimeError(f"{peer.name} exited during the run")
            server_cpu = cpu1 - cpu0
            out.update(
                ok=res.ok, error=res.error, dnsperf=" ".join(map(shlex.quote, res.argv)),
                completed=res.completed, sent=res.sent, lost=res.lost, qps=res.qps,
                runtime=res.runtime, latency_avg=res.latency_avg, rcodes=res.rcodes,
                server_cpu_s=server_cpu, client_cpu_s=res.cpu_seconds, wall_s=wall,
                processes=len(pids_after),
                cpu_us_per_q=(server_cpu / res.completed * 1e6) if res.completed else None,
                client_us_per_q=(res.cpu_seconds / res.completed * 1e6) if res.completed else None,
                check=_rcode_check(res, self.nx_share) if peer.check_answers else "",
            )
            # Noise: what else ran on the server's core during the run (busy time of that
            # core not spent by the server), as a fraction of the run's wall time.
            if pinned:
                other = (busy1[SERVER_CPU] - busy0[SERVER_CPU]) - server_cpu
                out["other_load_server_cpu"] = max(0.0, other) / wall
                other_c = (busy1[CLIENT_CPU] - busy0[CLIENT_CPU]) - res.cpu_seconds
                out["other_load_client_cpu"] = max(0.0, other_c) / wall
            else:
                total = sum(busy1.values()) - sum(busy0.values())
                out["other_load_all_cpus"] = max(0.0, total - server_cpu - res.cpu_seconds) / wall
        finally:
            procs.stop(proc)
        return out

    def memory(self, peer, ds: data.Dataset) -> dict:
        # One state directory per benchmark run, empty until pop53's cold start saves its
        # image there; "pop53-restart" then starts on it.
        proc, port, load_s, launch = self.start(peer, ds.zone, ds.probe, True, False,
                                                f"memory-{peer.key}", self.work / "pop53-state")
        out = {"peer": peer.key, "mode": "memory", "settings": launch.settings,
               "load_s": load_s, "names": ds.names}
        try:
            m0 = procs.memory(procs.tree(proc.pid))
            res = dnsperf.run(port, ds.queries, self.a.memory_duration, clients=self.a.clients,
                              # TCP: at least one query in flight per connection
                      outstanding=max(self.a.outstanding, int(mode[4:])) if tcp
                      else self.a.outstanding, threads=1, edns=self.a.edns)
            m1 = procs.memory(procs.tree(proc.pid))
            out.update(ok=res.ok and proc.poll() is None, error=res.error,
                       pss_load_kib=m0.pss_kib, rss_load_kib=m0.rss_kib,
                       pss_kib=m1.pss_kib, rss_kib=m1.rss_kib, processes=m1.processes,
                       qps=res.qps, completed=res.completed, rcodes=res.rcodes,
                       check=_rcode_check(res, self.big_nx_share))
            if peer.key == "pop53-restart":
                log = (self.work / f"memory-{peer.key}" / "server.log").read_text(errors="replace")
                if "saved image" not in log:
                    out["check"] = "did not start from the saved image (see server.log)"
        finally:
            procs.stop(proc)
        return out

    def idle(self, peer, ds: data.Dataset, count: int) -> dict:
        """``count`` idle TCP connections (one answered query each) held open: the server's
        memory and the kernel's TCP memory before and while holding them."""
        proc, port, load_s, launch = self.start(peer, ds.zone, ds.probe, False, False,
                                                f"idle-{peer.key}", slots=count + 100)
        out = {"peer": peer.key, "mode": "idle", "settings": launch.settings, "wanted": count}
        socks = []
        try:
            m0, k0 = procs.memory(procs.tree(proc.pid)), tcp_idle.kernel_tcp_pages()
            t0 = time.monotonic()
            socks, held = tcp_idle.open_idle(port, count, ds.probe)
            m1, k1 = procs.memory(procs.tree(proc.pid)), tcp_idle.kernel_tcp_pages()
            out.update(ok=proc.poll() is None and held > 0, held=held,
                       open_s=time.monotonic() - t0, pss_before_kib=m0.pss_kib,
                       pss_kib=m1.pss_kib, rss_before_kib=m0.rss_kib, rss_kib=m1.rss_kib,
                       kernel_tcp_kib_delta=(k1 - k0) * os.sysconf("SC_PAGE_SIZE") // 1024)
        finally:
            for s in socks:
                s.close()
            procs.stop(proc)
        return out

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> dict:
        a = self.a
        started = time.time()
        peers = [p for p in all_peers() if not a.only or p.key in a.only]
        status = {}
        for p in peers:
            why = p.missing()
            status[p.key] = why
            self.say(f"{p.name}: {'ready: ' + p.version() if not why else why}")
        live = [p for p in peers if not status[p.key]]
        small = data.dataset(a.names, a.seed)
        self.nx_share = _nx_share(small.queries)
        result = {
            "argv": [sys.executable, "-m", "bench.peers"] + sys.argv[1:] if a.cli_argv is None
            else a.cli_argv,
            "quick": a.quick, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"),
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                       if k not in ("cli_argv", "out_given")},
            "machine": machine_facts(), "loadavg_start": os.getloadavg(),
            "uptime_start": _uptime(),
            "peers": {p.key: {"name": p.name, "status": status[p.key] or "ok",
                              "modes": list(p.modes),
                              "version": p.version() if not status[p.key] else ""}
                      for p in peers},
            "data": {"zone": str(small.zone), "queries": str(small.queries), "names": a.names,
                     "seed": a.seed, "nx_share": self.nx_share},
            "runs": [],
        }
        modes = [m for m in ("pinned", "multi") if m not in a.skip]
        if a.tcp:
            modes = [f"tcp-{n}" for n in a.tcp]
        for mode in modes:
            for r in range(a.runs):
                k = r % max(1, len(live))
                order = live[k:] + live[:k]   # rotate: each server takes each slot in turn
                for p in order:
                    if ("pinned" if mode.startswith("tcp-") else mode) not in p.modes:
                        continue
                    try:
                        row = self.throughput(p, small, mode, r)
                    except Exception as exc:  # record and go on with the other servers
                        row = {"peer": p.key, "mode": mode, "run": r, "ok": False,
                               "error": str(exc)}
                        self.log.write(traceback.format_exc())
                    result["runs"].append(row)
                    self.save(result)
                    self.say(f"{mode} run {r + 1}/{a.runs} {p.name}: " + _brief(row))
        if a.tcp and a.idle and "idle" not in a.skip:
            for p in live:
                if not hasattr(p, "launch_slots"):
                    continue
                try:
                    row = self.idle(p, small, a.idle)
                except Exception as exc:
                    row = {"peer": p.key, "mode": "idle", "ok": False, "error": str(exc)}
                    self.log.write(traceback.format_exc())
                result["runs"].append(row)
                self.save(result)
                self.say(f"idle {p.name}: {row.get('held')} connections, RSS "
                         f"{row.get('rss_before_kib', 0) / 1024:.1f} -> "
                         f"{row.get('rss_kib', 0) / 1024:.1f} MiB" if row.get("ok")
                         else f"idle {p.name}: FAILED {row.get('error', '')[:200]}")
        if "memory" not in a.skip and not a.tcp:
            big = data.dataset(a.big_names, a.seed)
            self.big_nx_share = _nx_share(big.queries)
            result["data"]["big_names"] = a.big_names
            for p in live:
                if "memory" not in p.modes:
                    continue
                try:
                    row = self.memory(p, big)
                except Exception as exc:
                    row = {"peer": p.key, "mode": "memory", "ok": False, "error": str(exc)}
                    self.log.write(traceback.format_exc())
                result["runs"].append(row)
                self.save(result)
                self.say(f"memory {p.name}: " + _brief(row))
        result["loadavg_end"] = os.getloadavg()
        result["uptime_end"] = _uptime()
        result["elapsed_s"] = time.time() - started
        return result


def _brief(row: dict) -> str:
    if not row.get("ok"):
        return "FAILED: " + str(row.get("error", ""))[:300]
    parts = []
    if row.get("qps"):
        parts.append(f"{row['qps']:.0f} q/s")
    if row.get("cpu_us_per_q") is not None:
        parts.append(f"{row['cpu_us_per_q']:.2f} us CPU/q")
    if "pss_kib" in row:
        parts.append(f"PSS {row['pss_kib'] / 1024:.1f} MiB, load {row['load_s']:.2f} s")
    if row.get("check"):
        parts.append("CHECK: " + row["check"])
    return ", ".join(parts)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_facts() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    debian = Path("/etc/debian_version")
    deb = debian.read_text().strip() if debian.exists() else ""
    dv = ""
    if shutil.which("dnsperf"):
        r = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, timeout=10)
        dv = r.stdout + r.stderr
    dv = next((ln.strip() for ln in dv.splitlines() if ln.startswith("Version")), "")
    return {"cpu": model, "cpus": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "debian": deb, "python": platform.python_version(),
            "dnsperf": dv}


def ensure_installed(say) -> None:
    """Run scripts/setup.sh (Debian packages + pinned Python deps) if a tool is missing."""
    needed = ["knotd", "nsd", "named", "pdns_server", "dnsperf", "taskset"]
    missing = [b for b in needed if not shutil.which(b)]
    if missing:
        say(f"missing {', '.join(missing)}: running scripts/setup.sh")
        subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], check=True, timeout=1800)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 run, short durations, 1,000-name zone only "
                        "(results go to bench/results/raw/)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--memory-duration", type=float, default=3.0,
                   help="seconds of queries before reading memory")
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--big-names", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    p.add_argument("--clients", type=int, default=8, help="dnsperf -c (client sockets)")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    p.add_argument("--multi-threads", type=int, default=2, help="dnsperf -T in the multi runs")
    p.add_argument("--max-qps", type=int, default=None, help="dnsperf -Q (default: no cap)")
    p.add_argument("--edns", action="store_true", help="dnsperf -e (queries carry EDNS0)")
    p.add_argument("--load-timeout", type=float, default=900.0,
                   help="seconds a server may take to start answering")
    p.add_argument("--only", type=lambda s: s.split(","), default=None,
                   help="comma-separated keys: knot,nsd,bind,pdns,pop53,pyserver")
    p.add_argument("--skip", type=lambda s: s.split(","), default=[],
                   help="comma-separated modes to skip: pinned,multi,memory")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for peers.md/peers.png (default bench/results, "
                        "or bench/results/raw with --quick)")
    p.add_argument("--report-only", type=Path, default=None, metavar="JSON",
                   help="rebuild peers.md/peers.png from a saved raw result")
    p.add_argument("--no-setup", action="store_true", help="do not run scripts/setup.sh")
    p.add_argument("--tcp", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   metavar="N,N", help="DNS over TCP instead: pinned runs with dnsperf -m tcp and "
                   "N connections each; writes tcp.md/tcp.png (default peers: knot,nsd,pop53)")
    p.add_argument("--idle", type=int, default=10000,
                   help="with --tcp: idle connections held open for the memory table")
    a = p.parse_args(argv)
    a.cli_argv = None
    if a.quick:
        a.runs, a.duration, a.warmup, a.memory_duration = 1, 2.0, 0.5, 1.0
        a.big_names = a.names
        a.load_timeout = min(a.load_timeout, 60.0)
    if a.quick:
        a.idle = min(a.idle, 1000)
    if a.tcp and a.only is None:
        a.only = ["knot", "nsd", "pop53"]
    a.out_given = a.out is not None
    if a.out is None:
        a.out = data.RAW_DIR / "quick" if a.quick else data.BENCH_DIR / "results"
    return a


def _write_report(result: dict, out: Path, raw: Path) -> str:
    """peers.md/.png, or tcp.md/.png for a --tcp run; returns the name written."""
    if result["params"].get("tcp"):
        report_tcp.write(result, out, raw_json=raw)
        return "tcp"
    report.write(result, out, raw_json=raw)
    return "peers"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.report_only:
        result = json.loads(a.report_only.read_text())
        if result.get("quick") and not a.out_given:
            a.out = data.RAW_DIR / "quick"   # a smoke test never overwrites the real results
        name = _write_report(result, a.out, a.report_only)
        print(f"wrote {a.out / name}.md and {a.out / name}.png")
        return 0
    if sorted(os.sched_getaffinity(0)) != [0, 1] and os.cpu_count() != 2:
        print(f"note: this machine has {os.cpu_count()} CPUs; the pinned runs use CPUs "
              f"{CLIENT_CPU} (dnsperf) and {SERVER_CPU} (server)")
    bench = Bench(a)
    if not a.no_setup:
        ensure_installed(bench.say)
    bench.say(f"work directory {bench.work}")
    result = bench.run()
    raw = bench.save(result)
    a.out.mkdir(parents=True, exist_ok=True)
    name = _write_report(result, a.out, raw)
    bench.say(f"wrote {a.out / name}.md, {a.out / name}.png and {raw} "
              f"in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
