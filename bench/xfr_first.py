"""First AXFR of a big zone from a Knot primary: time from a secondary's start to the zone being
answerable, and its peak memory, for `pop53 serve` as a secondary (and its records path alone)
beside Knot and NSD as secondaries of the same Knot primary, in one run (issue 15 point 3).

    PYTHONPATH=src python3 -m bench.xfr_first --names 1000000 --rounds 2

The primary is Knot on a free loopback port serving bench/data.py's zone (AXFR allowed from
127.0.0.1).  Each round starts, in alternating order:
- Knot and NSD as secondaries (empty work directory: the first thing each does is an AXFR),
  polled over UDP until they answer an A query for a host of the zone;
- `pop53 serve -c` with the zone as a secondary of the primary (one worker, a state
  directory), polled like Knot and NSD;
- pop53's records path alone: a fresh `python3 -m bench.xfr_first --pop53-child` process that
  runs pop53.xfr.axfr_records.axfr_zone (AXFR parsed from wire into records, the zone-file
  checks) and the compiler, then answers the same query from the image with pop53.answer, and
  reports its phases.
Times are from process start; CPU is the process tree's user + system seconds up to the first
answer (steadier than wall time on a loaded machine); peak memory is the largest RSS of the
process tree sampled every 20 ms.  Results: bench/results/xfr_first.md and .png.  Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import resource
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import data
from .coldload import _PeakRSS, first_answer
from .peers import dnsperf, procs
from .peers.run import free_port
from .peers.servers import REPO, Knot

ORIGIN = data.ORIGIN


def _knot_conf(work: Path, port: int, server: str, body: str, log: str = "warning") -> list[str]:
    """A Knot configuration in `work` listening on `port` (stock but paths; `server`: more
    server lines; `body`: acl/remote/template/zone sections); returns its command line."""
    (work / "db").mkdir(parents=True, exist_ok=True)
    (work / "knot.conf").write_text(
        f"server:\n    rundir: \"{work}\"\n    listen: 127.0.0.1@{port}\n{server}"
        f"log:\n  - target: stderr\n    any: {log}\n"
        f"database:\n    storage: \"{work / 'db'}\"\n" + body)
    return ["knotd", "-c", str(work / "knot.conf")]


def _knot_primary(work: Path, zone: Path, port: int) -> subprocess.Popen:
    return _spawn(_knot_conf(work, port, "", (
        f"acl:\n  - id: xfr\n    address: 127.0.0.0/8\n    action: transfer\n"
        f"template:\n  - id: default\n    storage: \"{work}\"\n    zonefile-sync: -1\n"
        f"    zonefile-load: whole\n    journal-content: none\n"
        f"zone:\n  - domain: {ORIGIN}\n    file: \"{zone}\"\n    acl: xfr\n"), log="info"), work)


def _knot_secondary(work: Path, port: int, primary: int) -> list[str]:
    return _knot_conf(work, port, "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n", (
        f"remote:\n  - id: primary\n    address: 127.0.0.1@{primary}\n"
        f"template:\n  - id: default\n    storage: \"{work}\"\n    zonefile-sync: -1\n"
        f"    journal-content: none\n"
        f"zone:\n  - domain: {ORIGIN}\n    file: \"{work / 'sec.zone'}\"\n    master: primary\n"))


def _nsd_secondary(work: Path, port: int, primary: int) -> list[str]:
    (work / "nsd.conf").write_text(
        f"server:\n    server-count: 1\n    ip-address: 127.0.0.1@{port}\n"
        f"    do-ip6: no\n    username: \"\"\n    chroot: \"\"\n    zonesdir: \"{work}\"\n"
        f"    database: \"\"\n    zonelistfile: \"{work / 'zone.list'}\"\n"
        f"    xfrdfile: \"{work / 'xfrd.state'}\"\n    xfrdir: \"{work}\"\n"
        f"    pidfile: \"{work / 'nsd.pid'}\"\n    logfile: \"{work / 'nsd.log'}\"\n"
        f"    verbosity: 0\n    rrl-ratelimit: 0\n"
        f"remote-control:\n    control-enable: no\n"
        f"zone:\n    name: {ORIGIN}\n    zonefile: \"{work / 'sec.zone'}\"\n"
        f"    request-xfr: AXFR 127.0.0.1@{primary} NOKEY\n"
        f"    allow-notify: 127.0.0.1 NOKEY\n")
    return ["nsd", "-d", "-c", str(work / "nsd.conf")]


def _spawn(argv: list[str], work: Path, env: dict | None = None) -> subprocess.Popen:
    log = open(work / "server.log", "wb")
    try:
        return subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()


def _secondary(label: str, argv: list[str], work: Path, port: int, probe: str,
               timeout: float, env: dict | None = None) -> dict:
    t0 = time.monotonic()
    r = first_answer(_spawn(argv, work, env), work, port, probe, timeout)
    if not r["ok"]:
        return {"ok": False, "error": f"{label}: {r['error']}"}
    return {"ok": True, "visible_s": r["ready"] - t0, "peak_mib": r["peak_rss_mib"], "cpu_s": r["cpu_s"]}


def _pop53_serve(work: Path, port: int, primary: int) -> list[str]:
    """`pop53 serve` as a secondary of the primary (one worker, a state directory: what an
    operator runs; its first transfer goes through the engine, pop53.xfr.refresh)."""
    (work / "pop53.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\nstate = "{work / "state"}"\n'
        f'[xfr]\nmax_records = 50000000\n'
        f'[[zone]]\nname = "{ORIGIN}"\nprimaries = ["127.0.0.1:{primary}"]\n')
    return [sys.executable, "-m", "pop53", "serve", "-c", str(work / "pop53.toml")]


def _serve_phases(log: Path) -> dict:
    """From a `pop53 serve` secondary's log (millisecond timestamps): seconds from its start
    line to the transfer's start, the transfer (its own log line), and from the transfer's end to
    the image published (the publisher's line: checks, compile, publish)."""
    import re

    def ts(line: str) -> float:
        return _dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    start = axfr_end = axfr_s = published = None
    for line in log.read_text(errors="replace").splitlines():
        if " starting, pid " in line and start is None:
            start = ts(line)
        m = re.search(r"AXFR in from .*, ([0-9.]+) s, key", line)
        if m and axfr_end is None:
            axfr_end, axfr_s = ts(line), float(m.group(1))
        if ": image compiled and published in " in line and published is None:
            published = ts(line)
    if None in (start, axfr_end, published):
        return {}
    return {"start->axfr": axfr_end - axfr_s - start, "axfr": axfr_s,
            "axfr->published": published - axfr_end}


def _pop53(work: Path, primary: int, probe: str, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bench.xfr_first", "--pop53-child",
                             str(primary), probe], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    sampler = _PeakRSS(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
        done = time.monotonic()
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        return {"ok": False, "error": "pop53: timed out"}
    finally:
        sampler.done.set()
        sampler.join()
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": f"pop53: {err.strip()[-300:]}"}
    if not r.get("ok"):
        return {"ok": False, "error": f"pop53: {r.get('error')}"}
    # visible: the child's own clock from its start (its exit and our reaping are not counted)
    return {"ok": True, "visible_s": done - t0 - (r["exit_s"] - r["visible_s"]),
            "peak_mib": sampler.peak_kib / 1024, "cpu_s": r["cpu_s"], "phases": r["phases"],
            "records": r["records"],
            "image_mib": r["image_mib"]}


def pop53_child(primary: int, probe: str) -> int:
    """The pop53 row: AXFR -> records -> checks -> image -> one answer, with phase times."""
    t_start = time.monotonic()
    import dns.message
    import dns.name
    import dns.rcode

    import pop53
    from pop53.xfr.axfr_records import axfr_zone
    from pop53.xfr.config import Peer
    ph = {"imports": time.monotonic() - t_start}
    try:
        t = time.monotonic()
        d = axfr_zone(Peer("127.0.0.1", primary), dns.name.from_text(ORIGIN), None, 30.0, 600.0,
                      1 << 34, 50_000_000)
        ph["axfr+checks"] = time.monotonic() - t
        t = time.monotonic()
        image = pop53.compile_zone_data([d])
        ph["compile"] = time.monotonic() - t
        t = time.monotonic()
        q = dns.message.make_query(probe, "A")
        r = dns.message.from_wire(pop53.answer(image, q.to_wire(), ("127.0.0.1", 53)))
        ph["answer"] = time.monotonic() - t
        if r.rcode() != dns.rcode.NOERROR or not r.answer:
            raise RuntimeError(f"probe not answered: {r}")
        visible = time.monotonic() - t_start
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {"ok": True, "phases": ph, "records": len(d.columns), "visible_s": visible,
               "cpu_s": ru.ru_utime + ru.ru_stime,
               "image_mib": len(image) / 2**20}
    except Exception as exc:  # noqa: BLE001  (reported to the parent)
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out["exit_s"] = time.monotonic() - t_start
    print(json.dumps(out), flush=True)
    return 0


def _plot(rows: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, unit in ((a, "visible_s", "s"), (b, "peak_mib", "MiB")):
        vals = [statistics.median(x[key] for x in rows[k]) if rows[k] else 0 for k in labels]
        ax.bar(labels, vals, color=["#1f77b4", "#aec7e8", "#7f7f7f", "#bcbd22"][:len(labels)])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}" if unit == "s" else f"{v:.0f}", ha="center", va="bottom")
        ax.set_title({"visible_s": "start to first answer (median)", "peak_mib": "peak RSS (median)"}[key])
        ax.set_ylabel(unit)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.xfr_first", description=__doc__.split("\n")[0])
    p.add_argument("--names", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=data.BENCH_DIR / "results" / "xfr_first.md")
    p.add_argument("--pop53-child", nargs=2, metavar=("PRIMARY_PORT", "PROBE"))
    a = p.parse_args(argv)
    if a.pop53_child:
        return pop53_child(int(a.pop53_child[0]), a.pop53_child[1])
    if Knot().missing() or not shutil.which("nsd"):
        print("needs knotd and nsd", file=sys.stderr)
        return 2
    ds = data.dataset(a.names, a.seed)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = data.RAW_DIR / "xfr_first" / stamp
    shutil.rmtree(root, ignore_errors=True)
    (root / "primary").mkdir(parents=True)
    pport = free_port()
    primary = _knot_primary(root / "primary", ds.zone, pport)
    load0 = os.getloadavg()
    rows: dict[str, list] = {"pop53 serve": [], "pop53 (records path)": [], "knot": [],
                             "nsd": []}
    errors = []
    try:
        dnsperf.wait_ready(primary, pport, ds.probe, a.timeout)
        order = list(rows)
        for rnd in range(a.rounds):
            for label in (order if rnd % 2 == 0 else order[::-1]):
                work = root / f"{label.replace(' ', '-').strip('()').replace('(', '')}-{rnd}"
                work.mkdir(parents=True)
                port = free_port()
                if label == "knot":
                    r = _secondary(label, _knot_secondary(work, port, pport), work, port, ds.probe, a.timeout)
                elif label == "nsd":
                    r = _secondary(label, _nsd_secondary(work, port, pport), work, port, ds.probe, a.timeout)
                elif label == "pop53 serve":
                    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
                    r = _secondary(label, _pop53_serve(work, port, pport), work, port, ds.probe,
                                   a.timeout, env)
                    if r["ok"]:
                        r["phases"] = _serve_phases(work / "server.log")
                else:
                    r = _pop53(work, pport, ds.probe, a.timeout)
                print(label, rnd, r, flush=True)
                (rows[label] if r["ok"] else errors).append(r if r["ok"] else r["error"])
    finally:
        procs.stop(primary)
    load1 = os.getloadavg()
    records = sum(1 for line in open(ds.zone) if line[:1] not in ("$", "\n"))
    knot = statistics.median(r["visible_s"] for r in rows["knot"]) if rows["knot"] else None
    lines = [
        "# First AXFR of a big zone from a Knot primary (issue 15 point 3)", "",
        f"Zone: `bench/data.py` {a.names:,} names, seed {a.seed}: {records:,} records.  Primary: "
        f"Knot ({Knot().version()}).  Measured {stamp}, {a.rounds} rounds in alternating order, "
        f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end (2 cores shared "
        "with other work).", "",
        f"Command: `PYTHONPATH=src python3 -m bench.xfr_first --names {a.names} --rounds {a.rounds}`", "",
        "`pop53 serve` is the real secondary (one worker, a state directory), timed from its "
        "start to its first answer like Knot and NSD: its engine reads the AXFR from wire into "
        "the records form, checks it, compiles the image in C and publishes it (docs/xfr_records.md). "
        "`pop53 (records path)` is the same work in one bare process, with its phases.", "",
        "| secondary | start to first answer (median) | runs | vs Knot | CPU to first answer "
        "(median) | vs Knot | peak RSS (median) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for label, rs in rows.items():
        if not rs:
            lines.append(f"| {label} | failed | | | | | |")
            continue
        med = statistics.median(r["visible_s"] for r in rs)
        ratio = f"{med / knot:.2f}x" if knot else ""
        cpu = statistics.median(r["cpu_s"] for r in rs)
        kcpu = statistics.median(r["cpu_s"] for r in rows["knot"]) if rows["knot"] else None
        cratio = f"{cpu / kcpu:.2f}x" if kcpu else ""
        runs = ", ".join(f"{r['visible_s']:.2f}" for r in rs)
        lines.append(f"| {label} | {med:.2f} s | {runs} | "
                     f"{ratio} | {cpu:.2f} s | {cratio} | "
                     f"{statistics.median(r['peak_mib'] for r in rs):.0f} MiB |")
    serve = [r for r in rows["pop53 serve"] if r.get("phases")]
    if serve:
        ph = {k: statistics.median(r["phases"][k] for r in serve) for k in serve[0]["phases"]}
        lines += ["", "pop53 serve phases from its log (median s; imports come before its start "
                  "line): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items())]
    pop = rows["pop53 (records path)"]
    if pop:
        ph = {k: statistics.median(r["phases"][k] for r in pop) for k in pop[0]["phases"]}
        lines += ["", "pop53 records path phases (median s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ph.items())
                  + f"; image {pop[0]['image_mib']:.0f} MiB, {pop[0]['records']:,} records"]
    if errors:
        lines += ["", "Failed runs: " + "; ".join(e[:200] for e in errors)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    _plot(rows, a.out.with_suffix(".png"),
          f"first AXFR of {a.names:,} names from Knot, load {load0[0]:.1f}-{load1[0]:.1f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
