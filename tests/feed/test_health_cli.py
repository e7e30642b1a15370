"""The publishing side: `pop53 feed keygen`, `pop53 publish`, and `pop53 health` probing real
TCP, HTTP and DNS endpoints on loopback, with hysteresis, publishing through a real nats-server
to a subscriber."""
from __future__ import annotations

import asyncio
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from feed_support import NatsServer, TargetSink, free_port, wait_for
from pop53.feed import message as fm
from pop53.feed.health import Hysteresis, load_config, run as run_health
from pop53.feed.receiver import FeedSettings, Receiver
from pop53.feed.transport import Subscriber
from pop53.errors import ConfigError


def pop53(*args, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "pop53", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def nats(tmp_path):
    n = NatsServer(tmp_path).start()
    yield n
    n.stop()


def test_hysteresis():
    h = Hysteresis(True, rise=2, fall=3)
    assert [h.feed(x) for x in (False, False, True, False, False, False)] == [False] * 5 + [True]
    assert not h.up
    assert [h.feed(x) for x in (True, False, True, True)] == [False, False, False, True] and h.up


def test_keygen_and_publish_reach_a_subscriber(nats, tmp_path):
    r = pop53("feed", "keygen", "--out", str(tmp_path / "keys"), "ops")
    assert r.returncode == 0, r.stderr
    assert oct((tmp_path / "keys" / "ops.key").stat().st_mode & 0o777) == "0o600"
    again = pop53("feed", "keygen", "--out", str(tmp_path / "keys"), "ops")
    assert again.returncode == 1 and "not overwriting a signing key" in again.stderr
    assert "Traceback" not in again.stderr
    ring = fm.KeyRing.from_files([str(tmp_path / "keys" / "ops.pub")])
    sink = TargetSink()
    sub = Subscriber([nats.url], Receiver(FeedSettings(), ring, sink)).start()
    try:
        r = pop53("publish", "--server", nats.url, "--key", str(tmp_path / "keys" / "ops.key"),
                  "--sender", "portal", "target", "eu1", "down")
        assert r.returncode == 0 and "published target eu1 down" in r.stdout, r.stderr
        assert wait_for(lambda: sink.state.get(("target", "eu1")) is False)
    finally:
        sub.stop()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_health_probes_tcp_http_and_dns_and_publishes_changes(nats, tmp_path):
    fm.keygen(str(tmp_path), "hc")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    closed = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    dport = free_port()
    dns_server = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "--example", "--listen",
                                   f"127.0.0.1:{dport}", "--workers", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conf = tmp_path / "health.toml"
    conf.write_text(f"""
[health]
servers = ["{nats.url}"]
key = "{tmp_path / 'hc.key'}"
interval = 0.2
rise = 1
fall = 2
sender = "pop1-health"
[[check]]
target = "tcpup"
kind = "tcp"
address = "127.0.0.1:{listener.getsockname()[1]}"
[[check]]
target = "tcpdown"
kind = "tcp"
address = "127.0.0.1:{closed}"
[[check]]
target = "web"
kind = "http"
url = "http://127.0.0.1:{httpd.server_address[1]}/health"
[[check]]
target = "webbad"
kind = "http"
url = "http://127.0.0.1:{httpd.server_address[1]}/other"
[[check]]
target = "dnsok"
kind = "dns"
address = "127.0.0.1:{dport}"
qname = "example.com."
initial = "down"
""")
    sink = TargetSink(targets=("tcpup", "tcpdown", "web", "webbad", "dnsok"))
    sub = Subscriber([nats.url], Receiver(FeedSettings(), fm.KeyRing.from_files(
        [str(tmp_path / "hc.pub")]), sink)).start()
    try:
        cfg = load_config(str(conf))
        wait_for(lambda: _answers(dport), timeout=15)
        states = asyncio.run(run_health(cfg, rounds=3))
        assert states == {"tcpup": True, "tcpdown": False, "web": True, "webbad": False,
                          "dnsok": True}
        assert wait_for(lambda: {k[1]: v for k, v in sink.state.items()} == states)
    finally:
        sub.stop()
        httpd.shutdown()
        listener.close()
        dns_server.terminate()
        dns_server.wait(10)


def _answers(port: int) -> bool:
    import dns.message
    import dns.query
    try:
        dns.query.udp(dns.message.make_query("example.com.", "SOA"), "127.0.0.1", port=port,
                      timeout=0.3)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_health_config_errors_name_the_key(tmp_path):
    conf = tmp_path / "h.toml"
    conf.write_text('[health]\nservers = ["nats://x"]\nkey = "k"\n[[check]]\ntarget = "a"\nkind = "icmp"\n')
    with pytest.raises(ConfigError, match=r"h.toml:check\[0\].kind: kind must be one of"):
        load_config(str(conf))
    conf.write_text('[health]\nservers = ["nats://x"]\nkey = "k"\nintervall = 1\n')
    with pytest.raises(ConfigError, match=r"h.toml:health.intervall: unknown key"):
        load_config(str(conf))
