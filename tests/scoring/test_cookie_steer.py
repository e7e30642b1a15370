"""Cookie-proven addresses in the kernel stage (issue 13): outside the known prefixes, a client
that sent a valid server cookie of ours (RFC 7873) is trusted, and with `steer_proven` (the
default) the eBPF program steers it to the priority socket, where a flood in the normal socket's
queue cannot make the kernel drop it; past known_addr_rate there (its address spoofed) it loses
the trust and leaves the priority socket."""
from __future__ import annotations

import socket
import time

import dns.edns
import dns.flags
import dns.message

from pop53 import _core
from pop53 import config as cfgmod
from pop53.scoring.known import KnownPrefixes, compile_table
from pop53.serve.server import Server

from integ_support import INTEG_ZONE
from steer_support import ask, per_worker


def _query(cookie: dns.edns.CookieOption | None = None) -> bytes:
    q = dns.message.make_query("www.integ.example.", "A", use_edns=0 if cookie else False,
                               options=[cookie] if cookie else [])
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def _server_cookie(addr, src: str, cc: bytes) -> bytes:
    """Ask once from `src` with the client cookie `cc`; the server cookie of the reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(2)
        s.sendto(_query(dns.edns.CookieOption(cc, b"")), addr)
        r = dns.message.from_wire(s.recvfrom(4096)[0])
    return next(o.server for o in r.options if o.otype == dns.edns.COOKIE)


def _server(tmp_path, **scoring):
    known = tmp_path / "known.txt"
    known.write_text("127.1.0.0/24\n")
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "cookies": True},
           "scoring": {"known_resolvers": str(known), "steer": True, **scoring},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    return Server(cfgmod.from_dict(doc, file="<test>"))


def test_a_cookie_client_outside_the_known_prefixes_is_steered(tmp_path):
    server = _server(tmp_path)
    server.start()
    try:
        addr = server.addresses[0]
        assert server.scoring.steering == "ebpf"
        cc = b"\x07" * 8
        sc = _server_cookie(addr, "127.2.0.5", cc)              # a client cookie alone: normal
        assert per_worker(server) == (1, 0)
        assert not server.scoring.scorer.trusted(socket.inet_aton("127.2.0.5"))
        with_cookie = _query(dns.edns.CookieOption(cc, sc))
        assert ask(addr, "127.2.0.5", 1, with_cookie) == 1      # proves the address
        assert server.scoring.scorer.trusted(socket.inet_aton("127.2.0.5"))
        assert per_worker(server) == (2, 0)
        # from now on the kernel steers it, with or without its cookie
        assert ask(addr, "127.2.0.5", 5, with_cookie) == 5 and ask(addr, "127.2.0.5", 3) == 3
        assert per_worker(server) == (2, 8)
        # its neighbour, and a client whose cookie is not ours, stay in the normal socket
        assert ask(addr, "127.2.0.6", 4) == 4
        assert ask(addr, "127.2.0.7", 4, _query(dns.edns.CookieOption(cc, b"\x01" * 16))) == 4
        assert per_worker(server) == (10, 8)
    finally:
        server.stop()


def test_steer_proven_off_leaves_cookie_clients_in_the_normal_socket(tmp_path):
    server = _server(tmp_path, steer_proven=False)
    server.start()
    try:
        addr = server.addresses[0]
        cc = b"\x07" * 8
        with_cookie = _query(dns.edns.CookieOption(cc, _server_cookie(addr, "127.2.0.5", cc)))
        assert ask(addr, "127.2.0.5", 6, with_cookie) == 6
        assert server.scoring.scorer.trusted(socket.inet_aton("127.2.0.5"))   # admit() lifts it
        assert per_worker(server) == (7, 0)
    finally:
        server.stop()


def test_a_proven_address_over_its_rate_in_the_priority_socket_loses_its_trust():
    s = _core.Scorer(known_addr_rate=30)
    s.publish(compile_table(KnownPrefixes(frozenset({0x7F0100}), frozenset())))
    proven, other = socket.inet_aton("127.2.0.5"), socket.inet_aton("127.2.0.6")
    s.cookie_proven(proven)
    s.cookie_proven(other)
    assert s.trusted(proven) and s.trusted(other)
    s.batch(1, priority=False)          # read from the normal socket: not counted
    for _ in range(60):
        assert s.classify(_query(), other) == "normal"
    assert s.trusted(other)
    s.batch(1, priority=True)           # from the priority socket: counted per address
    got = [s.classify(_query(), proven) for _ in range(31)]
    assert set(got) == {"normal"}       # not known: normal (a cookie lifts it when cut)
    assert not s.trusted(proven) and s.stats()["proven_untrusted"] == 1
    s.cookie_proven(proven)             # its address is being spoofed: no trust back yet
    assert not s.trusted(proven)
    s.new_window()                      # the count halves each window: 31 -> 15
    s.cookie_proven(proven)
    assert s.trusted(proven)
