"""What scoring costs without an attack, measured in interleaved slices (issue 13's "no loss of
capacity"): bench/attack/cost.py compares fresh servers round by round, and fresh servers of the
same setup differ by more than the few percent in question.  Here two servers run side by side
and the load alternates between them every slice, so each pair of slices shares whatever else
the machine was doing.

    python -m bench.attack.cost_ab [--pairs 4] [--slices 24] [--seconds 1] [--rates 120000,0]
                                   [--only stamps,scoring,kstamps,wake] [--cap 0.5]

Four comparisons, each over `--pairs` fresh server pairs of `--slices` slice pairs (the order
within a slice pair alternating):

- **stamps**: the plain server (no scoring) alone, its slices alternated without and with a
  socket of this bench holding SO_TIMESTAMPNS, which turns on the kernel's stamping of every
  arriving packet (netstamp_needed_key) as a server with `kernel_stamps = true` does.  What
  kernel receive stamps for the controller would cost the whole machine.
- **scoring**: the plain and the scored server (scoring + the kernel stage: the attack bench's
  setup, the controller on the workers' clocks) both running, the load alternated between them.
- **kstamps**: the scored server with and without `kernel_stamps`, side by side the same way.
  Its sockets keep the kernel stamping on for both, so this is the controller's stamps' cost
  seen from a server, not the whole machine's.
- **wake**: the scored server without and with the steering program's wake words
  (`steer_idle`, on by default, docs/scoring.md), side by side the same way.

Both servers: one worker pinned to CPU 0, no quota (with `--cap 0.5`, half of it under the
attack bench's stealer cap, as bench.attack.run measures capacity); the load from CPU 1
(bench/attack/flood.c): one existing name from 256 /24s, at each of `--rates` datagrams a
second (0: as fast as one core sends).  Per slice the active server's CPU time (schedstat,
every thread) divided by its replies.  Per comparison and rate: the median per-slice-pair ratio, a 95% bootstrap interval
of that median, in how many pairs the second setup was cheaper, a two-sided sign test; at full
speed also the ratio of replies a second.  Writes bench/results/attack-cost-ab.md and .png.
Loopback only, bounded in time and count."""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from bench.attack import servers as sv  # noqa: E402
from bench.attack.cost import StampHold, cpu_ns, run, sign_p  # noqa: E402
from bench.attack.run import capacity  # noqa: E402

COMPARISONS = {"stamps": ("plain", "plain+stamps"), "scoring": ("plain", "scored"),
               "kstamps": ("scored-kstamps", "scored"), "wake": ("scored-nowake", "scored")}
CAP_WEIGHT = 262144     # --cap: the servers' cgroup weight, as bench.attack.run's default
# each setup: (servers.py server, plain, hold a stamping socket during its slices)
SETUPS = {"plain": ("pop53", True, False), "plain+stamps": ("pop53", True, True),
          "scored": ("pop53", False, False), "scored-nowake": ("pop53-nowake", False, False),
          "scored-kstamps": ("pop53-kstamps", False, False)}


def slice_run(binary: Path, srv: sv.Running, seconds: float, name_wire: str,
              rate: int) -> tuple[float, float]:
    """(server CPU ns per reply, replies a second) of one slice of load on `srv`."""
    c0 = cpu_ns(srv)
    got, _ = capacity(binary, srv.port, seconds, name_wire, rate, 256)
    used = cpu_ns(srv) - c0
    replies = got * seconds
    return (used / replies if replies else float("nan")), got


def compare(kind: str, args, binary: Path, tmp: Path, zonefile: Path, probe: str,
            name_wire: str) -> dict:
    """{rate: [((ns/reply, replies/s) first, (ns/reply, replies/s) second), ...]} over every
    slice pair of every server pair."""
    cap = sv.CpuCap(args.cap, CAP_WEIGHT, "steal") if args.cap else sv.CpuCap(0)
    try:
        return _compare(kind, args, binary, tmp, zonefile, probe, name_wire, cap)
    finally:
        cap.close()


def _compare(kind: str, args, binary: Path, tmp: Path, zonefile: Path, probe: str,
             name_wire: str, cap) -> dict:
    first, second = COMPARISONS[kind]
    out: dict[int, list] = {r: [] for r in args.rates}
    for pair in range(args.pairs):
        running: dict[tuple, sv.Running] = {}
        try:
            arms = {}
            for setup in (first, second):
                name, plain, stamps = SETUPS[setup]
                if (name, plain) not in running:
                    running[(name, plain)] = sv.Running(name, tmp / f"{kind}-{setup}-{pair}",
                                                        zonefile, probe, cap, plain=plain)
                arms[setup] = (running[(name, plain)], StampHold if stamps else nullcontext)
            for i in range(args.slices):
                for rate in args.rates:
                    got = {}
                    order = (first, second) if (i + pair) % 2 == 0 else (second, first)
                    for setup in order:
                        srv, ctx = arms[setup]
                        with ctx():
                            time.sleep(0.2)
                            got[setup] = slice_run(binary, srv, args.seconds, name_wire, rate)
                    out[rate].append((got[first], got[second]))
                    print(f"{kind} pair {pair} slice {i} rate {rate or 'full'}: "
                          + ", ".join(f"{s} {got[s][0]:.0f} ns/reply {got[s][1]:,.0f}/s"
                                      for s in order), flush=True)
        finally:
            for srv in running.values():
                srv.stop()
    return out


def median_ci(ratios: list[float], n: int = 2000, seed: int = 53) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the median."""
    rnd = random.Random(seed)
    meds = sorted(statistics.median(rnd.choices(ratios, k=len(ratios))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def row(label: str, rate: int, pairs: list, idx: int) -> str:
    """One table row: the per-pair ratios second / first of CPU per reply (idx 0) or replies
    a second (idx 1)."""
    ratios = [b[idx] / a[idx] for a, b in pairs if a[idx] and b[idx]]
    if not ratios:
        return f"| {label} | {rate or 'full speed'} | - | - | - | - | - |"
    lo, hi = median_ci(ratios)
    k = sum(r < 1 for r in ratios)
    med_a = statistics.median(a[idx] for a, _ in pairs)
    med_b = statistics.median(b[idx] for _, b in pairs)
    return (f"| {label} | {f'{rate:,}' if rate else 'full speed'} | {med_a:,.0f} / {med_b:,.0f} "
            f"| **{statistics.median(ratios):.3f}** | {lo:.3f}-{hi:.3f} | {k}/{len(ratios)} "
            f"| {sign_p(k, len(ratios)):.3f} |")


def report(args, res: dict, load0: float, load1: float) -> str:
    lines = ["# Scoring's cost without an attack, interleaved (bench/attack/cost_ab.py)", "",
             f"- Date (UTC): {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}",
             f"- Command: `python -m bench.attack.cost_ab --pairs {args.pairs} --slices "
             f"{args.slices} --seconds {args.seconds} --rates "
             f"{','.join(str(r) for r in args.rates)} --only {','.join(args.only)}"
             f"{f' --cap {args.cap:g}' if args.cap else ''}`",
             f"- Machine: 2 CPUs shared with other work, load average {load0:.2f} at start, "
             f"{load1:.2f} at end",
             "- pop53, one worker pinned to CPU 0, "
             + (f"capped to {args.cap:g} of it (bench/attack/steal.c, a SCHED_FIFO task on CPU 0 "
                f"takes the rest, waking every ms; cgroup cpu.shares {CAP_WEIGHT}, as in "
                "bench.attack.run)" if args.cap else "no quota")
             + ", the load from CPU 1: one existing "
             f"name from 256 /24s; {args.pairs} fresh server pairs x {args.slices} slice pairs "
             f"of {args.seconds} s, the order alternating", "",
             "Per comparison and offered rate: the medians of the two setups, the median of the "
             "per-slice-pair ratio (second / first) with its 95% bootstrap interval, in how "
             "many pairs the second setup was lower, a two-sided sign test.", ""]
    for title, idx in (("Server CPU ns per reply", 0), ("Replies a second", 1)):
        lines += [f"## {title}", "",
                  "| second vs first | offered/s | medians first / second | ratio | 95% "
                  "interval | lower | sign test p |", "|---|---|---|---|---|---|---|"]
        for kind, res_kind in res.items():
            first, second = COMPARISONS[kind]
            for rate in args.rates:
                if idx == 1 and rate:
                    continue                # at a fixed rate both answer all of it
                lines.append(row(f"{second} vs {first}", rate, res_kind[rate], idx))
        lines.append("")
    return "\n".join(lines)


def plot(args, res: dict, path: Path) -> None:
    """Per comparison and rate, every slice pair's CPU-per-reply ratio and their median."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = []
    for kind, res_kind in res.items():
        for rate in args.rates:
            ratios = [b[0] / a[0] for a, b in res_kind[rate] if a[0] and b[0]]
            x = len(labels)
            labels.append(f"{COMPARISONS[kind][1]}\n{rate // 1000}k/s" if rate
                          else f"{COMPARISONS[kind][1]}\nfull speed")
            ax.plot([x + random.Random(x).uniform(-0.15, 0.15) for _ in ratios], ratios, "k.",
                    markersize=3, alpha=0.5)
            if ratios:
                ax.hlines(statistics.median(ratios), x - 0.3, x + 0.3, color="#3366aa", lw=2)
    ax.axhline(1.0, color="#999999", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("CPU per reply, second / first")
    ax.set_title("pop53 no attack: interleaved slice pairs (line: median)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=4, help="fresh server pairs")
    ap.add_argument("--slices", type=int, default=24, help="slice pairs per server pair")
    ap.add_argument("--seconds", type=float, default=1.0, help="one slice's load")
    ap.add_argument("--rates", default="120000,0",
                    type=lambda s: [int(x) for x in s.split(",")],
                    help="offered datagrams a second (0: full speed)")
    ap.add_argument("--only", type=lambda v: v.split(","), default=list(COMPARISONS),
                    help=f"comparisons, of {','.join(COMPARISONS)}")
    ap.add_argument("--cap", type=float, default=0.0,
                    help="the servers' share of CPU 0 under bench.attack.run's stealer cap "
                    "(0: no cap)")
    ap.add_argument("--out", type=Path,
                    default=ROOT / "bench" / "results" / "attack-cost-ab.md")
    args = ap.parse_args(argv)
    return run(args, lambda *a: {kind: compare(kind, args, *a) for kind in args.only},
               report, plot)

if __name__ == "__main__":
    sys.exit(main())
