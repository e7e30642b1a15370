"""Issue 9, wire bugs 1 (TSIG) and 2 (transfer refusals): pop53 against the RFCs and against
Knot and NSD, over real sockets.

Bug 1, RFC 8945 §5.2: a TSIG-signed query whose key we do not know gets NOTAUTH with a TSIG RR
carrying BADKEY (BADSIG, BADTIME for a known key that fails), unsigned (§5.3.2), and keeps the
OPT record (RFC 6891 §7); a correctly signed ordinary query is answered and the answer signed.
Bug 2: a transfer request from a client the ACL does not allow is REFUSED (NSD; RFC 5936 §4.2
does not make it NOTIMP: transfers are implemented); IXFR over UDP from an allowed client gets
the IXFR when it fits, else the single current SOA (RFC 1995 §2)."""
from __future__ import annotations

import socket
import struct
import time
import types

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import pytest

from xfr_support import KEYNAME, OTHER_SECRET, SECRET, tsig_key

from pop53 import config as cfgmod
from pop53.xfr import secondary
from tests.support.refservers import KnotServer, NsdServer, Pop53Server, Zone

ZONE = "wire.test."
TEXT = """$ORIGIN wire.test.
$TTL 300
@ IN SOA ns h {serial} 3600 600 86400 60
@ IN NS ns
ns IN A 192.0.2.53
www IN A 192.0.2.80
{extra}
"""
UNKNOWN = tsig_key(SECRET, "nobody.")       # a key name nobody configured
BAD = tsig_key(OTHER_SECRET, KEYNAME)       # the configured name, a wrong secret


def udp(port, wire, timeout=2.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(65535)


def tcp(port, wire, timeout=2.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        f = s.makefile("rb")
        (n,) = struct.unpack("!H", f.read(2))
        return f.read(n)


def summary(wire):
    """(rcode, TSIG error or None, TSIG MAC length or None, has OPT)"""
    m = dns.message.from_wire(wire, keyring=False)
    t = m.tsig[0] if m.tsig else None
    return (m.rcode(), t.error if t else None, len(t.mac) if t else None, m.edns >= 0)


def signed(rdtype="A", name="www." + ZONE, key=UNKNOWN, at=None, **kw):
    q = dns.message.make_query(name, rdtype, use_edns=0, **kw)
    q.use_tsig(key)
    if at is None:
        return q, q.to_wire()
    real = dns.message.time
    dns.message.time = types.SimpleNamespace(time=lambda: at)   # sign with a wrong clock
    try:
        return q, q.to_wire()
    finally:
        dns.message.time = real


def ixfr(serial, name=ZONE):
    q = dns.message.make_query(name, "IXFR", use_edns=0)
    q.authority.append(dns.rrset.from_text(name, 0, "IN", "SOA", f"ns. h. {serial} 1 1 1 1"))
    return q


# ----------------------------------------------------------------------------- no keys at all

@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """pop53 (`pop53 serve`, no [[key]], no transfer ACL), Knot and NSD, same zone."""
    path = tmp_path_factory.mktemp("wire") / "wire.test.zone"
    path.write_text(TEXT.format(serial=1, extra=""))
    started = {}
    try:
        for cls in (Pop53Server, KnotServer, NsdServer):
            if cls.available():
                started[cls.kind] = cls([Zone.from_file(path)]).start()
        yield started
    finally:
        for s in started.values():
            s.stop()


@pytest.mark.peers
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_bug1_tsig_with_no_keys_is_notauth_badkey_like_knot_and_nsd(peers, transport):
    _q, wire = signed()
    got = {}
    for kind, srv in peers.items():
        got[kind] = summary(srv.query(wire, tcp=transport == "tcp"))
    # RFC 8945 §5.2.1 / §5.3.2: NOTAUTH, TSIG error BADKEY, empty MAC; the OPT stays (RFC 6891 §7)
    assert got["pop53"] == (dns.rcode.NOTAUTH, dns.rcode.BADKEY, 0, True)
    for kind in ("knot", "nsd"):
        if kind in got:
            assert got[kind] == got["pop53"], (kind, got)


@pytest.mark.peers
def test_bug2_transfer_not_allowed_is_refused_like_nsd(peers):
    pop = peers["pop53"]
    cases = {
        "axfr tcp": (dns.message.make_query(ZONE, "AXFR", use_edns=0), True),
        "ixfr tcp": (ixfr(1), True),
        "ixfr udp": (ixfr(1), False),
        "axfr udp": (dns.message.make_query(ZONE, "AXFR", use_edns=0), False),
    }
    got = {c: dns.message.from_wire(pop.query(q.to_wire(), tcp=t)).rcode() for c, (q, t) in cases.items()}
    assert got == {"axfr tcp": dns.rcode.REFUSED, "ixfr tcp": dns.rcode.REFUSED,
                   "ixfr udp": dns.rcode.REFUSED,
                   "axfr udp": dns.rcode.NOTIMP}   # AXFR is not defined over UDP (RFC 5936 §4.2)
    if "nsd" in peers:
        nsd = {c: dns.message.from_wire(peers["nsd"].query(q.to_wire(), tcp=t)).rcode()
               for c, (q, t) in cases.items()}
        assert nsd == got


# ----------------------------------------------------------------------------- with a key

@pytest.fixture
def keyed(tmp_path):
    """pop53 in-process with a [[key]]: zone wire.test. (transfers allowed to 127.0.0.1) and
    deny.test. (allowed only to 192.0.2.1)."""
    (tmp_path / "wire.zone").write_text(TEXT.format(serial=1, extra=""))
    (tmp_path / "deny.zone").write_text(TEXT.format(serial=1, extra="").replace("wire.test.", "deny.test."))
    conf = tmp_path / "pop53.toml"
    conf.write_text(
        '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\n'
        f'[[key]]\nname = "{KEYNAME}"\nalgorithm = "hmac-sha256"\nsecret = "{SECRET}"\n'
        f'[[zone]]\nname = "{ZONE}"\nfile = "{tmp_path / "wire.zone"}"\nallow_transfer = ["127.0.0.1"]\n'
        f'[[zone]]\nname = "deny.test."\nfile = "{tmp_path / "deny.zone"}"\nallow_transfer = ["192.0.2.1"]\n')
    server, service = secondary.build(cfgmod.load(conf))
    server.start()
    service.start()
    server.port = server.addresses[0][1]
    server.dir = tmp_path
    try:
        yield server
    finally:
        service.stop()
        server.stop()


def _control(port, wire, over):
    """A control-plane reply (UDP ones are handed over by the worker's ring: allow a moment)."""
    return udp(port, wire) if over == "udp" else tcp(port, wire)


@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_bug1_tsig_signed_ordinary_query_is_answered_and_signed(keyed, over):
    q, wire = signed(key=tsig_key())
    reply = _control(keyed.port, wire, over)
    # verifies the reply's TSIG against our key and the request MAC (raises when unsigned or bad)
    r = dns.message.from_wire(reply, keyring=q.keyring, request_mac=q.mac)
    assert r.had_tsig and r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert [rd.address for rrset in r.answer for rd in rrset] == ["192.0.2.80"]
    assert r.edns >= 0


@pytest.mark.parametrize("over", ["udp", "tcp"])
@pytest.mark.parametrize("case,key,error", [
    ("unknown key", UNKNOWN, dns.rcode.BADKEY),
    ("bad secret", BAD, dns.rcode.BADSIG),
])
def test_bug1_tsig_errors_with_keys_keep_the_opt_record(keyed, over, case, key, error):
    # RFC 8945 §5.3.2: BADKEY and BADSIG go out unsigned (empty MAC)
    _q, wire = signed(key=key)
    assert summary(_control(keyed.port, wire, over)) == (dns.rcode.NOTAUTH, error, 0, True), case
    # the same for an SOA query, which the transfer code answers itself
    _q, wire = signed("SOA", ZONE, key=key)
    assert summary(_control(keyed.port, wire, over)) == (dns.rcode.NOTAUTH, error, 0, True), case


def badtime_signed_by(reply: bytes, query: dns.message.Message, key: dns.tsig.Key) -> bool:
    """The TSIG MAC of a BADTIME reply checks out with `key` and the request MAC (RFC 8945
    §5.2.3, §4.3.1; dnspython's validate stops at the error code, so the MAC is checked here)."""
    m = dns.message.from_wire(reply, keyring=False)
    rd = m.tsig[0]
    tsig_len = len(m.keyname.to_wire()) + 10 + len(rd.to_digestable())
    arcount = struct.unpack("!H", reply[10:12])[0]
    wire = reply[:10] + struct.pack("!H", arcount - 1) + reply[12:len(reply) - tsig_len]
    ctx = dns.tsig._digest(wire, key, rd, None, query.mac)
    try:
        ctx.verify(rd.mac)
    except dns.tsig.BadSignature:
        return False
    return True


@pytest.mark.parametrize("over", ["udp", "tcp"])
@pytest.mark.parametrize("rdtype,name", [("A", "www." + ZONE), ("SOA", ZONE)])
def test_bug1_badtime_is_signed_with_the_request_key(keyed, over, rdtype, name):
    """RFC 8945 §5.2.3: "A response indicating a BADTIME error MUST be signed by the same key as
    the request", with the server's time in Other Data."""
    q, wire = signed(rdtype, name, key=tsig_key(), at=time.time() - 3600)
    reply = _control(keyed.port, wire, over)
    rcode, error, mac_len, opt = summary(reply)
    assert (rcode, error, opt) == (dns.rcode.NOTAUTH, dns.rcode.BADTIME, True)
    assert mac_len == 32 and badtime_signed_by(reply, q, tsig_key())
    other = dns.message.from_wire(reply, keyring=False).tsig[0].other
    hi, lo = struct.unpack("!HI", other)
    assert abs((hi << 32 | lo) - time.time()) < 60


def test_bug2_transfer_from_a_client_the_acl_denies_is_refused(keyed):
    for q in (dns.message.make_query("deny.test.", "AXFR", use_edns=0), ixfr(1, "deny.test.")):
        assert dns.message.from_wire(tcp(keyed.port, q.to_wire())).rcode() == dns.rcode.REFUSED
    assert dns.message.from_wire(udp(keyed.port, ixfr(1, "deny.test.").to_wire())).rcode() == \
        dns.rcode.REFUSED


def test_bug2_ixfr_over_udp_is_answered(keyed):
    # up to date, or no history to build the IXFR from: the single current SOA (RFC 1995 §2)
    for serial in (1, 0):
        r = dns.message.from_wire(udp(keyed.port, ixfr(serial).to_wire()), one_rr_per_rrset=True)
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
        assert [(rr.rdtype, rr[0].serial) for rr in r.answer] == [(dns.rdatatype.SOA, 1)]
    # a change the journal holds, small enough for UDP: the IXFR itself
    (keyed.dir / "wire.zone").write_text(TEXT.format(serial=2, extra="new IN A 192.0.2.99"))
    keyed.reload()
    r = dns.message.from_wire(udp(keyed.port, ixfr(1).to_wire()), one_rr_per_rrset=True)
    assert r.rcode() == dns.rcode.NOERROR
    seq = [(dns.rdatatype.to_text(rr.rdtype), rd.serial if rr.rdtype == dns.rdatatype.SOA else rd.address)
           for rr in r.answer for rd in rr]
    assert seq == [("SOA", 2), ("SOA", 1), ("SOA", 2), ("A", "192.0.2.99"), ("SOA", 2)]
