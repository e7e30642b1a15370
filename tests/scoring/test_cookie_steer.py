"""The kernel stage's server-cookie check (issue 13, pop53.scoring.ebpf_cookie): an address that
sent a valid server cookie of ours (RFC 7873/9018) is steered to the priority socket only, and
always, with a valid cookie, known or not, so a flood in the normal socket's queue cannot make
the kernel drop a cookie client's queries, and datagrams spoofing its address without the
cookie do not share the priority socket; `steer_cookies = false` turns the check off."""
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

from bench.micro.steer_prog import PREVIOUS, SECRET, frame, query, setup
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


def _server(tmp_path, known_text: str = "127.1.0.0/24\n", listen: str = "127.0.0.1:0",
            secrets: bool = False, **scoring):
    """A server with the kernel stage and cookies on (with `secrets`, SECRET and PREVIOUS, else
    a random one), not started yet."""
    known = tmp_path / "known.txt"
    known.write_text(known_text)
    cookies = ({"cookie_secret": SECRET.hex(), "cookie_secret_previous": PREVIOUS.hex()}
               if secrets else {"cookies": True})
    doc = {"server": {"listen": [listen], "workers": 1, **cookies},
           # where the program steers, not where an idle worker waits (test_wake.py)
           "scoring": {"known_resolvers": str(known), "steer": True, "steer_idle": False,
                       **scoring},
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
        assert not server.scoring.scorer.cookie_sender(socket.inet_aton("127.2.0.5"))
        with_cookie = _query(dns.edns.CookieOption(cc, sc))
        assert ask(addr, "127.2.0.5", 1, with_cookie) == 1      # proves the address
        assert server.scoring.scorer.cookie_sender(socket.inet_aton("127.2.0.5"))
        assert per_worker(server) == (2, 0)
        # from now on the kernel steers it with its cookie (without one: the normal socket,
        # test_the_kernel_steers_a_cookie_sender_only_with_a_valid_cookie)
        assert ask(addr, "127.2.0.5", 5, with_cookie) == 5 and ask(addr, "127.2.0.5", 3) == 3
        assert per_worker(server) == (5, 5)
        # its neighbour, and a client whose cookie is not ours, stay in the normal socket
        assert ask(addr, "127.2.0.6", 4) == 4
        assert ask(addr, "127.2.0.7", 4, _query(dns.edns.CookieOption(cc, b"\x01" * 16))) == 4
        assert per_worker(server) == (13, 5)
        from pop53.scoring import metrics
        fams = {f.name: f for f in metrics.families(server.workers, server.scoring.scorer)}
        assert fams["pop53_scoring_cookie_senders"].samples[0].value == 1
    finally:
        server.stop()


def test_steer_cookies_off_leaves_cookie_clients_to_the_prefix_rules(tmp_path):
    server = _server(tmp_path, steer_cookies=False)
    server.start()
    try:
        addr = server.addresses[0]
        assert server.scoring.cookie_keys is None
        cc = b"\x07" * 8
        with_cookie = _query(dns.edns.CookieOption(cc, _server_cookie(addr, "127.2.0.5", cc)))
        assert ask(addr, "127.2.0.5", 6, with_cookie) == 6      # unknown: the normal socket
        assert ask(addr, "127.1.0.5", 3) == 3                   # known: the priority socket
        assert per_worker(server) == (7, 3)
    finally:
        server.stop()


def _with(cc: bytes, secret: bytes, client: str, at: int | None = None) -> bytes:
    """A query carrying `cc` and the server cookie `secret` makes for `client` at time `at`."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in client else socket.AF_INET, client)
    sc = _core.server_cookie(secret, cc, packed, int(time.time()) if at is None else at)
    return _query(dns.edns.CookieOption(cc, sc))


def _kernel_cookie_check(server, src: str) -> None:
    """After `src` proved itself once: which of its datagrams the kernel steers."""
    addr = server.addresses[0]
    cc = b"\x05" * 8
    assert server.scoring.cookie_keys is not None and server.scoring.steering == "ebpf"
    assert ask(addr, src, 1, _with(cc, SECRET, src)) == 1
    assert server.scoring.scorer.cookie_sender(socket.inet_pton(
        socket.AF_INET6 if ":" in src else socket.AF_INET, src))
    n0, p0 = per_worker(server)
    # a valid cookie, under the current or the previous secret, a second client cookie too:
    # the priority socket
    assert ask(addr, src, 3, _with(cc, SECRET, src)) == 3
    assert ask(addr, src, 2, _with(b"\x09" * 8, PREVIOUS, src)) == 2
    assert per_worker(server) == (n0, p0 + 5)
    # no cookie, a hash under another secret, made for another address, an hour and a half
    # old, ten minutes ahead, a client cookie alone: the normal socket (all are answered)
    other = "127.9.9.9" if ":" not in src else "::2"
    bad = [_query(), _with(cc, bytes(16), src), _with(cc, SECRET, other),
           _with(cc, SECRET, src, int(time.time()) - 5400),
           _with(cc, SECRET, src, int(time.time()) + 600),
           _query(dns.edns.CookieOption(cc, b""))]
    for wire in bad:
        assert ask(addr, src, 1, wire) == 1
    assert per_worker(server) == (n0 + len(bad), p0 + 5)
    # the secrets change (a config reload): cookies under the new pair are checked at once
    server.scoring.set_cookie_secrets(bytes(16), SECRET)
    assert ask(addr, src, 1, _with(cc, bytes(16), src)) == 1
    assert ask(addr, src, 1, _with(cc, PREVIOUS, src)) == 1
    assert per_worker(server) == (n0 + len(bad) + 1, p0 + 6)


def test_the_kernel_steers_a_cookie_sender_only_with_a_valid_cookie(tmp_path):
    server = _server(tmp_path, secrets=True)
    server.start()
    try:
        _kernel_cookie_check(server, "127.1.0.5")
    finally:
        server.stop()


def test_the_kernel_checks_cookies_of_ipv6_clients(tmp_path):
    server = _server(tmp_path, "::1\n", "[::1]:0", secrets=True)
    server.start()
    try:
        _kernel_cookie_check(server, "::1")
    finally:
        server.stop()


def test_a_spoofed_cookie_sender_does_not_take_its_place():
    """Datagrams with a cookie sender's exact address and no cookie, past known_addr_rate:
    the address loses its trust, and its own cookies do not hand it back while the spoofing
    lasts; its cookie bit stays, so the kernel still steers its cookies (and only them)."""
    s = _core.Scorer(known_addr_rate=30)
    s.publish(compile_table(KnownPrefixes(frozenset({0x7F0100}), frozenset())))
    real = socket.inet_aton("127.1.0.5")
    s.cookie_proven(real)
    assert s.trusted(real) and s.cookie_sender(real)
    for _ in range(70):                 # past twice the rate in a first window (the count
        s.classify(_query(), real)      # halves at each window: a steady rate holds twice it)
    assert not s.trusted(real) and s.cookie_sender(real)
    s.cookie_proven(real)
    assert not s.trusted(real)
    s.new_window()                      # the count halves each window: 70 -> 35
    s.cookie_proven(real)
    assert s.trusted(real)
    s.clear_cookies()                   # cookies turned off
    assert not s.cookie_sender(real)


def test_the_kernel_check_follows_the_secrets_across_config_reloads(tmp_path):
    from pop53.serve import reconfig
    known, conf = tmp_path / "known.txt", tmp_path / "pop53.toml"
    known.write_text("127.1.0.0/24\n")

    def write(server_keys: str) -> None:
        conf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\n{server_keys}\n'
                        f'[scoring]\nknown_resolvers = "{known}"\nsteer = true\n'
                        'steer_idle = false\n'
                        f'[[zone]]\nname = "integ.example."\nfile = "{INTEG_ZONE}"\n')

    new = bytes(range(32, 48))
    write(f'cookie_secret = "{SECRET.hex()}"')
    server = Server(cfgmod.load(str(conf)))
    server.start()
    try:
        addr, src, cc = server.addresses[0], "127.1.0.5", b"\x05" * 8
        assert ask(addr, src, 1, _with(cc, SECRET, src)) == 1       # proves the address
        write(f'cookie_secret = "{new.hex()}"\ncookie_secret_previous = "{SECRET.hex()}"')
        assert reconfig.reload(server)["config"] == "reloaded"
        n0, p0 = per_worker(server)
        for secret in (new, SECRET, PREVIOUS):                       # PREVIOUS: never ours
            assert ask(addr, src, 1, _with(cc, secret, src)) == 1
        assert per_worker(server) == (n0 + 1, p0 + 2)
        write("cookies = false")                                     # no check, no cookie bits
        assert reconfig.reload(server)["config"] == "reloaded"
        assert not server.scoring.scorer.cookie_sender(socket.inet_aton(src))
        assert ask(addr, src, 2) == 2
        assert per_worker(server) == (n0 + 1, p0 + 4)
    finally:
        server.stop()


def test_the_program_parses_what_resolvers_send_and_nothing_truncated():
    """The check on frames (BPF_PROG_TEST_RUN): options before the cookie and a long name are
    parsed; every truncation of a valid query, and a cookie past the eighth option, go to the
    normal block; IPv6 with an extension header is not parsed (normal block)."""
    from pop53.scoring import ebpf
    progs, _keep = setup(workers=2, known=1000)
    fd = progs["with the check"]
    src, cc = "127.2.0.5", b"\x01" * 8

    def steered(wire: bytes, at: str = src) -> bool:
        return ebpf.test_run(fd, frame(at, wire))[0] >= 2

    def cookie_query(name: str, before: int) -> bytes:
        sc = _core.server_cookie(SECRET, cc, socket.inet_aton(src), int(time.time()))
        opts = [dns.edns.GenericOption(65001 + i, b"x" * i) for i in range(before)]
        return dns.message.make_query(name, "A", use_edns=0,
                                      options=opts + [dns.edns.CookieOption(cc, sc)]).to_wire()

    good = cookie_query("www.example.com.", 2)
    assert steered(good) and steered(cookie_query("a.b.c.d.e.f.g.h.i.j.example.com.", 0))
    assert steered(cookie_query("x" * 63 + "." + "y" * 63 + ".example.", 7))
    assert steered(cookie_query("a." * 126, 0))                       # 253 bytes, 126 labels
    assert not steered(cookie_query("www.example.com.", 8))           # the ninth option
    assert all(not steered(good[:n]) for n in range(len(good)))       # every truncation
    v6 = bytearray(frame("2001:db8::5", query("2001:db8::5")))
    assert ebpf.test_run(fd, bytes(v6))[0] >= 2
    v6[14 + 6] = 0                                                    # hop-by-hop next
    assert ebpf.test_run(fd, bytes(v6))[0] < 2


def test_a_kernel_refusing_the_check_gets_the_program_without_it(tmp_path, monkeypatch, caplog):
    """The check needs bpf_ktime_get_tai_ns (Linux 6.1): a verifier that refuses it leaves
    the steering program as it was, with one warning."""
    import logging
    from pop53.scoring import ebpf_cookie, steer

    def unknown_helper(a, tag, iplen, addr_stack, cookie_bit, keys_fd, valid, invalid):
        a.op(0x85, 0, 0, 0, 99999)                               # call an unknown helper
    monkeypatch.setattr(ebpf_cookie, "emit", unknown_helper)
    monkeypatch.setattr(steer, "_warned", set())
    server = _server(tmp_path, secrets=True)
    with caplog.at_level(logging.WARNING, logger="pop53.scoring"):
        server.start()
    try:
        assert server.scoring.steering == "ebpf" and server.scoring.cookie_keys is not None
        assert any("refused the steering program's server-cookie check" in r.message
                   for r in caplog.records)
        addr = server.addresses[0]
        assert ask(addr, "127.1.0.5", 2) == 2 and ask(addr, "127.2.0.5", 2) == 2
        assert per_worker(server) == (2, 2)                      # steered by prefix alone
    finally:
        server.stop()


def test_mutated_frames_stay_in_range_and_a_touched_cookie_is_never_steered():
    """2,000 frames of a valid cookie query with random bytes changed: the program always
    returns a socket of the group, and a change inside the 24 cookie bytes (client cookie,
    version, reserved, timestamp, hash: all under the hash) never reaches the priority block."""
    import random
    from pop53.scoring import ebpf
    progs, _keep = setup(workers=2, known=1000)
    fd = progs["with the check"]
    wire = query("127.2.0.5")
    assert ebpf.test_run(fd, frame("127.2.0.5", wire))[0] >= 2
    start = len(wire) - 24                                   # the COOKIE option's data
    rnd = random.Random(53)
    for i in range(2000):
        w = bytearray(wire)
        cookie = i % 2 == 0
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(start, len(w)) if cookie else rnd.randrange(len(w))
            w[at] ^= rnd.randrange(1, 256)
        ret = ebpf.test_run(fd, frame("127.2.0.5", bytes(w)))[0]
        assert 0 <= ret < 4
        if cookie:
            assert ret < 2, (i, bytes(w).hex())
