"""Issue 14 point 13: `pop53 ctl` takes a lean path (serve/ctlclient.py) that imports neither
argparse nor the server's modules, talks to a real control socket, and hands help and bad
arguments to the full command line."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from pop53.serve import ctlclient


def _imports(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-X", "importtime", *args],
                       capture_output=True, text=True, env=dict(os.environ), timeout=60)
    return {line.split("|")[-1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:")}


def test_ctl_imports_only_the_client(tmp_path):
    # what ctl adds to the interpreter's own start (site-packages' .pth files import some)
    mods = _imports("-m", "pop53", "ctl", "-s", str(tmp_path / "none.sock"), "status") \
        - _imports("-c", "pass")
    assert "pop53.serve.ctlclient" in mods
    for heavy in ("argparse", "pop53.serve.control", "logging", "threading", "numpy",
                  "pop53.cli", "dns.name"):
        assert heavy not in mods, heavy


@pytest.fixture
def control(tmp_path):
    """A real Unix socket answering one JSON line per connection, recording the commands."""
    path = str(tmp_path / "c.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    seen = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                cmd = conn.makefile("rb").readline().decode().strip()
                seen.append(cmd)
                reply = {"ok": True, "zones": {"a.test.": 7}, "failed": {}, "waiting": []}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, seen
    srv.close()


def test_lean_client_against_a_socket(control, capsys):
    path, seen = control
    assert ctlclient.main(["-s", path, "zones"]) == 0
    assert capsys.readouterr().out.split() == ["a.test.", "serial", "7", "ok"]
    assert ctlclient.main([f"--socket={path}", "--timeout", "5", "zone-status", "a.test.",
                           "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["zones"] == {"a.test.": 7}
    assert seen == ["zones", "zone-status a.test."]


def test_unreachable_socket_is_one_line(tmp_path, capsys):
    assert ctlclient.main(["-s", str(tmp_path / "none.sock"), "status"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pop53: error: cannot reach the control socket")


def test_help_and_bad_arguments_go_to_the_full_parser(capsys):
    with pytest.raises(SystemExit) as e:
        ctlclient.main(["--bogus", "status"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        ctlclient.main(["nonsense"])
    assert e.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        ctlclient.main(["-h"])
    assert e.value.code == 0 and "zone-reload" in capsys.readouterr().out


LAUNCHER = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "pop53-ctl")


def test_launcher_runs_the_client_under_dash_s(control, tmp_path):
    """scripts/pop53-ctl as installed: beside the `pop53` console script, whose interpreter it
    runs with -S (no site-packages .pth files); the full CLI (help) still works under -S."""
    path, seen = control
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    # an interpreter that records its options, named like one (the launcher checks the name)
    rec = bin_ / "python-rec"
    rec.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\nexec {sys.executable} "$@"\n')
    rec.chmod(0o755)
    (bin_ / "pop53").write_text(f"#!{rec}\nraise SystemExit('not this one')\n")
    ctl = bin_ / "pop53-ctl"
    ctl.write_bytes(open(LAUNCHER, "rb").read())
    ctl.chmod(0o755)
    src = os.path.dirname(os.path.dirname(os.path.dirname(ctlclient.__file__)))
    env = dict(os.environ, PYTHONPATH=src)
    r = subprocess.run([str(ctl), "-s", path, "zones"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["a.test.", "serial", "7", "ok"] and seen == ["zones"]
    assert (tmp_path / "args").read_text().split()[:2] == ["-S", str(ctl)]
    r = subprocess.run([str(ctl), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "zone-reload" in r.stdout, r.stderr
