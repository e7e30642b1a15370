"""Publish -> served on every machine of the PoP lab (issue 11's numbers).

    sudo python -m bench.feed_fleet [--machines 4] [--nodes 3] [--liveness 100] [--delta 100]
                                    [--full 10] [--prefixes 1000000]

The lab (pop53.lab) with `--machines` pop53 machines and a `--nodes`-node NATS JetStream cluster
(stream replicas = nodes).  pop53.lab.feedprobe runs in a client namespace, publishes one change
at a time and asks every machine's DNS server directly until its answer shows the change; the
latency is from the start of publishing (signing included) to that answer, per machine, and
"all" is the slowest machine.  Three series:

* liveness: target eu1 down/up (`--liveness` changes);
* delta: a one-prefix map delta on a 10,000-prefix map (`--delta` changes);
* full: the whole `--prefixes`-prefix map (default 1,000,000), `--full` changes; during these the
  memory (RSS and PSS, /proc/PID/smaps_rollup, every 50 ms) of every machine's server is sampled
  and compared with its steady state (the same map, idle, just before).

Writes bench/results/feed_fleet.{md,png,json}.  Every loop is bounded (per-change timeouts, a
deadline per series); the lab is always torn down.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


class Sampler(threading.Thread):
    def __init__(self, pids: dict[str, int], every: float = 0.05):
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.samples: list[tuple[float, str, int, int]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            for name, pid in self.pids.items():
                try:
                    self.samples.append((t, name, *mem(pid)))
                except OSError:
                    pass
            self.stop.wait(self.every)


def series(lab, kind: str, count: int, **opts) -> dict:
    out = lab.workdir / f"{kind}.json"
    p = lab.feed.probe(out, kind, count=count, **opts)
    p.popen.wait(opts.get("deadline", 600) + 180)
    if p.popen.returncode != 0:
        raise SystemExit(f"feedprobe {kind} failed: {p.tail()}")
    return json.loads(out.read_text())


def summarize(res: dict) -> dict:
    ch = res["changes"]
    allm = [max(c["served"]) for c in ch if None not in c["served"]]
    per = [x for c in ch for x in c["served"] if x is not None]
    return {"n": len(ch), "missed": sum(None in c["served"] for c in ch),
            "p50": pct(allm, 50), "p99": pct(allm, 99), "max": max(allm),
            "p50_machine": pct(per, 50), "p99_machine": pct(per, 99),
            "publish_p50": pct([c["published"] for c in ch], 50),
            "bytes": statistics.median(c["bytes"] for c in ch),
            "unanswered": sum(res["unanswered"]), "queries": res["queries"],
            "retries": res["publish_retries"]}


def memory(samples, res: dict) -> dict:
    """Per machine: steady (median, idle with a 1M map) before the swaps and after them
    (the allocator may or may not have given the last swap's memory back), and the peak."""
    first = min(c["t0"] for c in res["changes"])
    last = res["done_at"]
    out = {}
    for name in sorted({s[1] for s in samples}):
        mine = [s for s in samples if s[1] == name]
        before = [s for s in mine if res["ready_at"] + 0.5 <= s[0] < first]
        after = [s for s in mine if last + 1.0 <= s[0]]
        during = [s for s in mine if first <= s[0] <= last + 0.5]
        if not before or not after or not during:
            continue
        out[name] = {"rss_before": statistics.median(s[2] for s in before),
                     "rss_after": statistics.median(s[2] for s in after),
                     "pss_before": statistics.median(s[3] for s in before),
                     "pss_after": statistics.median(s[3] for s in after),
                     "rss_peak": max(s[2] for s in during), "pss_peak": max(s[3] for s in during)}
    return out


def chart(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    titles = {"liveness": "liveness flip", "delta": "one-prefix map delta",
              "full": f"full {results['params']['prefixes']:,}-prefix map"}
    targets = {"liveness": 0.1, "delta": 1.0, "full": 1.0}
    for ax, kind in zip(axes, ("liveness", "delta", "full")):
        res = results["series"].get(kind)
        if not res:
            ax.set_visible(False)
            continue
        allm = sorted(max(c["served"]) * 1000 for c in res["changes"] if None not in c["served"])
        ax.plot(allm, [(i + 1) / len(allm) for i in range(len(allm))], label="all machines")
        for k in range(len(res["machines"])):
            xs = sorted(c["served"][k] * 1000 for c in res["changes"] if c["served"][k] is not None)
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], lw=0.7, alpha=0.6,
                    label=f"m{k + 1}")
        ax.axvline(targets[kind] * 1000, color="red", ls="--", lw=1, label="target (p99)")
        ax.set_title(f"{titles[kind]} ({len(allm)} changes)")
        ax.set_xlabel("publish -> served (ms)")
        ax.set_ylabel("fraction of changes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"pop53 feed: {results['params']['machines']} machines, "
                 f"{results['params']['nodes']}-node NATS JetStream cluster (lab namespaces)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(r: dict) -> str:
    p, s = r["params"], r["summary"]
    L = ["# The feed in the lab fleet: publish -> served on every machine\n",
         f"- Date (UTC): {r['started']}; took {r['elapsed_s'] / 60:.1f} min",
         f"- Command (repository root, as root): `{r['command']}`",
         f"- Machine: {r['machine']}; load average (1 min) {r['load_start'][0]:.2f} at start, "
         f"{r['load_end'][0]:.2f} at end (2 cores shared with other engineers' work)",
         f"- Lab: {p['machines']} pop53 machines (`pop53 serve`, 1 worker each) and a "
         f"{p['nodes']}-node NATS JetStream cluster (nats-server {r['nats']}), stream replicas "
         f"= {p['nodes']}, each in its own network namespace behind the lab router.  The "
         "publisher and prober run in a client namespace; each machine is asked directly "
         "(its link address) until its answer shows the change.",
         "- Latency = start of publishing (signing included) -> the change answered; 'all' is "
         "the slowest machine for that change, 'per machine' pools every machine's latency.\n",
         "- 'publish p50' is signing plus JetStream's acknowledgement (the stream stored on a "
         "quorum of nodes); 'unanswered' counts the prober's queries with no answer within "
         "0.2 s (on any machine, during the whole series).\n",
         "| change | n | missed | all p50 | all p99 | all max | per machine p50 / p99 | "
         "publish p50 | target | payload | unanswered queries |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"liveness": ("liveness flip", "p99 < 100 ms"),
             "delta": (f"one-prefix map delta ({p['delta_prefixes']:,}-prefix map)", "p99 < 1 s"),
             "full": (f"full {p['prefixes']:,}-prefix map", "< 1 s")}
    for k, (name, target) in names.items():
        x = s.get(k)
        if not x:
            continue
        L.append(f"| {name} | {x['n']} | {x['missed']} | {x['p50'] * 1e3:.1f} ms | "
                 f"{x['p99'] * 1e3:.1f} ms | {x['max'] * 1e3:.1f} ms | "
                 f"{x['p50_machine'] * 1e3:.1f} / {x['p99_machine'] * 1e3:.1f} ms | "
                 f"{x['publish_p50'] * 1e3:.1f} ms | {target} | "
                 f"{int(x['bytes']):,} B | {x['unanswered']} of {x['queries']} |")
    if r.get("memory"):
        L += ["", f"## Memory during the {p['prefixes']:,}-prefix map swaps ({s['full']['n']} "
              "swaps)\n", "Steady: median while idle with a 1M-prefix map, for 3 s before the "
              "first swap and after the last one (the allocator may keep or return the last "
              "swap's memory, so both are shown); peak: the highest sample (every 50 ms) during "
              "the swaps; ratio: peak / steady.\n",
              "| machine | RSS steady before / after | RSS peak | ratio | PSS steady before / "
              "after | PSS peak | ratio |", "|---|---|---|---|---|---|---|"]
        mib = lambda v: f"{v / 2**20:.0f}"  # noqa: E731
        for name, m in r["memory"].items():
            L.append(f"| {name} | {mib(m['rss_before'])} / {mib(m['rss_after'])} MiB | "
                     f"{mib(m['rss_peak'])} MiB | {m['rss_peak'] / m['rss_before']:.2f}x / "
                     f"{m['rss_peak'] / m['rss_after']:.2f}x | {mib(m['pss_before'])} / "
                     f"{mib(m['pss_after'])} MiB | {mib(m['pss_peak'])} MiB | "
                     f"{m['pss_peak'] / m['pss_before']:.2f}x / "
                     f"{m['pss_peak'] / m['pss_after']:.2f}x |")
        L.append("\nTarget: peak <= 2x steady.")
    L += ["", "![latency CDFs](feed_fleet.png)", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.feed_fleet")
    ap.add_argument("--machines", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--liveness", type=int, default=100)
    ap.add_argument("--delta", type=int, default=100)
    ap.add_argument("--delta-prefixes", type=int, default=10000)
    ap.add_argument("--full", type=int, default=10)
    ap.add_argument("--prefixes", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    from pop53.lab.pop import Lab, LabConfig
    import subprocess

    started = time.time()
    r = {"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
         "command": "python -m bench.feed_fleet " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
         "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Linux "
                    f"{platform.release()}",
         "nats": subprocess.run(["nats-server", "--version"], capture_output=True,
                                text=True).stdout.strip().split()[-1],
         "load_start": os.getloadavg(), "params": vars(a) | {"out": str(a.out)},
         "series": {}, "summary": {}}
    cfg = LabConfig(machines=a.machines, clients=1, agents=False, feed_nodes=a.nodes,
                    server="pop53")
    with Lab(cfg) as lab:
        if a.liveness:
            r["series"]["liveness"] = series(lab, "liveness", a.liveness, interval=0.02,
                                             timeout=5, deadline=300)
        if a.delta:
            r["series"]["delta"] = series(lab, "delta", a.delta, interval=0.02, timeout=10,
                                          deadline=300, prefixes=a.delta_prefixes)
        if a.full:
            sampler = Sampler({m.name: m.procs["dns"].pid for m in lab.machines})
            sampler.start()
            try:
                r["series"]["full"] = series(lab, "full", a.full, interval=0.5, timeout=60,
                                             deadline=600, prefixes=a.prefixes, settle=3)
            finally:
                sampler.stop.set()
                sampler.join()
            r["memory"] = memory(sampler.samples, r["series"]["full"])
    r["summary"] = {k: summarize(v) for k, v in r["series"].items()}
    r["load_end"] = os.getloadavg()
    r["elapsed_s"] = time.time() - started
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "feed_fleet.json").write_text(json.dumps(r, indent=1))
    chart(r, a.out / "feed_fleet.png")
    (a.out / "feed_fleet.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
