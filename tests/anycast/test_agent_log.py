"""The agent logs every decision (issue 14 point 10): failed probe rounds, suspend and resume,
slots taken, refused and given back, route changes and route errors; each line in the text
shape and, as JSON, with the decision's fields.  A real DNS server, a real etcd and real
netlink changes in namespaces the test creates (as test_agent.py)."""
from __future__ import annotations

import json
import logging

import pytest

from pop53.anycast.agent import Agent
from pop53.anycast.agent_config import config_from_dict
from pop53.lab.process import LAB_ZONE
from pop53.logs import JsonFormatter

pytestmark = [pytest.mark.root]
ADDRS = ["10.53.0.53/32", "fd53::53/128"]


def make(tmp_path, dns, netns, name, **over):
    raw = {"name": name, "server": f"127.0.0.1:{dns.port}", "zones": [LAB_ZONE], "tcp": False,
           "interval": 0.1, "timeout": 0.25, "fail_after": 2, "pass_after": 2,
           "state_dir": str(tmp_path / f"state-{name}"),
           "routes": {"addresses": ADDRS, "mode": "route", "interface": "lo",
                      "netns": netns.name}}
    raw.update(over)
    return Agent(config_from_dict(raw))


def decisions(caplog, name):
    out = []
    for r in caplog.records:
        f = getattr(r, "fields", None) or {}
        if r.name == "pop53.agent" and f.get("agent") == name:
            assert r.getMessage().startswith(f"agent {name}: ")
            out.append((f["decision"], r.levelname, r))
    return out


def test_every_decision_is_one_line(tmp_path, dns_server, etcd, netns_factory, caplog):
    caplog.set_level(logging.INFO, logger="pop53.agent")
    ns1, ns2 = netns_factory(), netns_factory()
    slots = {"endpoints": etcd.endpoints, "prefix": "/logs", "slots": 1, "lease_ttl": 10}
    a, b = (make(tmp_path, dns_server, ns, n, etcd=slots) for ns, n in ((ns1, "m1"), (ns2, "m2")))
    for x in (a, b):
        x.tick()
    dns_server.hung_rounds(2, a, b)
    assert (a.state, b.state) == ("suspended", "wants-suspend")
    for _ in range(2):
        a.tick()
        b.tick()
    assert (a.state, b.state) == ("serving", "serving")

    got = [(d, lvl) for d, lvl, _r in decisions(caplog, "m1")]
    assert got == [
        ("announce", "INFO"), ("serving", "INFO"),                     # first round passes
        ("probe-failed", "WARNING"), ("degraded", "WARNING"),          # 1/2
        ("probe-failed", "WARNING"), ("slot-taken", "WARNING"),        # 2/2: suspend
        ("withdraw", "INFO"), ("suspend", "WARNING"),
        ("announce", "INFO"), ("slot-released", "INFO"), ("resume", "INFO"),  # M=2 passes
    ]
    got = [(d, lvl) for d, lvl, _r in decisions(caplog, "m2")]
    assert got == [
        ("announce", "INFO"), ("serving", "INFO"),
        ("probe-failed", "WARNING"), ("degraded", "WARNING"),
        ("probe-failed", "WARNING"), ("slot-refused", "WARNING"), ("wants-suspend", "WARNING"),
        ("serving", "INFO"),
    ]
    by = {d: r for d, _l, r in decisions(caplog, "m1")}
    assert "missing" in by["probe-failed"].getMessage() and "(2 in a row, fail_after 2)" in by["probe-failed"].getMessage()
    assert by["slot-taken"].getMessage() == "agent m1: suspension slot 0 taken (K=1)"
    assert "degraded -> suspended: self-suspended holding slot 0" in by["suspend"].getMessage()
    assert all(a_ in by["withdraw"].getMessage() for a_ in ADDRS)
    refused = {d: r for d, _l, r in decisions(caplog, "m2")}["slot-refused"]
    assert "no free suspension slot" in refused.getMessage()

    # JSON: the same facts as fields, no parsing of the text needed
    j = json.loads(JsonFormatter().format(by["suspend"]))
    assert (j["event"], j["agent"], j["decision"], j["old"], j["new"]) == \
        ("agent", "m1", "suspend", "degraded", "suspended")
    j = json.loads(JsonFormatter().format(by["slot-taken"]))
    assert (j["slot"], j["k"], j["level"]) == (0, 1, "warning")


def test_route_error_and_etcd_down_are_logged(tmp_path, dns_server, etcd, netns_factory, caplog):
    caplog.set_level(logging.INFO, logger="pop53.agent")
    ns = netns_factory()
    a = make(tmp_path, dns_server, ns, "m3",
             etcd={"endpoints": etcd.endpoints, "slots": 1, "lease_ttl": 3, "timeout": 0.5})
    a.tick()
    etcd.stop()
    dns_server.pause()
    try:
        a.tick()
        a.tick()
        assert a.state == "wants-suspend"
        ns.delete()         # the namespace is gone: the next route change fails
        a.cfg.never_suspend = True
        a.tick()
    finally:
        dns_server.resume()
    got = {d: r for d, _l, r in decisions(caplog, "m3")}
    assert "etcd unreachable" in got["slot-refused"].getMessage()
    assert got["route-error"].levelname == "ERROR"
    assert "announce failed" in got["route-error"].getMessage()
