"""Shared fixtures for the anycast tests: namespaces, a real etcd, a real DNS server.

Everything a fixture starts is stopped by PID and every namespace it creates is deleted, also
when the test fails.  Namespaces use the prefix "p53a-" plus a random tag, ports are free ports
picked at run time, so parallel runs by other people never collide.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

MINE = {"test_routes.py", "test_bird.py", "test_coord.py", "test_agent.py", "test_agent_log.py"}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        if path.parent == here and path.name in MINE and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces)"))


def free_port(kind: int = socket.SOCK_STREAM, both: bool = True) -> int:
    """A port free for TCP and UDP on 127.0.0.1 (bind 0, read, close)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if both:
            try:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(("127.0.0.1", port))
                u.close()
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def _stop(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class Netns:
    def __init__(self):
        self.name = f"p53a-{secrets.token_hex(3)}-t"
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=10)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, timeout=10)

    def ip(self, *args: str) -> str:
        p = subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True,
                           timeout=10)
        if p.returncode != 0 and "table does not exist" not in p.stderr:
            raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)


@pytest.fixture
def netns():
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def netns_factory():
    """Make more namespaces in one test; all are deleted at the end."""
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.delete()


@pytest.fixture
def port_picker():
    """free_port as a fixture (test modules must not import conftest by name)."""
    return free_port


class Etcd:
    """A single-member etcd on loopback with its own data dir and free ports."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.data = tmp / "etcd-data"
        self.client_port = free_port(both=False)
        self.peer_port = free_port(both=False)
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "etcd.log"

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client_port}"]

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it is healthy.  The free ports are picked before etcd binds
        them, so another process may take one meanwhile (a CI run lost its client port to an
        outgoing connection): then it starts again on new ports, in a new data directory."""
        for attempt in range(5):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 4:
                    raise
            self.client_port = free_port(both=False)
            self.peer_port = free_port(both=False)
            self.data = self.tmp / f"etcd-data-{attempt + 1}"

    def _start(self, timeout: float) -> None:
        c, p = self.client_port, self.peer_port
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [shutil.which("etcd") or "/usr/bin/etcd", "--name", "t",
                 "--data-dir", str(self.data),
                 "--listen-client-urls", f"http://127.0.0.1:{c}",
                 "--advertise-client-urls", f"http://127.0.0.1:{c}",
                 "--listen-peer-urls", f"http://127.0.0.1:{p}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                 "--initial-cluster", f"t=http://127.0.0.1:{p}", "--log-level", "warn"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        from pop53.anycast.coord import EtcdClient

        client = EtcdClient(self.endpoints, timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-2000:]
                self.log.write_text("")          # a retry's log of its own
                raise RuntimeError(f"etcd exited: {tail}")
            if client.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@pytest.fixture
def etcd(tmp_path):
    e = Etcd(tmp_path)
    e.start()
    try:
        yield e
    finally:
        e.stop()


class DnsServer:
    """The lab's DNS server (pop53 serve, or Knot as the stand-in) on 127.0.0.1:<free port>."""

    def __init__(self, tmp: Path, identity: str = "t1"):
        from pop53.lab.process import server_kind, write_lab_zone

        self.tmp = tmp / f"dns-{identity}"
        self.tmp.mkdir()
        self.zone = self.tmp / "pop53.lab.zone"
        write_lab_zone(self.zone)
        self.port = free_port()
        self.identity = identity
        self.kind = server_kind()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        from pop53.lab.probe import query_identity
        from pop53.lab.process import child_env, dns_server_command

        cmd = dns_server_command(self.kind, zone=self.zone, listens=["127.0.0.1"],
                                 identity=self.identity, workdir=self.tmp, port=self.port)
        with open(self.tmp / "server.log", "ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=child_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: "
                                   f"{(self.tmp / 'server.log').read_text()[-2000:]}")
            if query_identity("127.0.0.1", self.port, timeout=0.3) == self.identity:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer")

    def pause(self) -> None:
        """SIGSTOP, and wait until every thread is really stopped (delivery is asynchronous)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = []
            for t in Path(f"/proc/{self.proc.pid}/task").iterdir():
                try:
                    states.append(t.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
                except OSError:
                    continue
            if states and all(s in ("T", "t") for s in states):
                return
            time.sleep(0.01)
        raise RuntimeError("server did not stop")

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def hung_rounds(self, rounds: int, *agents) -> None:
        """`rounds` probe rounds of every agent (in turn) against this server hung; it answers
        again afterwards, also when a round raises."""
        self.pause()
        try:
            for _ in range(rounds):
                for a in agents:
                    a.tick()
        finally:
            self.resume()

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@pytest.fixture
def dns_server(tmp_path):
    s = DnsServer(tmp_path)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def leftover_namespaces(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.startswith(f"p53a-{tag}")]
