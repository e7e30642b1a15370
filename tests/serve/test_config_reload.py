"""Issue 14 point 3: `pop53 ctl reload` and SIGHUP re-read the config file, through a real
`pop53 serve`: a zone added to the TOML is served, a removed one is REFUSED, identity changes,
what cannot change live is reported as needing a restart, and an invalid new config is rejected
with its one-line error while the old one keeps serving."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from integ_support import (EXAMPLE_ZONE, RELOAD_V1, REPO, make_query, udp_exchange, udp_socket,
                           wait_for)


def rcode(addr, name, rdtype="SOA"):
    with udp_socket(addr) as s:
        r = udp_exchange(s, make_query(name, rdtype))
    assert r is not None, f"no answer for {name}"
    return dns.message.from_wire(r).rcode()


def id_server(addr) -> str:
    q = dns.message.make_query("id.server.", dns.rdatatype.TXT, dns.rdataclass.CH)
    with udp_socket(addr) as s:
        r = dns.message.from_wire(udp_exchange(s, q.to_wire()))
    return r.answer[0][0].strings[0].decode()


def ctl(sock, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "pop53", "ctl", "-s", str(sock), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def write_config(path, sock, zones, *, identity="one", listen="127.0.0.1:0", extra=""):
    text = f'[server]\nlisten = ["{listen}"]\nworkers = 1\nidentity = "{identity}"\n' \
           f'control = "{sock}"\n{extra}\n'
    for name, file in zones:
        text += f'[[zone]]\nname = "{name}"\nfile = "{file}"\n\n'
    path.write_text(text)


def start(serve, tmp_path):
    """`pop53 serve` of example.com. with a control socket: (config path, socket, process,
    address)."""
    conf, sock = tmp_path / "pop53.toml", tmp_path / "ctl.sock"
    write_config(conf, sock, [("example.com.", EXAMPLE_ZONE)])
    p = serve("-c", str(conf))
    return conf, sock, p, p.addresses[0]


def test_ctl_reload_adds_and_removes_zones_and_changes_identity(serve, tmp_path):
    conf, sock, p, addr = start(serve, tmp_path)
    assert rcode(addr, "example.com.") == dns.rcode.NOERROR
    assert rcode(addr, "reload.example.") == dns.rcode.REFUSED
    assert id_server(addr) == "one"

    # add reload.example., drop example.com., new identity; a new listen address needs a restart
    write_config(conf, sock, [("reload.example.", RELOAD_V1)], identity="two",
                 listen="127.0.0.1:1")
    r = ctl(sock, "reload")
    assert r.returncode == 0, r.stderr
    assert "zones added: reload.example." in r.stdout
    assert "zones removed: example.com." in r.stdout
    assert "needs a restart" in r.stdout and "server.listen" in r.stdout
    assert rcode(addr, "reload.example.") == dns.rcode.NOERROR
    assert rcode(addr, "example.com.") == dns.rcode.REFUSED
    assert id_server(addr) == "two"
    assert "server.listen changed; it needs a restart" in p.log_text()
    # still on the address it started with
    assert rcode(addr, "reload.example.") == dns.rcode.NOERROR


def test_invalid_new_config_is_rejected_and_the_old_keeps_serving(serve, tmp_path):
    conf, sock, p, addr = start(serve, tmp_path)
    good = conf.read_text()
    # a typo, with a zone added beside it: nothing of the new file applies
    conf.write_text(good + f'[[zone]]\nname = "reload.example."\nfiel = "{RELOAD_V1}"\n')
    r = ctl(sock, "reload")
    assert r.returncode == 1
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "zone[1].fiel" in err and "did you mean" in err and str(conf) in err
    assert rcode(addr, "example.com.") == dns.rcode.NOERROR
    assert rcode(addr, "reload.example.") == dns.rcode.REFUSED
    assert "config reload rejected, the previous configuration keeps serving" in p.log_text()
    # invalid TOML too
    conf.write_text(good + "[server\n")
    r = ctl(sock, "reload")
    assert r.returncode == 1 and "invalid TOML" in r.stderr
    assert rcode(addr, "example.com.") == dns.rcode.NOERROR
    # fixed: applies
    conf.write_text(good + f'[[zone]]\nname = "reload.example."\nfile = "{RELOAD_V1}"\n')
    assert ctl(sock, "reload").returncode == 0
    assert rcode(addr, "reload.example.") == dns.rcode.NOERROR


def test_sighup_rereads_the_config(serve, tmp_path):
    conf, sock, p, addr = start(serve, tmp_path)
    write_config(conf, sock, [("example.com.", EXAMPLE_ZONE), ("reload.example.", RELOAD_V1)])
    os.kill(p.pid, signal.SIGHUP)
    wait_for(lambda: rcode(addr, "reload.example.") == dns.rcode.NOERROR, 15)
    assert rcode(addr, "example.com.") == dns.rcode.NOERROR


def axfr_rcode(addr, zone):
    import dns.query
    try:
        msgs = list(dns.query.xfr(addr[0], zone, port=addr[1], timeout=5, lifetime=10))
        return msgs[0].rcode()
    except dns.query.TransferError as exc:
        return exc.rcode


SECRET = "cG9wNTMtcmVsb2FkLWtleS0wMTIzNDU2Nzg5YWJjZGVm"
KEY = f'[[key]]\nname = "reload-key."\nalgorithm = "hmac-sha256"\nsecret = "{SECRET}"\n'


def signed_soa(addr):
    import base64

    import dns.exception
    import dns.query
    import dns.tsig
    q = dns.message.make_query("example.com.", "SOA")
    key = dns.tsig.Key("reload-key.", base64.b64decode(SECRET), "hmac-sha256")
    q.use_tsig(key)
    try:
        return dns.query.udp(q, addr[0], port=addr[1], timeout=3)
    except dns.exception.DNSException:
        # an unsigned NOTAUTH/BADKEY reply to a signed query: dnspython refuses it; parse raw
        with udp_socket(addr) as s:
            return dns.message.from_wire(udp_exchange(s, q.to_wire()), keyring=False)


def test_reload_adds_a_secondary_zone_and_changes_an_acl(serve, tmp_path):
    """With transfers on: a secondary zone added by config reload is transferred and served,
    its removal stops it, and a changed allow_transfer applies without a restart."""
    pconf, psock = tmp_path / "primary.toml", tmp_path / "p.sock"
    write_config(pconf, psock, [("reload.example.", RELOAD_V1)],
                 extra="")
    pconf.write_text(pconf.read_text() + 'allow_transfer = ["127.0.0.0/8"]\n')
    primary = serve("-c", str(pconf))
    paddr = primary.addresses[0]

    conf, sock = tmp_path / "pop53.toml", tmp_path / "ctl.sock"
    base = f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{sock}"\n' \
           f'[[zone]]\nname = "example.com."\nfile = "{EXAMPLE_ZONE}"\n'
    conf.write_text(base + 'allow_transfer = ["192.0.2.1"]\n')
    p = serve("-c", str(conf))
    addr = p.addresses[0]
    assert axfr_rcode(addr, "example.com.") == dns.rcode.REFUSED
    assert rcode(addr, "reload.example.") == dns.rcode.REFUSED

    conf.write_text(base + 'allow_transfer = ["127.0.0.1"]\n'
                    f'[[zone]]\nname = "reload.example."\nprimaries = ["{paddr[0]}:{paddr[1]}"]\n')
    r = ctl(sock, "reload")
    assert r.returncode == 0, r.stderr
    assert "zones added: reload.example." in r.stdout
    wait_for(lambda: rcode(addr, "reload.example.") == dns.rcode.NOERROR, 15)
    assert axfr_rcode(addr, "example.com.") == dns.rcode.NOERROR
    r = ctl(sock, "zone-status", "reload.example.")
    assert r.returncode == 0 and "secondary" in r.stdout and "serial 1001" in r.stdout, r.stdout

    # a [[key]] added by reload: a query signed with it is answered and signed (before: BADKEY)
    assert signed_soa(addr).rcode() == dns.rcode.NOTAUTH
    conf.write_text(base + 'allow_transfer = ["127.0.0.1"]\n' + KEY)
    r = ctl(sock, "reload")
    assert r.returncode == 0 and "zones removed: reload.example." in r.stdout, r.stdout
    m = signed_soa(addr)
    assert m.rcode() == dns.rcode.NOERROR and m.had_tsig
    assert rcode(addr, "reload.example.") == dns.rcode.REFUSED
    assert rcode(addr, "example.com.") == dns.rcode.NOERROR


def test_reload_turns_rrl_on(serve, tmp_path):
    """[rrl] added by reload limits at once (the UDP workers restart with the new limiter)."""
    conf, sock, p, addr = start(serve, tmp_path)

    def answered(n=20, timeout=0.1):
        got = 0
        with udp_socket(addr, timeout=timeout) as s:
            for i in range(n):
                got += udp_exchange(s, make_query("www.example.com.", "A", qid=i + 1)) is not None
        return got

    assert answered(timeout=2.0) == 20      # every one answered (a loaded machine: wait)
    conf.write_text(conf.read_text().replace("[[zone]]", '[rrl]\nrate = 2\nslip = 0\n'
                                             'exempt = []\n\n[[zone]]', 1))
    r = ctl(sock, "reload")
    assert r.returncode == 0, r.stderr
    assert answered() <= 6
