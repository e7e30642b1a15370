"""Scoring decisions of several builds of the extension side by side, in one process.

    python -m bench.micro.scoring_ab old=/path/to/old/_core...so new=src/pop53/_core...so

On a shared machine whose speed drifts between runs (other tenants, clock), separate runs of
`bench.micro.scoring` per build differ by more than the change being measured.  Here every
build's `_core` is loaded at once (each .so is its own module) and the rounds alternate build by
build, row by row, so a drift hits them alike.  Each build gets the same known table (this
checkout's `compile_table`, passed as raw buffers: the format main and this branch share) and
runs its own `Scorer.bench`.  Prints a markdown table of medians (ns per decision).  Not a test.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import ipaddress
import os
import random
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pop53.scoring.known import KnownPrefixes, compile_table  # noqa: E402
from bench.micro.rrl import bench_queries  # noqa: E402

ROWS = (  # label, first address, spread, prefetch
    ("IPv4, sources over all /24s", "10.0.0.1", 1 << 24, True),
    ("IPv6, sources over 2^24 /56s", "2001:db8::1", 1 << 24, True),
    ("IPv6, the same without the batch prefetch", "2001:db8::1", 1 << 24, False),
    ("IPv6, one source /56", "2001:db8::1", 1, True),
)


def load(path: str):
    """A build's extension as its own module object (not put in sys.modules)."""
    loader = importlib.machinery.ExtensionFileLoader("pop53._core", path)
    spec = importlib.util.spec_from_file_location("pop53._core", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", help="NAME=PATH of a built _core .so")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--v6-keys", type=int, default=20_000)
    ap.add_argument("--n", type=int, default=1_000_000, help="decisions per row and round")
    args = ap.parse_args(argv)
    mods = {name: load(path) for name, path in (b.split("=", 1) for b in args.builds)}
    _, wires = bench_queries()
    rnd = random.Random(1)
    v4 = frozenset(rnd.randrange(1 << 24) for _ in range(100_000))
    v6 = frozenset((0x2001_0db8 << 24) | rnd.randrange(1 << 24) for _ in range(args.v6_keys))
    ref = compile_table(KnownPrefixes(v4, v6))
    raw4, raw6 = bytes(ref.owner4), bytes(ref.owner6)
    tables = {name: m.KnownTable(raw4, raw6) for name, m in mods.items()}
    load0 = os.getloadavg()[0]
    got: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for label, first, spread, prefetch in ROWS:
            for name, m in mods.items():
                s = m.Scorer(source_rate=1_000_000, known_rate=1_000_000, window_ms=60)
                s.publish(tables[name])
                got.setdefault((label, name), []).append(
                    s.bench(wires[0], ipaddress.ip_address(first).packed, args.n, spread,
                            prefetch=prefetch))
    print(f"{args.rounds} rounds, {len(v4):,} IPv4 /24s and {len(v6):,} IPv6 /56s known; "
          f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print("| row | " + " | ".join(mods) + " |")
    print("|---|" + "---|" * len(mods))
    for label, *_ in ROWS:
        print(f"| {label} | " + " | ".join(f"{statistics.median(got[(label, n)]):.1f} ns"
                                           for n in mods) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
