"""pop53.anycast.bird: generated configs are accepted by BIRD itself; state is read through birdc; the
per-role MED makes input-delayed machines a fallback only (paper §4.2.3)."""
from __future__ import annotations

import itertools

import pytest

from pop53.anycast import bird
from pop53.lab.pop import Lab, LabConfig
from pop53.lab.process import SERVICE4, SERVICE6
from pop53.errors import ConfigError
from pop53.anycast.routes import ServiceRoutes

pytestmark = [pytest.mark.root]


def node(**kw) -> bird.NodeConfig:
    base = dict(router_id="10.53.1.2", local_as=65053,
                neighbors=[bird.Neighbor("10.53.1.2", "10.53.1.1", 65000, "up_v4"),
                           bird.Neighbor("fd53:0:1::2", "fd53:0:1::1", 65000, "up_v6")],
                service=["10.53.0.53/32", "fd53::53/128"])
    base.update(kw)
    return bird.NodeConfig(**base)


@pytest.mark.parametrize("signal,role,bfd", list(itertools.product(
    ["route", "address"], ["normal", "input-delayed"], [False, True])))
def test_node_config_is_valid_bird(tmp_path, signal, role, bfd):
    cfg = node(signal=signal, role=role, bfd=bfd, hold_time=6, keepalive_time=2)
    text = bird.render_node_config(cfg)
    med = bird.MED_INPUT_DELAYED if role == "input-delayed" else bird.MED_NORMAL
    assert f"bgp_med = {med};" in text
    assert "hold time 6;" in text and "keepalive time 2;" in text
    assert ("bfd on;" in text) == bfd and ("protocol bfd" in text) == bfd
    assert ("kernel table 53;" in text) == (signal == "route")
    assert ('protocol direct' in text) == (signal == "address")
    # BIRD's own parser is the judge (bird -p), not a string comparison.
    bird.BirdProcess(tmp_path, text).check_config()


def test_router_config_is_valid_bird(tmp_path):
    cfg = bird.RouterConfig("10.53.0.1", 65000, [
        bird.RouterPeer("m1_v4", "10.53.1.2", 65053, "10.53.1.1"),
        bird.RouterPeer("m1_v6", "fd53:0:1::2", 65053, "fd53:0:1::1")], bfd=True)
    text = bird.render_router_config(cfg)
    assert "merge paths on" in text
    bird.BirdProcess(tmp_path, text).check_config()


def test_bad_node_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="bird.hold_time.*RFC 4271"):
        bird.render_node_config(node(hold_time=2))
    with pytest.raises(ConfigError, match="bird.role"):
        bird.render_node_config(node(role="primary"))
    with pytest.raises(ConfigError, match="bird.service"):
        bird.render_node_config(node(service=["10.53.0.300/32"]))
    with pytest.raises(bird.BirdError, match="syntax error|error"):
        bird.BirdProcess(tmp_path, "protocol bgp {").check_config()


def test_parse_protocols():
    text = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     23:15:46.254
up_v4      BGP        ---        up     23:15:49.973  Established
up_v6      BGP        ---        start  23:15:50.497  Connect       Socket: Connection refused
"""
    p = bird.parse_protocols(text)
    assert p["up_v4"]["info"] == "Established" and p["up_v4"]["state"] == "up"
    assert p["up_v6"]["info"].startswith("Connect") and p["device1"]["proto"] == "Device"


@pytest.mark.slow
def test_input_delayed_machine_is_only_a_fallback():
    """m2 announces with a worse MED: the router uses it only while m1 (normal) is withdrawn."""
    cfg = LabConfig(machines=2, clients=1, signal="route", agents=False, etcd=False,
                    bfd=False, input_delayed=(2,))
    with Lab(cfg) as lab:
        m1, m2 = lab.machines
        # Both sessions up and both exporting, read through birdc:
        for m in (m1, m2):
            ctl = m.bird.control
            labmod_wait(lambda: ctl.established() == ["up_v4", "up_v6"])
            assert ctl.exported("up_v4") == ["10.53.0.53/32"]
            assert ctl.exported("up_v6") == ["fd53::53/128"]
        rctl = lab.router_bird.control
        labmod_wait(lambda: len(rctl.routes("10.53.0.53/32")) >= 1 and
                    "BGP.med: 1000" in rctl.cmd("show", "route", "10.53.0.53/32", "all"))
        assert lab.wait_fib(lambda ms: ms == ["m1"]) == ["m1"]
        assert lab.identity_in(lab.clients[0], "10.53.0.53") == "m1"
        r1 = ServiceRoutes([SERVICE4, SERVICE6], mode="route", interface="lo",
                           netns=m1.ns)
        r1.withdraw()
        assert lab.wait_fib(lambda ms: ms == ["m2"], timeout=10) == ["m2"]
        assert lab.wait_fib(lambda ms: ms == ["m2"], prefix=SERVICE6) == ["m2"]
        assert lab.identity_in(lab.clients[0], "10.53.0.53") == "m2"
        r1.announce()
        assert lab.wait_fib(lambda ms: ms == ["m1"], timeout=10) == ["m1"]


def labmod_wait(pred, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")
