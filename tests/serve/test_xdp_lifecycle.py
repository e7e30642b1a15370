"""Issue 16: no XDP program of ours is left attached: after a clean stop, after `kill -9`
(the BPF link dies with the process) and a restart, and a stale program attached the old way
(netlink, as a crashed older run or `ip link ... xdp obj` leaves it) is found and removed at
start.  Someone else's program is never replaced: XDP is refused, the sockets serve."""
from __future__ import annotations

import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import pytest

import pop53
from pop53.lab.veth import VethRig, netns_of_thread
from pop53.serve.server import Server
from pop53.serve.xdp_prog import OBJECT

from integ_support import INTEG_ZONE, make_query, server_config, udp_exchange
from xdp_support import PORT, client_socket, require_xdp, start_xdp_server, xdp_workers

pytestmark = pytest.mark.root


@pytest.fixture
def rig():
    require_xdp()
    with VethRig("l") as r:
        yield r


def _wait(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


class Serve:
    """`python -m pop53 serve` in the server namespace; stopped by PID."""

    def __init__(self, rig: VethRig, tmp: Path, n: int):
        conf = tmp / f"xdp{n}.toml"
        conf.write_text(f'[server]\nlisten = ["{rig.srv4}:{PORT}"]\nworkers = 1\n'
                        f'xdp = ["{rig.srv_if}"]\n\n[[zone]]\nname = "integ.example."\n'
                        f'file = "{INTEG_ZONE}"\n')
        self.log = tmp / f"xdp{n}.log"
        self.proc = subprocess.Popen(["ip", "netns", "exec", rig.srv, sys.executable, "-m", "pop53",
                                      "serve", "-c", str(conf)],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _answers(rig: VethRig) -> bool:
    wire = make_query("www.integ.example.", "A", qid=3)
    with client_socket(rig, rig.srv4) as sock:
        return udp_exchange(sock, wire) is not None


def test_detached_after_stop(rig):
    s = start_xdp_server(rig)
    try:
        assert rig.xdp_attached()
        assert _answers(rig)
        assert sum(w.stats()["replies"] for w in xdp_workers(s)) >= 1
    finally:
        s.stop()
    assert not rig.xdp_attached()


def test_detached_after_kill_and_restart(rig, tmp_path):
    procs = [Serve(rig, tmp_path, 1)]
    try:
        assert _wait(lambda: "XDP on" in procs[0].text() and rig.xdp_attached()), procs[0].text()
        assert _answers(rig)
        procs[0].stop(signal.SIGKILL)
        # the link's file descriptor died with the process: the kernel detached the program
        assert _wait(lambda: not rig.xdp_attached(), 5), "XDP program left attached after kill -9"
        procs.append(Serve(rig, tmp_path, 2))
        assert _wait(lambda: "XDP on" in procs[1].text() and rig.xdp_attached()), procs[1].text()
        assert _answers(rig)
        procs[1].stop()
        assert procs[1].proc.returncode == 0, procs[1].text()
        assert not rig.xdp_attached()
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)


def _attach_legacy(rig: VethRig) -> None:
    subprocess.run(["ip", "-n", rig.srv, "link", "set", "dev", rig.srv_if, "xdpdrv", "obj", OBJECT,
                    "sec", "xdp"], check=True, capture_output=True, timeout=20)
    assert rig.xdp_attached()


def test_stale_program_removed_at_start(rig, caplog):
    _attach_legacy(rig)         # survives its loader, like a crashed run's netlink attachment
    with caplog.at_level("WARNING", logger="pop53.xdp"):
        s = start_xdp_server(rig)
    try:
        assert "removed a stale pop53 XDP program" in caplog.text
        assert _answers(rig)
        assert sum(w.stats()["replies"] for w in xdp_workers(s)) >= 1
    finally:
        s.stop()
    assert not rig.xdp_attached()


def test_foreign_program_is_kept_and_sockets_serve(rig, tmp_path, caplog):
    prog = tmp_path / "other.c"
    prog.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
                    'SEC("xdp") int other_prog(struct xdp_md *c) { return XDP_PASS; }\n'
                    'char _l[] SEC("license") = "GPL";\n')
    obj = tmp_path / "other.o"
    subprocess.run(["clang", "-O2", "-target", "bpf", f"-I/usr/include/{sysconfig.get_config_var('MULTIARCH')}", "-c",
                    str(prog), "-o", str(obj)], check=True, timeout=60)
    subprocess.run(["ip", "-n", rig.srv, "link", "set", "dev", rig.srv_if, "xdpdrv", "obj", str(obj),
                    "sec", "xdp"], check=True, capture_output=True, timeout=20)
    with caplog.at_level("WARNING", logger="pop53.xdp"), netns_of_thread(rig.srv):
        s = Server(server_config([INTEG_ZONE], listen=[f"{rig.srv4}:{PORT}"], workers=1,
                                 xdp=[rig.srv_if]))
        s.start()
    try:
        assert s.xdp is None
        assert "already has XDP program other_prog" in caplog.text
        wire = make_query("www.integ.example.", "A", qid=4)
        with client_socket(rig, rig.srv4) as sock:
            got = udp_exchange(sock, wire)
            assert got == pop53.answer(s.current_image, wire, sock.getsockname()[:2],
                                       responder=s.responder)
    finally:
        s.stop()
    assert rig.xdp_attached()       # still theirs


def test_one_worker_per_queue_and_restart_on_reload():
    """Two queues: two XDP workers, each answering the flows the veth puts on its queue; a
    config-reload restart (Server.restart_workers) keeps XDP serving; NOTIFY goes to the
    control plane and its reply comes back."""
    require_xdp()
    with VethRig("m", queues=2) as rig:
        s = start_xdp_server(rig)
        try:
            ws = xdp_workers(s)
            assert sorted(w.queue for w in ws) == [0, 1]
            wire = make_query("www.integ.example.", "A", qid=11)
            for _ in range(64):               # flows spread over the peer's two TX queues
                with client_socket(rig, rig.srv4) as sock:
                    assert udp_exchange(sock, wire) == pop53.answer(
                        s.current_image, wire, sock.getsockname()[:2], responder=s.responder)
                if all(w.stats()["replies"] for w in ws):
                    break
            assert all(w.stats()["replies"] for w in ws), [w.stats()["replies"] for w in ws]
            s.restart_workers(s.responder, s.limiter)
            assert _wait(lambda: all(w.running for w in ws), 5)
            before = sum(w.stats()["replies"] for w in ws)
            assert _answers(rig)
            assert sum(w.stats()["replies"] for w in ws) > before
            notify = dns.message.make_query("integ.example.", "SOA")
            notify.set_opcode(dns.opcode.NOTIFY)
            notify.flags |= dns.flags.AA
            control = sum(w.stats()["control"] for w in ws)
            with client_socket(rig, rig.srv4) as sock:
                reply = udp_exchange(sock, notify.to_wire())
            assert reply is not None and dns.message.from_wire(reply).opcode() == dns.opcode.NOTIFY
            assert sum(w.stats()["control"] for w in ws) == control + 1
        finally:
            s.stop()
        assert not rig.xdp_attached()
