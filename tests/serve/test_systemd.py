"""Issue 14 point 14: running under systemd.  `pop53 serve` speaks sd_notify (READY=1 once it
answers, RELOADING=1/READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM) to a real unix
datagram socket named by $NOTIFY_SOCKET, and dist/systemd/pop53.service verifies clean with
`systemd-analyze verify`."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import dns.message
import dns.rcode
import pytest

from integ_support import EXAMPLE_ZONE, REPO, ServeProcess, make_query, udp_exchange, udp_socket

UNIT = REPO / "dist" / "systemd" / "pop53.service"


def _recv(sock: socket.socket, timeout: float = 20.0) -> dict:
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n") if line)


def _start(tmp_path, notify_addr: str) -> ServeProcess:
    log = tmp_path / "serve.log"
    env = dict(os.environ, NOTIFY_SOCKET=notify_addr)
    with open(log, "wb") as err:
        p = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "--zone", str(EXAMPLE_ZONE),
                              "--listen", "127.0.0.1:0", "--workers", "1"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                             cwd=str(REPO), env=env)
    return ServeProcess(p, log)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_reloading_stopping_through_notify_socket(tmp_path, abstract):
    name = f"pop53-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        sock.bind("\0" + name)
        env_addr = "@" + name
    else:
        env_addr = str(tmp_path / "notify.sock")
        sock.bind(env_addr)
    sp = _start(tmp_path, env_addr)
    try:
        ready = _recv(sock)
        assert ready.get("READY") == "1", ready
        assert ready["MAINPID"] == str(sp.pid)
        assert "serving 1 zone(s)" in ready["STATUS"]
        # ready means answering: the first query after READY=1 gets its answer
        (addr,) = sp.wait_listening(1, timeout=2)
        with udp_socket(addr) as u:
            r = udp_exchange(u, make_query("www.example.com.", "A", qid=7))
        assert r is not None and dns.message.from_wire(r).rcode() == dns.rcode.NOERROR

        os.kill(sp.pid, signal.SIGHUP)
        reloading = _recv(sock, 10)
        assert reloading.get("RELOADING") == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        again = _recv(sock, 30)
        assert again.get("READY") == "1" and "reload rejected" not in again["STATUS"]

        os.kill(sp.pid, signal.SIGTERM)
        assert _recv(sock, 10) == {"STOPPING": "1"}
        assert sp.proc.wait(10) == 0
    finally:
        sp.stop()
        sock.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    from pop53.serve import sdnotify
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/dir/notify.sock")
    assert sdnotify.notify("READY=1") is False     # logged, never raised


def test_watchdog_pings_at_half_the_interval(tmp_path, monkeypatch):
    from pop53.serve import sdnotify
    path = str(tmp_path / "wd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        wd = sdnotify.Watchdog()
        assert wd.interval == pytest.approx(0.1)
        wd.tick()
        wd.tick()                       # within the interval: no second ping
        assert _recv(sock, 2) == {"WATCHDOG": "1"}
        sock.settimeout(0.05)
        with pytest.raises(socket.timeout):
            sock.recv(100)
        monkeypatch.setenv("WATCHDOG_PID", "1")   # meant for another process
        assert sdnotify.Watchdog().interval is None


def _verify(unit_text: str, tmp_path) -> subprocess.CompletedProcess:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze not installed (scripts/setup.sh installs systemd)")
    # ExecStart must name an executable that exists here: the interpreter running the tests
    unit = tmp_path / "pop53.service"
    unit.write_text(unit_text.replace("/usr/local/bin/pop53", f"{sys.executable} -m pop53"))
    return subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_unit_verifies_clean(tmp_path):
    text = UNIT.read_text()
    assert "Type=notify" in text and "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text
    r = _verify(text, tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout
    # the check can fail: a mistyped option is reported
    bad = _verify(text.replace("ProtectSystem=strict", "ProtectSystem=strickt"), tmp_path)
    assert "ProtectSystem" in bad.stderr or "protect system" in bad.stderr

