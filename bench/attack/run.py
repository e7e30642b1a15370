"""Known resolvers under a flood, side by side: the share of their queries answered, per second,
and their latency, for pop53 (scoring with the kernel stage), Knot (mod-rrl), NSD (RRL) and
dnsdist (dynamic blocks) in front of NSD (issue 13).

    python -m bench.attack.run [--seconds 3] [--rounds 2] [--loads 1,3,5] [--quota 0.25]

First the capacity: each server in its plain setup (no scoring, no RRL, no blocks) answers a
flood of one existing name from 64 sources as fast as one flood core sends; the replies per
second are its capacity, and pop53's is the unit of offered load.  Then, per round (servers
alternate within a round, rows are medians over rounds), each server runs every attack at each
load (a multiple of that unit) for `--seconds`: 20 known resolvers (127.1.0.1-20, each 100 q/s
of A queries at names of the 1,000-name benchmark zone, RD=0) ask meanwhile.  Attacks
(bench/attack/flood.c): random subdomains from 256 sources; one repeated existing name from 256
sources; bots one per /24 (4,096 /24s) asking random subdomains; spoofed known sources (the
resolvers' own /24) repeating a name; water torture relayed by known resolvers (256 /24s in
127.3.0.0/16, listed as known) asking random subdomains; the same against a second zone
(attacked.test.) with a fifth of it from the 20 measured resolvers' own addresses, which thus
relay it while asking their real names; the same against the benchmark zone itself, whose real
names they ask; and no attack.

Servers run pinned to CPU 0, capped to `--quota` of that core, so that the flood can offer 5x
and more (without the cap the flood core is the bottleneck): by default (`--cap steal`) a
SCHED_FIFO task on CPU 0 takes the rest in slices of a fraction of a millisecond
(bench/attack/steal.c), as a slower core would; `--cap quota` uses a cgroup cpu quota (1 ms per
1/quota ms), whose enforcement at the 4 ms ticks stalls a busy server 4-12 ms at a time
(bench/attack/stalls.py); the resolvers run on CPU 1, the flood processes (one per `--flood-cpus` CPU,
default both) as SCHED_IDLE, so they take only the CPU time the resolvers and the capped server
leave (under the stealer the one on CPU 0 floods in the stealer's place, flood.c -d); the cgroup's weight (`--weight`, cpu.shares) puts a woken server ahead of the machine's
other work.  The attack floods write IPv4 frames into `lo` through an AF_PACKET TX ring
(`--flood-tx ring`, the default: ~1.3x the datagrams a flood core sends through UDP sockets,
bench/attack/floodrate.py), so the bench runs in a network namespace of its own
(bench/attack/netns.py); the capacity floods stay on UDP sockets (they count the replies).  Latency is measured to the kernel's receive timestamp of each reply, and each row
says where the worker's time went (on CPU, waiting for CPU 0, kept off by the cap).  Loopback only, bounded in time and count.
Writes bench/results/attack.md and attack.png.  The machine is shared: read the load average.
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from bench import data  # noqa: E402
from bench.attack import servers as sv  # noqa: E402
from bench.micro.rrl import image_names  # noqa: E402

RESOLVERS = 20
QPS = 100
# The flood runs as SCHED_IDLE: it takes only CPU time nothing else wants, so the measuring
# resolvers (and, on CPU 0, the capped server) preempt it at once instead of waiting for a
# CFS slice behind it (that wait was milliseconds of the resolvers' measured latency)
IDLE = ["chrt", "--idle", "0"]
# attack -> (flood mode: 0 random subdomains / 1 the name itself, source layout, sources)
ATTACKS = {
    "no attack": None,
    "random subdomains": (0, 0, 256),
    "repeated name": (1, 0, 256),
    "bots one per /24": (0, 1, 4096),
    "spoofed known sources": (1, 2, 150),
    "water torture via known resolvers": (0, 3, 256),
    # random subdomains of a second zone (servers.ATTACKED), a fifth of them from the measured
    # resolvers' own addresses: they relay the attack and still ask their real names
    "water torture via the measured resolvers too": (0, 4, 256),
    # the same against the benchmark zone itself: the resolvers relay random names of the zone
    # whose real names they ask (kept top by the name probe, docs/scoring.md)
    "water torture of their own zone via them": (0, 4, 256),
    # a real name from one spoofed source in each of 256 known /24s with no history
    # (127.3.X.1), each under known_rate: no relay test demotes them.  Last: the rows before
    # meet those /24s with no history
    "spoofed sources across known /24s": (1, 3, 256),
}
# attacks whose random subdomains are of another zone than the benchmark zone
TARGETS = {"water torture via the measured resolvers too": sv.ATTACKED}


def flood_zone(attack: str, zone_wire: str) -> str:
    """The wire form (hex) of the zone `attack` floods: the benchmark zone's unless TARGETS
    names another."""
    other = TARGETS.get(attack)
    return dns.name.from_text(other).to_wire().hex() if other else zone_wire


def _server_cookie(s: socket.socket, port: int, client_cookie: bytes) -> bytes:
    """Ask once with a client cookie; the server cookie from the reply (b"" without one)."""
    q = dns.message.make_query("version.bind.", "TXT", use_edns=0,
                               options=[dns.edns.CookieOption(client_cookie, b"")])
    for _ in range(20):
        s.sendto(q.to_wire(), ("127.0.0.1", port))
        ready, _, _ = select.select([s], [], [], 0.2)
        if ready:
            r = dns.message.from_wire(s.recv(4096))
            for o in r.options:
                if o.otype == dns.edns.COOKIE:
                    return o.server
            return b""
    return b""


def prepare(port: int, names: list[str], cookies: bool = False) -> tuple[list, list]:
    """The resolvers' sockets and queries, before the flood starts.  With cookies, each first
    gets a server cookie (RFC 7873) and sends it with every query, as BIND and Unbound do."""
    socks = []
    for i in range(RESOLVERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.1.0.{i + 1}", 0))
        s.setblocking(False)
        socks.append(s)
    wires = []
    for i in range(RESOLVERS):
        opts = []
        if cookies:
            cc = os.urandom(8)
            opts = [dns.edns.CookieOption(cc, _server_cookie(socks[i], port, cc))]
        mine = []
        for n in names[:200]:
            q = dns.message.make_query(n, "A", use_edns=0 if cookies else False, options=opts)
            q.flags = 0
            mine.append(bytearray(q.to_wire()))
        wires.append(mine)
    return socks, wires


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def resolvers(port: int, ready: tuple[list, list], seconds: float) -> list[tuple[float, float | None]]:
    """Every query: (send time, latency or None), from RESOLVERS sockets at QPS each.  A reply's
    arrival is the kernel's receive timestamp (SO_TIMESTAMPNS), so the latency is the server's
    and the network's, not how late this Python loop got the CPU to read it."""
    socks, wires = ready
    sent: dict[tuple[int, int], float] = {}        # wall clock (the kernel stamps are too)
    got: dict[tuple[int, int], float] = {}
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    t0 = time.monotonic()
    w0 = time.time()
    interval = 1.0 / (RESOLVERS * QPS)
    k = 0
    try:
        while True:
            now = time.monotonic()
            if now > t0 + seconds + 1.0:
                break
            while now < t0 + seconds and k * interval <= now - t0:
                i, qid = k % RESOLVERS, (k // RESOLVERS) & 0xFFFF
                w = wires[i][k % len(wires[i])]
                w[0], w[1] = qid >> 8, qid & 0xFF
                sent[(i, qid)] = time.time()
                try:
                    socks[i].sendto(w, ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                k += 1
            ready, _, _ = select.select(socks, [], [], 0.0005)
            for s in ready:
                i = socks.index(s)
                while True:
                    try:
                        r, anc, _, _ = s.recvmsg(4096, 64)
                    except BlockingIOError:
                        break
                    at = time.time()
                    for level, kind, data in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                            sec, nsec = struct.unpack("qq", data[:16])
                            at = sec + nsec / 1e9
                    key = (i, r[0] << 8 | r[1])
                    if key in sent and key not in got:
                        got[key] = at - sent[key]
    finally:
        for s in socks:
            s.close()
    return [(t - w0, got.get(key)) for key, t in sent.items()]


def answered(lat: list) -> tuple[float, float, float]:
    """(share answered, p50 ms, p99 ms) of the known resolvers' queries `lat` (None: no reply)."""
    ans = sorted(l for l in lat if l is not None)
    share = len(ans) / len(lat) if lat else 0.0
    p50 = ans[len(ans) // 2] * 1000 if ans else float("nan")
    p99 = ans[min(len(ans) - 1, int(len(ans) * 0.99))] * 1000 if ans else float("nan")
    return share, p50, p99


def per_second(rows, seconds: int) -> list[tuple[float, float, float]]:
    return [answered([l for t, l in rows if sec <= t < sec + 1]) for sec in range(seconds)]


def slow(rows, ms: float) -> list[str]:
    """The known queries slower than `ms` or unanswered, as "offset ms:latency ms" ("-": no
    reply), in the order sent."""
    return [f"{t * 1000:.0f}:{'-' if l is None else f'{l * 1000:.1f}'}"
            for t, l in sorted(rows) if l is None or l * 1000 > ms]


def flood(binary: Path, port: int, seconds: float, rate: float, attack: str, zone_wire: str,
          name_wire: str, cpus: list[int], tx: str = "ring", duty: str | None = None
          ) -> list[subprocess.Popen]:
    """One flood process per CPU in `cpus`, sharing one budget of `rate` datagrams a second (a
    file they map: whichever process gets CPU time sends what the total is behind), sending
    through `tx` (flood.c -t: sock, pkt or ring).  With `duty` (flood.c -d, from
    CpuCap.duty()), the one on CPU 0 takes the stealer's place as the servers' cap; the others
    run SCHED_IDLE."""
    mode, src, nsrc = ATTACKS[attack]
    zone_wire = flood_zone(attack, zone_wire)
    budget = binary.parent / f"budget-{time.monotonic_ns()}"
    procs = []
    for cpu in cpus:
        how = ["-d", duty] if duty and cpu == 0 else []
        procs.append(subprocess.Popen(
            ([] if how else IDLE) + ["taskset", "-c", str(cpu), str(binary), "-t", tx] + how
            + [str(port), str(seconds), str(rate), str(nsrc), str(mode),
               name_wire if mode else zone_wire, str(src), "0", str(budget)],
            stdout=subprocess.PIPE))
    return procs


def capacity(binary: Path, port: int, seconds: float, name_wire: str, rate: float = 0,
             sources: int = 64) -> tuple[float, float]:
    """(replies a second, datagrams offered a second) for one existing name from `sources`
    /24s (127.2.X.1), at `rate` a second (0: full speed)."""
    # not SCHED_IDLE: nothing of ours to protect here, and an idle flood on a busy machine
    # would not fill the server
    p = subprocess.Popen(["taskset", "-c", "1", str(binary), str(port), str(seconds),
                          str(int(rate)), str(sources), "1", name_wire, "0", "1"],
                         stdout=subprocess.PIPE)
    sent, got = map(int, p.communicate(timeout=seconds + 20)[0].split())
    return got / seconds, sent / seconds


def capacity_ab(binary: Path, tmp: Path, zonefile: Path, probe: str, cap, seconds: float,
                name_wire: str, rounds: int, unit: float) -> dict[tuple[str, str], list]:
    """Issue 13's "no loss of capacity or of legitimate answers without an attack": pop53 with
    its scoring and steering on against its plain setup, alternated `rounds` times, under one
    existing name from 256 /24s (each under `source_rate`, so no source is a flood by rate),
    offered at pop53's plain capacity (`unit`: no attack, nothing should be lost) and at full
    speed (several times it: what the scored server still answers of unknown clients' load).
    {(setup, "1x" | "full"): [(replies/s, offered/s), ...]}."""
    out: dict[tuple[str, str], list] = {}
    for rnd in range(rounds):
        for kind in (("plain", "scored") if rnd % 2 == 0 else ("scored", "plain")):
            srv = sv.Running("pop53", tmp / f"pop53-cap-{kind}-{rnd}", zonefile, probe, cap,
                             plain=kind == "plain")
            try:
                for load, rate in (("1x", unit), ("full", 0)):
                    time.sleep(0.5)
                    r = capacity(binary, srv.port, seconds, name_wire, rate, 256)
                    out.setdefault((kind, load), []).append(r)
                    print(f"capacity pop53 {kind} {load} ({rnd}): {r[0]:,.0f} replies/s of "
                          f"{r[1]:,.0f} offered", flush=True)
            finally:
                srv.stop()
    return out


def bench_zone() -> tuple[Path, list[str], str, str]:
    """The 1,000-name benchmark zone (written once), its names, and in wire format (hex, as
    flood.c takes them) its origin and its first name."""
    zonefile = data.DATA_DIR / f"bench-1000-s{data.DEFAULT_SEED}.zone"
    if not zonefile.exists():
        data.DATA_DIR.mkdir(parents=True, exist_ok=True)
        data.write_zone(zonefile, 1000, data.DEFAULT_SEED)
    names = image_names(zonefile)
    return (zonefile, names, dns.name.from_text(data.ORIGIN).to_wire().hex(),
            dns.name.from_text(names[0]).to_wire().hex())


def summary(secs) -> tuple[float, float, float, float]:
    """(worst second's share, mean share, worst p50 ms, worst p99 ms) of one run."""
    shares = [s for s, _, _ in secs]
    return (min(shares), statistics.mean(shares), max(p for _, p, _ in secs),
            max(p for _, _, p in secs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loads", default="1,3,5", help="offered flood, multiples of pop53's capacity")
    ap.add_argument("--quota", type=float, default=0.25, help="share of CPU 0 the servers get (0: all)")
    ap.add_argument("--cap", default="steal", choices=("steal", "quota"), help="how the servers "
                    "are held to --quota of CPU 0: steal, a SCHED_FIFO task takes the rest in "
                    "slices of a fraction of a millisecond (bench/attack/steal.c); quota, a cgroup "
                    "cpu quota, which stalls a busy server 4-12 ms at a time at CONFIG_HZ=250")
    ap.add_argument("--weight", type=int, default=262144, help="cpu.shares of the servers' "
                    "cgroup: 262144 (the most) makes a woken server run before the machine's "
                    "other work, up to its quota, as on a core of its own; 1024: the same weight "
                    "as every other task (the machine's load then shows in the latency)")
    ap.add_argument("--servers", default=",".join(sv.SERVERS))
    ap.add_argument("--cookies", action="store_true", help="the resolvers send DNS COOKIEs; "
                    "pop53 and Knot (mod-cookies) answer them")
    ap.add_argument("--unlisted", action="store_true", help="the measured resolvers' /24 is not "
                    "told to any server as known (only the relays' prefix is): unknown clients, "
                    "whom only their cookies (--cookies) can lift (servers pop53,pop53-nocheck "
                    "compares the kernel's cookie check with none)")
    ap.add_argument("--flood-cpus", default="0,1", help="CPUs running a flood process each (the "
                    "resolvers stay on CPU 1; the flood is SCHED_IDLE, so on CPU 0 it takes only "
                    "what the capped server leaves)")
    ap.add_argument("--flood-tx", default="ring", choices=("ring", "pkt", "sock"),
                    help="how the attack floods send (flood.c -t): ring, IPv4 frames through an "
                    "AF_PACKET TX ring on lo (the cheapest a datagram; the bench then runs in a "
                    "network namespace of its own, bench/attack/netns.py); pkt, the frames by "
                    "sendmmsg on AF_PACKET; sock, a UDP socket per source (the capacity floods "
                    "always use sock)")
    ap.add_argument("--capacity-ab", type=int, default=3, help="rounds of pop53's capacity with "
                    "scoring and steering on against plain, alternated (0: skip)")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--slow", type=float, default=0, help="print every known query slower than "
                    "this many ms (or unanswered) with its offset in the row, in ms, and the "
                    "row's start on CLOCK_MONOTONIC (bench/attack/census.py reads them; 0: none)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attack.md")
    args = ap.parse_args(argv)
    if not shutil.which("taskset") or not shutil.which("gcc"):
        raise SystemExit("needs taskset and gcc")
    loads = [float(x) for x in args.loads.split(",")]
    cpus = [int(x) for x in args.flood_cpus.split(",")]
    names_ = [n for n in args.servers.split(",") if n]
    attacks = [a for a in args.attacks.split(",") if a]
    skipped = {n: why for n in names_ if (why := sv.missing(n))}
    names_ = [n for n in names_ if n not in skipped]
    if args.flood_tx != "sock":
        from bench.attack import netns
        netns.enter()             # first: every server, resolver and flood inherits it
    zonefile, names, zone_wire, name_wire = bench_zone()
    os.sched_setaffinity(0, {1})
    load0 = os.getloadavg()[0]
    cap = sv.CpuCap(args.quota, args.weight, args.cap)
    args.cap_text = cap.describe()
    caps: dict[str, tuple[float, float]] = {}
    capab: dict = {}
    runs: dict[tuple[str, str, float], list] = {}
    sched: dict[tuple[str, str, float], list] = {}
    try:
        with tempfile.TemporaryDirectory() as tmpd:
            tmp = Path(tmpd)
            binary = tmp / "flood"
            subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "flood.c")], check=True)
            if args.flood_tx != "sock" and not netns.injects(str(binary)):
                raise SystemExit("frames the flood writes into lo do not reach 127.0.0.1")
            for name in names_:
                srv = sv.Running(name, tmp / f"{name}-plain", zonefile, names[0], cap, plain=True)
                try:
                    time.sleep(0.5)
                    caps[name] = capacity(binary, srv.port, args.seconds, name_wire)
                finally:
                    srv.stop()
                print(f"capacity {name}: {caps[name][0]:,.0f} replies/s "
                      f"(offered {caps[name][1]:,.0f}/s)", flush=True)
            unit = caps.get("pop53", next(iter(caps.values())))[0]
            if "pop53" in names_ and args.capacity_ab > 0:
                capab = capacity_ab(binary, tmp, zonefile, names[0], cap, args.seconds,
                                    name_wire, args.capacity_ab, unit)
            for rnd in range(args.rounds):
                order = names_ if rnd % 2 == 0 else names_[::-1]      # alternate
                for name in order:
                    srv = sv.Running(name, tmp / f"{name}-{rnd}", zonefile, names[0], cap,
                                     cookies=args.cookies,
                                     known=(sv.RELAYS,) if args.unlisted else sv.KNOWN)
                    try:
                        for attack in attacks:
                            for load in ([0.0] if ATTACKS[attack] is None else loads):
                                time.sleep(1.0)                # calm between rows
                                ready = prepare(srv.port, names, args.cookies)   # before the flood
                                s0, c0, k0 = srv.sched_ns(), cap.throttled_ns(), sv.ksoftirqd_ns()
                                h0 = sv.host_steal_ns()
                                fls = []
                                if ATTACKS[attack] is not None:
                                    fls = flood(binary, srv.port, args.seconds, load * unit, attack,
                                                zone_wire, name_wire, cpus, args.flood_tx,
                                                cap.duty())
                                try:
                                    m0 = time.monotonic()
                                    rows = resolvers(srv.port, ready, args.seconds)
                                    sent = sum(int(f.communicate(timeout=args.seconds + 10)[0].split()[0])
                                               for f in fls)
                                finally:
                                    for f in fls:
                                        if f.poll() is None:
                                            f.kill()
                                            f.wait()
                                    cap.resume()       # the stealer, if a flood stopped it
                                secs = per_second(rows, args.seconds)
                                whole = answered([l for _, l in rows])     # the row's seconds pooled
                                # where the worker's time went: on CPU, runnable but waiting for
                                # CPU 0, kept off by the cap; ksoftirqd/0's and the host's share of CPU 0
                                sched.setdefault((name, attack, load), []).append(sv.busiest(
                                    s0, srv.sched_ns(), args.seconds, cap.throttled_ns() - c0,
                                    sv.ksoftirqd_ns() - k0, sv.host_steal_ns() - h0))
                                if args.slow:
                                    print("slow", rnd, name, attack, load, f"monotonic {m0:.6f}",
                                          slow(rows, args.slow), flush=True)
                                runs.setdefault((name, attack, load), []).append(
                                    (sent / args.seconds, secs, whole))
                                print(rnd, name, attack, load, f"{sent / args.seconds:,.0f}/s",
                                      [f"{a:.3f} {b:.1f} {c:.1f}" for a, b, c in secs],
                                      f"row p99 {whole[2]:.1f}",
                                      "worker cpu/wait, cap, ksoftirqd, other threads, host steal ms/s %.0f/%.0f/%.0f/%.0f/%.0f/%.0f" % sched[(name, attack, load)][-1],
                                      flush=True)
                    finally:
                        srv.stop()
    finally:
        cap.close()
    from bench.attack.report import write
    write(args, loads, names_, attacks, skipped, caps, unit, runs, load0, os.getloadavg()[0], sched,
          capab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
