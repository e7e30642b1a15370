"""One log line per transfer (issue 14 point 10): type, zone, serial old -> new, bytes, duration,
peer and TSIG key, in and out.  In: from a real Knot primary, whose own log of the same transfer
gives the byte count to compare with.  Out: to a client that reads the raw TCP stream."""
from __future__ import annotations

import logging
import re
import socket
import struct

import dns.message
import dns.rcode
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest

from xfr_support import Recorder, free_port, tsig_key, wait_for

from test_knot_primary import ZONE, engine_config, knot_primary, start_engine
from test_tsig_refusals import LOCAL, local_zone, svc  # noqa: F401  (svc: the fixture)

LINE = re.compile(r"zone (?P<zone>\S+): (?P<type>AXFR|IXFR) (?P<dir>in|out) (?:from|to) "
                  r"(?P<peer>\S+), serial (?P<old>\S+) -> (?P<new>\S+), (?P<bytes>\d+) bytes, "
                  r"(?P<secs>[\d.]+) s, key (?P<key>\S+)$")


def transfer_records(caplog, direction):
    out = []
    for r in caplog.records:
        f = getattr(r, "fields", None)
        if r.name == "pop53.xfr" and f and f.get("event") == "transfer" \
                and f["direction"] == direction:
            m = LINE.match(r.getMessage())
            assert m, f"transfer line not in the documented shape: {r.getMessage()!r}"
            # the text and the JSON fields say the same thing
            assert (m["type"], m["zone"], m["peer"], int(m["bytes"])) == \
                (f["type"], f["zone"], f["peer"], f["bytes"])
            out.append(f)
    return out


def tsig_octets() -> int:
    """Size of the TSIG record our key adds to a message (the same in a query and a reply)."""
    q = dns.message.make_query(ZONE, "SOA")
    plain = len(q.to_wire())
    q.use_tsig(tsig_key())
    return len(q.to_wire()) - plain


def knot_sent_bytes(k, kind):
    """Octets Knot sent in its outgoing transfers of `kind` ("AXFR" / "IXFR").  Knot's log
    counts the messages before it signs them, so each message's TSIG record is added back."""
    return [int(b) + int(n) * tsig_octets() for n, b in re.findall(
        rf"{kind}, outgoing, remote 127\.0\.0\.1@\d+, finished, [\d.]+ seconds, (\d+) messages, "
        r"(\d+) bytes", k.log.read_text())]


@pytest.mark.peers
def test_transfers_in_are_logged_with_what_knot_sent(knot_factory, engines, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pop53.xfr")
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port)
    rec = Recorder()
    start_engine(engines, engine_config(tmp_path, k.port), pop_port, rec)
    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="initial AXFR")
    k.change(ZONE, ("new", "300", "A", "192.0.2.77"))
    wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2 after NOTIFY")

    wait_for(lambda: len(knot_sent_bytes(k, "IXFR")) == 1, 5, what="Knot's IXFR log line")
    lines = transfer_records(caplog, "in")
    assert [(f["type"], f["serial_old"], f["serial_new"]) for f in lines] == \
        [("AXFR", None, 1), ("IXFR", 1, 2)]
    for f in lines:
        assert f["zone"] == ZONE and f["peer"] == f"127.0.0.1:{k.port}" and f["key"] == "xfr."
        assert 0 <= f["seconds"] < 10
    # the byte counts are the primary's own (with the TSIG records Knot leaves out)
    assert [f["bytes"] for f in lines] == knot_sent_bytes(k, "AXFR") + knot_sent_bytes(k, "IXFR")


def _tcp_xfr(port, q) -> list[bytes]:
    """The raw messages of one transfer over TCP (the transfer ends with its second SOA)."""
    wire = q.to_wire()
    msgs, soas, ctx = [], 0, None
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        f = s.makefile("rb")
        while soas < 2:
            (n,) = struct.unpack("!H", f.read(2))
            body = f.read(n)
            msgs.append(body)
            m = dns.message.from_wire(body, keyring=q.keyring, request_mac=q.mac, multi=True,
                                      tsig_ctx=ctx, one_rr_per_rrset=True)
            ctx = m.tsig_ctx
            assert m.rcode() == 0, dns.rcode.to_text(m.rcode())
            soas += sum(1 for rr in m.answer if rr.rdtype == dns.rdatatype.SOA)
    return msgs


def test_transfers_out_are_logged(svc, caplog):
    caplog.set_level(logging.INFO, logger="pop53.xfr")
    svc.set_local_zone(LOCAL, local_zone(2, "b A 192.0.2.2"))
    port = svc.port

    z = dns.zone.Zone(LOCAL, relativize=False)
    q_axfr, _ = dns.xfr.make_query(z, serial=None, keyring=tsig_key(), keyname=tsig_key().name)
    axfr = _tcp_xfr(port, q_axfr)
    q_ixfr, _ = dns.xfr.make_query(z, serial=1, keyring=tsig_key(), keyname=tsig_key().name)
    ixfr = _tcp_xfr(port, q_ixfr)

    lines = transfer_records(caplog, "out")
    assert [(f["type"], f["serial_old"], f["serial_new"], f["bytes"]) for f in lines] == \
        [("AXFR", None, 2, sum(map(len, axfr))), ("IXFR", 1, 2, sum(map(len, ixfr)))]
    for f in lines:
        assert f["zone"] == LOCAL and f["peer"].startswith("127.0.0.1:") and f["key"] == "xfr."
