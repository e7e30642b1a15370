"""Cold start of a big zone file: start to first answer, and peak memory, for pop53 beside Knot
and NSD in one run; plus `pop53 check` of the same file (issue 15 point 2).

    python3 -m bench.coldload                     # 1,000,000 names (about 1.57M records)
    python3 -m bench.coldload --names 100000 --old   # also pop53's dnspython path (slow: minutes at 1M)

Each server starts on a fresh work directory (pop53 with an empty --state: it parses and
compiles, no saved image) and is polled over UDP until it answers an A query for a host of the
zone; the time is from process start to that answer.  Peak memory is the largest RSS of the
server's process tree (pop53's compiler child included) sampled every 20 ms while it loads.
`pop53 check --zone FILE` is timed the same way (wall clock, peak RSS of the process).
Results: bench/results/coldload.md.  Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import data
from .peers import dnsperf, procs
from .peers.run import free_port
from .peers.servers import REPO, Knot, NSD, Pop53


class _PeakRSS(threading.Thread):
    """Largest summed RSS of a process tree, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            # statm, not smaps_rollup: sampling must not stall the process it measures
            self.peak_kib = max(self.peak_kib, procs.rss_kib(procs.tree(self.pid)))
            self.done.wait(self.interval)


def cpu_total(pid: int) -> float:
    """CPU seconds of a process tree so far: each live process's own time, plus (for the top
    process) the time of the children it has waited for (pop53's compiler child)."""
    total = procs.cpu_seconds(procs.tree(pid))
    f = procs._stat_fields(pid)
    if f is not None:       # cutime, cstime: fields 16 and 17
        total += (int(f[13]) + int(f[14])) / procs.CLK_TCK
    return total


def first_answer(proc: subprocess.Popen, work: Path, port: int, probe: str, timeout: float) -> dict:
    """Wait for a started server's first answer to `probe`, sampling its tree's peak RSS, then
    stop it: {"ok", "ready" (monotonic), "cpu_s", "peak_rss_mib", "rss_serving_mib"} or
    {"ok": False, "error"} with the tail of work/server.log."""
    sampler = _PeakRSS(proc.pid)
    sampler.start()
    try:
        ready = dnsperf.wait_ready(proc, port, probe, timeout)
        cpu = cpu_total(proc.pid)
        after = procs.memory(procs.tree(proc.pid))
    except BaseException as exc:
        tail = (work / "server.log").read_text(errors="replace")[-500:]
        return {"ok": False, "error": f"{exc}; log tail {tail!r}"}
    finally:
        sampler.done.set()
        sampler.join()
        procs.stop(proc)
    return {"ok": True, "ready": ready, "cpu_s": cpu, "peak_rss_mib": sampler.peak_kib / 1024,
            "rss_serving_mib": after.rss_kib / 1024}


def cold_start(peer, ds: data.Dataset, work: Path, env: dict | None, timeout: float) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    state = work / "state" if isinstance(peer, Pop53) else None
    port = free_port()
    launch = peer.launch(work, ds.zone, port, False, state)
    logf = open(work / "server.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(launch.argv, cwd=launch.cwd, env=env or launch.env, stdout=logf,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    logf.close()
    r = first_answer(proc, work, port, ds.probe, timeout)
    if not r["ok"]:
        return r
    out = {"ok": True, "first_answer_s": r["ready"] - t0, "cpu_s": r["cpu_s"],
           "peak_rss_mib": r["peak_rss_mib"], "rss_serving_mib": r["rss_serving_mib"],
           "settings": launch.settings}
    img = (state / "zones.img") if state is not None else None
    if img is not None and img.exists():
        out["image_mib"] = img.stat().st_size / 2**20
    return out


def check_run(zone: Path, env: dict) -> dict:
    argv = ["/usr/bin/time", "-f", "%e %M %U %S", sys.executable, "-m", "pop53", "check", "--zone",
            str(zone)]
    r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall, maxrss, user, system = r.stderr.strip().splitlines()[-1].split()
    return {"ok": r.returncode == 0, "wall_s": float(wall), "peak_rss_mib": int(maxrss) / 1024,
            "cpu_s": float(user) + float(system),
            "out": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.coldload", description=__doc__.split("\n")[0])
    p.add_argument("--names", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    p.add_argument("--old", action="store_true",
                   help="also pop53 with POP53_ZONE_PARSER=dnspython (the path before the scanner)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--rounds", type=int, default=1, help="runs per server, in alternating order")
    p.add_argument("--out", type=Path, default=data.BENCH_DIR / "results" / "coldload.md")
    a = p.parse_args(argv)
    ds = data.dataset(a.names, a.seed)
    records = sum(1 for line in open(ds.zone) if line[:1] not in ("$", "\n"))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = data.RAW_DIR / "coldload" / stamp
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    load0 = os.getloadavg()
    runs: dict[str, list] = {}
    peers = [("pop53", Pop53(), env), ("knot", Knot(), None), ("nsd", NSD(), None)]
    if a.old:
        peers.insert(1, ("pop53 (dnspython path)", Pop53(), dict(env, POP53_ZONE_PARSER="dnspython")))
    for rnd in range(a.rounds):
        for label, peer, penv in (peers if rnd % 2 == 0 else peers[::-1]):
            why = peer.missing()
            r = {"ok": False, "error": why} if why else cold_start(
                peer, ds, root / f"{label.split()[0]}-{rnd}" / ("old" if "dnspython" in label else "new"),
                penv, a.timeout)
            runs.setdefault(label, []).append(r)
            print(label, rnd, r, flush=True)
    chk = check_run(ds.zone, env)
    print("pop53 check", chk, flush=True)
    load1 = os.getloadavg()

    def med(label: str, key: str) -> float | None:
        ok = [r[key] for r in runs.get(label, []) if r.get("ok") and key in r]
        return statistics.median(ok) if ok else None

    knot = {k: med("knot", k) for k in ("first_answer_s", "cpu_s")}
    lines = [
        "# Cold start of a big zone file (issue 15 points 1 and 2)", "",
        f"Zone: `bench/data.py` {a.names:,} names, seed {a.seed}: {records:,} records "
        f"({ds.zone.stat().st_size / 2**20:.0f} MiB of text).  Measured {stamp}, {a.rounds} "
        f"round(s) in alternating order, load average {load0[0]:.2f} at the start, "
        f"{load1[0]:.2f} at the end (2 cores shared with other work).", "",
        f"Command: `PYTHONPATH=src python3 -m bench.coldload --names {a.names} --rounds {a.rounds}"
        f"{' --old' if a.old else ''}`", "",
        "Wall time depends on what else the shared machine runs; CPU seconds (the server's "
        "process tree, start to first answer, waited-for children included) much less so.  "
        "Medians over the rounds; every run's wall time in brackets.", "",
        "| server | start to first answer | vs Knot | CPU to first answer | vs Knot | "
        "peak RSS (tree) | RSS serving | image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rs in runs.items():
        if not any(r.get("ok") for r in rs):
            lines.append(f"| {label} | failed: {rs[0].get('error', '')[:120]} | | | | | | |")
            continue
        wall, cpu = med(label, "first_answer_s"), med(label, "cpu_s")
        each = ", ".join(f"{r['first_answer_s']:.1f}" for r in rs if r.get("ok"))
        ratio = f"{wall / knot['first_answer_s']:.2f}x" if knot["first_answer_s"] else ""
        cratio = f"{cpu / knot['cpu_s']:.2f}x" if knot["cpu_s"] else ""
        img = f"{med(label, 'image_mib'):.0f} MiB" if med(label, "image_mib") else ""
        lines.append(f"| {label} | {wall:.2f} s ({each}) | {ratio} | {cpu:.2f} s | "
                     f"{cratio} | {med(label, 'peak_rss_mib'):.0f} MiB | "
                     f"{med(label, 'rss_serving_mib'):.0f} MiB | {img} |")
    if med("pop53", "image_mib"):
        lines += ["", f"pop53 peak RSS of the server's tree / image: "
                      f"{med('pop53', 'peak_rss_mib') / med('pop53', 'image_mib'):.2f}x (target: 2x; "
                      "the tree's RSS counts the compiler child and the server apart, so the "
                      "shared libraries both map are counted twice).  Where it goes, phase by "
                      "phase: `python3 -m bench.coldload_phases`."]
    knot = knot if knot["cpu_s"] else None
    ratio = (f" ({chk['wall_s'] / knot['first_answer_s']:.2f}x Knot's cold start; CPU "
             f"{chk['cpu_s']:.2f} s, {chk['cpu_s'] / knot['cpu_s']:.2f}x Knot's)") if knot else ""
    lines += ["", f"`pop53 check --zone FILE`: {chk['wall_s']:.2f} s{ratio}, peak RSS "
                  f"{chk['peak_rss_mib']:.0f} MiB, {'ok' if chk['ok'] else 'FAILED'}: `{chk['out']}`", ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    png = a.out.with_suffix(".png")
    lines += [f"![cold start]({png.name})", ""]
    a.out.write_text("\n".join(lines) + "\n")
    plot(runs, med, chk, png)
    print(f"wrote {a.out} and {png}")
    return 0


def plot(runs: dict, med, chk: dict, path: Path) -> None:
    """Two panels: start to first answer and its CPU per server (with `pop53 check`), and
    peak RSS per server with pop53's image and 2x its size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [lb for lb, rs in runs.items() if any(r.get("ok") for r in rs)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = range(len(labels) + 1)
    wall = [med(lb, "first_answer_s") for lb in labels] + [chk["wall_s"]]
    cpu = [med(lb, "cpu_s") for lb in labels] + [chk["cpu_s"]]
    names = labels + ["pop53 check"]
    ax1.bar([i - 0.2 for i in x], wall, 0.4, label="wall (start to first answer)")
    ax1.bar([i + 0.2 for i in x], cpu, 0.4, label="CPU of the process tree")
    ax1.set_xticks(list(x), names)
    ax1.set_ylabel("seconds")
    ax1.set_title("1M-name zone file: cold start")
    ax1.legend(fontsize=8)
    peak = [med(lb, "peak_rss_mib") for lb in labels] + [chk["peak_rss_mib"]]
    ax2.bar(list(x), peak, 0.6, color="tab:gray")
    img = med("pop53", "image_mib")
    if img:
        ax2.axhline(img, color="tab:green", ls=":", label=f"pop53 image {img:.0f} MiB")
        ax2.axhline(2 * img, color="tab:red", ls="--", label="2x the image (target)")
        ax2.legend(fontsize=8)
    for i, v in enumerate(peak):
        ax2.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(list(x), names)
    ax2.set_ylabel("peak RSS, MiB (process tree)")
    ax2.set_title("peak memory while loading")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
