"""DO=1 on a signed zone: pop53 beside Knot and NSD, each with one worker pinned to CPU 1,
dnsperf (-D: the DO bit) pinned to CPU 0, the issue's mix (70% positive, 20% NXDOMAIN, 10%
NODATA) on zones of N names signed by dnssec-signzone (ECDSA P-256; NSEC3, no salt, 0
iterations).  Reported per size: answered queries/s and the server's CPU microseconds per
answered query (utime+stime over the run, /proc: the ranking metric on a shared machine); the
load time (start to the first good answer, cold: pop53 with an empty state directory); the
server tree's RSS after load and its peak during load (sampled every 0.1 s); pop53's signed
image bytes per record.  Also the online-signing throughput (bench/micro/signing.py).  Runs
alternate the servers' order; medians.  Writes bench/results/dnssec.md and dnssec.png.

    python -m bench.peers.dnssec --names 1000,1000000 --runs 3 --duration 5 \
        --cache /tmp/dnssec-zones                  # from the repository root

--cache keeps the signed zones (a million names take minutes to sign).  Every server and every
dnsperf run is bounded in time; every server is stopped by its PID."""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..data import ORIGIN
from . import dnsperf, procs
from .run import free_port
from .servers import NSD, Knot, Pop53

SERVER_CPU, CLIENT_CPU = 1, 0
SERVERS = "knot,nsd,pop53"


def signed_zone(work: Path, names: int) -> Path:
    out = work / "signed.zone"
    if out.exists():            # a cached zone (--cache)
        return out
    src = work / "plain.zone"
    lines = [f"$ORIGIN {ORIGIN}", "$TTL 3600", "@ SOA ns1 host 1 7200 3600 1209600 300",
             "@ NS ns1", "ns1 A 192.0.2.1"]
    lines += [f"h{i} A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(names)]
    src.write_text("\n".join(lines) + "\n")
    for extra in (["-f", "KSK"], []):
        subprocess.run(["dnssec-keygen", "-q", "-K", str(work), "-a", "ECDSAP256SHA256", *extra,
                        ORIGIN], check=True, capture_output=True)
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


def _sample_peak(pid: int, stop: threading.Event, out: list) -> None:
    """The largest RSS of the process tree seen while loading (every 0.1 s)."""
    while not stop.is_set():
        out[0] = max(out[0], procs.memory(procs.tree(pid)).rss_kib)
        stop.wait(0.1)


def one_run(peer, work: Path, zone: Path, queries: Path, duration: float, records: int,
            load_limit: float) -> dict:
    port = free_port()
    d = work / f"{peer.key}-{port}"
    d.mkdir()
    state = d / "state" if peer.key == "pop53" else None
    launch = peer.launch(d, zone, port, multi=False, state=state)
    t0 = time.monotonic()
    proc = subprocess.Popen(launch.argv, cwd=launch.cwd, env=launch.env, stdout=subprocess.DEVNULL,
                            stderr=open(d / "stderr", "w"), start_new_session=True)
    peak, stop = [0], threading.Event()
    sampler = threading.Thread(target=_sample_peak, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    try:
        ready = dnsperf.wait_ready(proc, port, f"h0.{ORIGIN}", load_limit)
        # pop53 writes its saved image on a thread after it answers (serve/saved.py): wait for
        # it, so neither its writes nor a half-written file are measured (the peak keeps counting)
        saved = _wait_saved(state, time.monotonic() + load_limit) if state is not None else None
        stop.set()
        sampler.join()
        time.sleep(0.5)
        rss = procs.memory(procs.tree(proc.pid)).rss_kib
        image = sum(f.stat().st_size for f in state.glob("*")) if state is not None and \
            state.exists() else None
        procs.pin(procs.tree(proc.pid), {SERVER_CPU})
        cpu0 = procs.cpu_seconds(procs.tree(proc.pid))
        argv = ["taskset", "-c", str(CLIENT_CPU), "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                "-d", str(queries), "-l", f"{duration:g}", "-c", "8", "-q", "100", "-D", "-t", "2"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 40)
        cpu1 = procs.cpu_seconds(procs.tree(proc.pid))
        res = dnsperf.parse(p.stdout + p.stderr, dnsperf.Result(argv))
        nx = res.rcodes.get("NXDOMAIN", 0) / max(1, res.completed)
        return {"qps": res.qps, "completed": res.completed, "lost": res.lost, "nx": nx,
                "us_per_query": (cpu1 - cpu0) / max(1, res.completed) * 1e6,
                "load_s": ready - t0, "saved_s": saved and saved - t0, "rss_mib": rss / 1024,
                "peak_mib": max(peak[0], rss) / 1024, "image_mib": image / 2**20 if image else None,
                "image_b_per_record": image / records if image else None}
    finally:
        stop.set()
        procs.stop(proc)


def _wait_saved(state: Path, deadline: float) -> float | None:
    """When the saved image's metadata (written after the image) appeared, or None at the
    deadline."""
    while time.monotonic() < deadline:
        if (state / "zones.img.json").exists():
            return time.monotonic()
        time.sleep(0.1)
    return None


def _records(zone: Path) -> int:
    """Records in a zone file: lines that start a record outside parentheses (dnssec-signzone
    writes RRSIG and NSEC3 RDATA over several lines in parentheses)."""
    n = depth = 0
    with open(zone, "rb") as f:
        for line in f:
            text = line.split(b";", 1)[0]
            if depth == 0 and text.strip() and not text.startswith(b"$"):
                n += 1
            depth += text.count(b"(") - text.count(b")")
    return n


def med(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def report(sizes: dict, signing: dict, args, loads) -> str:
    from ..micro.signing import table
    out = ["# DNSSEC: DO=1 on a signed zone, pop53 beside Knot and NSD (issue 12)", "",
           f"`python -m bench.peers.dnssec --names {args.names} --runs {args.runs} "
           f"--duration {args.duration:g}"
           f"{f' --cache {args.cache}' if args.cache else ''}"
           f"{'' if args.servers == SERVERS else f' --servers {args.servers}'}` (repository root), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
           f"load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end, on the 2 "
           "cores shared with other agents.  One worker per server pinned to CPU 1, dnsperf "
           "(`-D`, 8 clients, 100 outstanding) on CPU 0; the mix is 70% positive, 20% NXDOMAIN, "
           "10% NODATA; the zone is signed by dnssec-signzone (ECDSA P-256, NSEC3, no salt, 0 "
           "iterations).  Medians of the runs; the servers' order alternates between runs.", "",
           "- **CPU µs/query**: the server's utime+stime over the dnsperf run / answered queries.",
           "- **load s**: from the process start to the first good answer (pop53: cold, an empty "
           "state directory, so the zone file is parsed and compiled).  pop53 then writes its "
           "saved image on a thread; the RSS and the queries are measured after that.",
           "- **RSS MiB**: the server's process tree after load; **peak**: the largest seen during "
           "load, sampled every 0.1 s (pop53 compiles in a child process that exits: counted).",
           "- **image B/record**: pop53's saved image (state directory) / records in the signed "
           "zone file; **RSS B/record**: RSS after load / records, for every server; "
           "**peak / image**: pop53's peak / its saved image (the cold load's bound is 2x).", ""]
    for n, (rows, meta) in sizes.items():
        out += [f"## {n:,} names ({meta['records']:,} records signed; dnssec-signzone "
                f"{meta['sign_s']:.0f} s{' (cached)' if meta['cached'] else ''})", "",
                "| server | answered q/s | CPU µs/query | vs Knot | NXDOMAIN share | lost | load s | "
                "RSS MiB | peak MiB | image B/record | RSS B/record | peak / image |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        knot = med([x["us_per_query"] for x in rows.get("knot", [])])
        for key, rs in rows.items():
            us = med([x["us_per_query"] for x in rs])
            img = med([x["image_b_per_record"] for x in rs])
            rss = med([x["rss_mib"] for x in rs])
            peak = med([x["peak_mib"] for x in rs])
            ratio = [x["peak_mib"] / x["image_mib"] for x in rs if x.get("image_mib")]
            out.append(f"| {key} | {med([x['qps'] for x in rs]):,.0f} | {us:.2f} | "
                       f"{f'{us / knot:.2f}x' if knot else ''} | {med([x['nx'] for x in rs]):.3f} | "
                       f"{sum(x['lost'] for x in rs)} | {med([x['load_s'] for x in rs]):.1f} | "
                       f"{rss:.0f} | {peak:.0f} | {'' if img is None else f'{img:.0f}'} | "
                       f"{rss * 2 ** 20 / meta['records']:.0f} | "
                       f"{f'{med(ratio):.2f}x' if ratio else ''} |")
        out.append("")
    out += ["## Online signing of mapped answers (signatures per CPU second, one core)", "",
            f"`python -m bench.micro.signing --n {args.sign_n}` (thread CPU time, best of 3; every "
            "RRset distinct, so no cache hit):", "", table(signing), ""]
    return "\n".join(out)


def chart(sizes: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = list(sizes)
    for ax, metric, label in zip(axes, ("us_per_query", "load_s", "peak_mib"),
                                 ("server CPU µs per DO=1 query", "load time (s)",
                                  "peak RSS during load (MiB)")):
        keys = list(next(iter(sizes.values()))[0])
        w = 0.8 / len(keys)
        for i, key in enumerate(keys):
            vals = [med([x[metric] for x in sizes[n][0][key]]) for n in names]
            ax.bar([j + i * w for j in range(len(names))], vals, w, label=key)
        ax.set_xticks([j + w * (len(keys) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels([f"{n:,} names" for n in names])
        ax.set_title(label, fontsize=10)
        if metric != "us_per_query":
            ax.set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--names", default="1000", help="comma-separated zone sizes")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--cache", default=None, help="directory keeping the signed zones")
    p.add_argument("--load-limit", type=float, default=1800.0)
    p.add_argument("--sign-n", type=int, default=2000)
    p.add_argument("--out", default="bench/results/dnssec")
    p.add_argument("--servers", default=SERVERS,
                   help=f"comma-separated, of {SERVERS} (pop53 alone: a quick intermediate run)")
    args = p.parse_args(argv)
    from ..micro.signing import measure
    peers = [{"knot": Knot, "nsd": NSD, "pop53": Pop53}[k]() for k in args.servers.split(",")]
    load0 = os.getloadavg()[0]
    signing = measure(args.sign_n)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in (int(x) for x in args.names.split(",")):
            zdir = Path(args.cache) / f"z{n}" if args.cache else work / f"z{n}"
            zdir.mkdir(parents=True, exist_ok=True)
            cached = (zdir / "signed.zone").exists()
            t = time.monotonic()
            zone = signed_zone(zdir, n)
            sign_s = time.monotonic() - t
            queries = query_file(zdir, n)
            records = _records(zone)
            rows = {pr.key: [] for pr in peers}
            for r in range(args.runs):
                for peer in (peers if r % 2 == 0 else peers[::-1]):   # alternate the order
                    rows[peer.key].append(one_run(peer, work, zone, queries, args.duration,
                                                  records, args.load_limit))
                    print(n, peer.key, rows[peer.key][-1], flush=True)
            sizes[n] = (rows, {"records": records, "sign_s": sign_s, "cached": cached})
    text = report(sizes, signing, args, (load0, os.getloadavg()[0]))
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    chart(sizes, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
