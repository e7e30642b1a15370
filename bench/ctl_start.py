"""`pop53 ctl status` against `knotc status`, wall time of the whole command, in one run (issue 14
point 13): what an operator waits for, interpreter start-up included.

    python3 -m bench.ctl_start --runs 21 [--baseline /work/main/src]

Starts a pop53 server (10 small zones) and knotd on loopback, then runs, interleaved, each
command `--runs` times and reports medians: `pop53-ctl status` (scripts/pop53-ctl, the launcher
that runs the client under `python -S`, set up as pip installs it), `pop53 ctl status` (the
installed console script),
`python3 -m pop53 ctl status`, the same from a --baseline tree, `knotc status`, and the
interpreter alone (`python3 -c pass`, and `-S` without site-packages' .pth files).  Not a test:
nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .zone_reload import REPO, Knot, Pop53, cli_env, names


def _time(argv, env) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return time.monotonic() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--baseline", metavar="SRC", help="another pop53 source tree (PYTHONPATH)")
    p.add_argument("--work", default=str(REPO / "bench" / "results" / "raw" / "ctl_start"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "ctl_start"))
    args = p.parse_args(argv)
    work = Path(args.work)
    zones = names(10)
    pop, knot = Pop53(work / "pop53", zones), Knot(work / "knot", zones)
    env = cli_env(work / "pycache")      # byte-compiled once, as an installed package is
    sock = str(pop.work / "pop53.sock")
    script = shutil.which("pop53", path=os.path.dirname(sys.executable)) or "pop53"
    # scripts/pop53-ctl as installed: beside a `pop53` console script naming this interpreter
    # (what pip writes), in a directory of its own
    bin_ = work / "bin"
    bin_.mkdir(parents=True, exist_ok=True)
    (bin_ / "pop53").write_text(f"#!{sys.executable}\n")
    launcher = bin_ / "pop53-ctl"
    shutil.copyfile(REPO / "scripts" / "pop53-ctl", launcher)
    launcher.chmod(0o755)
    cmds = {
        "pop53-ctl status (scripts/pop53-ctl: python -S)": ([str(launcher), "-s", sock,
                                                              "status"], env),
        "pop53 ctl status (console script)": ([script, "ctl", "-s", sock, "status"], env),
        "python3 -m pop53 ctl status": ([sys.executable, "-m", "pop53", "ctl", "-s", sock,
                                         "status"], env),
        "knotc status": (["knotc", "-c", str(knot.work / "knot.conf"), "status"], None),
        "python3 -c pass": ([sys.executable, "-c", "pass"], None),
        "python3 -S -c pass (no site-packages .pth)": ([sys.executable, "-S", "-c", "pass"], None),
    }
    installed = shutil.which("pop53-ctl", path=os.path.dirname(sys.executable))
    if installed and b"python" in Path(installed).read_bytes().split(b"\n", 1)[0]:
        # a console script (`#!/path/python`, site and its .pth files run): before the launcher
        cmds["pop53-ctl status (pip console script: site runs)"] = (
            [installed, "-s", sock, "status"], env)
    if args.baseline:
        cmds["python3 -m pop53 ctl status (--baseline tree)"] = (
            [sys.executable, "-m", "pop53", "ctl", "-s", sock, "status"],
            dict(os.environ, PYTHONPATH=args.baseline))
    times = {k: [] for k in cmds}
    load_before = os.getloadavg()
    try:
        pop.start()
        knot.start()
        for argv_, env_ in cmds.values():      # warm the page cache once
            _time(argv_, env_)
        for _ in range(args.runs):
            for k, (argv_, env_) in cmds.items():
                times[k].append(_time(argv_, env_))
    finally:
        pop.stop()
        knot.stop()
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    knotc = med["knotc status"]
    lines = ["# `pop53 ctl status` beside `knotc status` (whole command, wall time)", "",
             f"Command: `python3 -m bench.ctl_start {' '.join(argv or sys.argv[1:])}`  ",
             f"Machine: {os.cpu_count()} cores shared with other work; load average "
             f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} before, "
             f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} after.  ",
             f"{args.runs} runs each, interleaved; medians.", "",
             "| command | median (ms) | min | max | vs knotc |", "|---|---|---|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k] * 1000:.1f} | {min(v) * 1000:.1f} | "
                     f"{max(v) * 1000:.1f} | {med[k] / knotc:.2f}x |")
    lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    _plot(times, out.with_suffix(".png"), load_after[0])
    print("\n".join(lines))
    return 0


def _plot(times: dict, path: Path, load: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(times)
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(keys) + 1.2))
    ax.barh(range(len(keys)), [statistics.median(times[k]) * 1000 for k in keys],
            color=["tab:red" if k.startswith("knotc") else "tab:blue" for k in keys])
    ax.set_yticks(range(len(keys)), keys, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median wall time of the whole command (ms)")
    ax.set_title(f"pop53 ctl start beside knotc (load {load:.1f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
