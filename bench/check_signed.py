"""`pop53 check` beside Knot's `kzonecheck` on the same signed zone files (issue 12).

    python3 -m bench.check_signed /tmp/signflat12-dz/z1000/signed.zone \
        /tmp/signflat12-dz/z1000000/signed.zone --repeat 2

Each tool runs under `/usr/bin/time -v` in a fresh process, one after the other; per run: wall
time, CPU (user + system), peak RSS, exit code, and the load average before it.  kzonecheck
runs twice per zone: as it is (every RRSIG verified, DNSSEC checks on because the apex has a
DNSKEY) and with `-d off` (parse and semantic checks only); `pop53 check` verifies an even
sample of at most pop53.dnssec.check.VERIFY_LIMIT signatures and checks the other fields of
every one.  Not a test: nothing here asserts.  Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from .peers.servers import REPO


def _timed(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    load = os.getloadavg()[0]
    p = subprocess.run(["/usr/bin/time", "-v", "timeout", str(int(timeout)), *cmd],
                       capture_output=True, text=True, env=env)
    field = lambda name: re.search(rf"{name}: (\S+)", p.stderr).group(1)
    wall = 0.0
    for part in field(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":"):
        wall = wall * 60 + float(part)
    return {"wall": wall, "cpu": float(field(r"User time \(seconds\)")) +
            float(field(r"System time \(seconds\)")),
            "rss": int(field(r"Maximum resident set size \(kbytes\)")) / 1024,
            "rc": p.returncode, "load": load}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.check_signed")
    ap.add_argument("zones", nargs="+")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--tools", default="pop53,kzonecheck,kzonecheck-d-off",
                    help="which of pop53, kzonecheck, kzonecheck-d-off to run (comma-separated)")
    args = ap.parse_args(argv)
    from pop53.zone.zonefile import guess_file_origin

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    print("| zone | tool | run | wall s | CPU s | peak RSS MiB | exit | load before |")
    print("|---|---|---|---|---|---|---|---|")
    for zone in args.zones:
        origin = guess_file_origin(zone).to_text()
        tools = {"pop53": ("pop53 check", [sys.executable, "-m", "pop53", "check", "--zone", zone], env),
                 "kzonecheck": ("kzonecheck", ["kzonecheck", "-o", origin, zone], None),
                 "kzonecheck-d-off": ("kzonecheck -d off",
                                      ["kzonecheck", "-d", "off", "-o", origin, zone], None)}
        for name, cmd, e in (tools[t] for t in args.tools.split(",")):
            for i in range(args.repeat):
                r = _timed(cmd, args.timeout, e)
                print(f"| {os.path.basename(os.path.dirname(zone))}/{os.path.basename(zone)} | "
                      f"{name} | {i + 1} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss']:.0f} | "
                      f"{r['rc']} | {r['load']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
