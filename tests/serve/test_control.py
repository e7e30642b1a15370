"""Issue 14 point 13: `pop53 ctl` prints for a human by default and the server's JSON with
--json (for scripts), against a real server's control socket."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pop53 import config as cfgmod
from pop53.serve.control import format_reply
from pop53.serve.server import Server

from integ_support import start_with_retry

REPO = Path(__file__).resolve().parents[2]
ZONE = REPO / "src" / "pop53" / "data" / "example.com.zone"


@pytest.fixture
def ctl_socket(tmp_path):
    bad = tmp_path / "bad.example.zone"
    bad.write_text("$ORIGIN bad.example.\n@ 300 SOA ns h 1 2 3 4 5\n@ 300 NS ns\nx A nonsense\n")
    sock = tmp_path / "ctl.sock"
    cfg = cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "workers": 1,
                                       "control": str(sock)},
                            "zone": [{"name": "example.com.", "file": str(ZONE)},
                                     {"name": "bad.example.", "file": str(bad)}]})
    s = start_with_retry(lambda: Server(cfg))
    yield sock, s
    s.stop()


def ctl(sock, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "pop53", "ctl", "-s", str(sock), *args],
                          capture_output=True, text=True, timeout=30, env=env)


def test_human_output_by_default_and_json_for_scripts(ctl_socket):
    sock, server = ctl_socket
    r = ctl(sock, "zones")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    serial = server.zone_serials["example.com."]
    assert any(l.split() == ["example.com.", "serial", str(serial), "ok"] for l in lines), r.stdout
    assert any(l.startswith("bad.example.") and "SERVFAIL" in l and "not loaded" in l
               and "bad.example.zone:4" in l for l in lines), r.stdout
    assert "{" not in r.stdout

    r = ctl(sock, "status")
    host, port = server.addresses[0]
    assert r.returncode == 0 and f"serving on {host}:{port} with 1 worker(s)" in r.stdout

    r = ctl(sock, "--json", "zones")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"ok": True, "zones": {"example.com.": serial},
                                    "failed": server.zone_failed, "waiting": []}

    r = ctl(sock, "reload")      # bad.example. still does not load: reported, exit 1
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "bad.example.zone:4" in r.stderr

    r = ctl(sock, "refresh", "example.com.")
    assert r.returncode == 1 and "no transferred zones" in r.stderr


@pytest.mark.parametrize("command,reply,expected", [
    ("reload", {"ok": True, "generation": 4, "error": None}, "reloaded, generation 4"),
    ("stats", {"ok": True, "stats": {"udp_queries": 10, "answers": 9}}, "answers      9\nudp_queries  10"),
    ("retransfer a.", {"ok": True, "zone": "a.", "queued": "retransfer"}, "retransfer of a. queued"),
    ("xfr", {"ok": True, "stale": False, "zones": {"a.": {"serial": 3, "last_error": None}}},
     "stale: False\nzones:\n  a.:\n    serial: 3\n    last_error: -"),
    ("zones", {"ok": False, "error": "boom"}, "error: boom"),
])
def test_format_reply(command, reply, expected):
    assert format_reply(command, reply) == expected
