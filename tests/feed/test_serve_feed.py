"""The feed inside a real `pop53 serve` (real nats-server on loopback): a liveness flip and a
map change published with `pop53 publish` are answered; a signed but malformed map is dropped
and the old map keeps answering; a restart with NATS down serves the last good map from the
state directory."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import pytest

from feed_support import NatsServer, free_port, server_toml, wait_for
from pop53.feed import message as fm
from pop53.feed.publisher import Publisher

DATA = Path(__file__).resolve().parents[2] / "src" / "pop53" / "data"


def pop53(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pop53", *args], capture_output=True, text=True,
                          timeout=timeout)


def answer(port: int, subnet: str) -> list[str]:
    q = dns.message.make_query("e1.example.net.", "A",
                               options=[dns.edns.ECSOption(subnet, 24)])
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=1)
    except Exception:  # noqa: BLE001  (not up yet)
        return []
    return sorted(rd.address for rrset in r.answer for rd in rrset if rrset.rdtype == 1)


@pytest.fixture
def setup(tmp_path):
    nats = NatsServer(tmp_path).start()
    fm.keygen(str(tmp_path / "keys"), "ops")
    for f in ("example.net.zone", "example.map"):
        shutil.copy(DATA / f, tmp_path / f)
    port = free_port()
    mapping = (DATA / "example-mapping.toml").read_text()
    (tmp_path / "pop53.toml").write_text(server_toml(port, tmp_path / "state", nats.url, mapping,
                                                     feed_extra="stale_after = 5"))
    procs = []

    def serve():
        p = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "-c", str(tmp_path / "pop53.toml")],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "ab"))
        procs.append(p)
        assert wait_for(lambda: answer(port, "1.2.4.0"), timeout=30), (tmp_path / "serve.log").read_text()
        return p

    def publish(*args):
        r = pop53("publish", "--server", nats.url, "--key", str(tmp_path / "keys" / "ops.key"),
                  "--sender", "portal", *args)
        assert r.returncode == 0, r.stderr
        return r

    yield tmp_path, nats, port, serve, publish
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    nats.stop()


def test_publish_liveness_and_maps_to_a_running_server(setup):
    tmp_path, nats, port, serve, publish = setup
    p = serve()
    eu = ["192.0.2.10", "192.0.2.11"]
    assert answer(port, "1.2.4.0") == eu                    # 1.2.0.0/16 eu
    t0 = time.time()
    publish("target", "eu1", "down")
    assert wait_for(lambda: answer(port, "1.2.4.0") == ["192.0.2.11"], timeout=5)
    print(f"liveness: published -> answered in {time.time() - t0:.3f} s")
    flipped = (tmp_path / "example.map").read_text() + "1.2.4.0/24 ap\n"
    (tmp_path / "flip.map").write_text(flipped)
    t0 = time.time()
    publish("map", "world", str(tmp_path / "flip.map"))
    assert wait_for(lambda: answer(port, "1.2.4.0") == ["203.0.113.10"], timeout=5)
    print(f"map: published -> answered in {time.time() - t0:.3f} s")
    assert answer(port, "1.2.5.0") == ["192.0.2.11"]         # the rest of the /16 unchanged
    # a signed map with a bad line: refused at the publisher, and by the server when forced
    (tmp_path / "bad.map").write_text("1.2.4.0/24 ap\n1.2.300.0/24 eu\n")
    r = pop53("publish", "--server", nats.url, "--key", str(tmp_path / "keys" / "ops.key"),
              "map", "world", str(tmp_path / "bad.map"))
    assert r.returncode == 1 and "bad.map:2" in r.stderr and "Traceback" not in r.stderr
    # ...so sign and send it with the library, as a broken publisher would
    key = fm.read_private(str(tmp_path / "keys" / "ops.key"))
    pub = Publisher([nats.url], key, sender="broken-portal")
    pub.send_sync("map", "world", (tmp_path / "bad.map").read_bytes())
    assert wait_for(lambda: "dropped message" in (tmp_path / "serve.log").read_text(), timeout=5)
    assert ":2: " in (tmp_path / "serve.log").read_text()
    assert answer(port, "1.2.4.0") == ["203.0.113.10"]      # the last good map still answers
    # restart with NATS down: the last good map and liveness come from the state directory
    p.send_signal(signal.SIGTERM)
    p.wait(10)
    nats.stop()
    serve()
    assert answer(port, "1.2.4.0") == ["203.0.113.10"]
    assert answer(port, "1.2.5.0") == ["192.0.2.11"]
