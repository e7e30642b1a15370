"""DNS COOKIEs through the real `pop53 serve`: answers over UDP and TCP carry a server cookie
bound to the client's address, and a client that returns a valid one has proven its address, so
response rate limiting lets all its answers through (a spoofed flood cannot do that)."""
from __future__ import annotations

import socket
import time

import dns.edns
import dns.flags
import dns.message
import pytest

from integ_support import INTEG_ZONE, free_port, tcp_exchange

from pop53 import _core
from pop53 import config
from pop53.errors import ConfigError

SECRET = "e5e973e5a6b2a43f48e7dc849e37bfcf"


def _conf(tmp_path, port) -> str:
    p = tmp_path / "pop53.toml"
    p.write_text(f"""\
[server]
listen = ["127.0.0.1:{port}"]
workers = 2
cookie_secret = "{SECRET}"

[rrl]
rate = 5
slip = 0
exempt = []

[[zone]]
name = "integ.example."
file = "{INTEG_ZONE}"
""")
    return str(p)


def query(cookie: bytes | None, qid: int) -> bytes:
    opts = [dns.edns.CookieOption(cookie[:8], cookie[8:])] if cookie else []
    q = dns.message.make_query("www.integ.example.", "A", use_edns=0, options=opts)
    q.id = qid
    return q.to_wire()


def cookie_of(m) -> bytes | None:
    for o in m.options:
        if o.otype == dns.edns.OptionType.COOKIE:
            return o.client + o.server
    return None


def burst(addr, wire_for, n: int) -> int:
    """n queries from one socket; the number of full answers that came back."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.5)
    try:
        for i in range(n):
            s.sendto(wire_for(i + 1), addr)
        full = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                m = dns.message.from_wire(s.recvfrom(4096)[0])
            except socket.timeout:
                break
            full += bool(m.answer)
        return full
    finally:
        s.close()


def test_cookies_over_udp_and_tcp_and_rrl_passes_proven_clients(serve, tmp_path):
    port = free_port()
    serve("--config", _conf(tmp_path, port))
    addr = ("127.0.0.1", port)
    client = bytes.fromhex("a1a2a3a4a5a6a7a8")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(query(client, 1), addr)
        m = dns.message.from_wire(s.recvfrom(4096)[0])
    finally:
        s.close()
    got = cookie_of(m)
    assert m.answer and got is not None and got[:8] == client and len(got) == 24
    loop = socket.inet_aton("127.0.0.1")
    responder = _core.Responder(cookie_secret=bytes.fromhex(SECRET))
    assert _core.cookie_check(responder, got, loop, int(time.time()))
    # over TCP too, bound to the same address
    t = dns.message.from_wire(tcp_exchange(addr, [query(client, 2)])[0])
    assert _core.cookie_check(responder, cookie_of(t), loop, int(time.time()))
    # 60 queries in a burst: without a server cookie RRL (rate 5, no slip) answers a handful;
    # with the valid one it answers every one
    assert burst(addr, lambda i: query(None, i), 60) <= 15
    assert burst(addr, lambda i: query(got, i), 60) == 60


@pytest.mark.parametrize("server,key", [
    ({"cookie_secret": "abc"}, "server.cookie_secret"),
    ({"cookie_secret": "zz" * 16}, "server.cookie_secret"),
    ({"cookie_secret_previous": SECRET}, "server.cookie_secret_previous"),
    ({"cookies": False, "cookie_secret": SECRET}, "server.cookies"),
])
def test_cookie_config_errors_name_the_key(server, key):
    with pytest.raises(ConfigError) as err:
        config.from_dict({"server": server}, file="pop53.toml")
    assert err.value.key == key
