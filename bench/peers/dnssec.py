"""DO=1 on a signed zone: pop53 beside Knot and NSD, each with one worker pinned to CPU 1,
dnsperf (-D: the DO bit) pinned to CPU 0, the issue's mix (70% positive, 20% NXDOMAIN, 10%
NODATA) on a zone of N names signed by dnssec-signzone (ECDSA P-256; NSEC3, no salt, 0
iterations).  Reported: answered queries/s and the server's CPU microseconds per answered
query (utime+stime over the run, /proc): the ranking metric on a shared machine.

    python -m bench.peers.dnssec --names 1000 --runs 3 --duration 5    # from the repository root

Every server and every dnsperf run is bounded in time; every server is stopped by its PID."""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

from ..data import ORIGIN
from . import dnsperf, procs
from .run import free_port
from .servers import NSD, Knot, Pop53

SERVER_CPU, CLIENT_CPU = 1, 0


def signed_zone(work: Path, names: int) -> Path:
    src = work / "plain.zone"
    lines = [f"$ORIGIN {ORIGIN}", "$TTL 3600", "@ SOA ns1 host 1 7200 3600 1209600 300",
             "@ NS ns1", "ns1 A 192.0.2.1"]
    lines += [f"h{i} A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(names)]
    src.write_text("\n".join(lines) + "\n")
    for extra in (["-f", "KSK"], []):
        subprocess.run(["dnssec-keygen", "-q", "-K", str(work), "-a", "ECDSAP256SHA256", *extra,
                        ORIGIN], check=True, capture_output=True)
    out = work / "signed.zone"
    subprocess.run(["dnssec-signzone", "-S", "-K", str(work), "-o", ORIGIN, "-f", str(out),
                    "-3", "-", "-H", "0", str(src)], check=True, capture_output=True, cwd=work)
    return out


def query_file(work: Path, names: int, n: int = 100_000) -> Path:
    rng = random.Random(53)
    path = work / "queries.txt"
    with open(path, "w") as f:
        for _ in range(n):
            r = rng.random()
            if r < 0.7:
                f.write(f"h{rng.randrange(names)}.{ORIGIN} A\n")
            elif r < 0.9:
                f.write(f"nx{rng.randrange(10 ** 9)}.{ORIGIN} A\n")
            else:
                f.write(f"h{rng.randrange(names)}.{ORIGIN} TXT\n")
    return path


def one_run(peer, work: Path, zone: Path, queries: Path, duration: float) -> dict:
    port = free_port()
    d = work / f"{peer.key}-{port}"
    d.mkdir()
    launch = peer.launch(d, zone, port, multi=False)
    proc = subprocess.Popen(launch.argv, cwd=launch.cwd, env=launch.env, stdout=subprocess.DEVNULL,
                            stderr=open(d / "stderr", "w"), start_new_session=True)
    try:
        dnsperf.wait_ready(proc, port, f"h0.{ORIGIN}", 600)
        procs.pin(procs.tree(proc.pid), {SERVER_CPU})
        cpu0 = procs.cpu_seconds(procs.tree(proc.pid))
        argv = ["taskset", "-c", str(CLIENT_CPU), "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                "-d", str(queries), "-l", f"{duration:g}", "-c", "8", "-q", "100", "-D", "-t", "2"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 40)
        cpu1 = procs.cpu_seconds(procs.tree(proc.pid))
        res = dnsperf.parse(p.stdout + p.stderr, dnsperf.Result(argv))
        nx = res.rcodes.get("NXDOMAIN", 0) / max(1, res.completed)
        return {"qps": res.qps, "completed": res.completed, "lost": res.lost, "nx": nx,
                "us_per_query": (cpu1 - cpu0) / max(1, res.completed) * 1e6}
    finally:
        procs.stop(proc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args(argv)
    peers = [Knot(), NSD(), Pop53()]
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.monotonic()
        zone = signed_zone(work, args.names)
        sign_s = time.monotonic() - t
        queries = query_file(work, args.names)
        rows = {pr.key: [] for pr in peers}
        for r in range(args.runs):
            for peer in (peers if r % 2 == 0 else peers[::-1]):   # alternate the order
                rows[peer.key].append(one_run(peer, work, zone, queries, args.duration))
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(f"{args.names} names (signed in {sign_s:.1f} s), {args.runs} runs of "
          f"{args.duration:g} s, load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print("| server | answered q/s (median) | server CPU µs/query (median) | NXDOMAIN share | lost |")
    print("|---|---|---|---|---|")
    for peer in peers:
        rs = rows[peer.key]
        print(f"| {peer.name} | {med([x['qps'] for x in rs]):,.0f} | "
              f"{med([x['us_per_query'] for x in rs]):.2f} | {med([x['nx'] for x in rs]):.3f} | "
              f"{sum(x['lost'] for x in rs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
