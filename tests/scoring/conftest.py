"""Fixtures of the scoring tests: `pop53 serve` subprocesses (tests/serve's launcher)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_SERVE = str(Path(__file__).resolve().parents[1] / "serve")
if _SERVE not in sys.path:
    sys.path.insert(0, _SERVE)

from integ_support import REPO, ServeProcess  # noqa: E402


@pytest.fixture
def serve(tmp_path):
    """Factory: serve(config path) runs `python -m pop53 serve --config PATH`, waits for its
    listening line; stopped by PID at teardown."""
    procs: list[ServeProcess] = []

    def start(config: str) -> ServeProcess:
        log = tmp_path / f"serve-{len(procs)}.log"
        with open(log, "wb") as err:
            p = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "--config", config],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, cwd=str(REPO))
        sp = ServeProcess(p, log)
        procs.append(sp)
        sp.wait_listening(1)
        return sp

    yield start
    for sp in procs:
        sp.stop()
