"""Fixtures for the server integration tests (issue 3): real sockets on 127.0.0.1 / ::1.

Servers run in-process (`pop53.server.Server`, listen port 0 so the kernel picks a free port) or
as `python -m pop53 serve` subprocesses (listen port 0, the bound port read from the server's
"listening on" line).  Every server a fixture starts is stopped in the fixture's teardown, every
subprocess by its PID (SIGTERM, then SIGKILL), also when the test fails.  Every wait is bounded.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pop53.serve.server import Server

from integ_support import REPO, ServeProcess, server_config, start_with_retry


@pytest.fixture
def start_server():
    """Factory: start_server(zones, **server_keys) -> a started in-process Server, stopped at
    teardown."""
    servers: list[Server] = []

    def start(zones, **kw) -> Server:
        def make():
            s = Server(server_config(zones, **kw))
            servers.append(s)
            return s
        return start_with_retry(make)

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def world_readable_dir():
    """A root-owned 0755 directory (like /run): an unprivileged user can read in it but not
    create files (pytest's tmp_path is under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="p53i-"))
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def serve(tmp_path):
    """Factory: serve(*args, listen=1) runs `python -m pop53 serve ARGS` and waits for its
    listening lines; every process is stopped by PID at teardown."""
    procs: list[ServeProcess] = []

    def start(*args: str, listen: int = 1) -> ServeProcess:
        for attempt in range(5):
            log = tmp_path / f"serve-{len(procs)}.log"
            with open(log, "wb") as err:
                p = subprocess.Popen([sys.executable, "-m", "pop53", "serve", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=err, cwd=str(REPO))
            sp = ServeProcess(p, log)
            procs.append(sp)
            try:
                sp.wait_listening(listen)
                return sp
            except AssertionError:
                # the port-0 TCP/UDP race (see start_server) only; anything else is a failure
                if "Address already in use" not in sp.log_text() or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    yield start
    for sp in procs:
        sp.stop()
