"""How long a CPU-capped task is kept off the CPU under either of the attack bench's caps
(`bench.attack.run --cap quota|steal`) on this kernel, measured with a busy loop
(bench/attack/stalls.c) instead of a server.

    python -m bench.attack.stalls [--seconds 2] [--out FILE]

The quota is enforced when the kernel accounts the task's runtime: at scheduler ticks
(CONFIG_HZ; 250 here, every 4 ms) for a task that never enters the scheduler, as a DNS worker
under a flood does not.  Such a task overruns its 1 ms quota up to the next tick and is then
throttled until the debt is repaid: stalls of several periods, not period - quota.  A task that
enters the scheduler often (sched_yield every 50 us here) is stopped near its quota instead.
The stealer (bench/attack/steal.c) keeps it off in slices of about share x 1 ms instead.
Writes bench/results/attack-stalls.md; nothing asserts a time."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench.attack import servers as sv  # noqa: E402

BUCKETS = ("0.2-1", "1-2", "2-3", "3-4", "4-6", "6-8", "8-12", ">12")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=HERE.parents[1] / "bench" / "results" / "attack-stalls.md")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "stalls"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "stalls.c")], check=True)
        for how, quota, yld in [("quota", q, y) for q in (0.5, 0.25) for y in (0, 1)] + [
                ("steal", q, 0) for q in (0.5, 0.25)]:
            cap = sv.CpuCap(quota, 262144, how)
            try:
                t0 = cap.throttled_ns()
                out = subprocess.run(cap.wrap([str(binary), str(args.seconds), str(yld)]),
                                     capture_output=True, text=True, check=True).stdout.split()
                rows.append((how, quota, yld, [int(x) for x in out[:8]], float(out[8]),
                             (cap.throttled_ns() - t0) / 1e6))
            finally:
                cap.close()
    hz = next((ln.split("=")[1] for ln in _kconfig() if ln.startswith("CONFIG_HZ=")), "?")
    lines = ["# How long the bench's CPU cap keeps a busy task off the CPU (bench/attack/stalls)", "",
             f"- Date (UTC): {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
             "- Command (from the repository root): `python -m bench.attack.stalls`",
             f"- Machine: {os.cpu_count()} CPUs shared with other work, load average {load0:.2f} at "
             f"start, {os.getloadavg()[0]:.2f} at end; kernel {os.uname().release}, CONFIG_HZ={hz}",
             "- The task: a busy loop pinned to CPU 0 in the bench's cgroup (cpu.shares 262144), for "
             f"{args.seconds:g} s, under either cap of `bench.attack.run --cap`: quota (cgroup cpu "
             "quota 1 ms per period) or steal (bench/attack/steal.c at SCHED_FIFO on CPU 0 takes "
             "the rest, waking every 1 ms); gaps between its clock reads over 0.2 ms counted by "
             "length (ms)", "",
             "| cap | share | sched_yield every 50 us | " + " | ".join(BUCKETS)
             + " | stalled ms | kept off ms (throttled / the stealer's CPU) |",
             "|---|---|---|" + "---|" * (len(BUCKETS) + 2)]
    for how, quota, yld, h, total, thr in rows:
        share = f"{quota:g} (1 ms per {1 / quota:g} ms)" if how == "quota" else f"{quota:g}"
        lines.append(f"| {how} | {share} | {'yes' if yld else 'no'} | "
                     + " | ".join(str(x) for x in h) + f" | {total:.0f} | {thr:.0f} |")
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _kconfig() -> list[str]:
    import gzip
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read().splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    sys.exit(main())
