"""The agent with several staleness sources (the transfer engine's xfr-status.json and the
feed's feed-status.json, written by the real engine code): stale if any source is stale.  A
stale feed with fresh zones suspends a normal machine (holding an etcd slot); the input-delayed
machine, whose feed is just as silent, keeps announcing."""
from __future__ import annotations

import time

import pytest

from pop53.anycast import staleness
from pop53.anycast.agent import Agent
from pop53.anycast.agent_config import config_from_dict
from pop53.anycast.routes import ServiceRoutes
from pop53.errors import ConfigError
from pop53.feed import message as fm
from pop53.feed.receiver import FeedSettings, Receiver
from pop53.feed.transport import STATUS_FILE, Subscriber
from pop53.lab.process import LAB_ZONE

pytestmark = [pytest.mark.root]
ADDRS = ["10.53.0.53/32", "fd53::53/128"]


def machine_state(tmp_path, name, delay: float):
    """<state>/xfr-status.json with every zone fresh, and <state>/feed-status.json from a feed
    receiver that has had no heartbeat for a minute (stale, unless input-delayed)."""
    state = tmp_path / f"pop53-{name}"
    state.mkdir()
    now = time.time()
    staleness.write_state(state / staleness.STATE_FILE, staleness.machine_status(
        {LAB_ZONE: {"serial": 7, "last_ok": now}}, role="normal", stale_after=30, delay=0))
    rec = Receiver(FeedSettings(state=str(state), stale_after=5, delay=delay),
                   fm.KeyRing({}), sink=None)
    rec.heartbeat = now - 60
    Subscriber([], rec).write_status(now)
    return state


def agent(tmp_path, dns, netns, etcd, name, state):
    raw = {"name": name, "server": f"127.0.0.1:{dns.port}", "zones": [LAB_ZONE], "tcp": False,
           "interval": 0.1, "timeout": 0.25, "fail_after": 2, "pass_after": 2,
           "state_dir": str(tmp_path / f"agent-{name}"),
           "routes": {"addresses": ADDRS, "mode": "route", "interface": "lo",
                      "netns": netns.name},
           "etcd": {"endpoints": etcd.endpoints, "prefix": "/src", "slots": 1, "lease_ttl": 10},
           "staleness": {"max_age": 10, "sources": [
               {"source": "xfr-status", "path": str(state / staleness.STATE_FILE)},
               {"source": "xfr-status", "path": str(state / STATUS_FILE)}]}}
    return Agent(config_from_dict(raw))


def test_stale_feed_with_fresh_zones_suspends_and_the_delayed_machine_does_not(
        tmp_path, dns_server, etcd, netns_factory):
    n1, n2 = netns_factory(), netns_factory()
    normal = agent(tmp_path, dns_server, n1, etcd, "m1", machine_state(tmp_path, "m1", 0))
    delayed = agent(tmp_path, dns_server, n2, etcd, "m2", machine_state(tmp_path, "m2", 600))
    for _ in range(3):
        normal.tick()
        delayed.tick()
    stale = [f for f in normal.last.failures if f.kind == "stale"]
    assert [f.what for f in stale] == [f"feed ({tmp_path}/pop53-m1/{STATUS_FILE})"], stale
    assert normal.state == "suspended" and normal.slots.held is not None
    assert not ServiceRoutes(ADDRS, mode="route", interface="lo", netns=n1.name).announced()
    assert delayed.last.ok and delayed.state == "serving"
    assert ServiceRoutes(ADDRS, mode="route", interface="lo", netns=n2.name).announced()
    # the feed speaks again: fresh everywhere, the normal machine comes back and frees its slot
    rec = Receiver(FeedSettings(state=str(tmp_path / "pop53-m1"), stale_after=5), fm.KeyRing({}),
                   sink=None)
    rec.heartbeat = time.time()
    Subscriber([], rec).write_status()
    normal.tick()
    normal.tick()
    assert normal.state == "serving" and normal.slots.held is None


def test_a_stale_zone_alone_is_stale_too(tmp_path):
    state = machine_state(tmp_path, "m3", 600)        # the feed exempt (delayed)...
    staleness.write_state(state / staleness.STATE_FILE, staleness.machine_status(
        {LAB_ZONE: {"serial": 7, "last_ok": time.time() - 100}}, role="normal",
        stale_after=30, delay=0))                    # ...but a zone is 100 s old
    from pop53.anycast.probe import Prober
    cfg = config_from_dict({"name": "m3", "zones": [LAB_ZONE], "tcp": False, "timeout": 0.1,
                            "server": "127.0.0.1:9",
                            "state_dir": str(tmp_path / "a3"),
                            "staleness": {"max_age": 10, "sources": [
                                {"source": "xfr-status", "path": str(state / staleness.STATE_FILE)},
                                {"source": "xfr-status", "path": str(state / STATUS_FILE)}]}})
    res = Prober(cfg).run()          # (nothing listens on port 9: one "missing" as well)
    assert [f.what.split()[0] for f in res.failures if f.kind == "stale"] == [LAB_ZONE]


@pytest.mark.parametrize("sources,key", [
    ([{"source": "nope"}], "staleness.sources[0].source"),
    ([{"source": "xfr-status", "extra": 1}], "staleness.sources[0].extra"),
    (["x"], "staleness.sources[0]"),
])
def test_source_list_errors_name_the_key(sources, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"name": "x", "zones": ["a."], "staleness": {"max_age": 5, "sources": sources}},
                         file="agent.toml")
    assert key in str(e.value)


def test_a_listed_source_needs_a_max_age():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"name": "x", "zones": ["a."], "staleness": {"sources": [{"source": "xfr-status"}]}},
                         file="agent.toml")
    assert "staleness.sources[0].max_age" in str(e.value)
