"""AXFR straight to records (issue 15 point 3): the transfer's messages are parsed from wire by
the data plane's extension (`_core.XfrReader`, ext/xfrwire.pxi) into the zone-file scanner's
column form (pop53.zone.records.Records), checked by the same checks as a zone file
(pop53.zone.checks) and compiled by the C compile (ext/zonebuild.pxi): no dnspython object per
record.  dnspython still verifies each message's TSIG MAC over the raw message (RFC 8945 §5.3.1:
the first and the last message signed, at most 99 unsigned in between) and parses the rare
types the reader hands it, one record at a time."""
from __future__ import annotations

import struct

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.xfr

from pop53 import _core
from pop53.errors import ZoneError
from pop53.xfr.config import KeyConf, Peer
from pop53.xfr.inbound import _Stream
from pop53.xfr.versions import UpdateRejected
from pop53.zone.records import Records, _Hooks as _ScanHooks
from pop53.zone.zonefile import ZoneData

_QR, _TC = 0x8000, 0x0200
_MAX_UNSIGNED = 99          # RFC 8945 §5.3.1


class _Hooks(_ScanHooks):
    def wire_rdata(self, rdtype: int, msg: bytes, off: int, rdlen: int) -> bytes:
        """A rare type's RDATA, decompressed and checked by dnspython (one record)."""
        return dns.rdata.from_wire(dns.rdataclass.IN, rdtype, msg, off, rdlen).to_wire()


class _Tsig:
    """The TSIG chain of a transfer's responses, verified by dnspython (dns.tsig.validate, as
    dns.message.from_wire does) over each raw message."""

    def __init__(self, query: dns.message.Message):
        self.key = query.keyring if query.had_tsig else None
        self.mac = query.mac
        self.ctx = None
        self.unsigned = 0

    def check(self, msg: bytes, tsig_start: int, received: float, last: bool) -> None:
        if self.key is None:
            if tsig_start >= 0:
                raise dns.message.UnknownTSIGKey("got signed message without keyring")
            return
        if tsig_start < 0:
            if self.ctx is None:
                raise dns.exception.FormError("the first message of a signed transfer has no TSIG")
            self.unsigned += 1
            if last or self.unsigned > _MAX_UNSIGNED:
                raise dns.exception.FormError("too many unsigned messages in a signed transfer")
            self.ctx.update(msg)
            return
        owner, used = dns.name.from_wire(msg, tsig_start)
        p = tsig_start + used
        _t, _c, _ttl, rdlen = struct.unpack_from("!HHIH", msg, p)
        rd = dns.rdata.from_wire(dns.rdataclass.ANY, dns.rdatatype.TSIG, msg, p + 10, rdlen)
        self.ctx = dns.tsig.validate(msg, self.key, owner, rd, int(received), self.mac,
                                     tsig_start, self.ctx, True)
        self.unsigned = 0


def xfr_query(origin: dns.name.Name, key: KeyConf | None,
              serial: int | None = None) -> dns.message.Message:
    """The AXFR query, or (serial: ours) the IXFR query with our SOA in the authority section
    (RFC 1995 §3; the SOA's other fields are not read by the primary)."""
    rdtype = dns.rdatatype.AXFR if serial is None else dns.rdatatype.IXFR
    q = dns.message.make_query(origin, rdtype, dns.rdataclass.IN, use_edns=False)
    q.flags = 0
    if serial is not None:
        soa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                                  f". . {serial} 0 0 0 0")
        q.find_rrset(q.authority, origin, dns.rdataclass.IN, dns.rdatatype.SOA,
                     create=True).add(soa, 0)
    if key is not None:
        q.use_tsig(key.tsig_key())
    return q


def axfr_query(origin: dns.name.Name, key: KeyConf | None) -> dns.message.Message:
    return xfr_query(origin, key)


def parse_messages(origin: dns.name.Name, query: dns.message.Message, messages,
                   source: str, max_records: int, client_serial: int | None = None,
                   max_diff: int | None = None):
    """Records of the AXFR whose response messages `messages` yields as (time received, wire).
    With `client_serial` (an IXFR), the reader itself: its `style` says what came (1 a full
    zone, 2 steps, 3 up to date) and its records are every record in arrival order.
    Raises dns.exception.FormError (malformed), dns.xfr.TransferError (an error rcode),
    dns.tsig errors, UpdateRejected (over max_records, or max_diff for IXFR steps)."""
    reader = _core.XfrReader(origin.to_wire(), source, _Hooks(origin), client_serial)
    qtype = query.question[0].rdtype
    tsig = _Tsig(query)
    qkey = origin.to_wire().lower()
    first = True
    for received, msg in messages:
        try:
            info = reader.feed(msg)
        except _core.XfrWireError as exc:
            raise dns.exception.FormError(str(exc)) from None
        flags = info["flags"]
        if info["id"] != query.id or not flags & _QR or dns.opcode.from_flags(flags) != dns.opcode.QUERY:
            raise dns.exception.FormError("not a response to the transfer query")
        rcode = dns.rcode.from_flags(flags, 0)
        if rcode != dns.rcode.NOERROR:
            raise dns.xfr.TransferError(rcode)
        if flags & _TC:
            raise dns.exception.FormError("truncated transfer message")
        if info["qname"] is not None and (info["qname"].lower() != qkey or
                                          info["qtype"] != qtype or
                                          info["qclass"] != dns.rdataclass.IN):
            raise dns.exception.FormError("the question does not match the transfer query")
        if first and info["qname"] is None:
            raise dns.exception.FormError("first message without the question")
        first = False
        tsig.check(msg, info["tsig"], received, info["done"])
        if client_serial is not None and reader.style == 2:
            if reader.records > max_diff:
                raise UpdateRejected(f"IXFR of {origin} exceeds [xfr] max_diff ({max_diff})")
        elif reader.records > max_records:
            raise UpdateRejected(f"transfer of {origin} exceeds [xfr] max_records ({max_records})")
        if info["done"]:
            return reader if client_serial is not None else Records(reader.result())
    raise EOFError("the transfer ended before its closing SOA")


def _checked(origin: dns.name.Name, source: str, records: Records) -> ZoneData:
    from pop53.zone.checks import validate_records

    data = ZoneData(origin=origin, source=source, columns=records)
    try:
        validate_records(data)
    except ZoneError as exc:
        raise UpdateRejected(str(exc)) from None
    return data


def xfr_records(primary: Peer, origin: dns.name.Name, key: KeyConf | None, timeout: float,
                lifetime: float, max_bytes: int, max_records: int, serial: int | None = None,
                max_diff: int = 0):
    """A transfer of `origin` from `primary` read from wire: AXFR, or IXFR from our `serial`.
    Returns (kind, payload, octets received): ("full", checked ZoneData in column form), ("steps",
    tuple of pop53.xfr.recversion.WireStep) or ("uptodate", None).  Raises as parse_messages,
    UpdateRejected for a zone that fails the zone-file checks, OSError, EOFError."""
    from pop53.xfr.recversion import split_steps

    query = xfr_query(origin, key, serial)
    stream = _Stream(primary, query.to_wire(), timeout, lifetime, max_bytes)
    source = f"<{'AXFR' if serial is None else 'IXFR'} from {primary.host}#{primary.port}>"
    try:
        got = parse_messages(origin, query, stream, source, max_records, serial, max_diff)
    finally:
        stream.close()
    if serial is None:
        return "full", _checked(origin, source, got), stream.received
    if got.style == 3:
        return "uptodate", None, stream.received
    records = Records(got.result())
    if got.style == 1:
        return "full", _checked(origin, source, records), stream.received
    return "steps", split_steps(records, origin), stream.received


def axfr_zone(primary: Peer, origin: dns.name.Name, key: KeyConf | None, timeout: float,
              lifetime: float, max_bytes: int, max_records: int) -> ZoneData:
    """A full transfer of `origin` from `primary`, as checked zone data in column form (what
    the compiler's C path takes).  Raises as parse_messages, UpdateRejected for a zone that
    fails the zone-file checks, OSError, EOFError."""
    return xfr_records(primary, origin, key, timeout, lifetime, max_bytes, max_records)[1]
