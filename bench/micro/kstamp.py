"""What the kernel's receive timestamp (SO_TIMESTAMPNS, `[server] receive_timestamps`) costs per
UDP datagram, in the kernel: the CPU time of sending, looping back and receiving batches of 64
datagrams on a loopback socket with the stamp off, on, and sampled (on for one receive batch in
16, `[server] receive_timestamp_every`'s default), the order rotating.

    python -m bench.micro.kstamp

bench/micro/kstamp.c is built with cc into a temporary directory and run; it measures
CLOCK_PROCESS_CPUTIME_ID (the softirq work of the loopback is charged to it), so other load
on the machine lengthens neither variant.  Writes bench/results/kstamp_micro.md.  The user-space
share (reading the stamp, counting the histogram) is in bench.micro.dnstap.  Not a test:
nothing here asserts a time.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench.micro.rrl import bench_args, report_head, write_report  # noqa: E402

BATCHES = 300          # per run: 19,200 datagrams


def main(argv=None) -> int:
    args = bench_args(__doc__, "kstamp_micro", argv)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "kstamp"
        subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "kstamp.c")], check=True)
        out = subprocess.run([str(exe), str(args.rounds), str(BATCHES)], capture_output=True,
                             text=True, check=True, timeout=1800).stdout
    rows = [tuple(map(float, line.split())) for line in out.splitlines() if line.strip()]
    off, on, sampled = ([r[k] for r in rows] for k in range(3))
    med = statistics.median
    lines = report_head("SO_TIMESTAMPNS: the kernel's cost per UDP datagram", "kstamp", args,
                        f"load average {load0:.2f} to {os.getloadavg()[0]:.2f}") + [
        "", "| receive stamp | median CPU ns/datagram (send + loopback + receive) | min | "
        "added: median of the paired differences |",
        "|---|---|---|---|",
        f"| off | {med(off):.0f} | {min(off):.0f} | |",
        f"| on (every datagram) | {med(on):.0f} | {min(on):.0f} | "
        f"{med([b - a for a, b in zip(off, on)]):+.0f} ns |",
        f"| sampled (one batch in 16) | {med(sampled):.0f} | {min(sampled):.0f} | "
        f"{med([b - a for a, b in zip(off, sampled)]):+.0f} ns |",
        "", f"{len(rows)} rounds of {BATCHES} x 64 datagrams per variant, the order rotating.  "
        "Whether the system's receive timestamping was already on (another socket asking for "
        "it enables it for every packet) is not controlled: the added cost is then the stamp's "
        "cmsg alone, which is what sampling saves (a socket that asked once keeps its packets "
        "stamped on arrival).", ""]
    return write_report(args, lines)


if __name__ == "__main__":
    raise SystemExit(main())
