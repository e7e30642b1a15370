"""pop53.agent: probes against a real DNS server, hysteresis, K-slot limit with a real etcd,
etcd down, never-suspend, drain, stale data, status and metrics.  Routes are real netlink changes
in a namespace the test creates."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pop53.lab.process import LAB_ZONE, child_env
from pop53.anycast.agent import Agent
from pop53.anycast.agent_config import config_from_dict, load_config
from pop53.errors import ConfigError
from pop53.anycast.routes import ServiceRoutes

pytestmark = [pytest.mark.root]
ADDRS = ["10.53.0.53/32", "fd53::53/128"]


def make(tmp_path, dns, netns, name="a1", **over):
    # One UDP SOA query per round keeps a hung-server round short (one timeout); the hysteresis
    # test turns on TCP and a regression case.
    raw = {"name": name, "server": f"127.0.0.1:{dns.port}", "zones": [LAB_ZONE],
           "tcp": False, "interval": 0.1, "timeout": 0.25, "slow_ms": 200, "fail_after": 3,
           "pass_after": 2,
           "state_dir": str(tmp_path / f"state-{name}"),
           "routes": {"addresses": ADDRS, "mode": "route", "interface": "lo",
                      "netns": netns.name}}
    raw.update(over)
    return Agent(config_from_dict(raw))


def announced(netns) -> bool:
    return ServiceRoutes(ADDRS, mode="route", interface="lo", netns=netns.name).announced()


def test_suspend_and_resume_with_hysteresis(tmp_path, dns_server, netns):
    a = make(tmp_path, dns_server, netns, tcp=True,
             cases=[{"qname": f"www.{LAB_ZONE}", "qtype": "A",
                     "expect": ["10.53.200.1"]}])
    a.tick()
    assert a.state == "serving" and announced(netns)
    assert a.last.queries == 4  # SOA + case, over UDP and TCP
    dns_server.pause()  # a hung server: no answers
    try:
        a.tick()
        assert a.state == "degraded" and announced(netns)
        assert any(f.kind == "missing" for f in a.last.failures)
        a.tick()
        assert a.state == "degraded" and announced(netns)
        a.tick()  # N = 3 consecutive failures
        assert a.state == "suspended" and not announced(netns)
        assert "no cluster limit" in a.reason
    finally:
        dns_server.resume()
    a.tick()
    assert a.state == "suspended" and not announced(netns)  # 1 pass < M = 2
    a.tick()
    assert a.state == "serving" and announced(netns)
    assert [h["to"] for h in a.history] == ["serving", "degraded", "suspended", "serving"]


def test_flapping_server_never_suspends(tmp_path, dns_server, netns):
    a = make(tmp_path, dns_server, netns)
    a.tick()
    for _ in range(4):  # fail, fail, pass, fail, fail, pass ... never 3 in a row
        dns_server.hung_rounds(2, a)
        a.tick()
        assert a.state == "serving" and announced(netns)


def test_wrong_and_stale_answers_count_as_failures(tmp_path, dns_server, netns):
    stamp = tmp_path / "stamp"
    stamp.touch()
    a = make(tmp_path, dns_server, netns, tcp=True,
             cases=[{"qname": f"www.{LAB_ZONE}", "qtype": "A", "expect": ["10.53.9.9"]},
                    {"qname": f"nope.{LAB_ZONE}", "rcode": "NXDOMAIN"}],
             staleness={"source": "file-mtime", "max_age": 60,
                        "files": {LAB_ZONE: str(stamp)}})
    a.tick()
    kinds = sorted({f.kind for f in a.last.failures})
    assert kinds == ["wrong"], a.last.failures
    assert "expected ['10.53.9.9']" in str(a.last.failures[0])
    assert len(a.last.failures) == 2  # the A case over UDP and TCP; the NXDOMAIN case passes
    old = time.time() - 3600
    os.utime(stamp, (old, old))
    a.tick()
    stale = [f for f in a.last.failures if f.kind == "stale"]
    assert len(stale) == 1 and "old" in stale[0].detail
    # Slow: no answer on loopback comes back within a microsecond.
    s = make(tmp_path, dns_server, netns, name="slow", slow_ms=0.001)
    s.tick()
    assert [f.kind for f in s.last.failures] == ["slow"]


def test_k_slot_limit_between_agents(tmp_path, dns_server, etcd, netns_factory):
    nss = [netns_factory() for _ in range(3)]
    ag = [make(tmp_path, dns_server, ns, name=f"m{i}",
               etcd={"endpoints": etcd.endpoints, "prefix": "/agents", "slots": 1,
                     "lease_ttl": 10}) for i, ns in enumerate(nss, 1)]
    for x in ag:
        x.tick()
    assert all(x.state == "serving" for x in ag)
    dns_server.hung_rounds(3, *ag)  # all three fail at once
    states = [x.state for x in ag]
    assert states == ["suspended", "wants-suspend", "wants-suspend"]
    assert [announced(ns) for ns in nss] == [False, True, True]
    assert "no free suspension slot" in ag[1].reason and ag[1].wants_suspend
    assert ag[0].status()["slot"] == 0
    # m1 recovers after M passes and gives its slot back.
    for _ in range(2):
        ag[0].tick()
    assert ag[0].state == "serving" and announced(nss[0])
    assert ag[0].slots.holders() == {}


def test_etcd_down_means_no_suspension(tmp_path, dns_server, netns, etcd):
    a = make(tmp_path, dns_server, netns,
             etcd={"endpoints": etcd.endpoints, "slots": 3, "lease_ttl": 3, "timeout": 0.5})
    a.tick()
    etcd.stop()
    dns_server.hung_rounds(4, a)
    assert a.state == "wants-suspend" and announced(netns)
    assert "etcd unreachable" in a.reason


def test_suspended_agent_reannounces_when_its_slot_is_lost(tmp_path, dns_server, netns, etcd):
    a = make(tmp_path, dns_server, netns,
             etcd={"endpoints": etcd.endpoints, "slots": 1, "lease_ttl": 2, "timeout": 0.5})
    a.tick()
    dns_server.pause()
    try:
        for _ in range(3):
            a.tick()
        assert a.state == "suspended" and not announced(netns)
        etcd.stop()  # cannot renew: must give up being withdrawn before the lease may expire
        t0 = time.monotonic()
        while a.state == "suspended" and time.monotonic() - t0 < 6:
            a.tick()
            time.sleep(0.1)
    finally:
        dns_server.resume()
    assert a.state == "wants-suspend" and announced(netns)
    assert time.monotonic() - t0 <= 3.0


def test_never_suspend(tmp_path, dns_server, netns):
    a = make(tmp_path, dns_server, netns, never_suspend=True)
    a.tick()
    dns_server.hung_rounds(4, a)
    assert a.state == "wants-suspend" and announced(netns)
    assert "never-suspend" in a.reason


def test_drain_switch_and_status_command(tmp_path, dns_server, netns):
    a = make(tmp_path, dns_server, netns)
    a.tick()
    env = child_env()
    state_dir = a.cfg.state_dir
    p = subprocess.run([sys.executable, "-m", "pop53", "agent", "drain", "--state-dir", state_dir,
                        "--reason", "disk swap"], capture_output=True, text=True, env=env,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    a.tick()
    assert a.state == "drained" and not announced(netns)
    assert "disk swap" in a.reason
    p = subprocess.run([sys.executable, "-m", "pop53", "agent", "status", "--state-dir",
                        state_dir], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "state:      drained" in p.stdout and "disk swap" in p.stdout
    assert "slot held:  none" in p.stdout
    subprocess.run([sys.executable, "-m", "pop53", "agent", "undrain", "--state-dir", state_dir],
                   check=True, capture_output=True, env=env, timeout=30)
    a.tick()
    assert a.state == "serving" and announced(netns)
    text = a.metrics.render()
    assert 'pop53_agent_state{state="serving"} 1.0' in text
    assert "pop53_agent_announced 1.0" in text


def test_agent_process_runs_and_reports(tmp_path, dns_server, netns, port_picker):
    """`pop53 agent run` as a process: it announces, and `status` shows it."""
    mport = port_picker(both=False)
    cfgfile = tmp_path / "agent.toml"
    cfgfile.write_text(f"""
name = "proc1"
server = "127.0.0.1:{dns_server.port}"
zones = ["{LAB_ZONE}"]
interval = 0.2
state_dir = "{tmp_path / 'st'}"
metrics = "127.0.0.1:{mport}"
[routes]
addresses = {ADDRS!r}
mode = "route"
interface = "lo"
netns = "{netns.name}"
""".replace("'", '"'))
    env = child_env()
    p = subprocess.Popen([sys.executable, "-m", "pop53", "agent", "run", "--config",
                          str(cfgfile)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not announced(netns) and time.monotonic() - t0 < 15:
            time.sleep(0.1)
        assert announced(netns)
        out = subprocess.run([sys.executable, "-m", "pop53", "agent", "status", "--config",
                              str(cfgfile)], capture_output=True, text=True, env=env, timeout=30)
        assert "state:      serving" in out.stdout, out.stdout + out.stderr
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'pop53_agent_state{state="serving"} 1.0' in text
        assert 'pop53_agent_probe_rounds_total{result="pass"}' in text
    finally:
        p.terminate()
        p.wait(10)
    assert p.returncode == 0


def test_config_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nzones = ["a."]\nfail_after = 0\n')
    with pytest.raises(ConfigError, match=r"bad.toml:fail_after: must be >= 1"):
        load_config(bad)
    bad.write_text('name = "x"\nzones = ["a."]\n[[cases]]\nqname = "a."\nqtype = "BOGUS"\n')
    with pytest.raises(ConfigError, match=r"cases\[0\].qtype"):
        load_config(bad)
    bad.write_text('name = "x"\nzones = ["a."]\n[etcd]\nendpoints = ["127.0.0.1:2379"]\n')
    with pytest.raises(ConfigError, match="etcd.endpoints"):
        load_config(bad)
    bad.write_text('name = "x"\nzones = ["a."]\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(bad)
    bad.write_text('name = "x"\nzones = [')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
