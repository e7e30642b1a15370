"""Mapped answers with ECS, side by side: ``python -m bench.mapping`` reproduces every number.

Servers (each started from one description, tests/support/mapping_data.py, by the launchers of
tests/support/mapping_peers.py): pop53, gdnsd 3 (plugin_geoip ``nets``), Knot 3 mod-geoip
(subnet mode), PowerDNS geoip backend (netmask services, no GeoIP database), PowerDNS LUA records
(one ``view()``; only up to ``--lua-max`` prefixes).  Each in two
variants: ``static`` (the mapped name is a plain RRset: the baseline) and ``mapped`` at every
map size (``--prefixes``; disjoint /24s in 8 regions).  pop53 ``mapped`` runs only once
``pop53.mapping`` exists (issue 10); pop53 ``static`` always runs.

1. Throughput, pinned: every server thread on CPU 1, dnsperf on CPU 0, dnsperf ``-B`` with a
   binary query file where every query carries its own ECS option (source /24 for addresses
   inside the map, /16-/32 for random addresses).  Reported: server CPU per answered query
   (utime+stime of its process tree, /proc), answered q/s.  All servers of one size are up at
   once (idle ones cost no CPU), and the runs alternate between them (order rotated each run);
   medians of ``--runs``.
2. Load: time from start to the first answer, PSS after load.
3. Map reload: one prefix changes region, the whole map file is rewritten (atomic rename) and
   the server is told the way it expects (gdnsd: nothing, it watches the file; Knot: ``knotc
   reload``; PowerDNS: ``pdns_control reload`` (LUA: ``bind-reload-now``); pop53: SIGHUP).
   Reported: time from the file rename to the first answer showing the new region (polled
   every 10 ms), and the peak PSS seen meanwhile.

Every server is stopped by its PID; every dnsperf run is bounded in time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import ipaddress
import json
import os
import random
import shlex
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import dns.edns
import dns.message

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import dnsperf, procs  # noqa: E402
from bench.peers.run import CLIENT_CPU, SERVER_CPU, machine_facts  # noqa: E402
from tests.support import mapping_data as md  # noqa: E402
from tests.support import mapping_peers as mp  # noqa: E402
from tests.support.refservers import RefServerError  # noqa: E402

RESULTS = REPO / "bench" / "results"
REGIONS = ["af", "ap", "as", "eu", "me", "oc", "sa", "us"]
DEFAULT = "us"
KINDS = ["pop53", "gdnsd", "knot-geoip", "pdns-geoip", "pdns-lua"]


def pop53_mapping_available() -> bool:
    try:
        return importlib.util.find_spec("pop53.mapping") is not None
    except ModuleNotFoundError:
        return False


# --------------------------------------------------------------------------------------------
# Data


def query_file(spec: md.MappingSpec, path: Path, count: int, seed: int) -> None:
    """``count`` wire-format A queries for the mapped name, each with its own ECS option, in
    dnsperf's -B format (2-octet length, then the message).  80% from inside the map's
    prefixes (source /24), 20% random unicast addresses (source /16../32)."""
    rng = random.Random(seed)
    entries = spec.maps[0].entries
    qname = spec.mapped[0].name
    with open(path, "wb") as f:
        for _ in range(count):
            if entries and rng.random() < 0.8:
                net, _ = rng.choice(entries)
                a = ipaddress.ip_address(int(net.network_address)
                                         + rng.randrange(net.num_addresses))
                length = 24
            else:
                a = ipaddress.IPv4Address((rng.randrange(1, 224) << 24) | rng.getrandbits(24))
                length = rng.randint(16, 32)
            q = dns.message.make_query(qname, "A", use_edns=0,
                                       options=[dns.edns.ECSOption(str(a), length)])
            q.id = 0
            w = q.to_wire()
            f.write(struct.pack("!H", len(w)) + w)


def make_spec(n: int, seed: int) -> md.MappingSpec:
    return md.simple_spec(md.dense_map(n, REGIONS, DEFAULT, seed=seed))


# --------------------------------------------------------------------------------------------
# Measurements


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = Path(tempfile.mkdtemp(prefix="pop53-bench-mapping-"))
        self.result = {
            "argv": ["python", "-m", "bench.mapping"] + sys.argv[1:],
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {k: v for k, v in vars(a).items() if k != "out"},
            "machine": machine_facts(), "loadavg_start": os.getloadavg(),
            "pop53_mapping": pop53_mapping_available(), "runs": [], "loads": [],
            "reloads": [], "errors": [],
        }

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def start(self, kind: str, spec: md.MappingSpec):
        cls = mp.MAPPING_PEERS[kind]
        srv = cls(spec, startup_timeout=self.a.load_timeout)
        t0 = time.monotonic()
        srv.start()
        load_s = time.monotonic() - t0
        pids = procs.tree(srv.pid)
        procs.pin(pids, {SERVER_CPU})
        return srv, load_s, procs.memory(pids)

    def check(self, srv, spec: md.MappingSpec, n_checks: int = 20) -> str:
        """A few ECS answers checked (static: the default region's answer).  The benchmark's
        map is disjoint /24s (md.dense_map), so a /24 entry's own region is the right answer
        (the brute-force Oracle is quadratic: fine for tests, not for 10^5 prefixes)."""
        rng = random.Random(1)
        m = spec.maps[0]
        for _ in range(n_checks):
            net, entry_region = rng.choice(m.entries)
            ecs = (str(net.network_address), 24)
            region = DEFAULT if spec.static else entry_region
            want = spec.answer(spec.mapped[0], region, 4)
            got = mp.ask(srv, spec.mapped[0].name, "A", ecs)
            if got.addresses != want:
                return f"ECS {ecs}: {sorted(got.addresses)}, want {sorted(want)} ({region})"
        return ""

    def throughput(self, key: tuple, srv, qfile: Path, run: int) -> dict:
        kind, variant, n = key
        a = self.a
        kw = dict(clients=a.clients, outstanding=a.outstanding, threads=1, cpu=CLIENT_CPU,
                  binary=True)
        if kind == "pdns-lua" and variant == "mapped":
            # Milliseconds per query: unpaced, dnsperf's queue times out and the CPU spent on
            # late answers would be charged to the few that arrive in time.
            kw["max_qps"] = a.lua_qps
        procs.pin(procs.tree(srv.pid), {SERVER_CPU})   # threads started since, if any
        if a.warmup > 0:
            dnsperf.run(srv.port, qfile, a.warmup, **kw)
        pids = procs.tree(srv.pid)
        cpu0, busy0, t0 = procs.cpu_seconds(pids), procs.core_busy(), time.monotonic()
        res = dnsperf.run(srv.port, qfile, a.duration, **kw)
        wall = time.monotonic() - t0
        cpu1, busy1 = procs.cpu_seconds(procs.tree(srv.pid)), procs.core_busy()
        server_cpu = cpu1 - cpu0
        other = (busy1[SERVER_CPU] - busy0[SERVER_CPU]) - server_cpu
        bad_rcodes = {k: v for k, v in res.rcodes.items() if k != "NOERROR"}
        return {"kind": kind, "variant": variant, "prefixes": n, "run": run, "ok": res.ok,
                "error": res.error, "qps": res.qps, "completed": res.completed,
                "lost": res.lost, "rcodes": res.rcodes, "server_cpu_s": server_cpu,
                "wall_s": wall, "other_load_server_cpu": max(0.0, other) / wall,
                "cpu_us_per_q": server_cpu / res.completed * 1e6 if res.completed else None,
                "check": f"rcodes {bad_rcodes}" if bad_rcodes else "",
                "dnsperf": " ".join(map(shlex.quote, res.argv))}

    def reload(self, kind: str, srv, spec: md.MappingSpec, n: int) -> dict:
        """Flip one prefix to another region; time the rename -> new answer."""
        m = spec.maps[0]
        i = len(m.entries) // 2
        net, old = m.entries[i]
        new = next(r for r in REGIONS if r != old)
        entries = list(m.entries)
        entries[i] = (net, new)
        want = spec.answer(spec.mapped[0], new, 4)
        ecs = (str(net.network_address), 24)
        pids = procs.tree(srv.pid)
        base = procs.memory(pids).pss_kib
        srv.write_map(m.name, entries)
        t0 = time.monotonic()
        srv.trigger_reload()
        trigger_s = time.monotonic() - t0
        peak, errors = base, 0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed > self.a.reload_timeout:
                return {"kind": kind, "prefixes": n, "ok": False, "pss_kib": base,
                        "error": f"no new answer within {self.a.reload_timeout:g} s"}
            peak = max(peak, procs.memory(procs.tree(srv.pid)).pss_kib)
            try:
                got = mp.ask(srv, spec.mapped[0].name, "A", ecs, timeout=0.5)
                if got.addresses == want:
                    break
            except RefServerError:
                errors += 1     # no answer while reloading (Knot)
            time.sleep(0.01)
        return {"kind": kind, "prefixes": n, "ok": True, "reload_s": time.monotonic() - t0,
                "trigger_s": trigger_s, "pss_kib": base, "peak_pss_kib": peak,
                "unanswered_polls": errors}

    def size(self, n: int, with_static: bool) -> None:
        """Start every server of one map size, measure, stop them."""
        a = self.a
        spec = make_spec(n, a.seed)
        qfile = self.work / f"queries-{n}.bin"
        query_file(spec, qfile, a.queries, a.seed)
        keys = []
        for kind in a.servers:
            if with_static:
                keys.append((kind, "static", None))
            if kind == "pop53" and not pop53_mapping_available():
                continue
            if kind == "pdns-lua" and n > a.lua_max:
                continue     # view() walks the whole map in Lua for every query
            keys.append((kind, "mapped", n))
        live = {}
        try:
            for key in keys:
                kind, variant, _ = key
                s = spec.as_static() if variant == "static" else spec
                try:
                    srv, load_s, mem = self.start(kind, s)
                except (RefServerError, OSError) as exc:
                    self.err(key, f"start: {exc}")
                    continue
                live[key] = (srv, s)
                why = self.check(srv, s)
                if why:
                    self.err(key, f"wrong answer, not measured: {why}")
                    srv.stop()
                    del live[key]
                    continue
                self.result["loads"].append({"kind": kind, "variant": variant, "prefixes": n,
                                             "load_s": load_s, "pss_kib": mem.pss_kib})
                self.say(f"{kind} {variant} {n:,}: up in {load_s:.2f} s, PSS "
                         f"{mem.pss_kib / 1024:.1f} MiB")
            order = list(live)
            for r in range(a.runs):
                k = r % max(1, len(order))
                for key in order[k:] + order[:k]:
                    srv, s = live[key]
                    try:
                        row = self.throughput(key, srv, qfile, r)
                    except Exception as exc:   # record and go on with the others
                        self.err(key, traceback.format_exc(limit=3))
                        continue
                    self.result["runs"].append(row)
                    self.say(f"run {r + 1}/{a.runs} {key[0]} {key[1]} {n:,}: "
                             f"{row['qps']:,.0f} q/s, {row['cpu_us_per_q'] or 0:.2f} us/q "
                             f"{row['check']}")
                    self.save()
            if not a.no_reload:
                for key, (srv, s) in live.items():
                    if key[1] != "mapped":
                        continue
                    try:
                        row = self.reload(key[0], srv, s, n)
                    except Exception as exc:
                        row = {"kind": key[0], "prefixes": n, "ok": False, "error": str(exc)}
                    self.result["reloads"].append(row)
                    self.say(f"reload {key[0]} {n:,}: " + (
                        f"{row['reload_s']:.2f} s" if row.get("ok") else row["error"]))
                    self.save()
        finally:
            for srv, _ in live.values():
                srv.stop()

    def err(self, key, msg: str) -> None:
        self.result["errors"].append({"key": list(key), "error": msg[-1500:]})
        self.say(f"{key}: {msg[-300:]}")

    def save(self) -> Path:
        path = self.work / "result.json"
        path.write_text(json.dumps(self.result, indent=1))
        return path

    def run(self) -> dict:
        t0 = time.time()
        for i, n in enumerate(self.a.prefixes):
            self.size(n, with_static=(i == 0))
        self.result["loadavg_end"] = os.getloadavg()
        self.result["elapsed_s"] = time.time() - t0
        self.save()
        return self.result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mapping",
                                description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(float(x)) for x in s.split(",")]  # noqa: E731
    p.add_argument("--prefixes", type=ints, default=[1000, 100_000],
                   help="map sizes, comma-separated (e.g. 1000,100000,1000000)")
    p.add_argument("--servers", type=lambda s: s.split(","), default=KINDS,
                   help="comma-separated: " + ",".join(KINDS))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--queries", type=int, default=20_000, help="distinct queries in the file")
    p.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    p.add_argument("--seed", type=int, default=53)
    p.add_argument("--load-timeout", type=float, default=600.0)
    p.add_argument("--reload-timeout", type=float, default=120.0)
    p.add_argument("--lua-max", type=int, default=1000,
                   help="largest map given to PowerDNS LUA records (a linear view() per query)")
    p.add_argument("--lua-qps", type=int, default=100,
                   help="dnsperf -Q for PowerDNS LUA mapped runs (so no query times out)")
    p.add_argument("--no-reload", action="store_true", help="skip the map reload timing")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="directory for mapping.md and mapping.png")
    p.add_argument("--report-only", type=Path, default=None, metavar="JSON",
                   help="rebuild mapping.md/.png from a saved result.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from bench import mapping_report
    a = parse_args(argv)
    if a.report_only:
        result = json.loads(a.report_only.read_text())
    else:
        unknown = set(a.servers) - set(KINDS)
        if unknown:
            raise SystemExit(f"unknown server(s) {sorted(unknown)}; one of {KINDS}")
        b = Bench(a)
        b.say(f"work directory {b.work}; load average {os.getloadavg()}")
        result = b.run()
        b.say(f"raw result {b.save()}")
    mapping_report.write(result, a.out)
    print(f"wrote {a.out / 'mapping.md'} and {a.out / 'mapping.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
