"""Learned resolvers shared through the feed (issue 13): a server with `[feed] publish_key`
publishes what it learned as `resolvers` named after itself; another server trusting that key
in `resolver_keys` applies it beside its own table (the union, per name); such a key is refused
for anything but `resolvers`; a publish_key without learning is a config error."""
from __future__ import annotations

import ipaddress
import socket
import time

import dns.flags
import dns.message
import pytest

from feed_support import NatsServer, wait_for
from pop53 import config as cfgmod
from pop53.errors import ConfigError
from pop53.feed import message as fm
from pop53.feed.publisher import Publisher, target_payload
from pop53.serve.server import Server

ZONE = "$ORIGIN t.example.\n$TTL 60\n@ SOA ns1 h 1 60 60 60 60\n@ NS ns1\nns1 A 192.0.2.1\n"


def doc(tmp_path, nats_url, name, **feed):
    (tmp_path / "t.zone").write_text(ZONE)
    d = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "state": str(tmp_path / f"state-{name}")},
         "zone": [{"name": "t.example.", "file": str(tmp_path / "t.zone")}],
         "scoring": {"learn_window": 0.15, "learn_windows": 3, "learn_min": 2},
         "feed": {"servers": [nats_url], "trusted_keys": [str(tmp_path / "keys" / "ops.pub")],
                  "name": name, **feed},
         "map": [{"name": "world", "file": str(tmp_path / "world.map"), "default": "us"}],
         "target": [{"name": "us1", "addresses": ["192.0.2.10"]}],
         "mapped": [{"name": "www.t.example.", "map": "world", "regions": {"us": ["us1"]}}]}
    (tmp_path / "world.map").write_text("10.0.0.0/8 us\n")
    return d


def v4key(addr: str) -> int:
    return int(ipaddress.ip_address(addr)) >> 8


def query() -> bytes:
    q = dns.message.make_query("ns1.t.example.", "A")
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def test_a_servers_learned_resolvers_reach_another_server(tmp_path):
    nats = NatsServer(tmp_path).start()
    for k in ("ops", "a", "b"):
        fm.keygen(str(tmp_path / "keys"), k)
    keys = tmp_path / "keys"
    a = Server(cfgmod.from_dict(doc(tmp_path, nats.url, "a", publish_key=str(keys / "a.key"),
                                    resolver_keys=[str(keys / "b.pub")]), file="a.toml"))
    b = Server(cfgmod.from_dict(doc(tmp_path, nats.url, "b", publish_key=str(keys / "b.key"),
                                    resolver_keys=[str(keys / "a.pub")]), file="b.toml"))
    a.start()
    b.start()
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        resolver.bind(("127.6.0.1", 0))
        resolver.settimeout(1)
        deadline = time.monotonic() + 10        # a resolver that keeps coming back to A only
        while v4key("127.6.0.1") not in a.scoring.learned.v4 and time.monotonic() < deadline:
            resolver.sendto(query(), a.addresses[0])
            assert resolver.recvfrom(4096)
            time.sleep(0.02)
        assert v4key("127.6.0.1") in a.scoring.learned.v4
        # B never saw it, yet knows it: A published its table, signed with its own key
        assert wait_for(lambda: v4key("127.6.0.1") in b.scoring.known.v4, timeout=15)
        assert v4key("127.6.0.1") not in b.scoring.learned.v4
        assert b.feed.receiver.applied["resolvers"] >= 1 and a.feed.learned.sent >= 1
        assert b.scoring.scorer.holder.known(socket.inet_aton("127.6.0.77"))
        # the operator's table is a second name: applied beside A's, not instead of it
        ops = Publisher([nats.url], fm.read_private(str(keys / "ops.key")), sender="portal")
        ops.send_sync("resolvers", "fleet", b"203.0.113.0/24\n")
        assert wait_for(lambda: v4key("203.0.113.1") in b.scoring.known.v4, timeout=10)
        assert v4key("127.6.0.1") in b.scoring.known.v4
        # A's key is trusted for resolvers only: a liveness message signed by it is refused
        rogue = Publisher([nats.url], fm.read_private(str(keys / "a.key")), sender="a")
        before = b.feed.receiver.refused["key"]
        rogue.send_sync("target", "us1", target_payload(False))
        assert wait_for(lambda: b.feed.receiver.refused["key"] == before + 1, timeout=10)
        assert b.mapping.live["us1"]
    finally:
        resolver.close()
        a.stop()
        b.stop()
        nats.stop()


def test_publish_key_needs_learning(tmp_path):
    fm.keygen(str(tmp_path / "keys"), "ops")
    d = doc(tmp_path, "nats://127.0.0.1:9", "a", publish_key=str(tmp_path / "keys" / "ops.key"))
    del d["scoring"]["learn_window"]
    s = Server(cfgmod.from_dict(d, file="a.toml"))
    with pytest.raises(ConfigError, match="learn_window"):
        s.start()
    s.stop()
