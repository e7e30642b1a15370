"""pop53 over AF_XDP beside Knot in XDP mode, Knot over UDP and pop53 over UDP (issue 16).

    sudo python -m bench.xdp [--rounds 3] [--duration 4] [--rate 30000] [--flood 2000000]

The rig: two network namespaces joined by a veth pair (pop53.lab.veth).  Every server runs in
the server namespace pinned to CPU 1; the load generators run in the client namespace pinned
to CPU 0.  Both veth ends use threaded NAPI (GRO on, `threaded` = 1) with the server end's NAPI
thread pinned to CPU 1 and the client end's to CPU 0, so the server's receive work (XDP program,
copy into the UMEM, or the kernel's UDP stack) is in a thread of its own that we can account,
not in whichever softirq happened to run it.  The server's cost is accounted whole: the CPU time
of every server thread (user + system, which holds its sends) plus the server-end NAPI thread,
per answered query.  (Per-process accounting rather than CPU 1's /proc/stat: this machine is
shared, and other agents' processes run on CPU 1 too.)

Loads, each bounded in time: dnsperf at a moderate fixed rate (-Q), and kxdpgun (Knot's XDP
load generator) at an overload rate.  Runs alternate between servers (the order rotates every
round); the report gives medians.  Results: bench/results/xdp.md and xdp.png (raw JSON in
bench/results/raw/).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.zone

from bench.peers import dnsperf, procs
from pop53.lab.veth import VethRig, netns_of_thread

REPO = Path(__file__).resolve().parents[1]
ZONE = REPO / "tests" / "serve" / "zones" / "integ.example.zone"
ORIGIN = "integ.example."
SERVERS = ["pop53-xdp", "knot-xdp", "knot-udp", "pop53-udp"]
SRV_CPU, CLI_CPU = 1, 0
RESULTS = REPO / "bench" / "results"


def query_file(path: Path) -> int:
    """A and AAAA of every owner of the zone, MX/TXT of some, and 1 in 5 NXDOMAIN."""
    z = dns.zone.from_file(str(ZONE), relativize=False)
    lines = []
    for i, name in enumerate(sorted(z.nodes)):
        n = name.to_text()
        if n.startswith("*"):
            n = "x" + n[1:]
        lines += [f"{n} A", f"{n} AAAA"]
        if i % 5 == 0:
            lines.append(f"nx{i}.{ORIGIN} A")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


# -- the rig ---------------------------------------------------------------------------------
def _sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, capture_output=True,
                          text=True, timeout=30)


def napi_threads(ifname: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                comm = (d / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith(f"napi/{ifname}"[:15]):
                out.append(int(d.name))
    return out


def threaded_napi(rig: VethRig) -> list[int]:
    """Threaded NAPI on both ends, pinned (again: attaching XDP may recreate NAPI); the
    server end's NAPI thread ids."""
    for ns, dev in ((rig.srv, rig.srv_if), (rig.cli, rig.cli_if)):
        _sh(ns, "ethtool", "-K", dev, "gro", "on", check=False)
        _sh(ns, "sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded", check=False)
    srv = napi_threads(rig.srv_if)
    procs.pin(srv, {SRV_CPU})
    procs.pin(napi_threads(rig.cli_if), {CLI_CPU})
    return srv


# -- servers ---------------------------------------------------------------------------------
def pop53_conf(work: Path, rig: VethRig, xdp: bool) -> list[str]:
    conf = work / ("pop53-xdp.toml" if xdp else "pop53-udp.toml")
    conf.write_text(f'[server]\nlisten = ["{rig.srv4}:53"]\nworkers = 1\n'
                    + (f'xdp = ["{rig.srv_if}"]\n' if xdp else "")
                    + f'[[zone]]\nname = "{ORIGIN}"\nfile = "{ZONE}"\n')
    return [sys.executable, "-m", "pop53", "serve", "-c", str(conf)]


def knot_conf(work: Path, rig: VethRig, xdp: bool) -> list[str]:
    d = work / ("knot-xdp" if xdp else "knot-udp")
    shutil.rmtree(d, ignore_errors=True)
    (d / "storage").mkdir(parents=True)
    xdp_part = f"xdp:\n    listen: {rig.srv_if}@53\n    udp: on\n" if xdp else ""
    (d / "knot.conf").write_text(f"""\
server:
    rundir: "{d}"
    pidfile: "{d}/knot.pid"
    listen: {rig.srv4}@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    answer-rotation: off
{xdp_part}database:
    storage: "{d}/storage"
control:
    listen: "{d}/knot.sock"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{d}/storage"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: {ORIGIN}
    file: "{ZONE}"
""")
    return ["knotd", "-c", str(d / "knot.conf")]


def answers(rig: VethRig) -> bool:
    q = dns.message.make_query(f"www.{ORIGIN}", "A").to_wire()
    with netns_of_thread(rig.cli):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(0.3)
        try:
            s.sendto(q, (rig.srv4, 53))
            return len(s.recv(4096)) > 12
        except OSError:
            return False


def start(name: str, rig: VethRig, work: Path) -> tuple[subprocess.Popen, Path]:
    xdp = name.endswith("-xdp")
    cmd = (pop53_conf if name.startswith("pop53") else knot_conf)(work, rig, xdp)
    log = work / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(["ip", "netns", "exec", rig.srv, "taskset", "-c", str(SRV_CPU), *cmd],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-500:]}")
        if answers(rig) and (not xdp or rig.xdp_attached()):
            return proc, log
        time.sleep(0.2)
    procs.stop(proc)
    raise RuntimeError(f"{name} did not answer in 30 s: {log.read_text()[-500:]}")


# -- loads -----------------------------------------------------------------------------------
def run_dnsperf(rig: VethRig, qfile: Path, duration: float, rate: int) -> tuple[int, int]:
    argv = ["ip", "netns", "exec", rig.cli, "taskset", "-c", str(CLI_CPU), "dnsperf", "-s",
            rig.srv4, "-d", str(qfile), "-l", f"{duration:g}", "-Q", str(rate), "-c", "8",
            "-q", "500", "-t", "2"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 40)
    r = dnsperf.parse(p.stdout + p.stderr, dnsperf.Result(argv))
    return r.sent, r.completed


def run_kxdpgun(rig: VethRig, qfile: Path, duration: float, qps: int) -> tuple[int, int]:
    argv = ["ip", "netns", "exec", rig.cli, "kxdpgun", "-t", f"{duration:g}", "-Q", str(qps),
            "-F", str(CLI_CPU), "-I", rig.cli_if, "-i", str(qfile), rig.srv4]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 40)
    text = p.stdout + p.stderr
    sent = re.search(r"total queries:\s+(\d+)", text)
    got = re.search(r"total replies:\s+(\d+)", text)
    if not (sent and got):
        raise RuntimeError(f"kxdpgun: {text[-400:]}")
    return int(sent.group(1)), int(got.group(1))


def measure(proc, napi: list[int], load) -> dict:
    pids = procs.tree(proc.pid)
    c0, t0 = procs.cpu_seconds(pids) + procs.cpu_seconds(napi), time.monotonic()
    busy0 = procs.core_busy()[SRV_CPU]
    sent, answered = load()
    wall = time.monotonic() - t0
    cpu = procs.cpu_seconds(procs.tree(proc.pid)) + procs.cpu_seconds(napi) - c0
    return {"sent": sent, "answered": answered, "wall": wall, "cpu": cpu,
            "core1_busy": procs.core_busy()[SRV_CPU] - busy0,
            "us_per_q": cpu * 1e6 / answered if answered else None}


# -- report ----------------------------------------------------------------------------------
def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(r["load"], {}).setdefault(r["server"], []).append(r)
    summ = {}
    for load, by in out.items():
        for srv, rs in by.items():
            us = [r["us_per_q"] for r in rs if r["us_per_q"]]
            summ.setdefault(load, {})[srv] = {
                "us_per_q": statistics.median(us) if us else None,
                "qps": statistics.median(r["answered"] / r["duration"] for r in rs),
                "offered": statistics.median(r["sent"] / r["duration"] for r in rs),
                "share": statistics.median(r["answered"] / max(1, r["sent"]) for r in rs),
                "runs": len(rs), "us_all": [round(u, 2) for u in us]}
    return summ


def markdown(res: dict, summ: dict) -> str:
    a = res["args"]
    lines = ["# pop53 over AF_XDP beside Knot (XDP and UDP) and pop53 over UDP", "",
             f"`{res['command']}` — {res['date']}, {a['rounds']} alternated rounds of "
             f"{a['duration']} s per load, medians.  Machine: {res['cpus']} CPUs shared with "
             f"other agents; load average before/after: {res['load_before']} / {res['load_after']}.",
             "", "Rig: two network namespaces joined by a veth pair (copy-mode AF_XDP: veth has "
             "no zero copy); servers pinned to CPU 1, load generators to CPU 0; threaded NAPI on "
             "both veth ends, the server end's NAPI thread pinned to CPU 1.  **Server cost = CPU "
             "time of every server thread + the server-end NAPI thread, per answered query** "
             "(the receive path, XDP program and copy into the UMEM included).  One worker "
             "(one queue) per server.", ""]
    for load, title in (("dnsperf", f"dnsperf -Q {a['rate']} (moderate)"),
                        ("kxdpgun", f"kxdpgun -Q {a['flood']} (overload: the client core sends what it can, "
                                   "see 'offered')")):
        s = summ.get(load, {})
        ref = s.get("knot-xdp", {})
        lines += [f"## {title}", "", "| server | µs/query (median) | answered q/s | offered q/s "
                  "| answered | µs/query vs Knot-XDP | q/s vs Knot-XDP | runs (µs/query) |",
                  "|---|---|---|---|---|---|---|---|"]
        for srv in SERVERS:
            x = s.get(srv)
            if not x:
                continue
            r1 = (f"{x['us_per_q'] / ref['us_per_q']:.2f}x" if x["us_per_q"] and ref.get("us_per_q")
                  else "-")
            r2 = f"{x['qps'] / ref['qps']:.2f}x" if ref.get("qps") else "-"
            lines.append(f"| {srv} | {x['us_per_q']:.2f} | {x['qps']:,.0f} | {x['offered']:,.0f} | "
                         f"{x['share']:.0%} | {r1} | {r2} | {x['us_all']} |")
        lines.append("")
    lines += ["Raw runs: `bench/results/raw/xdp.json` (not committed).", ""]
    return "\n".join(lines)


def chart(summ: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    colors = {"pop53-xdp": "#d62728", "pop53-udp": "#ff9896", "knot-xdp": "#1f77b4",
              "knot-udp": "#aec7e8"}
    for row, load in enumerate(("dnsperf", "kxdpgun")):
        s = summ.get(load, {})
        names = [n for n in SERVERS if n in s]
        for col, (key, label) in enumerate((("us_per_q", "server CPU µs per answered query"),
                                            ("qps", "answered queries/s"))):
            ax = axes[row][col]
            vals = [s[n][key] or 0 for n in names]
            ax.barh(names, vals, color=[colors[n] for n in names])
            for i, v in enumerate(vals):
                ax.text(v, i, f" {v:,.2f}" if key == "us_per_q" else f" {v:,.0f}", va="center")
            ax.set_title(f"{load}: {label}")
            ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.xdp", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per load run")
    ap.add_argument("--rate", type=int, default=30000, help="dnsperf -Q (moderate load)")
    ap.add_argument("--flood", type=int, default=2_000_000, help="kxdpgun -Q (overload)")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--out", default=str(RESULTS / "xdp"))
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.xdp: needs root (namespaces, XDP)", file=sys.stderr)
        return 2
    servers = a.servers.split(",")
    work = Path(tempfile.mkdtemp(prefix="p53xdp-bench-"))
    qfile = work / "queries.txt"
    query_file(qfile)
    res = {"command": "python -m bench.xdp " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
           "load_before": round(os.getloadavg()[0], 1), "args": vars(a), "runs": []}
    rig = VethRig("b").up()
    try:
        for rnd in range(a.rounds):
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for name in order:
                proc, log = start(name, rig, work)
                try:
                    procs.pin(procs.tree(proc.pid), {SRV_CPU})   # Knot pins its workers itself
                    napi = threaded_napi(rig)
                    for load, fn in (("dnsperf", lambda: run_dnsperf(rig, qfile, a.duration, a.rate)),
                                     ("kxdpgun", lambda: run_kxdpgun(rig, qfile, a.duration, a.flood))):
                        m = measure(proc, napi, fn)
                        m.update(server=name, load=load, round=rnd, duration=a.duration)
                        res["runs"].append(m)
                        print(f"round {rnd} {name:10s} {load:8s} answered {m['answered']:>9,} "
                              f"of {m['sent']:>9,}  {m['us_per_q'] or 0:6.2f} µs/q  "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
                        threaded_napi(rig)
                finally:
                    procs.stop(proc)
                    time.sleep(0.5)
                if name.endswith("-xdp") and rig.xdp_attached():
                    if name.startswith("pop53"):
                        raise RuntimeError(f"{name} left its XDP program attached")
                    # Knot 3.2 leaves its program attached after it exits: take it off
                    _sh(rig.srv, "ip", "link", "set", "dev", rig.srv_if, "xdp", "off")
    finally:
        rig.down()
        shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = round(os.getloadavg()[0], 1)
    summ = summarize(res["runs"])
    res["summary"] = summ
    out = Path(a.out)
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "xdp.json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res, summ))
    chart(summ, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
