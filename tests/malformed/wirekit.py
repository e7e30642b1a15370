"""Hand-built DNS wire messages and the reply invariants every malformed-input test checks.

The builders write bytes directly (not through dnspython) so a test can place a pointer, a
count or an option exactly where it wants: the point is to send what a well-behaved library
would refuse to produce.  `check_reply` is the one place that says what a reply to such input
must look like (RFC 1035 §4.1.1 header rules, ARCHITECTURE.md point 4: error replies carry at
most header, question and OPT).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode

REPO = Path(__file__).resolve().parents[2]
# the shared material beside the repository; POP53_SHARED points elsewhere (a git worktree)
SHARED = Path(os.environ.get("POP53_SHARED", REPO / ".." / "shared"))
CORPUS = SHARED / "corpora" / "bind9-dns_message_parse"
EXAMPLE_ZONE = REPO / "src" / "pop53" / "data" / "example.com.zone"
CLIENT = ("127.0.0.1", 53530)

# header flag bits (RFC 1035 §4.1.1)
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
CD = 0x0010

T_A, T_NS, T_SOA, T_TXT, T_AAAA, T_OPT = 1, 2, 6, 16, 28, 41
T_TKEY, T_TSIG, T_IXFR, T_AXFR, T_MAILB, T_MAILA, T_ANY = 249, 250, 251, 252, 253, 254, 255
C_IN, C_CH, C_HS, C_NONE, C_ANY = 1, 3, 4, 254, 255

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
ERROR_RCODES = {FORMERR, NOTIMP, REFUSED, BADVERS}


def header(id_: int = 0x1234, flags: int = RD, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0, opcode: int = 0) -> bytes:
    return struct.pack("!HHHHHH", id_, flags | (opcode << 11), qd, an, ns, ar)


def name(text: str | bytes) -> bytes:
    """Uncompressed wire form of a dotted name (no escapes; labels as given)."""
    if isinstance(text, str):
        text = text.encode()
    out = b""
    for label in [x for x in text.split(b".") if x]:
        out += bytes([len(label)]) + label
    return out + b"\x00"


def labels(*parts: bytes) -> bytes:
    """Wire name from raw labels (any bytes, any length: the caller wants it malformed)."""
    return b"".join(bytes([len(p)]) + p for p in parts) + b"\x00"


def question(qname: bytes | str = "www.example.com", qtype: int = T_A, qclass: int = C_IN) -> bytes:
    if isinstance(qname, str):
        qname = name(qname)
    return qname + struct.pack("!HH", qtype, qclass)


def rr(owner: bytes, rtype: int, rclass: int = C_IN, ttl: int = 300, rdata: bytes = b"",
       rdlen: int | None = None) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl,
                               len(rdata) if rdlen is None else rdlen) + rdata


def option(code: int, payload: bytes, olen: int | None = None) -> bytes:
    return struct.pack("!HH", code, len(payload) if olen is None else olen) + payload


def opt(udp: int = 1232, ext_rcode: int = 0, version: int = 0, do: bool = False,
        options: bytes = b"", owner: bytes = b"\x00", rdlen: int | None = None) -> bytes:
    """RFC 6891 §6.1.2 OPT pseudo-RR: CLASS = payload size, TTL = ext-rcode|version|DO|Z."""
    ttl = (ext_rcode << 24) | (version << 16) | (0x8000 if do else 0)
    return rr(owner, T_OPT, udp, ttl, options, rdlen)


def ecs(family: int, source: int, scope: int, addr: bytes) -> bytes:
    """RFC 7871 §6 EDNS Client Subnet option."""
    return option(8, struct.pack("!HBB", family, source, scope) + addr)


def tsig(key: str = "key.example.com", orig_id: int = 0x1234) -> bytes:
    """A TSIG RR shaped per RFC 8945 §4.2 (hmac-sha256, a 32-byte MAC).  The data plane only
    looks at its type and position; the MAC is never verified there."""
    rdata = (name("hmac-sha256") + struct.pack("!HIH", 0, 1_700_000_000, 300)
             + struct.pack("!H", 32) + b"\x11" * 32 + struct.pack("!HHH", orig_id, 0, 0))
    return rr(name(key), T_TSIG, C_ANY, 0, rdata)


def query(qname="www.example.com", qtype=T_A, qclass=C_IN, *, id_=0x1234, flags=RD, opcode=0,
          an=b"", an_n=0, ns=b"", ns_n=0, ar=b"", ar_n=0, qd=1) -> bytes:
    return (header(id_, flags, qd, an_n, ns_n, ar_n, opcode) + question(qname, qtype, qclass)
            + an + ns + ar)


def question_end(wire: bytes) -> int | None:
    """Offset just past the (single, uncompressed) question, or None if there is none."""
    if len(wire) < 12 or struct.unpack("!H", wire[4:6])[0] < 1:
        return None
    p = 12
    while p < len(wire):
        c = wire[p]
        if c == 0:
            return p + 5 if p + 5 <= len(wire) else None
        if c & 0xC0:
            return None
        p += 1 + c
    return None


def opt_of(reply: bytes) -> tuple[int, int, int, int] | None:
    """(udp size, extended rcode, version, flags) of the OPT in the additional section of one
    of *our* error replies (header, question, OPT: no compression), read from the raw bytes so
    that dnspython's folding of the extended rcode cannot hide a wrong split."""
    qd, an, ns, ar = struct.unpack("!HHHH", reply[4:12])
    if ar == 0:
        return None
    p = question_end(reply) if qd else 12
    assert p is not None
    assert reply[p] == 0, "OPT owner must be the root"
    rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", reply[p + 1:p + 11])
    assert rtype == T_OPT
    return rclass, ttl >> 24, (ttl >> 16) & 0xFF, ttl & 0xFFFF


def _tsig_unverified(message, keyname):
    return False        # dnspython: a false key reads the TSIG record without checking its MAC


def read_reply(data: bytes) -> dns.message.Message:
    """dnspython's reading of a reply; a TSIG record in it is read but not verified (no key
    here: the MAC is the transfer tests' business, the wire format is ours)."""
    return dns.message.from_wire(data, keyring=_tsig_unverified)


def check_reply(wire: bytes, reply: bytes | None, parse=read_reply) -> dns.message.Message:
    """Invariants of any reply to a query we did not drop.  Returns the parsed message.
    ``parse`` reads the reply (read_reply; a memo of it for bulk runs)."""
    assert reply is not None, "a query of at least 12 octets with QR=0 must not be dropped"
    assert len(reply) >= 12
    qid, qflags = struct.unpack("!HH", wire[:4])
    rid, rflags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    assert rid == qid, "the ID is copied (RFC 1035 §4.1.1)"
    assert rflags & QR, "QR is set in a reply"
    assert (rflags & RD) == (qflags & RD), "RD is copied (RFC 1035 §4.1.1)"
    assert (rflags >> 11) & 0xF == (qflags >> 11) & 0xF, "OPCODE is copied"
    assert qd in (0, 1)
    qend = question_end(wire)
    if qd:
        # the question echoed byte for byte (case preserved: 0x20)
        assert qend is not None and reply[12:qend] == wire[12:qend]
    data = reply
    if (rflags >> 11) & 0xF == 5:
        # dnspython reads UPDATE (RFC 2136) semantically (the zone section must be one SOA);
        # the wire format is what we check here, so parse it as a QUERY.
        data = reply[:2] + bytes([reply[2] & 0x87]) + reply[3:]
    msg = parse(data)
    assert msg.id == qid
    if int(msg.rcode()) in ERROR_RCODES:
        assert an == 0 and ns == 0, "error replies carry no answer or authority records"
        assert ar <= 1, "error replies carry at most the OPT in additional"
        if ar:
            assert msg.edns == 0, "our OPT is version 0 (RFC 6891 §6.1.3)"
    return msg


def rcode_of(msg: dns.message.Message) -> int:
    return int(msg.rcode())


# ---------------------------------------------------------------------------------------------
# seeds and byte-level mutations (tests/fuzz, the "every reply parses" property)
# ---------------------------------------------------------------------------------------------
SEEDS = [
    query(),
    query("WwW.eXaMpLe.CoM", ar=opt(do=True), ar_n=1),
    query("www.z", 16, ar=opt(udp=4096, options=ecs(1, 24, 0, b"\xc6\x33\x64")
                              + option(10, b"c" * 8) + option(3, b"")), ar_n=1),
    query("many.z", 1, ar=opt(udp=512), ar_n=1),
    query("example.com", 2, ar=opt() + tsig(), ar_n=2),
    query("alias.z", 1, ar=rr(b"\xc0\x0c", 1, rdata=b"\x01\x02\x03\x04") + opt(), ar_n=2),
    query("example.com", 251, ns=rr(b"\xc0\x0c", 6, rdata=b"\x00" * 22), ns_n=1),
]
MUTATION_OPS = ("flip", "set", "insert", "delete", "cut")


def mutate(wire: bytes, ops) -> bytes:
    """Apply (op, position, value) edits: flip a bit, set a byte, insert, delete, cut."""
    b = bytearray(wire)
    for op, pos, val in ops:
        if not b and op != "insert":
            continue
        i = pos % (len(b) + (1 if op == "insert" else 0))
        if op == "flip":
            b[i] ^= 1 << (val % 8)
        elif op == "set":
            b[i] = val
        elif op == "insert":
            b[i:i] = bytes([val])
        elif op == "delete":
            del b[i]
        else:
            del b[i:]
    return bytes(b)
