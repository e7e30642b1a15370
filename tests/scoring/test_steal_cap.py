"""The attack bench's CPU cap without a quota (bench/attack/steal.c, `run.py --cap steal`) and
the flood that takes its place (flood.c -d): the stealer takes the share it is given and stops
when told; a flood given `-d SHARE:PERIOD:PID` runs at SCHED_FIFO, stops the stealer (SIGSTOP)
while it floods and continues it (SIGCONT) when its time is up; the stealer then starts its
accounting afresh instead of spinning to catch up.  Bounded: a few seconds of CPU 0 at most."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ATTACK = REPO / "bench" / "attack"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("taskset") is None
                                or os.geteuid() != 0, reason="needs gcc, taskset and root "
                                "(SCHED_FIFO)")


def _state(pid: int) -> str:
    """A process's scheduler state letter (/proc/PID/stat): R, S, T (stopped), ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _build(tmp_path: Path, name: str) -> Path:
    binary = tmp_path / name
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ATTACK / f"{name}.c")], check=True)
    return binary


def test_stealer_takes_its_share_and_stops_on_sigterm(tmp_path):
    steal = _build(tmp_path, "steal")
    p = subprocess.Popen(["taskset", "-c", "0", str(steal), "0.3", "1000", "10"],
                         stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert os.sched_getscheduler(p.pid) == os.SCHED_FIFO
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=10)
    taken, elapsed, _ = map(float, out.split())
    assert 0.8 < elapsed < 5                   # SIGTERM ended it, not its 10 s bound
    assert taken / elapsed == pytest.approx(0.3, abs=0.05)


def test_bad_arguments_are_refused(tmp_path):
    steal = _build(tmp_path, "steal")
    for argv in (["1.5", "1000", "1"], ["0.5", "5", "1"], ["0.5", "1000"]):
        r = subprocess.run([str(steal)] + argv, capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and "steal" in r.stderr, argv


def test_flood_takes_the_stealers_place_while_it_runs(tmp_path):
    steal, flood = _build(tmp_path, "steal"), _build(tmp_path, "flood")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    stealer = subprocess.Popen(["taskset", "-c", "0", str(steal), "0.5", "1000", "20"],
                               stdout=subprocess.PIPE, text=True)
    fl = None
    try:
        time.sleep(0.3)
        assert _state(stealer.pid) != "T"
        # 1.5 s of a slow flood (1,000 datagrams a second, four sources) from CPU 0
        fl = subprocess.Popen(["taskset", "-c", "0", str(flood), "-d", f"0.5:1000:{stealer.pid}",
                               str(port), "1.5", "1000", "4", "1", "0377777700", "0", "0"],
                              stdout=subprocess.PIPE, text=True)
        time.sleep(0.8)
        assert fl.poll() is None
        assert os.sched_getscheduler(fl.pid) == os.SCHED_FIFO
        assert _state(stealer.pid) == "T"     # stopped while the flood holds the cap
        sent, _ = map(int, fl.communicate(timeout=20)[0].split())
        assert fl.returncode == 0
        assert 1000 <= sent <= 2000
        time.sleep(0.5)
        assert _state(stealer.pid) != "T"     # continued when the flood ended
    finally:
        if fl is not None and fl.poll() is None:
            fl.kill()
            fl.wait()
        os.kill(stealer.pid, 18)              # SIGCONT, in case the flood died holding it
        stealer.terminate()
        out, _ = stealer.communicate(timeout=10)
        sink.close()
    taken, elapsed, _ = map(float, out.split())
    # afresh after the pause: its share of the time since then, not a catch-up of 1.5 s
    assert taken / elapsed == pytest.approx(0.5, abs=0.1)
    assert elapsed < 2.0
