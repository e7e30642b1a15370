"""Known resolvers under a flood: the share of their queries answered, per second, and their
latency, with scoring off, with the batch-loop stage, and with the kernel stage too (issue 13).

    python -m bench.attack.run [--seconds 5] [--rate 0]

One `pop53 serve` worker pinned to CPU 0 (`taskset`); 20 known resolvers (127.1.0.1-20, each
100 q/s of A queries at names of the 1,000-name benchmark zone, RD=0) and the flood
(bench/attack/flood.c, compiled here: random subdomains from 256 sources 127.2.X.1, one /24
each, sendmmsg, `--rate` datagrams a second or as fast as it goes) on CPU 1.  Loopback only,
bounded in time.  Writes bench/results/attack.md.  The machine is shared: read the load.

Not built yet (issue 13's bench/attack): the other attacks (a repeated name, bots one per /24,
spoofed known sources, water torture through known resolvers), and Knot/NSD/dnsdist beside.
"""
from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from bench import data  # noqa: E402
from bench.micro.rrl import image_names  # noqa: E402

RESOLVERS = 20
QPS = 100
VARIANTS = {
    "scoring off": "",
    "batch stage": "[scoring]\nknown_resolvers = \"{known}\"\n",
    "batch stage, 128 KiB queue": "[scoring]\nknown_resolvers = \"{known}\"\nqueue_bytes = 131072\n",
    "batch + kernel stage": "[scoring]\nknown_resolvers = \"{known}\"\nsteer = true\n",
}


def serve(tmp: Path, zonefile: Path, variant: str) -> tuple[subprocess.Popen, int, Path]:
    known = tmp / "known.txt"
    known.write_text("127.1.0.0/24\n")
    conf = tmp / "pop53.toml"
    conf.write_text(f"""[server]
listen = ["127.0.0.1:0"]
workers = 1

{VARIANTS[variant].format(known=known)}
[[zone]]
name = "{data.ORIGIN}"
file = "{zonefile}"
""")
    log = tmp / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with open(log, "wb") as err:
        p = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "pop53", "serve",
                              "--config", str(conf)], stderr=err, stdout=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on \S+ port (\d+)", log.read_text(errors="replace"))
        if m:
            return p, int(m.group(1)), log
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    raise SystemExit(f"pop53 serve did not start:\n{log.read_text()}")


def resolvers(port: int, names: list[str], seconds: float) -> list[tuple[float, float | None]]:
    """Every query: (send time, latency or None), from RESOLVERS sockets at QPS each."""
    socks = []
    for i in range(RESOLVERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.1.0.{i + 1}", 0))
        s.setblocking(False)
        socks.append(s)
    wires = []
    for n in names[:200]:
        q = dns.message.make_query(n, "A")
        q.flags = 0
        wires.append(bytearray(q.to_wire()))
    sent: dict[tuple[int, int], float] = {}
    got: dict[tuple[int, int], float] = {}
    t0 = time.monotonic()
    interval = 1.0 / (RESOLVERS * QPS)
    k = 0
    try:
        while True:
            now = time.monotonic()
            if now > t0 + seconds + 1.0:
                break
            while now < t0 + seconds and k * interval <= now - t0:
                i, qid = k % RESOLVERS, (k // RESOLVERS) & 0xFFFF
                w = wires[k % len(wires)]
                w[0], w[1] = qid >> 8, qid & 0xFF
                try:
                    socks[i].sendto(w, ("127.0.0.1", port))
                    sent[(i, qid)] = time.monotonic()
                except BlockingIOError:
                    sent[(i, qid)] = time.monotonic()
                k += 1
            ready, _, _ = select.select(socks, [], [], 0.0005)
            for s in ready:
                i = socks.index(s)
                while True:
                    try:
                        r = s.recv(4096)
                    except BlockingIOError:
                        break
                    key = (i, r[0] << 8 | r[1])
                    if key in sent and key not in got:
                        got[key] = time.monotonic() - sent[key]
    finally:
        for s in socks:
            s.close()
    return [(t - t0, got.get(key)) for key, t in sent.items()]


def per_second(rows, seconds: int) -> list[tuple[float, float, float]]:
    out = []
    for sec in range(seconds):
        lat = [l for t, l in rows if sec <= t < sec + 1]
        ans = sorted(l for l in lat if l is not None)
        share = len(ans) / len(lat) if lat else 0.0
        p50 = ans[len(ans) // 2] * 1000 if ans else float("nan")
        p99 = ans[min(len(ans) - 1, int(len(ans) * 0.99))] * 1000 if ans else float("nan")
        out.append((share, p50, p99))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0, help="flood datagrams/s (0: as fast as it goes)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attack.md")
    args = ap.parse_args(argv)
    if not shutil.which("taskset") or not shutil.which("gcc"):
        raise SystemExit("needs taskset and gcc")
    zonefile = data.DATA_DIR / f"bench-1000-s{data.DEFAULT_SEED}.zone"
    if not zonefile.exists():
        data.DATA_DIR.mkdir(parents=True, exist_ok=True)
        data.write_zone(zonefile, 1000, data.DEFAULT_SEED)
    names = image_names(zonefile)
    zone_wire = dns.name.from_text(data.ORIGIN).to_wire().hex()
    os.sched_setaffinity(0, {1})
    load0 = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        flood_bin = tmp / "flood"
        subprocess.run(["gcc", "-O2", "-o", str(flood_bin), str(HERE / "flood.c")], check=True)
        for attack in ("no attack", "random subdomains"):
            for variant in VARIANTS:
                p, port, log = serve(tmp, zonefile, variant)
                flood = None
                try:
                    if attack != "no attack":
                        flood = subprocess.Popen(["taskset", "-c", "1", str(flood_bin), str(port),
                                                  str(args.seconds), str(args.rate), "256", "0", zone_wire],
                                                 stdout=subprocess.PIPE)
                    rows = resolvers(port, names, args.seconds)
                    sent = int(flood.communicate(timeout=args.seconds + 10)[0]) if flood else 0
                finally:
                    if flood is not None and flood.poll() is None:
                        flood.kill()
                    p.terminate()
                    p.wait(10)
                secs = per_second(rows, args.seconds)
                results.append((attack, variant, sent / args.seconds, secs))
                print(attack, variant, f"{sent / args.seconds:.0f}/s", secs, flush=True)
    lines = ["# Known resolvers under a flood (bench/attack)", "",
             f"- Date (UTC): {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
             f"- Command (from the repository root): `python -m bench.attack.run --seconds {args.seconds}"
             + (f" --rate {args.rate:g}" if args.rate else "") + "`",
             f"- Machine: {os.cpu_count()} CPUs (shared with other work), load average {load0:.2f} at "
             f"start, {os.getloadavg()[0]:.2f} at end; server: one worker pinned to CPU 0; flood and "
             "resolvers on CPU 1",
             f"- Known resolvers: {RESOLVERS} x {QPS} q/s from 127.1.0.0/24; flood: random subdomains, "
             "256 sources (one /24 each), sendmmsg", "",
             "| attack | pop53 | flood sent/s | answered share, worst second | mean share | p50 ms (worst s) | p99 ms (worst s) |",
             "|---|---|---|---|---|---|---|"]
    for attack, variant, rate, secs in results:
        shares = [s for s, _, _ in secs]
        lines.append(f"| {attack} | {variant} | {rate:,.0f} | {min(shares):.3f} | "
                     f"{statistics.mean(shares):.3f} | {max(p for _, p, _ in secs):.1f} | "
                     f"{max(p for _, _, p in secs):.1f} |")
    lines += ["", "Per second (share answered, p50 ms, p99 ms):", ""]
    for attack, variant, rate, secs in results:
        lines.append(f"- {attack}, {variant}: " + "; ".join(f"{s:.3f} {a:.1f} {b:.1f}" for s, a, b in secs))
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
