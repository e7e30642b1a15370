"""Issue 14 point 2: while a reload compiles a big zone, `pop53 ctl status` answers at once and
shows the reload's progress, the old data keeps answering, and SIGTERM stops the server (and
kills the compiler child) at once instead of after the compile."""
from __future__ import annotations

import os
import signal
import time

import dns.message
import dns.query

from integ_support import wait_for
from pop53.serve.control import send
from test_config_reload import ctl

RECORDS = 300_000     # a zone file over the in-process limits: compiled in a child process


def small(serial: int) -> str:
    return (f"$ORIGIN big.example.\n$TTL 300\n@ IN SOA ns1 hostmaster {serial} 3600 600 86400 300\n"
            "@ IN NS ns1\nns1 IN A 192.0.2.1\nwww IN A 192.0.2.2\n")


def write_big(path) -> None:
    with open(path, "w") as f:
        f.write(small(2))
        f.writelines(f"h{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n"
                     for i in range(RECORDS))


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_ctl_answers_during_a_long_compile_and_sigterm_stops_it(serve, tmp_path):
    zone, sock, conf = tmp_path / "big.zone", tmp_path / "ctl.sock", tmp_path / "pop53.toml"
    zone.write_text(small(1))
    state = tmp_path / "state"      # where the compiler child writes the new image
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{sock}"\n'
                    f'state = "{state}"\n[[zone]]\nname = "big.example."\nfile = "{zone}"\n')
    sp = serve("-c", str(conf))
    addr = sp.addresses[0]
    write_big(zone)
    os.kill(sp.pid, signal.SIGHUP)

    def compiling():
        p = send(str(sock), "status", 5).get("progress")
        return p if p and p["phase"] == "compiling in a child process" else None

    progress = wait_for(compiling, 30, 0.05)
    assert progress, sp.log_text()
    # the control socket answers during the compile, for a human too
    t0 = time.monotonic()
    r = ctl(sock, "status")
    assert r.returncode == 0, r.stderr
    assert "reloading for" in r.stdout and "compiling in a child process" in r.stdout, r.stdout
    assert "big.example.  serial 1" in r.stdout
    # the old version keeps answering meanwhile
    q = dns.message.make_query("www.big.example.", "A")
    reply = dns.query.udp(q, addr[0], port=addr[1], timeout=2)
    assert reply.answer and reply.answer[0][0].address == "192.0.2.2"
    kids = [c for c in children(sp.pid) if alive(c)]
    assert kids, "no compiler child while compiling"
    assert compiling(), f"the compile ended before SIGTERM ({time.monotonic() - t0:.1f} s)"
    t0 = time.monotonic()
    os.kill(sp.pid, signal.SIGTERM)
    sp.proc.wait(10)
    took = time.monotonic() - t0
    print(f"stopped {took:.2f} s after SIGTERM during the compile")
    assert sp.proc.returncode == 0, sp.log_text()
    assert wait_for(lambda: not any(alive(c) for c in kids), 5), "the compiler child outlived the server"
    assert wait_for(lambda: not [p for p in os.listdir(state) if p.startswith(".pop53-compile-")],
                    5), os.listdir(state)
    assert "stopped after" in sp.log_text()


def test_a_slow_reply_is_not_reported_as_an_unreachable_socket(tmp_path):
    """A server that accepted the command but has not answered yet is up: ctl says so."""
    import socket
    import subprocess
    import sys

    path = tmp_path / "slow.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    try:
        env = dict(os.environ)
        r = subprocess.run([sys.executable, "-m", "pop53", "ctl", "-s", str(path), "--timeout",
                            "1", "status"], capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == 1
        assert "no reply to 'status' within 1 s" in r.stderr and "the server is up" in r.stderr
        assert "cannot reach" not in r.stderr
        r = subprocess.run([sys.executable, "-m", "pop53", "ctl", "-s", str(tmp_path / "none"),
                            "status"], capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == 1 and "cannot reach the control socket" in r.stderr
    finally:
        srv.close()
