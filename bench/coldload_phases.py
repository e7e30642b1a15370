"""Where a cold load's memory goes, phase by phase (issue 15: peak at most 2x the image).

    python3 -m bench.coldload_phases --names 1000000
    python3 -m bench.coldload_phases --zone /tmp/dz/z1000000/signed.zone    # any zone file

Runs the compiler child's work (`python -m pop53.zone.compiler`: read and scan, checks, the C
build, the image, the saved file) in a fresh process, one phase after another, with stage
markers on its stdout; this process samples the child's /proc/PID/statm every 5 ms (statm, not
smaps_rollup, which stalls the process it reads) and reports, per phase, the RSS at its end
and the largest RSS while it ran.  Also the RSS of a bare interpreter with pop53 imported (the
server's own baseline is about that plus its threads).  Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import data
from .peers.servers import REPO

PAGE = os.sysconf("SC_PAGE_SIZE")

# the child: the phases of pop53.zone.compiler.main for one zone file, one marker per phase
_CHILD = r"""
import sys, time
def mark(name):
    print(name, time.monotonic(), flush=True)
mark("start")
import numpy, dns.name
from pop53 import _core
from pop53.zone import compiler, records, checks, zonefile
mark("imports")
try:
    from pop53.zone.imagefile import fixed_mmap_threshold
    fixed_mmap_threshold()     # as the compiler child does
except ImportError:
    pass
path, out = sys.argv[1], sys.argv[2]
getattr(zonefile, "map_big_files", lambda: None)()     # as the compiler child does
raw = zonefile._read(path) if hasattr(zonefile, "_read") else open(path, "rb").read()
mark("read file (a mapping: nothing read yet)")
origin = zonefile._guess_origin(raw, path)
recs = records.scan_bytes(raw, origin, path)
del raw
mark("scan")
data = zonefile.ZoneData(origin=origin, source=path, columns=recs)
checks.validate_records(data)
mark("checks")
summary = data.summary()
if hasattr(recs, "drop_locations"):
    recs.drop_locations()       # as the compiler child does once the checks are done
mark("summary")
try:
    from pop53.zone import imagefile
except ImportError:        # before the image was written straight to its file
    imagefile = None
if imagefile is None:
    image = compiler.compile_zone_data([data])
    mark("compile (image in memory)")
    image.save(out)
    mark("save")
else:
    from pop53 import _core
    cov = recs.covers()
    order = recs.order(cov)
    mark("compile: record order")
    del order, cov
    flat = [compiler._flat_zone(data)]
    recs.drop_build_inputs()    # compile_to_file(consume=True), as the child
    mark("compile: FlatZone (names, RRsets)")
    img = _core.FlatImage(flat)
    mark("compile: FlatImage (additional targets)")
    imagefile.write_flat(out, [data], flat, img, 53, set())
    mark("compile: image streamed to its file")
"""


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def phases(zone: str, out: str, env: dict) -> list[tuple[str, float, float, float]]:
    """[(phase, seconds, RSS at its end MiB, peak RSS during it MiB)]."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, zone, out], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    marks: list[tuple[str, float]] = []
    peak = [0.0]
    last = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            r = _rss_mib(proc.pid)
            if r:
                last[0] = r
                peak[0] = max(peak[0], r)
            time.sleep(0.005)

    rows = []
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    for line in proc.stdout:
        name, ts = line.rsplit(" ", 1)
        time.sleep(0.01)       # one more sample of this phase's end
        if marks:
            rows.append((name, float(ts) - marks[-1][1], last[0], peak[0]))
        marks.append((name, float(ts)))
        peak[0] = last[0]
    proc.wait()
    done.set()
    t.join()
    return rows


def server_split(ds, env: dict, timeout: float = 300.0) -> dict:
    """A real cold start (`pop53 serve`, empty state): the server process's and its compiler
    child's RSS sampled apart (MiB): the parent's largest while the child runs, the child's
    peak, the largest sum, and the parent's once it answers (the image mapped)."""
    import shutil
    import tempfile
    from .peers import dnsperf, procs
    from .peers.run import free_port
    from .peers.servers import Pop53

    work = tempfile.mkdtemp(prefix="coldphases-")
    port = free_port()
    launch = Pop53().launch(Path(work), ds.zone, port, False, Path(work) / "state")
    proc = subprocess.Popen(launch.argv, cwd=launch.cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    out = {"parent_during": 0.0, "child_peak": 0.0, "sum_peak": 0.0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pids = procs.tree(proc.pid)
            par = _rss_mib(proc.pid)
            kids = sum(_rss_mib(q) for q in pids if q != proc.pid)
            if kids:
                out["parent_during"] = max(out["parent_during"], par)
                out["child_peak"] = max(out["child_peak"], kids)
            out["sum_peak"] = max(out["sum_peak"], par + kids)
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        dnsperf.wait_ready(proc, port, ds.probe, timeout)
        out["parent_serving"] = _rss_mib(proc.pid)
    finally:
        done.set()
        t.join()
        procs.stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.coldload_phases",
                                description=__doc__.split("\n")[0])
    p.add_argument("--names", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    p.add_argument("--zone", help="phases of this zone file only (e.g. a signed zone of "
                   "bench.peers.dnssec --cache), no server run")
    a = p.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = str(data.RAW_DIR / "coldload_phases.img")
    os.makedirs(data.RAW_DIR, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    ds = None if a.zone else data.dataset(a.names, a.seed)
    rows = phases(a.zone or str(ds.zone), out, env)
    img = os.path.getsize(out) / 2**20
    print("| phase | seconds | RSS at end | peak in phase |\n|---|---:|---:|---:|")
    for name, secs, end, top in rows:
        print(f"| {name} | {secs:.2f} | {end:.0f} MiB | {top:.0f} MiB |")
    print(f"image {img:.0f} MiB; child peak / image {max(r[3] for r in rows) / img:.2f}x; "
          f"load average {os.getloadavg()[0]:.2f}")
    os.unlink(out)
    if ds is None:
        return 0
    s = server_split(ds, env)
    print("pop53 serve, cold start: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in s.items())
          + f"; sum peak / image {s['sum_peak'] / img:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
