"""The UDP sockets' path-MTU mode (pop53.serve.sockets._fixed_mtu, issue 10): with every reply
at most 1232 octets (edns_max, the default) the kernel sends replies with DF set and ignores
learned path MTUs (IP_PMTUDISC_PROBE: no fragments, RFC 9715; no forged "fragmentation needed"
shrinking what a resolver gets; no per-reply route MTU lookup); a larger edns_max keeps the
kernel's default, so a large reply is fragmented rather than refused."""
from __future__ import annotations

import socket

import pytest

from pop53.serve.server import Server

from integ_support import EXAMPLE_ZONE, make_query, server_config, start_with_retry

IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, PMTUDISC_PROBE = 10, 23, 3


def _modes(s: Server) -> list[int]:
    out = []
    for sock in s.net.udp_socks:
        if sock.family == socket.AF_INET:
            out.append(sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER))
        else:
            out.append(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER))
    return out


@pytest.mark.parametrize("edns_max,fixed", [(None, True), (1232, True), (512, True),
                                            (1400, False), (4096, False)])
def test_pmtu_mode_follows_edns_max(edns_max, fixed):
    keys = {} if edns_max is None else {"edns_max": edns_max}
    s = start_with_retry(lambda: Server(server_config([EXAMPLE_ZONE], workers=2, **keys)))
    try:
        modes = _modes(s)
        assert len(modes) == 2
        if fixed:
            assert modes == [PMTUDISC_PROBE] * 2
        else:
            assert PMTUDISC_PROBE not in modes, "a larger edns_max keeps the kernel default"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(make_query("www.example.com.", "A", qid=7), s.addresses[0])
            assert c.recv(4096)[:2] == b"\x00\x07", "answers still leave"
    finally:
        s.stop()


def test_pmtu_mode_follows_edns_max_across_a_reload():
    """A config reload that changes edns_max restarts the workers with it (reconfig ->
    Server.restart_workers): the sockets' mode follows, both ways."""
    s = start_with_retry(lambda: Server(server_config([EXAMPLE_ZONE], workers=1)))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh:
            default = fresh.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER)
        assert default != PMTUDISC_PROBE and _modes(s) == [PMTUDISC_PROBE]
        s.restart_workers(s.net.responder, s.net.limiter, 4096)
        assert _modes(s) == [default]
        s.restart_workers(s.net.responder, s.net.limiter, 1232)
        assert _modes(s) == [PMTUDISC_PROBE]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(make_query("www.example.com.", "A", qid=9), s.addresses[0])
            assert c.recv(4096)[:2] == b"\x00\x09"
    finally:
        s.stop()
