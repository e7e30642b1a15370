"""The cloud plan's per-PoP limit enforced where announcements are made (issue 13, §4.3): a lab
PoP whose machines' BIRD configs would advertise a third cloud is refused before anything is
built; within the limit the router learns both clouds' prefixes and answers on both; the
agent refuses routes that break the plan."""
from __future__ import annotations

import os
import subprocess

import pytest

from pop53.anycast.agent_config import config_from_dict
from pop53.errors import ConfigError
from pop53.lab.pop import Lab, LabConfig
from pop53.lab.process import LabError

PLAN = """
max_per_pop = 2
set_size = 2
shared_size = 3
[[cloud]]
name = "a"
ns = "a.ns.test."
prefixes = ["10.53.0.0/24", "fd53::/64"]
[[cloud]]
name = "b"
ns = "b.ns.test."
prefixes = ["10.54.0.0/24"]
[[cloud]]
name = "c"
ns = "c.ns.test."
prefixes = ["10.55.0.0/24"]
[[pop]]
name = "lab"
"""


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {l.split()[0] for l in out.splitlines() if l.startswith("p53a-")}


def test_agent_refuses_routes_past_the_plan(tmp_path):
    (tmp_path / "clouds.toml").write_text(PLAN)
    base = {"name": "m1", "zones": ["lab.test."], "routes": {"addresses": ["10.53.0.53/32", "10.54.0.53/32"],
                                     "plan": "clouds.toml", "pop": "lab"}}
    cfg = config_from_dict(base, file=str(tmp_path / "agent.toml"))
    assert cfg.routes.addresses == ["10.53.0.53/32", "10.54.0.53/32"]
    base["routes"]["addresses"].append("10.55.0.53/32")
    with pytest.raises(ConfigError, match=r"routes.addresses.*advertises 3 clouds \(a, b, c\)"):
        config_from_dict(base, file=str(tmp_path / "agent.toml"))
    base["routes"]["addresses"] = ["10.53.0.53/32", "192.0.2.53/32"]
    with pytest.raises(ConfigError, match="belongs to no cloud"):
        config_from_dict(base, file=str(tmp_path / "agent.toml"))
    base["routes"]["pop"] = "elsewhere"
    with pytest.raises(ConfigError, match="pop elsewhere.*not in the cloud plan"):
        config_from_dict(base, file=str(tmp_path / "agent.toml"))


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_lab_pop_keeps_to_the_cloud_plan(tmp_path):
    plan = tmp_path / "clouds.toml"
    plan.write_text(PLAN)
    before = namespaces()
    with pytest.raises(LabError, match=r"pop lab: advertises 3 clouds \(a, b, c\); at most 2"):
        Lab(LabConfig(machines=1, clients=1, plan=str(plan),
                      services=("10.54.0.53/32", "10.55.0.53/32")), workdir=tmp_path)
    assert namespaces() == before                    # refused before anything was built
    cfg = LabConfig(machines=2, clients=1, plan=str(plan), services=("10.54.0.53/32",),
                    etcd=False, agents=True)
    with Lab(cfg, workdir=tmp_path) as lab:
        # both clouds reach the router's FIB over both machines (the agents announced them,
        # their configs checked against the plan), and a client gets an answer on each
        assert len(lab.wait_fib(lambda hops: len(hops) == 2, prefix="10.54.0.53/32")) == 2
        assert len(lab.wait_fib(lambda hops: len(hops) == 2)) == 2
        assert lab.identity_in(lab.clients[0], "10.54.0.53") in ("m1", "m2")
        assert lab.identity_in(lab.clients[0], "10.53.0.53") in ("m1", "m2")
    assert namespaces() == before
