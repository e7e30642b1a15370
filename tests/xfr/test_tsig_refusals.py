"""Control messages that are unsigned, badly signed, signed with the wrong key, from the wrong host,
or well signed but malformed are refused, counted and logged with the sender (the lecture's
"That's one of ours!").  Over real sockets to the engine's listener."""
from __future__ import annotations

import logging
import time
import types

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.zone
import pytest

from xfr_support import KEYNAME, OTHER_SECRET, SECRET, Recorder, free_port, tsig_key

from pop53.xfr.config import parse_xfr_config
from pop53.xfr.inbound import receipt_clock
from pop53.xfr.service import XfrService

SEC = "sec.example."      # a secondary zone (primary: 127.0.0.1, nobody listening)
LOCAL = "local.example."  # a zone we are primary for; 127.0.0.1 may transfer it with the key

LOCAL_TEXT = """\
$ORIGIN local.example.
$TTL 300
@ SOA ns hostmaster {serial} 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
a A 192.0.2.1
{extra}
"""


def local_zone(serial, extra=""):
    return dns.zone.from_text(LOCAL_TEXT.format(serial=serial, extra=extra), relativize=False)


@pytest.fixture
def svc(engines, tmp_path):
    dead = free_port()
    cfg = parse_xfr_config({
        "xfr": {"status_interval": 0.2, "timeout": 0.5},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET},
                {"name": "other.", "algorithm": "hmac-sha256", "secret": OTHER_SECRET}],
        "zone": [{"name": SEC, "primaries": [f"127.0.0.1:{dead}"], "key": KEYNAME},
                 {"name": LOCAL, "key": KEYNAME, "notify": [f"127.0.0.1:{free_port()}"]}],
    }, "t.toml")
    e = XfrService(cfg, Recorder())
    engines.append(e)
    e.start()
    port = free_port()
    e.start_listener("127.0.0.1", port)
    e.set_local_zone(LOCAL, local_zone(1))
    e.port = port
    return e


def notify(zone=SEC, rdtype="SOA", key=None, answer=None):
    q = dns.message.make_query(zone, rdtype)
    q.flags = dns.flags.AA
    q.set_opcode(dns.opcode.NOTIFY)
    if answer:
        q.answer.append(answer)
    if key is not None:
        q.use_tsig(key)
    return q


def raw_udp(svc, wire, source="127.0.0.1"):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.bind((source, 0))
    try:
        s.sendto(wire, ("127.0.0.1", svc.port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None
    finally:
        s.close()


def tsig_error_of(wire):
    m = dns.message.from_wire(wire, keyring=False)
    return m.rcode(), (m.tsig[0].error if m.tsig else None), (len(m.tsig[0].mac) if m.tsig else None)


BAD = tsig_key(OTHER_SECRET, KEYNAME)          # right name, wrong secret
UNKNOWN = tsig_key(SECRET, "nobody.")          # a key name we do not have
OTHER = tsig_key(OTHER_SECRET, "other.")       # a key we have, but not this zone's


@pytest.mark.parametrize("case,make,source,rcode,tsig_error,reason", [
    ("unsigned", lambda: notify(), "127.0.0.1", dns.rcode.REFUSED, None, "unsigned"),
    ("bad secret", lambda: notify(key=BAD), "127.0.0.1", dns.rcode.NOTAUTH, dns.rcode.BADSIG, "badsig"),
    ("unknown key", lambda: notify(key=UNKNOWN), "127.0.0.1", dns.rcode.NOTAUTH, dns.rcode.BADKEY, "badkey"),
    ("other zone's key", lambda: notify(key=OTHER), "127.0.0.1", dns.rcode.REFUSED, None, "wrongkey"),
    ("not a primary", lambda: notify(key=tsig_key()), "127.0.0.2", dns.rcode.REFUSED, None, "not_primary"),
    ("unknown zone", lambda: notify(zone="nope.example.", key=tsig_key()), "127.0.0.1",
     dns.rcode.NOTAUTH, None, "notauth"),
    ("signed, wrong qtype", lambda: notify(rdtype="A", key=tsig_key()), "127.0.0.1",
     dns.rcode.FORMERR, None, "malformed"),
    ("signed, junk in answer", lambda: notify(
        key=tsig_key(), answer=dns.rrset.from_text(SEC, 300, "IN", "A", "192.0.2.66")),
     "127.0.0.1", dns.rcode.FORMERR, None, "malformed"),
])
def test_notify_refused(svc, caplog, case, make, source, rcode, tsig_error, reason):
    caplog.set_level(logging.WARNING, logger="pop53.xfr")
    before = svc.stats[f"refused.notify.{reason}"]
    reply = raw_udp(svc, make().to_wire(), source=source)
    assert reply is not None, case
    got_rcode, got_err, mac_len = tsig_error_of(reply)
    assert got_rcode == rcode, case
    if tsig_error is not None:
        # RFC 8945 §5.3.2: the error travels in an unsigned TSIG RR (empty MAC).
        assert got_err == tsig_error and mac_len == 0, case
    assert svc.stats[f"refused.notify.{reason}"] == before + 1
    assert svc.stats["notify.accepted"] == 0
    # Logged with the sender and the reason.
    assert any(source in r.getMessage() and reason in r.getMessage() for r in caplog.records), case


def test_signed_malformed_reply_is_signed(svc):
    """A well-signed but malformed NOTIFY gets FORMERR, signed with the same key (the sender
    can trust the refusal)."""
    q = notify(rdtype="A", key=tsig_key())
    r = dns.query.udp(q, "127.0.0.1", port=svc.port, timeout=2)  # verifies the TSIG of the reply
    assert r.rcode() == dns.rcode.FORMERR and r.had_tsig


def test_badtime(svc, monkeypatch):
    import time as _time

    q = notify(key=tsig_key())
    old = _time.time() - 3600
    monkeypatch.setattr("dns.message.time", types.SimpleNamespace(time=lambda: old))
    wire = q.to_wire()
    monkeypatch.undo()
    reply = raw_udp(svc, wire)
    rc, err, mac_len = tsig_error_of(reply)
    # RFC 8945 §5.2.3: BADTIME is signed with the request's key (issue 9)
    assert (rc, err, mac_len) == (dns.rcode.NOTAUTH, dns.rcode.BADTIME, 32)
    assert svc.stats["refused.notify.badtime"] == 1


def test_good_notify_accepted_and_signed(svc):
    r = dns.query.udp(notify(key=tsig_key()), "127.0.0.1", port=svc.port, timeout=2)
    assert r.rcode() == dns.rcode.NOERROR and r.had_tsig and r.flags & dns.flags.AA
    assert r.opcode() == dns.opcode.NOTIFY
    assert svc.stats["notify.accepted"] == 1


def test_garbage_does_not_hurt(svc):
    import random
    import socket

    rnd = random.Random(53)
    # One sending socket for all the garbage, kept open until the end, so that replies to the
    # garbage can never land on the ephemeral port of the good query below.
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for n in range(300):
            wire = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 80)))
            if len(wire) >= 3 and n % 2:
                wire = wire[:2] + bytes([(dns.opcode.NOTIFY << 3)]) + wire[3:]  # look like NOTIFY
            junk.sendto(wire, ("127.0.0.1", svc.port))
            if n % 50 == 49:
                # Pace the flood: a burst bigger than the socket buffer is dropped by the
                # kernel, which would test Linux, not us.
                time.sleep(0.05)
        # Still alive and answering correctly.
        r = dns.query.udp(notify(key=tsig_key()), "127.0.0.1", port=svc.port, timeout=3)
        assert r.rcode() == dns.rcode.NOERROR
    finally:
        junk.close()
    assert svc.stats["refused.notify.malformed"] > 50


# ------------------------------------------------------------------ XFR out, ACL and TSIG

def xfr_reply(svc, q, source="127.0.0.1"):
    import socket
    import struct

    s = socket.create_connection(("127.0.0.1", svc.port), timeout=3, source_address=(source, 0))
    try:
        w = q.to_wire()
        s.sendall(struct.pack("!H", len(w)) + w)
        n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
        return dns.message.from_wire(s.recv(n, socket.MSG_WAITALL), keyring=False)
    finally:
        s.close()


@pytest.mark.parametrize("case,key,source,rcode,reason", [
    ("unsigned", None, "127.0.0.1", dns.rcode.REFUSED, "unsigned"),
    ("bad secret", BAD, "127.0.0.1", dns.rcode.NOTAUTH, "badsig"),
    ("other key", OTHER, "127.0.0.1", dns.rcode.REFUSED, "wrongkey"),
    ("not in ACL", tsig_key(), "127.0.0.2", dns.rcode.REFUSED, "not_allowed"),
])
def test_axfr_refused(svc, case, key, source, rcode, reason):
    q = dns.message.make_query(LOCAL, "AXFR")
    if key is not None:
        q.use_tsig(key)
    r = xfr_reply(svc, q, source)
    assert r.rcode() == rcode, case
    assert not r.answer
    assert svc.stats[f"refused.xfr.{reason}"] == 1


def test_ixfr_without_soa_is_formerr(svc):
    q = dns.message.make_query(LOCAL, "IXFR")
    q.use_tsig(tsig_key())
    r = xfr_reply(svc, q)
    assert r.rcode() == dns.rcode.FORMERR
    assert svc.stats["refused.xfr.malformed"] == 1


def test_axfr_and_ixfr_out(svc):
    # AXFR with dnspython's client (which checks every TSIG of the stream).
    z = dns.zone.Zone(LOCAL, relativize=False)
    q, _ = dns.xfr.make_query(z, serial=None, keyring=tsig_key(), keyname=tsig_key().name)
    dns.query.inbound_xfr("127.0.0.1", z, q, port=svc.port, timeout=3)
    assert z == local_zone(1)

    svc.set_local_zone(LOCAL, local_zone(2, "b A 192.0.2.2"))
    svc.set_local_zone(LOCAL, local_zone(3, "b A 192.0.2.3\nc TXT hello"))
    q, _ = dns.xfr.make_query(z, serial=1, keyring=tsig_key(), keyname=tsig_key().name)
    dns.query.inbound_xfr("127.0.0.1", z, q, port=svc.port, timeout=3)
    assert z == local_zone(3, "b A 192.0.2.3\nc TXT hello")
    assert svc.stats["xfr_out.ixfr"] == 1 and svc.stats["xfr_out.axfr"] == 1

    # Up to date: a single SOA.
    q, _ = dns.xfr.make_query(z, serial=3, keyring=tsig_key(), keyname=tsig_key().name)
    r = xfr_reply(svc, q)
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.SOA]
    # An older serial we have no journal for (2**32-1 is "before" 3 in RFC 1982 arithmetic):
    # an AXFR-style answer (RFC 1995 §4), which the client applies as a full replacement.
    q, _ = dns.xfr.make_query(z, serial=2**32 - 1, keyring=tsig_key(), keyname=tsig_key().name)
    z2 = dns.zone.Zone(LOCAL, relativize=False)
    dns.query.inbound_xfr("127.0.0.1", z2, q, port=svc.port, timeout=3)
    assert z2 == z
    assert svc.stats["xfr_out.axfr"] == 2


def test_big_axfr_is_multi_message(svc):
    extra = "\n".join(f"h{i} TXT \"{'x' * 200}\"" for i in range(2000))
    svc.set_local_zone(LOCAL, local_zone(10, extra))
    z = dns.zone.Zone(LOCAL, relativize=False)
    q, _ = dns.xfr.make_query(z, serial=None, keyring=tsig_key(), keyname=tsig_key().name)
    msgs = list(dns.query.xfr("127.0.0.1", LOCAL, port=svc.port, keyring={tsig_key().name: tsig_key()},
                              keyname=tsig_key().name, timeout=3))
    assert len(msgs) > 3  # ~420 KB: several 64 KiB messages, each signed and verified
    dns.query.inbound_xfr("127.0.0.1", z, q, port=svc.port, timeout=3)
    assert z == local_zone(10, extra)


def test_tsig_time_is_checked_at_receipt():
    """RFC 8945 §5.2.3: a transfer parsed long after it arrived (a big zone in Python) is judged
    by when it was received, and a message that was old on arrival is still BADTIME."""
    clock = receipt_clock()
    q = dns.message.make_query(SEC, "SOA")
    q.use_tsig(tsig_key())
    signed_at = time.time() - 1000
    clock.local.t = signed_at
    try:
        wire = q.to_wire()  # signed 1000 s ago
    finally:
        clock.local.t = None
    keyring = {tsig_key().name: tsig_key()}
    with pytest.raises(dns.tsig.BadTime):
        dns.message.from_wire(wire, keyring=keyring)  # arrived now: too old
    clock.local.t = signed_at + 5  # arrived 5 s after signing, parsed now
    try:
        m = dns.message.from_wire(wire, keyring=keyring)
    finally:
        clock.local.t = None
    assert m.had_tsig
    assert abs(clock.time() - time.time()) < 1  # other callers see the real clock
