"""What query scoring (issue 13) adds to a UDP query, beside what the answer itself costs.

    python -m bench.micro.scoring

Both loops run in C without the GIL: `_core.bench_answer_batch` (parse + lookup + write) and
`Scorer.bench` (the worker loop's `sc_prefetch` over a batch of 64, then `sc_admit` for each:
sketch update, known-table read, header check, admission share), on a realistic known table: 100,000 random IPv4 /24s (the 2 MiB
bitmap) and 20,000 IPv6 /56s (a filter bitmap, then the exact hash table).  Sources are
scattered over every /24 (or 2^24 /56s), so the table reads miss the cache the way a spoofed
flood makes them ("cold"), or come from one /24 or /56 ("warm").  Writes
bench/results/scoring.md.  Not a test: nothing asserts a time.
"""
from __future__ import annotations

import os

# the zone compiler imports numpy: OpenBLAS's spinning helper threads would take the other core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import ipaddress  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from pop53 import _core  # noqa: E402
from pop53.scoring.known import KnownPrefixes, compile_table  # noqa: E402
from bench.micro.rrl import bench_args, bench_queries, report_head  # noqa: E402


def known_table(seed: int = 1) -> _core.KnownTable:
    rnd = random.Random(seed)
    v4 = frozenset(rnd.randrange(1 << 24) for _ in range(100_000))
    v6 = frozenset((0x2001_0db8 << 24) | rnd.randrange(1 << 24) for _ in range(20_000))
    return compile_table(KnownPrefixes(v4, v6))


def main(argv=None) -> int:
    args = bench_args(__doc__, "scoring", argv)
    image, wires = bench_queries()
    table = known_table()
    v4, v6 = ipaddress.ip_address("10.0.0.1").packed, ipaddress.ip_address("2001:db8::1").packed
    load0 = os.getloadavg()[0]
    rows = {"answer": [], "v4 cold": [], "v4 cold, no prefetch": [], "v4 warm": [], "v6 cold": [],
            "v6 cold, no prefetch": [], "v6 warm": []}
    for _ in range(args.rounds):
        rows["answer"].append(_core.bench_answer_batch(image.view, wires, 20))
        for name, first, spread in (("v4 cold", v4, 1 << 24), ("v4 cold, no prefetch", v4, 1 << 24),
                                    ("v4 warm", v4, 1), ("v6 cold", v6, 1 << 24),
                                    ("v6 cold, no prefetch", v6, 1 << 24), ("v6 warm", v6, 1)):
            s = _core.Scorer(source_rate=1_000_000, known_rate=1_000_000, window_ms=60)
            s.publish(table)
            rows[name].append(s.bench(wires[0], first, 2_000_000, spread,
                                      prefetch="no prefetch" not in name))
    med = {k: statistics.median(v) for k, v in rows.items()}
    label = {
        "answer": "answer (parse + lookup + write), 1,000 distinct A queries, C loop",
        "v4 cold": "scoring decision, IPv4, sources over all 16.7M /24s (table reads miss the cache)",
        "v4 cold, no prefetch": "the same without prefetching the batch's table lines",
        "v4 warm": "scoring decision, IPv4, one source /24 (table and sketch in cache)",
        "v6 cold": "scoring decision, IPv6, sources over 16.7M /56s (20,000 known /56s)",
        "v6 cold, no prefetch": "the same without prefetching the batch's table lines",
        "v6 warm": "scoring decision, IPv6, one source /56 (table and sketch in cache)",
    }
    lines = report_head("Query scoring: cost per UDP query", "scoring", args,
                        f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end "
                        "(shared machine)") + [
        "- Known table: 100,000 random IPv4 /24s (2 MiB bitmap), 20,000 IPv6 /56s"
        + (f" (a filter of {table.v6_filter_bits:,} bits in front of the exact table)"
           if getattr(table, "v6_filter_bits", 0) else " (a hash table)"),
        "",
        "| measurement | median of rounds | min | max |",
        "|---|---|---|---|",
    ]
    for k in rows:
        lines.append(f"| {label[k]} | {med[k]:.1f} ns | {min(rows[k]):.1f} | {max(rows[k]):.1f} |")
    lines += [
        "",
        f"Scoring adds {med['v4 cold'] / med['answer'] * 100:.0f}% (IPv4, cold) to the answer's own "
        f"cost; the issue's target is <= 20 ns per query (medians here: IPv4 {med['v4 cold']:.1f} ns "
        f"cold, {med['v4 warm']:.1f} warm; IPv6 {med['v6 cold']:.1f} cold, {med['v6 warm']:.1f} warm).  "
        f"Rounds: {args.rounds}; per round 2,000,000 decisions per row and 20 passes over "
        "the 1,000 queries; decisions in batches of 64 as the worker makes them (the batch's "
        "table lines prefetched first).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
