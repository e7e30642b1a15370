"""Mapping micro-benchmark: map compile time and bytes per prefix, the C lookup (find + scope)
per key, and what a mapped answer with ECS costs beside a static answer with ECS, at 1k, 100k
and 1M prefixes.

    python -m bench.micro.mapping [--sizes 1000,100000,1000000] [--out bench/results/mapping_micro.md]

The answer loops run in C without the GIL (`_core.bench_answer_batch`, the same core_answer
the workers call); each query carries a different ECS /24 (or /56).  Map files are seeded
random IPv4 (and 1/8 IPv6) prefixes of /8../32 with 50 regions, overlapping.  Not a test:
nothing here asserts a time.  Say the machine's load beside the numbers.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import dns.edns  # noqa: E402
import dns.message  # noqa: E402
import numpy as np  # noqa: E402

import pop53  # noqa: E402
from pop53 import _core  # noqa: E402
from pop53.mapping.config import parse  # noqa: E402
from pop53.mapping.mapfile import compile_map_bytes  # noqa: E402
from pop53.mapping.snapshot import SnapshotBuilder  # noqa: E402

ZONE = """$ORIGIN cdn.example.
$TTL 3600
@    SOA ns1 host 1 7200 3600 1209600 300
@    NS  ns1
ns1  A   192.0.2.53
sta  A   192.0.2.99
"""
REGIONS = [f"r{i}" for i in range(50)]


def map_bytes(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    seen: dict = {}
    while len(seen) < n:
        if rng.random() < 0.125:
            plen = rng.choice([24, 32, 40, 48, 56, 64])
            net = ipaddress.IPv6Network(((0x2001 << 112 | rng.getrandbits(48) << 64) >> (128 - plen)
                                         << (128 - plen), plen))
        else:
            plen = rng.choice([8, 12, 16, 18, 20, 22, 24, 24, 24, 28, 32])
            net = ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - plen) << (32 - plen), plen))
        seen.setdefault(net, REGIONS[rng.randrange(len(REGIONS))])
    return "".join(f"{k} {v}\n" for k, v in seen.items()).encode()


def _status_kib(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _hwm_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current RSS
        f.write("5")


def memory(n: int) -> str:
    """Steady memory of a compiled map + one snapshot, and the peak while a second copy is
    compiled and swapped in with the first still held (a reload)."""
    data = map_bytes(n)
    targets = [{"name": f"t{i}", "addresses": [f"192.0.2.{i + 1}"]} for i in range(10)]
    doc = {"map": [{"name": "m", "file": "unused", "default": "r0"}], "target": targets,
           "mapped": [{"name": "www.cdn.example.", "map": "m",
                       "regions": {r: [f"t{i % 10}"] for i, r in enumerate(REGIONS)}}]}
    cfg = parse(doc, "bench.toml", zones=["cdn.example."])
    base = _status_kib("VmRSS")
    table = compile_map_bytes(data, "bench.map", "r0")
    builder = SnapshotBuilder(cfg, {"m": table})
    snap = builder.build(lambda t: True, 1)
    steady = _status_kib("VmRSS") - base
    arrays = table.nbytes + sum(a.nbytes for v in builder._views.values() for a in v
                                if a is not None) + len(snap.refs[0])
    _hwm_reset()
    table2 = compile_map_bytes(data, "bench.map", "r0")
    snap2 = SnapshotBuilder(cfg, {"m": table2}).build(lambda t: True, 1)
    peak = _status_kib("VmHWM") - base
    del snap, table
    return (f"{n:,} prefixes: the map's and the snapshot's arrays {arrays / 2**20:.1f} MiB; RSS "
            f"steady {steady / 1024:.1f} MiB (map + one snapshot), peak during "
            f"a reload {peak / 1024:.1f} MiB = {peak / max(steady, 1):.2f}x steady "
            f"(RSS from /proc, the map's bytes {len(data) / 2**20:.1f} MiB held by the caller)"), snap2


def cpu_ns(image, wires, snap, repeat=50) -> float:
    """Thread CPU time per query of the C answer loop (time spent descheduled on this shared
    machine does not count; cache misses caused by neighbours still do)."""
    t = time.thread_time_ns()
    _core.bench_answer_batch(image.view, wires, repeat, None, None, snap)
    return (time.thread_time_ns() - t) / (len(wires) * repeat)


def best(fn, rounds):
    """(best wall, median wall, result, best process CPU time)."""
    out, cpu = [], []
    for _ in range(rounds):
        c = time.process_time()
        t = time.perf_counter()
        r = fn()
        out.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(out), statistics.median(out), r, min(cpu)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mapping_micro.md")
    ap.add_argument("--memory-only", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_only:
        print(memory(args.memory_only)[0])
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    fd, zpath = tempfile.mkstemp(suffix=".zone")
    with os.fdopen(fd, "w") as f:
        f.write(ZONE)
    image = pop53.compile_zones([zpath])
    os.unlink(zpath)
    targets = [{"name": f"t{i}", "addresses": [f"192.0.2.{i + 1}", f"2001:db8::{i + 1}"]}
               for i in range(10)]
    doc = {"map": [{"name": "m", "file": "unused", "default": "r0"}], "target": targets,
           "mapped": [{"name": "www.cdn.example.", "map": "m",
                       "regions": {r: [f"t{i % 10}"] for i, r in enumerate(REGIONS)}}]}
    cfg = parse(doc, "bench.toml", zones=["cdn.example."])
    rng = random.Random(2)
    keys4 = np.array([rng.getrandbits(32) for _ in range(100_000)], dtype=np.uint32)
    ecs_wires = {}
    for name in ("www.cdn.example.", "sta.cdn.example."):
        ws = []
        for k in keys4[:2000]:
            a = str(ipaddress.IPv4Address(int(k) & 0xFFFFFF00))
            ws.append(dns.message.make_query(name, "A", use_edns=0,
                                             options=[dns.edns.ECSOption(a, 24)]).to_wire())
        ecs_wires[name] = ws
    rows = []
    for n in sizes:
        data = map_bytes(n)
        t_compile, t_compile_med, table, c_compile = best(
            lambda: compile_map_bytes(data, "bench.map", "r0"), args.rounds)
        builder = SnapshotBuilder(cfg, {"m": table})
        t_build, _, snap, _ = best(lambda: (builder._views.clear(),
                                         builder.build(lambda t: True, image.view.seed))[1],
                                args.rounds)
        live = {t["name"]: True for t in targets}
        live["t3"] = False
        t_live, _, _, _ = best(lambda: builder.build(lambda t: live[t], image.view.seed), 1)
        lookup = min(_core.map_bench_lookup(snap, 0, keys4, 5)[0] for _ in range(args.rounds))
        static = min(cpu_ns(image, ecs_wires["sta.cdn.example."], snap) for _ in range(args.rounds))
        mapped = min(cpu_ns(image, ecs_wires["www.cdn.example."], snap) for _ in range(args.rounds))
        view_bytes = sum(a.nbytes for a in builder._views[next(iter(builder._views))] if a is not None)
        rows.append((n, len(table.lo4) + len(table.lo6), t_compile, t_compile_med, c_compile,
                     table.nbytes / n, t_build, t_live, view_bytes / n, lookup, static, mapped))
        print(rows[-1], flush=True)
    load = os.getloadavg()
    lines = [
        "# Mapping micro-benchmark", "",
        f"`python -m bench.micro.mapping --sizes {args.sizes}` on this machine "
        f"({os.cpu_count()} cores shared with other agents; load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the end of the run).  Best of "
        f"{args.rounds}; ns are per query or key, in C without the GIL (answers: thread CPU "
        f"time; lookup: wall clock).", "",
        "| prefixes | ranges | compile wall (best / median) | compile CPU | bytes/prefix (map) | snapshot build | "
        "liveness rebuild | bytes/prefix (merged view) | lookup ns | static+ECS ns | "
        "mapped+ECS ns | mapped/static |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (n, ranges, tc, tcm, cc, bpp, tb, tl, vbpp, lk, st, mp) in rows:
        lines.append(f"| {n:,} | {ranges:,} | {tc * 1e3:.0f} / {tcm * 1e3:.0f} ms | "
                     f"{cc * 1e3:.0f} ms | {bpp:.1f} | "
                     f"{tb * 1e3:.1f} ms | {tl * 1e3:.1f} ms | {vbpp:.1f} | {lk:.1f} | {st:.0f} | "
                     f"{mp:.0f} | {mp / st:.2f}x |")
    lines += ["",
              "compile = read map bytes -> C parse -> sort -> C sweep -> disjoint ranges (what a "
              "map reload costs before the snapshot); snapshot build = final answers + merged "
              "tables + index for one mapped resource (two views, A and AAAA); liveness "
              "rebuild = the same after one target went down.  The answer columns are "
              "core_answer end to end (parse, lookup, write, ECS echo) over 2,000 queries with "
              "different ECS /24s; static = a static A at a name beside the mapped one.", ""]
    # in a fresh process: freed pages of the runs above would hide the allocations
    import subprocess
    mem = subprocess.run([sys.executable, "-m", "bench.micro.mapping", "--memory-only",
                          str(sizes[-1])], capture_output=True, text=True, cwd=str(ROOT),
                         check=True).stdout.strip()
    lines += ["Memory: " + mem, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
