"""bench/attack/flood.c's AF_PACKET TX ring transport (`-t ring`, issue 13's 5x flood): the
frames it writes into `lo` arrive as the datagrams the socket transport sends.  In a network
namespace of the test's own (`unshare -n`, route_localnet on its `lo`; tests/scoring/
flood_ring_check.py does the work there):
- every source layout the attacks use delivers well-formed one-question DNS queries for the
  right name, from the layout's addresses, and a slow flood loses nothing (received = sent);
- a real pop53 with the kernel stage (`steer = true`) puts ring frames from a known /24 into
  one of its two reuseport sockets and unknown sources into the other, exactly as it does the
  socket transport's datagrams: the reuseport eBPF program sees the same packets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from integ_support import INTEG_ZONE

REPO = Path(__file__).resolve().parents[2]
FLOOD_C = REPO / "bench" / "attack" / "flood.c"
CHECK = Path(__file__).resolve().parent / "flood_ring_check.py"


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("unshare") is None
                    or os.geteuid() != 0, reason="needs gcc, unshare and root (AF_PACKET)")
def test_ring_frames_arrive_and_are_steered_like_socket_datagrams(tmp_path):
    binary = tmp_path / "flood"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(FLOOD_C)], check=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    p = subprocess.run(["unshare", "-n", sys.executable, str(CHECK), str(binary), str(tmp_path),
                        str(INTEG_ZONE)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["injects"], r
    for lay in r["layouts"]:
        assert lay["sent"] >= 64 and lay["got"] == lay["sent"], lay
        assert lay["parsed"] and lay["sources_ok"], lay
        assert lay["sources"] > 1, lay
    st = r["steer"]
    assert "error" not in st, st
    assert st["sockets"] == 2, st                  # one worker: a normal and a priority socket
    for tx in ("sock", "ring"):
        # each flood lands in exactly one socket, the known one not where the unknown one does
        assert len(st[f"{tx} known"]) == 1 and len(st[f"{tx} unknown"]) == 1, st
        assert st[f"{tx} known"] != st[f"{tx} unknown"], st
    assert st["ring known"] == st["sock known"] and st["ring unknown"] == st["sock unknown"], st
