"""What scoring costs without an attack (issue 13's "no loss of capacity or of legitimate
answers"): pop53 with scoring and the kernel stage against its plain setup, the same load, the
server's CPU per reply.

    python -m bench.attack.cost [--rounds 8] [--seconds 3] [--rates 60000,120000,0]

One worker pinned to CPU 0 without a quota (the CPU it spends is the measure, not a cap's
gaps), the load from CPU 1 (bench/attack/flood.c, counting the replies): one existing name from
256 /24s (each under `source_rate`, so no source is a flood by rate), at each of `--rates`
datagrams a second (0: as fast as one core sends, above the server's capacity).  Per round the
two setups alternate (plain first in even rounds), each a fresh server; per run the server's
CPU time (schedstat, every thread) over the run divided by the replies, and the replies a
second.  Per rate: the medians, the per-round ratio scored / plain, in how many rounds the
scored server was cheaper, a two-sided sign test.  Throughput ratios at full speed move with
whatever else runs on this shared machine; CPU per reply at a fixed rate moves far less.
`--stamps` adds a third setup, "plain+stamps": the plain server (the same process, its runs
alternated with the plain ones) while this bench holds a socket with SO_TIMESTAMPNS, which
turns on the kernel's stamping of every arriving packet as the scored setup's sockets do: what
the stamps alone cost.  Writes bench/results/attack-cost.md and .png.  Loopback only, bounded
in time and count."""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from math import comb
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from bench.attack import servers as sv  # noqa: E402
from bench.attack.run import bench_zone, capacity  # noqa: E402

SETUPS = ("plain", "scored")
STAMPED = "plain+stamps"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)    # asm-generic/socket.h


class StampHold:
    """A loopback UDP socket with SO_TIMESTAMPNS: while it is open the kernel stamps every
    packet that arrives on the machine (netstamp_needed_key), as it does for a scored server."""

    def __enter__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return self

    def __exit__(self, *exc):
        self.sock.close()


def cpu_ns(srv: sv.Running) -> int:
    return sum(r for r, _ in srv.sched_ns().values())


def sign_p(k: int, n: int) -> float:
    """Two-sided sign test: k of n rounds one way, under "either way is as likely"."""
    tail = sum(comb(n, j) for j in range(max(k, n - k), n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def measure(args, binary: Path, tmp: Path, zonefile: Path, probe: str, name_wire: str) -> dict:
    """{(setup, rate): [(ns per reply, replies/s), ...]} over the rounds.  With --stamps the
    plain server runs every rate twice, without and with the kernel stamping (the order
    alternating by round): the same process, so its ratio is free of the spread between fresh
    servers."""
    cap = sv.CpuCap(0)
    out: dict[tuple[str, int], list] = {}

    def run(srv, setup, rnd, rate):
        time.sleep(0.5)
        c0 = cpu_ns(srv)
        got, offered = capacity(binary, srv.port, args.seconds, name_wire, rate, 256)
        used = cpu_ns(srv) - c0
        replies = got * args.seconds
        out.setdefault((setup, rate), []).append(
            (used / replies if replies else float("nan"), got))
        print(f"round {rnd} {setup} rate {rate or 'full'}: {used / 1e6:.0f} ms CPU, "
              f"{got:,.0f} replies/s of {offered:,.0f}, "
              f"{used / replies if replies else float('nan'):.0f} ns/reply", flush=True)

    for rnd in range(args.rounds):
        for setup in (SETUPS if rnd % 2 == 0 else SETUPS[::-1]):
            srv = sv.Running("pop53", tmp / f"{setup}-{rnd}", zonefile, probe, cap,
                             plain=setup == "plain")
            try:
                for rate in args.rates:
                    if setup == "scored" or not args.stamps:
                        run(srv, setup, rnd, rate)
                        continue
                    for stamped in ((False, True) if rnd % 2 == 0 else (True, False)):
                        if stamped:
                            with StampHold():
                                run(srv, STAMPED, rnd, rate)
                        else:
                            run(srv, setup, rnd, rate)
            finally:
                srv.stop()
    return out


def setups_of(args) -> tuple[str, ...]:
    return (SETUPS[0], STAMPED, SETUPS[1]) if args.stamps else SETUPS


def ratio_cell(pl: list, other: list) -> str:
    """Per-round ratio of CPU per reply, other / plain: its median (every round), how many
    rounds the other setup was cheaper, the sign test."""
    ratios = [o[0] / p[0] for p, o in zip(pl, other) if p[0]]
    if not ratios:
        return "- | - | -"
    k = sum(r < 1 for r in ratios)
    return (f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)}) | "
            f"{k}/{len(ratios)} | {sign_p(k, len(ratios)):.3f}")


def report(args, res: dict, load0: float, load1: float) -> str:
    opts = " --stamps" if args.stamps else ""
    lines = ["# Scoring's cost without an attack (bench/attack/cost.py)", "",
             f"- Date (UTC): {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}",
             f"- Command: `python -m bench.attack.cost --rounds {args.rounds} --seconds "
             f"{args.seconds} --rates {','.join(str(r) for r in args.rates)}{opts}`",
             f"- Machine: 2 CPUs shared with other work, load average {load0:.2f} at start, "
             f"{load1:.2f} at end",
             "- pop53, one worker pinned to CPU 0, no quota; plain (no scoring) against scoring + "
             "the kernel stage (the attack bench's setup)"
             + (", and plain while the kernel stamps every packet (plain+stamps)" if args.stamps
                else "")
             + "; one existing name from 256 /24s; setups alternated per round, a fresh server "
             "each run", "",
             "Per setup and offered rate: the median per reply over the rounds; against plain, the "
             "per-round ratio (median, then every round), in how many rounds the setup was "
             "cheaper, a two-sided sign test.", ""]
    lines += ["## Server CPU ns per reply", "",
              "| offered/s | setup | median | vs plain (rounds) | cheaper | sign test p "
              "| replies/s |", "|---|---|---|---|---|---|---|"]
    for rate in args.rates:
        pl = res.get(("plain", rate), [])
        label = f"{rate:,}" if rate else "full speed"
        for setup in setups_of(args):
            runs = res.get((setup, rate), [])
            if not runs:
                continue
            cmp = "- | - | -" if setup == "plain" else ratio_cell(pl, runs)
            lines.append(f"| {label} | {setup} | {statistics.median(c for c, _ in runs):,.0f} | "
                         f"{cmp} | {statistics.median(g for _, g in runs):,.0f} |")
    lines.append("")
    return "\n".join(lines)


def plot(args, res: dict, path: Path) -> None:
    """Bars: the median CPU per reply of each setup at each rate, every run as a dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    setups = setups_of(args)
    w = 0.8 / len(setups)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for j, setup in enumerate(setups):
        for i, rate in enumerate(args.rates):
            runs = [c for c, _ in res.get((setup, rate), [])]
            if not runs:
                continue
            x = i + (j - (len(setups) - 1) / 2) * w
            ax.bar(x, statistics.median(runs), w * 0.95,
                   color=("#999999", "#cc9933", "#3366aa")[j if len(setups) == 3 else 2 * j],
                   label=setup if i == 0 else None)
            ax.plot([x] * len(runs), runs, "k.", markersize=3)
    ax.set_xticks(range(len(args.rates)),
                  [f"{r // 1000}k/s" if r else "full speed" for r in args.rates])
    ax.set_ylabel("server CPU ns per reply")
    ax.set_title("pop53 plain vs scoring + kernel stage, no attack", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rates", default="60000,120000,0",
                    type=lambda s: [int(x) for x in s.split(",")],
                    help="offered datagrams a second per run (0: full speed)")
    ap.add_argument("--stamps", action="store_true",
                    help="add plain+stamps: plain while the kernel stamps every packet")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attack-cost.md")
    args = ap.parse_args(argv)
    return run(args, lambda *a: measure(args, *a), report, plot)


def run(args, measure, report, plot) -> int:
    """What this bench and cost_ab.py share: pinned to CPU 1, the flood built in a temporary
    directory, `measure(binary, tmp, zonefile, probe name, name wire)`, then `report(args,
    results, load at start, load at end)` written to `args.out` and `plot` beside it."""
    zonefile, names, _, name_wire = bench_zone()
    os.sched_setaffinity(0, {1})
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        binary = tmp / "flood"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "flood.c")], check=True)
        res = measure(binary, tmp, zonefile, names[0], name_wire)
    text = report(args, res, load0, os.getloadavg()[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(args, res, args.out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
