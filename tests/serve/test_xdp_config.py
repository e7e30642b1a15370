"""Issue 16: `[server] xdp` is checked like every key, and an interface XDP cannot use is one
warning line naming it and the reason, while the sockets serve."""
from __future__ import annotations

import pytest

import pop53
from pop53 import config as cfgmod
from pop53.errors import ConfigError

from integ_support import INTEG_ZONE, make_query, udp_exchange, udp_socket


@pytest.mark.parametrize("value", [[1], ["a" * 16], ["eth0", "eth0"], {"eth0": 1}, [""]])
def test_bad_xdp_values_name_the_key(value):
    with pytest.raises(ConfigError) as exc:
        cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "xdp": value}}, file="x.toml")
    assert "server.xdp" in str(exc.value)


def test_one_name_is_a_list():
    cfg = cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "xdp": "eth0"}}, file="x.toml")
    assert cfg.xdp == ["eth0"]


def test_unusable_interface_falls_back_to_sockets(start_server, caplog):
    with caplog.at_level("WARNING", logger="pop53.xdp"):
        s = start_server([INTEG_ZONE], workers=1, xdp=["p53nosuch0"])
    assert s.xdp is None
    assert "XDP not available on p53nosuch0, serving it over sockets: no interface p53nosuch0" \
        in caplog.text
    wire = make_query("www.integ.example.", "A", qid=21)
    with udp_socket(s.addresses[0]) as sock:
        assert udp_exchange(sock, wire) == pop53.answer(s.current_image, wire, sock.getsockname()[:2],
                                                        responder=s.responder)
