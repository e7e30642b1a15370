"""pop53.xfr.isolate.run_in_fork: work in a forked child, errors and timeouts reported, and a child
that never outlives its parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pop53.xfr.isolate import run_in_fork


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_work_runs_in_a_child(tmp_path):
    out = tmp_path / "pid"
    run_in_fork(lambda: out.write_text(str(os.getpid())), "writer", 30)
    assert int(out.read_text()) != os.getpid()


def test_the_childs_error_reaches_the_caller():
    def boom():
        raise ValueError("bad zone at line 7")
    with pytest.raises(OSError, match="writer: failed: ValueError: bad zone at line 7"):
        run_in_fork(boom, "writer", 30)


def test_a_child_past_its_time_is_killed(tmp_path):
    out = tmp_path / "pid"

    def slow():
        out.write_text(str(os.getpid()))
        time.sleep(60)
    t = time.monotonic()
    with pytest.raises(OSError, match="did not finish in 1 s"):
        run_in_fork(slow, "writer", 1)
    assert time.monotonic() - t < 10
    assert not _alive(int(out.read_text()))


def test_the_child_dies_with_its_parent(tmp_path):
    """A snapshot writer or compaction must not outlive the server (it would write state
    behind the back of the next one)."""
    out = tmp_path / "pid"
    code = ("import os, time\n"
            "from pop53.xfr.isolate import run_in_fork\n"
            f"def work():\n    open({str(out)!r}, 'w').write(str(os.getpid()))\n    time.sleep(60)\n"
            "run_in_fork(work, 'writer', 120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(out.read_text())
        assert _alive(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _alive(child):
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the forked child outlived its parent")
