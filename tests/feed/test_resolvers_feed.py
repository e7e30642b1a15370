"""The known-resolver table ([scoring] known_resolvers) shared through the feed: a signed
`resolvers` message is checked exactly like the file (a bad line names its line and is
dropped, the table in service stays), published to the workers with the file's prefixes, saved
and restored at the next start with NATS down; `pop53 publish resolvers` refuses a bad file."""
from __future__ import annotations

import subprocess
import sys


from feed_support import NatsServer, wait_for
from pop53 import config as cfgmod
from pop53.feed import message as fm
from pop53.feed.publisher import Publisher
from pop53.serve.server import Server

ZONE = "$ORIGIN t.example.\n$TTL 60\n@ SOA ns1 h 1 60 60 60 60\n@ NS ns1\nns1 A 192.0.2.1\n"


def server(tmp_path, nats_url):
    (tmp_path / "t.zone").write_text(ZONE)
    (tmp_path / "file.known").write_text("198.51.100.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "state": str(tmp_path / "state")},
           "zone": [{"name": "t.example.", "file": str(tmp_path / "t.zone")}],
           "scoring": {"known_resolvers": str(tmp_path / "file.known")},
           "feed": {"servers": [nats_url], "trusted_keys": [str(tmp_path / "keys" / "ops.pub")]}}
    s = Server(cfgmod.from_dict(doc, file="test"))
    s.start()
    return s


def v4(*nets: str) -> set[int]:
    import ipaddress
    return {int(ipaddress.ip_network(n).network_address) >> 8 for n in nets}


def test_known_resolvers_from_the_feed(tmp_path):
    nats = NatsServer(tmp_path).start()
    fm.keygen(str(tmp_path / "keys"), "ops")
    key = fm.read_private(str(tmp_path / "keys" / "ops.key"))
    pub = Publisher([nats.url], key, sender="portal")
    s = server(tmp_path, nats.url)
    try:
        assert s.scoring.known.v4 == v4("198.51.100.0/24")
        pub.send_sync("resolvers", "known", b"# the fleet's\n203.0.113.0/24\n2001:db8::/56\n")
        assert wait_for(lambda: v4("203.0.113.0/24") <= s.scoring.known.v4, timeout=10)
        assert s.scoring.known.v4 == v4("198.51.100.0/24", "203.0.113.0/24")   # with the file's
        assert len(s.scoring.known.v6) == 1
        pub.send_sync("resolvers", "known", b"203.0.114.0/24\n203.0.300.0/24\n")  # line 2 bad
        assert wait_for(lambda: s.feed.receiver.refused["content"] == 1, timeout=10)
        assert s.scoring.known.v4 == v4("198.51.100.0/24", "203.0.113.0/24")   # unchanged
    finally:
        s.stop()
        nats.stop()
    s = server(tmp_path, nats.url)                    # NATS down: the saved table is restored
    try:
        assert s.scoring.known.v4 == v4("198.51.100.0/24", "203.0.113.0/24")
    finally:
        s.stop()


def test_publish_resolvers_checks_the_file(tmp_path):
    fm.keygen(str(tmp_path / "keys"), "ops")
    (tmp_path / "bad.known").write_text("192.0.2.0/24\nnot-an-address\n")
    r = subprocess.run([sys.executable, "-m", "pop53", "publish", "--server", "nats://127.0.0.1:9",
                        "--key", str(tmp_path / "keys" / "ops.key"), "resolvers",
                        str(tmp_path / "bad.known")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "bad.known:2" in r.stderr and "Traceback" not in r.stderr
