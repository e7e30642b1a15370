"""How many datagrams one flood core offers, per transport of bench/attack/flood.c (issue 13:
the flood must offer >= 5x pop53's capacity at `--quota 0.5` from the ~1.5 cores it gets).

    python -m bench.attack.floodrate [--seconds 2] [--rounds 3] [--quota 0.5]
        [--transports sock,pkt,ring,ring-u] [--attacks ...]

In a network namespace of its own (bench/attack/netns.py), pop53 runs as in the attack rows
(scoring and steering on, pinned to CPU 0, capped to `--quota` of it) and each transport floods
it at full speed from CPU 1 (normal priority, nothing else of ours running) with each attack's
flood (bench.attack.run.ATTACKS), transports alternating within a round.  Per run: datagrams
sent a second, the flood's CPU seconds (user + system, the receive path it runs in softirq
included) and so datagrams per flood CPU second, the server's replies a second and its
worker's CPU ms a second, from the namespace's own counters (/proc/net/snmp: it holds only
this bench's traffic).  `-u` transports send from addresses with no socket: every reply then
costs the server an ICMP port unreachable.  Rows are medians over rounds.  Writes markdown to
`--out` (default bench/results/attack-flood-rate.md)."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from bench.attack import netns  # noqa: E402
from bench.attack import servers as sv  # noqa: E402

TRANSPORTS = {"sock": ["-t", "sock"], "pkt": ["-t", "pkt"], "ring": ["-t", "ring"],
              "ring-u": ["-t", "ring", "-u"], "pkt-u": ["-t", "pkt", "-u"],
              "ring-k64": ["-t", "ring", "-k", "64"], "ring-k256": ["-t", "ring", "-k", "256"]}


def snmp() -> dict[str, int]:
    """The namespace's Udp and Icmp counters."""
    out: dict[str, int] = {}
    lines = Path("/proc/net/snmp").read_text().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        proto, names = head.split(":", 1)
        for k, v in zip(names.split(), vals.split(":", 1)[1].split()):
            out[f"{proto}{k}"] = int(v)
    return out


def one(binary: Path, srv: sv.Running, transport: str, attack: tuple, zone_wire: str,
        name_wire: str, seconds: float) -> dict[str, float]:
    mode, src, nsrc = attack
    s0, n0 = srv.sched_ns(), snmp()
    argv = ["taskset", "-c", "1", str(binary), *TRANSPORTS[transport], str(srv.port),
            str(seconds), "0", str(nsrc), str(mode), name_wire if mode else zone_wire, str(src), "0"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}")
    sent = int(out.split()[0])
    n1 = snmp()
    d = {k: n1[k] - n0.get(k, 0) for k in n1}
    cpu = ru.ru_utime + ru.ru_stime
    run = max((r - s0.get(t, (0, 0))[0] for t, (r, _) in srv.sched_ns().items()), default=0)
    # the server's replies: every UDP datagram a socket sent, less the flood's own (sock only)
    replies = d["UdpOutDatagrams"] - (sent if transport == "sock" else 0)
    return {"sent": sent / seconds, "cpu": cpu / seconds, "per_cpu": sent / cpu if cpu else 0.0,
            "replies": replies / seconds, "worker_ms": run / 1e6 / seconds,
            "icmp": d.get("IcmpOutDestUnreachs", 0) / seconds,
            "rcvbuf": d.get("UdpRcvbufErrors", 0) / seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quota", type=float, default=0.5)
    ap.add_argument("--weight", type=int, default=262144)
    ap.add_argument("--transports", default="sock,pkt,ring,ring-u")
    ap.add_argument("--attacks", default="random subdomains,repeated name,bots one per /24,"
                    "spoofed known sources,water torture via known resolvers")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attack-flood-rate.md")
    args = ap.parse_args(argv)
    from bench.attack.run import ATTACKS, bench_zone, flood_zone
    netns.enter()
    transports = args.transports.split(",")
    attacks = [a for a in args.attacks.split(",") if a]
    zonefile, names, zone_wire, name_wire = bench_zone()
    os.sched_setaffinity(0, {1})
    load0 = os.getloadavg()[0]
    res: dict[tuple[str, str], list[dict]] = {}
    cap = sv.CpuCap(args.quota, args.weight)
    try:
        with tempfile.TemporaryDirectory() as tmpd:
            tmp = Path(tmpd)
            binary = tmp / "flood"
            subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "flood.c")], check=True)
            if not netns.injects(str(binary)):
                raise SystemExit("frames written into lo do not reach 127.0.0.1 here")
            srv = sv.Running("pop53", tmp / "pop53", zonefile, names[0], cap)
            try:
                for rnd in range(args.rounds):
                    order = transports if rnd % 2 == 0 else transports[::-1]
                    for attack in attacks:
                        for tr in order:
                            time.sleep(0.5)
                            r = one(binary, srv, tr, ATTACKS[attack],
                                    flood_zone(attack, zone_wire), name_wire, args.seconds)
                            res.setdefault((attack, tr), []).append(r)
                            print(rnd, attack, tr, {k: round(v) for k, v in r.items()}, flush=True)
            finally:
                srv.stop()
    finally:
        cap.close()
    write(args, transports, attacks, res, load0, os.getloadavg()[0])
    return 0


def write(args, transports, attacks, res, load0, load1) -> None:
    med = lambda rs, k: statistics.median(r[k] for r in rs)   # noqa: E731
    cmd = (f"python -m bench.attack.floodrate --seconds {args.seconds:g} --rounds {args.rounds} "
           f"--quota {args.quota:g} --transports {args.transports}")
    lines = ["# Flood datagrams per core, per transport (bench/attack/flood.c)", "",
             f"- Date (UTC): {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
             f"- Command (from the repository root, under `flock /tmp/pop53-bench.lock`): `{cmd}`",
             f"- Machine: {os.cpu_count()} CPUs shared with other work, load average {load0:.2f} "
             f"at start, {load1:.2f} at end",
             f"- pop53 as in the attack rows (scoring + steering, one worker) pinned to CPU 0, capped "
             f"to {args.quota:g} of it; one flood process on CPU 1 at full speed, normal priority; "
             f"{args.seconds:g} s a run, {args.rounds} rounds (transports alternate), medians",
             "- sock: a connected UDP socket per source, sendmmsg of 64; pkt: the same datagrams as "
             "IPv4 frames, sendmmsg of 64 on an AF_PACKET socket bound to lo; ring: the frames "
             "through a TPACKET_V2 TX ring, one kick per 16 (-kN: per N); -u: no socket at the sources (each "
             "reply costs the server an ICMP port unreachable)", "",
             "| attack | transport | sent/s | flood CPU s/s | sent per flood CPU s | server "
             "replies/s | worker ms/s | ICMP unreach/s |", "|---|---|---|---|---|---|---|---|"]
    for attack in attacks:
        for tr in transports:
            rs = res.get((attack, tr))
            if not rs:
                continue
            lines.append(f"| {attack} | {tr} | {med(rs, 'sent'):,.0f} | {med(rs, 'cpu'):.2f} | "
                         f"{med(rs, 'per_cpu'):,.0f} | {med(rs, 'replies'):,.0f} | "
                         f"{med(rs, 'worker_ms'):.0f} | {med(rs, 'icmp'):,.0f} |")
    lines += ["", "Every run (sent/s, sent per flood CPU s, server replies/s):", ""]
    for (attack, tr), rs in res.items():
        lines.append(f"- {attack}, {tr}: " + "; ".join(
            f"{r['sent']:,.0f} {r['per_cpu']:,.0f} {r['replies']:,.0f}" for r in rs))
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
