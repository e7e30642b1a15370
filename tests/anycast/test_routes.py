"""pop53.anycast.routes: announce/withdraw through netlink, idempotent, both signals, IPv4 and IPv6,
and through real BIRD BGP into the PoP router's FIB."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pop53.lab.pop import Lab, LabConfig
from pop53.lab.process import SERVICE4, SERVICE6, child_env
from pop53.errors import RouteError
from pop53.anycast.routes import SERVICE_IFNAME, ServiceRoutes, fib_nexthops

pytestmark = [pytest.mark.root]

ADDRS = ["10.53.0.53/32", "fd53::53/128"]


def _dummy_supported(netns) -> bool:
    p = subprocess.run(["ip", "-n", netns.name, "link", "add", "p53probe", "type", "dummy"],
                       capture_output=True, text=True)
    if p.returncode == 0:
        subprocess.run(["ip", "-n", netns.name, "link", "del", "p53probe"], capture_output=True)
        return True
    return False


def test_route_mode_is_idempotent_and_keeps_the_address(netns):
    r = ServiceRoutes(ADDRS, mode="route", netns=netns.name)
    first = r.announce()
    assert len(first) == 4  # two addresses + two signal routes
    assert r.announce() == []  # idempotent
    assert r.announced()
    assert "10.53.0.53 dev" in netns.ip("route", "show", "table", "53")
    assert "fd53::53 dev" in netns.ip("-6", "route", "show", "table", "53")
    assert r.withdraw() == [f"route-del {a} dev {r.interface_name} table 53" for a in ADDRS]
    assert r.withdraw() == []
    st = r.state()
    # The address stays so queries already in flight are still answered while routers converge.
    assert st == {a: {"address": True, "route": False} for a in ADDRS}
    assert not r.announced()
    assert netns.ip("route", "show", "table", "53").strip() == ""
    assert "10.53.0.53/32" in netns.ip("addr", "show")
    r.remove()
    assert "10.53.0.53" not in netns.ip("addr", "show")


def test_address_mode_adds_and_removes_the_address(netns):
    r = ServiceRoutes(ADDRS, mode="address", netns=netns.name)
    assert r.announce() and r.announce() == []
    out = netns.ip("addr", "show")
    assert "10.53.0.53/32" in out and "fd53::53/128" in out
    assert netns.ip("route", "show", "table", "53").strip() == ""  # no signal route in this mode
    assert len(r.withdraw()) == 2 and r.withdraw() == []
    out = netns.ip("addr", "show")
    assert "10.53.0.53" not in out and "fd53::53" not in out


def test_service_interface_is_dummy_or_lo(netns):
    dummy = _dummy_supported(netns)
    r = ServiceRoutes(["10.53.0.54/32"], mode="address", netns=netns.name)
    r.announce()
    # Without the dummy link type ("Unknown device type") the address goes on lo.
    assert r.interface_name == (SERVICE_IFNAME if dummy else "lo")
    assert "10.53.0.54/32" in netns.ip("addr", "show", "dev", r.interface_name)


def test_missing_interface_and_bad_input_are_clear_errors(netns):
    with pytest.raises(RouteError, match="does not exist"):
        ServiceRoutes(ADDRS, interface="nosuch0", netns=netns.name).announce()
    with pytest.raises(RouteError, match="invalid service address"):
        ServiceRoutes(["10.53.0.300"], netns=netns.name)
    with pytest.raises(RouteError, match="unknown route signal mode"):
        ServiceRoutes(ADDRS, mode="bgp", netns=netns.name)
    with pytest.raises(RouteError, match="reserved"):
        ServiceRoutes(ADDRS, table=254, netns=netns.name)
    assert "10.53.0.53" not in netns.ip("addr", "show")


def test_without_cap_net_admin_nothing_changes(netns):
    code = ("import json\nfrom pop53.anycast.routes import ServiceRoutes\nfrom pop53.errors import RouteError\n"
            f"r = ServiceRoutes({ADDRS!r}, mode='route', interface='lo')\n"
            "try:\n    r.announce()\n    print('CHANGED')\nexcept RouteError as e:\n    print('ERR', e)\n")
    p = subprocess.run(["ip", "netns", "exec", netns.name, "setpriv", "--bounding-set",
                        "-net_admin", "--inh-caps", "-net_admin", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=30, env=child_env())
    assert p.stdout.startswith("ERR"), p.stdout + p.stderr
    assert "CAP_NET_ADMIN" in p.stdout and "nothing was changed" in p.stdout
    assert "10.53.0.53" not in netns.ip("addr", "show")
    assert netns.ip("route", "show", "table", "53").strip() == ""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["route", "address"])
def test_announce_withdraw_reaches_router_fib(mode):
    """Through the real chain: netlink -> machine's BIRD -> eBGP -> router's BIRD -> kernel FIB."""
    cfg = LabConfig(machines=2, clients=1, signal=mode, agents=False, etcd=False,
                    bfd=False)
    with Lab(cfg) as lab:
        for prefix in SERVICE4, SERVICE6:
            assert lab.wait_fib(lambda ms: ms == ["m1", "m2"], prefix=prefix) == ["m1", "m2"]
        m1 = lab.machines[0]
        r = ServiceRoutes([SERVICE4, SERVICE6], mode=mode, interface="lo",
                          netns=m1.ns)
        assert r.withdraw()
        for prefix in SERVICE4, SERVICE6:
            lab.wait_fib(lambda ms: ms == ["m2"], prefix=prefix, timeout=10)
        assert fib_nexthops(SERVICE4, netns=lab.router_ns) == [lab.machines[1].link4]
        assert lab.identity_in(lab.clients[0], "10.53.0.53") == "m2"
        assert r.announce()
        for prefix in SERVICE4, SERVICE6:
            lab.wait_fib(lambda ms: ms == ["m1", "m2"], prefix=prefix, timeout=10)
        assert sorted(fib_nexthops(SERVICE6, netns=lab.router_ns)) == \
            sorted([m.link6 for m in lab.machines])
        names = lab.namespaces[:]
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in out for n in names)
