"""Issue 14 point 8: the privilege drop.  The pidfile, the control socket and the state
directory are created (or given to the run user) before the switch, so nothing fails after it;
startup failures are one line naming the address or path, never a traceback."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from integ_support import RELOAD_V1, RELOAD_V2, REPO, free_port, wait_for


def _ctl(sock: Path, cmd: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "pop53", "ctl", "--json", "-s", str(sock), cmd],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.root
def test_pidfile_control_socket_and_state_survive_the_drop(serve, world_readable_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root: the server must start as root to drop privileges")
    nobody = pwd.getpwnam("nobody")
    d = world_readable_dir
    zone = d / "reload.example.zone"
    zone.write_text(RELOAD_V1.read_text())
    zone.chmod(0o644)
    state, sock, pidfile = d / "state", d / "pop53.sock", d / "pop53.pid"
    conf = d / "pop53.toml"
    conf.write_text(f"""
[server]
listen = ["127.0.0.1:0"]
workers = 1
user = "nobody"
state = "{state}"
control = "{sock}"
[[zone]]
name = "reload.example."
file = "{zone}"
""")
    p = serve("-c", str(conf), "--pidfile", str(pidfile))
    assert "Traceback" not in p.log_text()
    assert pidfile.read_text().strip() == str(p.pid)
    for path in (pidfile, sock, state, state / "zones.img", state / "zones.img.json"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path
    assert _ctl(sock, "status")["zones"] == {"reload.example.": 1001}
    # a reload as nobody saves the new image in the state directory
    before = json.loads((state / "zones.img.json").read_text())["files"]
    zone.write_text(RELOAD_V2.read_text())
    os.kill(p.pid, signal.SIGHUP)
    assert wait_for(lambda: json.loads((state / "zones.img.json").read_text())["files"] != before,
                    10.0), p.log_text()
    assert "could not save" not in p.log_text()
    assert _ctl(sock, "zones")["zones"] == {"reload.example.": 1002}
    p.stop(timeout=20)        # generous: the machine may be loaded
    assert p.proc.returncode == 0, p.log_text()
    assert "Traceback" not in p.log_text()


def _serve_fails(*args) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "pop53", "serve", "--example", "--workers", "1",
                        *args], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    # the start and zone-load lines come first; the failure is one line, the last
    lines = r.stderr.strip().splitlines()
    errors = [l for l in lines if "error" in l.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], r.stderr
    return lines[-1]


def test_a_port_in_use_names_the_address():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        line = _serve_fails("--listen", f"127.0.0.1:{port}")
    assert line == f"pop53: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_metrics_port_in_use_names_the_address():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        line = _serve_fails("--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}")
    assert f"cannot listen on 127.0.0.1:{port} (metrics): Address already in use" in line


@pytest.mark.parametrize("flag,what", [("--control", "the control socket"),
                                        ("--pidfile", "the pidfile"),
                                        ("--state", "the state directory")])
def test_an_unusable_path_names_the_path(tmp_path, flag, what):
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "sub" / "x"          # a path below a regular file can never be created
    line = _serve_fails("--listen", "127.0.0.1:0", flag, str(path))
    assert f"{what} {path}" in line and "Not a directory" in line, line
