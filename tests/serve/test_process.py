"""Issue 3, `pop53 serve` as an operator runs it: TOML configuration, privilege drop after
binding, CHAOS/NSID identity, clean exit on SIGTERM and SIGINT with every port released."""
from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import dns.message
import pytest

import pop53

from integ_support import (EXAMPLE_ZONE, HAVE_IPV6, IDENTITY, INTEG_ZONE, RELOAD_V1, RELOAD_V2,
                           free_port, make_query,
                           port_is_free, read_frame, frame, tcp_connect, tcp_exchange,
                           udp_exchange, udp_socket, wait_for)


def privileged_free_port() -> int | None:
    """A free port below 1024 (binding it needs root, which is the point of binding before the
    drop), picked at random and checked like any free port; None if none is found."""
    rng = random.Random()
    for _ in range(40):
        port = rng.randrange(600, 1024)
        if port_is_free(port) and (not HAVE_IPV6 or port_is_free(port, "::1")):
            return port
    return None


def proc_ids(pid: int) -> dict[str, list[str]]:
    """Uid/Gid/Groups/CapEff of every thread of pid (the drop must cover all of them)."""
    out: dict[str, list[str]] = {}
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        for line in (task / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapEff"):
                out.setdefault(key, []).append(value.strip())
    return out


def expected(image, wire, tcp=False):
    return pop53.answer(image, wire, ("127.0.0.1", 0), tcp=tcp,
                        responder=pop53.Responder(identity=IDENTITY))


@pytest.mark.root
def test_privilege_drop_after_binding(serve, tmp_path, world_readable_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root: the server must start as root to drop privileges")
    nobody = pwd.getpwnam("nobody")
    port = privileged_free_port() or free_port()
    mport = free_port()
    listen = [f'"127.0.0.1:{port}"'] + ([f'"[::1]:{port}"'] if HAVE_IPV6 else [])
    reload_zone = world_readable_dir / "reload.example.zone"
    reload_zone.write_text(RELOAD_V1.read_text())
    reload_zone.chmod(0o644)
    conf = tmp_path / "pop53.toml"
    conf.write_text(f"""
[server]
listen = [{", ".join(listen)}]
workers = 2
identity = "{IDENTITY}"
user = "nobody"
metrics = "127.0.0.1:{mport}"

[[zone]]
name = "integ.example."
file = "{INTEG_ZONE}"

[[zone]]
name = "example.com."
file = "{EXAMPLE_ZONE}"

[[zone]]
name = "reload.example."
file = "{reload_zone}"
""")
    p = serve("--config", str(conf), listen=len(listen))
    assert sorted(a[1] for a in p.addresses) == [port] * len(listen)

    ids = proc_ids(p.pid)
    uid, gid = str(nobody.pw_uid), str(nobody.pw_gid)
    assert len(ids["Uid"]) >= 2 + 1                        # the workers are there too
    for line in ids["Uid"]:
        assert line.split() == [uid] * 4, ids["Uid"]     # real, effective, saved, fs
    for line in ids["Gid"]:
        assert line.split() == [gid] * 4, ids["Gid"]
    assert all(g == "" for g in ids["Groups"]), ids["Groups"]   # supplementary groups dropped
    assert all(int(c, 16) == 0 for c in ids["CapEff"]), ids["CapEff"]

    # and it still answers on the port it bound as root, over UDP and TCP, v4 and v6
    image = pop53.compile_zones([INTEG_ZONE, EXAMPLE_ZONE, RELOAD_V1])
    q = make_query("www.integ.example.", "A", qid=31)
    for addr in p.addresses:
        with udp_socket(addr) as sock:
            assert udp_exchange(sock, q) == expected(image, q)
        assert tcp_exchange(addr, [q]) == [expected(image, q, tcp=True)]
    # identity: CHAOS id.server. and NSID (RFC 5001)
    with udp_socket(p.addresses[0]) as sock:
        r = dns.message.from_wire(udp_exchange(sock, make_query("id.server.", "TXT", rdclass="CH", qid=5)))
        assert r.answer[0][0].strings == (IDENTITY.encode(),)
        r = dns.message.from_wire(udp_exchange(sock, make_query("www.example.com.", "A", qid=6, nsid=True)))
        assert [o.to_wire() for o in r.options if o.otype == 3] == [IDENTITY.encode()]

    # a reload as nobody reads the (world-readable) zone files
    reload_zone.write_text(RELOAD_V2.read_text())
    os.kill(p.pid, signal.SIGHUP)
    assert wait_for(lambda: "reloaded" in p.log_text(), 5.0), p.log_text()
    image2 = pop53.compile_zones([INTEG_ZONE, EXAMPLE_ZONE, RELOAD_V2])
    q2 = make_query("pair.reload.example.", "A", qid=32)
    with udp_socket(p.addresses[0]) as sock:
        assert udp_exchange(sock, q2) == expected(image2, q2)
    # a zone file nobody cannot read: the reload is rejected, the process lives on, serving
    reload_zone.write_text(RELOAD_V1.read_text())
    reload_zone.chmod(0o600)
    os.kill(p.pid, signal.SIGHUP)
    assert wait_for(lambda: "Permission denied" in p.log_text(), 5.0), p.log_text()
    assert p.proc.poll() is None
    with udp_socket(p.addresses[0]) as sock:
        assert udp_exchange(sock, q2) == expected(image2, q2)


def test_unknown_user_is_a_clear_error(tmp_path):
    import subprocess
    import sys
    if os.geteuid() != 0:
        pytest.skip("the user is only looked up when running as root")
    r = subprocess.run([sys.executable, "-m", "pop53", "serve", "--example", "--listen",
                        f"127.0.0.1:{free_port()}", "--workers", "1",
                        "--user", "no-such-user-p53i"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "no-such-user-p53i" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_frees_ports(serve, sig):
    mport = free_port()
    args = ["--example", "--listen", "127.0.0.1:0", "--workers", "2", "--identity", IDENTITY,
            "--metrics", f"127.0.0.1:{mport}"]
    if HAVE_IPV6:
        args += ["--listen", "[::1]:0"]
    p = serve(*args, listen=2 if HAVE_IPV6 else 1)
    q = make_query("www.example.com.", "A", qid=99)
    for addr in p.addresses:
        with udp_socket(addr) as sock:
            assert udp_exchange(sock, q) is not None
    # an idle TCP connection and one with a query in flight must not hold the shutdown up
    idle = tcp_connect(p.addresses[0], timeout=5)
    busy = tcp_connect(p.addresses[0], timeout=5)
    try:
        busy.sendall(frame(q))
        assert read_frame(busy) is not None
        t0 = time.monotonic()
        os.kill(p.pid, sig)
        rc = p.proc.wait(10)
        elapsed = time.monotonic() - t0
        # the server closed the connections it held
        for s in (idle, busy):
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        idle.close()
        busy.close()
    assert rc == 0, p.log_text()
    # issue 3: "workers stop within a second"; 1.5 s leaves room for interpreter exit on a
    # loaded 2-core machine
    assert elapsed < 1.5, f"exit took {elapsed:.2f} s"
    assert "Traceback" not in p.log_text()
    for host, port in p.addresses:
        assert port_is_free(port, host), f"{host} port {port} still held after exit"
    assert port_is_free(mport), "metrics port still held after exit"
