"""Per-round ratios pop53 / gdnsd from `python -m bench.mapping` logs (its stdout): each round
measures every server and column back to back, so a round's ratio cancels most of the shared
machine's drift.  Prints per column the ratios, their median, how many rounds pop53 was
cheaper in and a one-sided sign test, for each log and pooled.

    python -m bench.mapping_rounds LOG [LOG...]"""
from __future__ import annotations

import re
import statistics
import sys
from math import comb

LINE = re.compile(r"run (\d+)/\d+ (\w+) (static|mapped) ([\d,]+): [\d,]+ q/s, ([\d.]+) us/q")


def rounds(path: str) -> dict[tuple[str, str], list[float]]:
    cost: dict = {}
    for line in open(path):
        if m := LINE.search(line):
            cost[(int(m[1]), m[2], m[3], m[4])] = float(m[5])
    out: dict[tuple[str, str], list[float]] = {}
    for (rnd, server, kind, size), us in sorted(cost.items()):
        other = cost.get((rnd, "gdnsd", kind, size))
        if server == "pop53" and other:
            out.setdefault((kind, size), []).append(us / other)
    return out


def line(label: str, r: list[float]) -> str:
    k, n = sum(x < 1 for x in r), len(r)
    p = sum(comb(n, j) for j in range(k, n + 1)) / 2 ** n
    return (f"{label}: median {statistics.median(r):.3f}, pop53 cheaper in {k}/{n}, sign test "
            f"p = {p:.4f}; " + " ".join(f"{x:.3f}" for x in r))


def main(argv: list[str]) -> int:
    pooled: dict[tuple[str, str], list[float]] = {}
    for path in argv:
        for key, r in rounds(path).items():
            print(line(f"{path} {key[0]} {key[1]}", r))
            pooled.setdefault(key, []).extend(r)
    if len(argv) > 1:
        for key, r in pooled.items():
            print(line(f"pooled {key[0]} {key[1]}", r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
