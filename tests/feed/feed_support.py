"""A real nats-server with JetStream on loopback, started and stopped by PID, and a sink that
checks target payloads the way the feed defines them."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pop53.errors import Pop53Error
from pop53.feed.publisher import parse_target_payload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(exe):
            pytest.fail("nats-server is not installed (scripts/setup.sh installs it)")
        conf = self.workdir / "nats.conf"
        conf.write_text(f"listen: 127.0.0.1:{self.port}\nmax_payload: 64MB\n"
                        f"jetstream {{ store_dir: \"{self.workdir / 'js'}\" }}\n")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "nats.log", "ab"))
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start: " + (self.workdir / "nats.log").read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class TargetSink:
    """Known targets with liveness; maps kept as text (lines "PREFIX REGION")."""

    def __init__(self, targets=("eu1", "us1")):
        self.targets = set(targets)
        self.state: dict[tuple[str, str], object] = {}
        self.applies = 0

    def validate(self, kind, name, payload, source):
        if kind == "target":
            if name not in self.targets:
                raise Pop53Error(f"{source}: unknown target {name!r}")
            return parse_target_payload(payload, source)
        text = payload.decode()
        for no, line in enumerate(text.splitlines(), 1):
            if len(line.split()) != 2:
                raise Pop53Error(f"{source}:{no}: expected PREFIX REGION")
        return text

    def apply(self, kind, name, prepared):
        self.state[(kind, name)] = prepared
        self.applies += 1


def server_toml(port: int, state: Path, nats_url: str, mapping: str, *, workers: int = 1,
                feed_extra: str = "") -> str:
    """A `pop53 serve` config: example.net. (relative zone file), the mapping tables given, and
    a [feed] on `nats_url` trusting keys/ops.pub."""
    return f"""[server]
listen = ["127.0.0.1:{port}"]
workers = {workers}
state = "{state}"
[[zone]]
name = "example.net."
file = "example.net.zone"
[feed]
servers = ["{nats_url}"]
trusted_keys = ["keys/ops.pub"]
{feed_extra}
{mapping}"""


def wait_for(pred, timeout=10.0, step=0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False
