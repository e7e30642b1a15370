"""Every row of the bad-input decision table (ext/query.pxi core_answer; ARCHITECTURE.md point 4).

One list of cases: the bytes, the expected outcome (drop, an rcode, or the control-plane
fallback) and why (the RFC).  Each case is sent through `pop53.answer` over UDP and TCP and
through `_core.answer` (which also reports the action), and every reply is checked against the
invariants in wirekit.check_reply (ID and RD copied, QR set, question echoed byte for byte,
error replies carry at most header, question and OPT) and parsed with dnspython.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import pytest

import pop53
from pop53 import _core

from .wirekit import (
    BADVERS, C_ANY, C_CH, C_HS, C_IN, C_NONE, CD, CLIENT, EXAMPLE_ZONE, FORMERR, NOERROR,
    NOTIMP, NXDOMAIN, QR, RD, REFUSED, T_A, T_AXFR, T_IXFR, T_MAILA, T_MAILB, T_NS, T_OPT,
    T_SOA, T_TKEY, T_TSIG, T_TXT, check_reply, ecs, header, labels, name, opt, opt_of,
    option, query, question, rr, tsig,
)

ZONES = Path(__file__).resolve().parent / "zones"

DROP = "drop"
CONTROL = "control"

# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
Q = question("www.example.com")          # 12 + 21 = 33: first byte after the question
AFTER_Q = 12 + len(Q)
A_RDATA = bytes([192, 0, 2, 1])
SOA_RDATA = name("ns1.example.com") + name("hostmaster.example.com") + struct.pack(
    "!IIIII", 1, 7200, 900, 1209600, 300)
NXNAME = "nx.example.com"


def with_ar(*records: bytes, qname="www.example.com", qtype=T_A, flags=RD, opcode=0,
            tail: bytes = b"") -> bytes:
    """A query whose additional section is exactly `records` (ARCOUNT = their number)."""
    return query(qname, qtype, ar=b"".join(records), ar_n=len(records), flags=flags,
                 opcode=opcode) + tail


def ar_owner(owner: bytes, **kw) -> bytes:
    """One additional A record whose owner is `owner` (starts at offset AFTER_Q)."""
    return with_ar(rr(owner, T_A, rdata=A_RDATA), **kw)


def long_labels(total_prefix: int) -> list[bytes]:
    """Labels (63 octets max) whose wire form is exactly total_prefix octets."""
    out = []
    while total_prefix > 0:
        n = min(63, total_prefix - 1)
        assert n >= 1
        out.append(b"a" * n)
        total_prefix -= n + 1
    return out


EXAMPLE_COM = name("example.com")                  # 13 octets
NAME_255 = labels(*long_labels(255 - len(EXAMPLE_COM)), b"example", b"com")
NAME_256 = labels(*long_labels(256 - len(EXAMPLE_COM)), b"example", b"com")
assert len(NAME_255) == 255 and len(NAME_256) == 256
NAME_127_LABELS = labels(*[b"x"] * 127)                 # 255 octets, the most labels possible
NAME_128_LABELS = labels(*[b"x"] * 128)
assert len(NAME_127_LABELS) == 255

# A TSIG-signed query exactly as dnspython (a real client library) writes it.
_signed = dns.message.make_query("www.example.com", "A")
_signed.use_tsig(dns.tsigkeyring.from_text({"key.example.com.": "c2VjcmV0c2VjcmV0c2VjcmV0"}),
                 algorithm=dns.tsig.HMAC_SHA256)
TSIG_SIGNED = _signed.to_wire()


@dataclass(frozen=True)
class Case:
    id: str
    wire: bytes
    expect: str | int           # DROP, CONTROL (+ fallback rcode in `rcode`), or an rcode
    reason: str
    rcode: int | None = None    # for CONTROL: the fallback rcode when no control plane takes it
    rcode_udp: int | None = None  # ... over UDP, when it differs from TCP's
    opt: bool | None = None     # the reply must (True) / must not (False) carry an OPT
    responder: dict = field(default_factory=dict)
    answers: int | None = None  # expected ANCOUNT for non-error replies


CASES: list[Case] = [
    # --- drop: not a query we can even answer ------------------------------------------------
    Case("empty", b"", DROP, "shorter than a header (RFC 1035 §4.1.1): nothing to reply to"),
    Case("1-octet", b"\x12", DROP, "shorter than a header"),
    Case("11-octets", header()[:11], DROP, "shorter than a header"),
    Case("qr-response", query(flags=QR | RD), DROP,
         "QR=1 is a response; answering responses invites reflection loops (RFC 1035 §4.1.1)"),
    Case("qr-response-update", query(flags=QR, opcode=5), DROP, "QR=1 wins over the opcode"),
    Case("qr-header-only", header(flags=QR, qd=0), DROP, "QR=1 header only"),
    Case("qr-garbage", header(flags=QR | 0x7F) + b"\xff" * 40, DROP, "QR=1, garbage body"),
    # --- opcode ----------------------------------------------------------------------------
    *[Case(f"opcode-{op}", query(opcode=op), NOTIMP,
           f"opcode {op} is not QUERY/NOTIFY (RFC 1035 §4.1.1, RFC 6895 §2.2)")
      for op in (1, 2, 3, 5, 6, 7, 15)],
    Case("opcode-update-no-question", header(qd=0, opcode=5), NOTIMP,
         "the opcode is judged before the counts: UPDATE is NOTIMP even with QDCOUNT 0"),
    Case("opcode-status-garbage", header(opcode=2) + b"\xc0\xff\xff", NOTIMP,
         "unknown opcode: NOTIMP whatever follows"),
    # --- QDCOUNT -----------------------------------------------------------------------------
    Case("qdcount-0", header(qd=0), FORMERR, "QDCOUNT must be 1 (RFC 9619 §2)"),
    Case("qdcount-0-with-question", header(qd=0) + Q, FORMERR,
         "QDCOUNT 0: the question bytes are not a question"),
    Case("qdcount-2", header(qd=2) + Q + question("example.com", T_NS), FORMERR,
         "QDCOUNT 2 (RFC 9619 §2: exactly one question)"),
    Case("qdcount-2-one-present", header(qd=2) + Q, FORMERR, "QDCOUNT 2, one question"),
    Case("qdcount-65535", header(qd=0xFFFF) + Q, FORMERR, "QDCOUNT 65535"),
    Case("qdcount-1-missing", header(qd=1), FORMERR, "QDCOUNT 1 but no question"),
    # --- the question name ---------------------------------------------------------------------
    Case("qname-label-63", query(labels(b"a" * 63, b"example", b"com")), NXDOMAIN,
         "a 63-octet label is legal (RFC 1035 §2.3.4)"),
    Case("qname-label-64", query(labels(b"a" * 64, b"example", b"com")), FORMERR,
         "label > 63 octets: length byte 0x40 is not a normal label (RFC 1035 §2.3.4)"),
    Case("qname-255", query(NAME_255), NXDOMAIN, "a 255-octet name is legal (RFC 1035 §2.3.4)"),
    Case("qname-256", query(NAME_256), FORMERR, "name > 255 octets (RFC 1035 §2.3.4)"),
    Case("qname-127-labels", query(NAME_127_LABELS), REFUSED,
         "127 one-octet labels = 255 octets: legal, outside our zones"),
    Case("qname-128-labels", query(NAME_128_LABELS), FORMERR, "128 labels = 257 octets"),
    Case("qname-pointer-to-12", header() + b"\xc0\x0c" + struct.pack("!HH", T_A, C_IN),
         FORMERR, "compression pointer in the question: it can only point at itself or the "
         "header (RFC 1035 §4.1.4: pointers refer to a prior occurrence)"),
    Case("qname-pointer-to-header", header() + b"\xc0\x00" + struct.pack("!HH", T_A, C_IN),
         FORMERR, "pointer into the header"),
    Case("qname-label-then-pointer", header() + b"\x03www\xc0\x0c" + struct.pack("!HH", T_A, C_IN),
         FORMERR, "pointer back into the question itself: a loop"),
    Case("qname-pointer-past-end", header() + b"\xc0\xff", FORMERR, "pointer past the end"),
    Case("qname-ext-label-0x40", header() + b"\x41\x08\xff\x00" + struct.pack("!HH", T_A, C_IN),
         FORMERR, "extended label type 0x40 (RFC 6891 §5, bit-string labels RFC 2673: obsolete)"),
    Case("qname-ext-label-0x80", header() + b"\x80\x00" + struct.pack("!HH", T_A, C_IN),
         FORMERR, "reserved label type 0x80 (RFC 1035 §4.1.4)"),
    Case("qname-unterminated", header() + b"\x03www\x07example", FORMERR,
         "name runs off the end (no root label)"),
    Case("qname-label-past-end", header() + b"\x10abc", FORMERR, "label longer than the rest"),
    Case("question-no-type", header() + name("www.example.com"), FORMERR,
         "truncated question: no QTYPE/QCLASS"),
    Case("question-half-type", header() + name("www.example.com") + b"\x00\x01\x00", FORMERR,
         "truncated question: 3 of 4 octets of QTYPE/QCLASS"),
    # --- compression in later records: loops, forward, past the end ----------------------------
    Case("ar-pointer-backward-ok", ar_owner(b"\xc0\x0c"), NOERROR,
         "a backward pointer to the question name is legal (RFC 1035 §4.1.4)", answers=1),
    Case("ar-pointer-to-pointer-ok",
         with_ar(rr(b"\xc0\x0c", T_A, rdata=A_RDATA), rr(struct.pack("!H", 0xC000 | AFTER_Q),
                                                         T_A, rdata=A_RDATA)),
         NOERROR, "a pointer to an earlier pointer is legal", answers=1),
    Case("ar-pointer-self-loop", ar_owner(struct.pack("!H", 0xC000 | AFTER_Q)), FORMERR,
         "pointer to itself: a loop"),
    Case("ar-pointer-loop-via-label", ar_owner(b"\x01a" + struct.pack("!H", 0xC000 | AFTER_Q)),
         FORMERR, "label then a pointer back to its own start: a loop"),
    Case("ar-pointer-mutual-loop",
         with_ar(rr(b"\x01a" + struct.pack("!H", 0xC000 | (AFTER_Q + 4 + 10 + 4)), T_A,
                    rdata=A_RDATA),
                 rr(b"\x01b" + struct.pack("!H", 0xC000 | AFTER_Q), T_A, rdata=A_RDATA)),
         FORMERR, "two names pointing at each other (one pointer is necessarily forward)"),
    Case("ar-pointer-forward",
         with_ar(rr(struct.pack("!H", 0xC000 | (AFTER_Q + 2 + 10 + 4)), T_A, rdata=A_RDATA),
                 rr(name("fwd.example.com"), T_A, rdata=A_RDATA)),
         FORMERR, "forward pointer to a well-formed name (RFC 1035 §4.1.4: prior occurrence)"),
    Case("ar-pointer-past-end", ar_owner(b"\xff\xff"), FORMERR, "pointer past the end"),
    Case("ar-pointer-into-header", ar_owner(b"\xc0\x05"), FORMERR, "pointer into the header"),
    Case("ar-pointer-truncated", query(ar=b"\xc0", ar_n=1), FORMERR,
         "message ends inside a pointer"),
    Case("ar-ext-label-0x40", ar_owner(b"\x41\x00"), FORMERR, "extended label type 0x40"),
    Case("ar-ext-label-0x80", ar_owner(b"\x80\x00"), FORMERR, "label type 0x80"),
    Case("ar-name-255-via-pointer",
         ar_owner(labels(*long_labels(255 - 17))[:-1] + b"\xc0\x0c"), NOERROR,
         "238 literal octets + the 17-octet question name = 255: legal", answers=1),
    Case("ar-name-256-via-pointer",
         ar_owner(labels(*long_labels(256 - 17))[:-1] + b"\xc0\x0c"), FORMERR,
         "literal labels + pointer = 256 octets > 255 (RFC 1035 §2.3.4)"),
    # --- answer / authority counts ------------------------------------------------------------
    Case("ancount-1", query(an=rr(b"\xc0\x0c", T_A, rdata=A_RDATA), an_n=1), FORMERR,
         "a query carries no answer records (RFC 1035 §4.1.1; NSD/Knot: FORMERR)"),
    Case("ancount-1-missing", query(an_n=1), FORMERR, "ANCOUNT 1, nothing there"),
    Case("nscount-1", query(ns=rr(name("example.com"), T_SOA, rdata=SOA_RDATA), ns_n=1), FORMERR,
         "authority records only in IXFR queries (RFC 1995 §3)"),
    Case("nscount-1-ixfr", query("example.com", T_IXFR,
                                 ns=rr(b"\xc0\x0c", T_SOA, rdata=SOA_RDATA), ns_n=1),
         CONTROL, "IXFR carries the client's SOA in authority (RFC 1995 §3): control plane",
         rcode=REFUSED),
    Case("arcount-1-missing", query(ar_n=1), FORMERR, "ARCOUNT 1, nothing there"),
    Case("ar-rr-header-truncated", query(ar=b"\x00\x00\x01\x00", ar_n=1), FORMERR,
         "additional RR ends inside its fixed header"),
    Case("ar-rdlength-past-end", query(ar=rr(b"\x00", T_A, rdata=A_RDATA, rdlen=40), ar_n=1),
         FORMERR, "RDLENGTH runs past the end of the message"),
    Case("ar-plain-record-ignored", ar_owner(name("x.example.com")), NOERROR,
         "unknown additional data in a query is ignored", answers=1),
    # --- OPT placement (RFC 6891 §6.1.1) ------------------------------------------------------
    Case("opt-ok", with_ar(opt()), NOERROR, "one OPT owned by the root, in additional",
         opt=True, answers=1),
    Case("opt-two", with_ar(opt(), opt()), FORMERR,
         "more than one OPT: FORMERR (RFC 6891 §6.1.1)"),
    Case("opt-owner-not-root", with_ar(opt(owner=name("com"))), FORMERR,
         "OPT owner must be the root (RFC 6891 §6.1.2)"),
    Case("opt-in-answer", query(an=opt(), an_n=1), FORMERR, "OPT in the answer section"),
    Case("opt-in-authority", query(ns=opt(), ns_n=1), FORMERR, "OPT in the authority section"),
    Case("opt-in-authority-ixfr", query("example.com", T_IXFR, ns=opt(), ns_n=1), FORMERR,
         "OPT in authority even where authority is allowed (IXFR)"),
    Case("opt-in-answer-notify", query("example.com", T_SOA, opcode=4, an=opt(), an_n=1),
         FORMERR, "OPT in the answer of a NOTIFY (which may carry an answer, RFC 1996 §3.7)"),
    Case("opt-rdlength-past-end", with_ar(opt(options=b"", rdlen=10)), FORMERR,
         "OPT RDLENGTH past the end"),
    # --- OPT options ---------------------------------------------------------------------------
    Case("opt-option-truncated-header", with_ar(opt(options=b"\x00\x0a\x00")), FORMERR,
         "3 octets where an option header needs 4 (RFC 6891 §6.1.2)"),
    Case("opt-option-length-past-rdata", with_ar(opt(options=option(10, b"c" * 8, olen=12))),
         FORMERR, "OPTION-LENGTH runs past RDLENGTH"),
    Case("opt-unknown-option", with_ar(opt(options=option(65001, b"xyz"))), NOERROR,
         "unknown options are ignored (RFC 6891 §6.1.2)", opt=True, answers=1),
    Case("opt-nsid-empty", with_ar(opt(options=option(3, b""))), NOERROR,
         "NSID request (RFC 5001 §2.1)", opt=True, answers=1),
    Case("ecs-ok-v4-24", with_ar(opt(options=ecs(1, 24, 0, bytes([198, 51, 100])))), NOERROR,
         "well-formed ECS /24 (RFC 7871 §6)", opt=True, answers=1),
    Case("ecs-ok-v4-0", with_ar(opt(options=ecs(1, 0, 0, b""))), NOERROR,
         "ECS /0: no address octets (RFC 7871 §7.1.2)", opt=True, answers=1),
    Case("ecs-ok-v6-56", with_ar(opt(options=ecs(2, 56, 0, bytes.fromhex("20010db8000001")))),
         NOERROR, "ECS IPv6 /56", opt=True, answers=1),
    Case("ecs-ok-v4-23", with_ar(opt(options=ecs(1, 23, 0, bytes([198, 51, 100])))), NOERROR,
         "/23 with the 24th bit zero", opt=True, answers=1),
    Case("ecs-too-short", with_ar(opt(options=option(8, b"\x00\x01\x18"))), FORMERR,
         "ECS shorter than FAMILY+SOURCE+SCOPE (RFC 7871 §6)"),
    Case("ecs-family-0", with_ar(opt(options=ecs(0, 0, 0, b""))), FORMERR,
         "unknown FAMILY 0 (RFC 7871 §7.1.1)"),
    Case("ecs-family-3", with_ar(opt(options=ecs(3, 8, 0, b"\x01"))), FORMERR,
         "unknown FAMILY 3 (RFC 7871 §7.1.1)"),
    Case("ecs-v4-source-33", with_ar(opt(options=ecs(1, 33, 0, b"\x01\x02\x03\x04\x80"))),
         FORMERR, "IPv4 SOURCE PREFIX-LENGTH 33 > 32 (RFC 7871 §7.1.1)"),
    Case("ecs-v6-source-129", with_ar(opt(options=ecs(2, 129, 0, b"\x20" + b"\x00" * 16))),
         FORMERR, "IPv6 SOURCE PREFIX-LENGTH 129 > 128 (RFC 7871 §7.1.1)"),
    Case("ecs-scope-nonzero", with_ar(opt(options=ecs(1, 24, 24, bytes([198, 51, 100])))),
         FORMERR, "SCOPE PREFIX-LENGTH must be 0 in queries (RFC 7871 §6)"),
    Case("ecs-address-too-long", with_ar(opt(options=ecs(1, 24, 0, bytes([198, 51, 100, 0])))),
         FORMERR, "4 address octets for /24: more than ceil(24/8) (RFC 7871 §6, §7.1.1)"),
    Case("ecs-address-too-short", with_ar(opt(options=ecs(1, 24, 0, bytes([198, 51])))), FORMERR,
         "2 address octets for /24"),
    Case("ecs-bits-beyond-prefix", with_ar(opt(options=ecs(1, 23, 0, bytes([198, 51, 101])))),
         FORMERR, "a non-zero bit beyond the /23 prefix (RFC 7871 §6: MUST be zero)"),
    Case("ecs-v6-bits-beyond-prefix",
         with_ar(opt(options=ecs(2, 33, 0, bytes.fromhex("20010db801")))), FORMERR,
         "IPv6 /33 with bits set beyond the prefix"),
    *[Case(f"cookie-len-{n}", with_ar(opt(options=option(10, b"k" * n))), NOERROR,
           f"COOKIE of {n} octets is legal (RFC 7873 §4: client 8, server 8..32)", opt=True,
           answers=1)
      for n in (8, 16, 24, 40)],
    *[Case(f"cookie-len-{n}", with_ar(opt(options=option(10, b"k" * n))), FORMERR,
           f"COOKIE of {n} octets: neither 8 nor 16..40 (RFC 7873 §5.2.2: FORMERR)")
      for n in (0, 1, 7, 9, 15, 41, 64)],
    # --- EDNS version (RFC 6891 §6.1.3) ---------------------------------------------------------
    Case("edns-version-1", with_ar(opt(version=1)), BADVERS,
         "EDNS version 1: BADVERS (extended rcode 16), replied with version 0", opt=True),
    Case("edns-version-255-do", with_ar(opt(version=255, do=True)), BADVERS,
         "EDNS version 255: BADVERS", opt=True),
    Case("edns-payload-0", with_ar(opt(udp=0)), NOERROR,
         "payload < 512 is treated as 512 (RFC 6891 §6.2.5)", opt=True, answers=1),
    # --- TSIG position (RFC 8945 §5.1) ----------------------------------------------------------
    Case("tsig-signed", TSIG_SIGNED, CONTROL,
         "TSIG-signed query (dnspython-signed): the control plane verifies it", rcode=REFUSED),
    Case("tsig-after-opt", with_ar(opt(), tsig()), CONTROL, "OPT then TSIG: legal order",
         rcode=REFUSED),
    Case("tsig-not-last", with_ar(tsig(), opt()), FORMERR,
         "TSIG must be the last record (RFC 8945 §5.1: FORMERR)"),
    Case("tsig-not-last-2", with_ar(tsig(), rr(name("x.example.com"), T_A, rdata=A_RDATA)),
         FORMERR, "TSIG followed by an ordinary record"),
    Case("tsig-in-answer-notify", query("example.com", T_SOA, opcode=4, an=tsig(), an_n=1),
         FORMERR, "TSIG must be in the additional section (RFC 8945 §5.1)"),
    # --- trailing bytes ------------------------------------------------------------------------
    Case("trailing-1", query() + b"\x00", FORMERR,
         "bytes after the last record (NSD/Knot: FORMERR); leniency is opt-in"),
    Case("trailing-after-opt", with_ar(opt(), tail=b"\xff\xff"), FORMERR,
         "bytes after the OPT", opt=True),
    Case("trailing-lenient", query() + b"\x00\x00\x00", NOERROR,
         "Responder(lenient_trailing=True) accepts trailing bytes",
         responder={"lenient_trailing": True}, answers=1),
    # --- QTYPE -----------------------------------------------------------------------------------
    Case("qtype-opt", query(qtype=T_OPT), FORMERR,
         "OPT is a pseudo-type, never a question (RFC 6891 §6.1.1)"),
    Case("qtype-maila", query(qtype=T_MAILA), NOTIMP, "MAILA is obsolete (RFC 883 QTYPE)"),
    Case("qtype-mailb", query(qtype=T_MAILB), NOTIMP, "MAILB is obsolete (RFC 883 QTYPE)"),
    Case("qtype-tkey", query(qtype=T_TKEY), NOTIMP, "TKEY is a meta-type (RFC 2930)"),
    Case("qtype-tsig", query(qtype=T_TSIG), NOTIMP, "TSIG is a meta-type (RFC 8945)"),
    # --- control plane: NOTIFY, zone transfers ------------------------------------------------
    Case("notify", query("example.com", T_SOA, opcode=4, flags=0x0400), CONTROL,
         "NOTIFY goes to the control plane (RFC 1996); fallback REFUSED", rcode=REFUSED),
    Case("notify-with-soa", query("example.com", T_SOA, opcode=4, flags=0x0400,
                                  an=rr(b"\xc0\x0c", T_SOA, rdata=SOA_RDATA), an_n=1),
         CONTROL, "NOTIFY may carry the SOA in answer (RFC 1996 §3.7)", rcode=REFUSED),
    Case("axfr", query("example.com", T_AXFR, flags=0), CONTROL,
         "AXFR goes to the control plane; fallback REFUSED (NSD, BIND), over UDP NOTIMP "
         "(not defined there, RFC 5936 §4.2; Knot, NSD)", rcode=REFUSED, rcode_udp=NOTIMP),
    Case("ixfr-no-soa", query("example.com", T_IXFR, flags=0), CONTROL,
         "IXFR goes to the control plane; fallback REFUSED (issue 9 bug 2)", rcode=REFUSED),
    # --- class -----------------------------------------------------------------------------------
    Case("class-in", query(), NOERROR, "IN, in our zone: the normal answer", answers=1),
    Case("class-in-no-rd", query(flags=0), NOERROR, "RD=0 is copied too", answers=1),
    Case("class-in-cd", query(flags=RD | CD), NOERROR, "CD set in the query: answered normally", answers=1),
    Case("class-in-not-ours", query("www.example.net"), REFUSED, "no zone of ours: REFUSED"),
    Case("class-ch-version", query("version.bind", T_TXT, C_CH), NOERROR,
         "CHAOS TXT version.bind (RFC 4892)", answers=1),
    Case("class-ch-id-server", query("id.server", T_TXT, C_CH), NOERROR,
         "CHAOS TXT id.server answers the identity (RFC 4892)",
         responder={"identity": "ns-test"}, answers=1),
    Case("class-ch-no-identity", query("id.server", T_TXT, C_CH), REFUSED,
         "no identity configured: nothing to say"),
    Case("class-ch-disabled", query("version.bind", T_TXT, C_CH), REFUSED,
         "CHAOS switched off", responder={"chaos": False}),
    Case("class-ch-other-name", query("www.example.com", T_A, C_CH), REFUSED,
         "CHAOS name we do not serve"),
    Case("class-hs", query(qclass=C_HS), REFUSED, "HESIOD: not served"),
    Case("class-none", query(qclass=C_NONE), REFUSED, "NONE (RFC 2136 §1): not served"),
    Case("class-any", query(qclass=C_ANY), NOERROR,
         "class ANY: the IN answer, AA clear (RFC 1034 §3.7.1; tests/core/test_wire_bugs.py)"),
    Case("class-any-not-ours", query("www.example.net", qclass=C_ANY), REFUSED,
         "class ANY, no zone of ours: REFUSED"),
    Case("class-0", query(qclass=0), REFUSED, "class 0 (reserved, RFC 6895 §3.2)"),
]

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.fixture(scope="module")
def image():
    return pop53.compile_zones([str(EXAMPLE_ZONE)])


def _responder(case: Case) -> pop53.Responder:
    return pop53.Responder(**case.responder)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_table(image, case: Case, tcp: bool):
    responder = _responder(case)
    reply = pop53.answer(image, case.wire, CLIENT, tcp=tcp, responder=responder)
    act, core_reply = _core.answer(image.view, case.wire, responder, tcp)
    assert core_reply == reply, "pop53.answer and _core.answer disagree"
    if case.expect == DROP:
        assert reply is None, case.reason
        assert act == _core.ACTION_DROP
        return
    msg = check_reply(case.wire, reply)
    flags = struct.unpack("!H", reply[2:4])[0]
    if case.expect == CONTROL:
        assert act == _core.ACTION_CONTROL, case.reason
        want = case.rcode_udp if case.rcode_udp is not None and not tcp else case.rcode
    else:
        assert act == _core.ACTION_REPLY, case.reason
        want = case.expect
    assert int(msg.rcode()) == want, f"{case.id}: {case.reason}"
    if want == BADVERS:
        # RFC 6891 §6.1.3: 16 = header rcode 0 (low 4 bits) + OPT extended-rcode 1 (high 8)
        assert flags & 0xF == 0
        udp, ext, version, _ = opt_of(reply)
        assert (ext, version) == (1, 0)
        assert udp == responder.edns_max
    if case.opt is not None:
        assert (msg.edns >= 0) == case.opt, "OPT presence in the reply"
    if case.answers is not None:
        assert len(msg.answer) and sum(len(r) for r in msg.answer) == case.answers
        assert msg.flags & dns.flags.AA
    if want == REFUSED:
        assert not msg.flags & dns.flags.AA, "REFUSED is not authoritative"


def test_every_row_is_covered():
    """The decision table's rows (core_answer's docstring) each have at least one case."""
    outcomes = {c.expect if c.expect != CONTROL else ("control", c.rcode) for c in CASES} | \
        {("control", c.rcode_udp) for c in CASES if c.rcode_udp is not None}
    for want in (DROP, NOTIMP, FORMERR, BADVERS, REFUSED, NOERROR, NXDOMAIN,
                 ("control", REFUSED), ("control", NOTIMP)):
        assert want in outcomes


def test_badvers_reply_bytes(image):
    """The BADVERS reply, byte by byte: header rcode 0, OPT TTL 0x01000000 (ext-rcode 1,
    version 0, DO clear), question echoed (RFC 6891 §6.1.3, §7)."""
    wire = with_ar(opt(udp=4096, version=1))
    reply = pop53.answer(image, wire, CLIENT)
    qend = AFTER_Q
    assert reply[:2] == wire[:2]
    assert reply[4:12] == b"\x00\x01\x00\x00\x00\x00\x00\x01"
    assert reply[12:qend] == wire[12:qend]
    assert reply[qend] == 0 and struct.unpack("!HH", reply[qend + 1:qend + 5])[0] == T_OPT
    assert reply[qend + 5:qend + 9] == b"\x01\x00\x00\x00"
    assert len(reply) == qend + 11 or reply[qend + 9:qend + 11] != b"\x00\x00"


def test_formerr_keeps_case_of_question(image):
    """Error replies echo the question exactly as sent, 0x20 case included."""
    wire = query("wWw.ExAmPlE.cOm", qtype=T_OPT)
    reply = pop53.answer(image, wire, CLIENT)
    assert reply[12:AFTER_Q] == wire[12:AFTER_Q]
    assert dns.message.from_wire(reply).question[0].name.labels[:3] == (b"wWw", b"ExAmPlE", b"cOm")


def test_nsid_on_badvers_and_formerr(image):
    """An NSID request still gets the identity on an error reply that carries OPT, and the
    reply stays header + question + OPT."""
    responder = pop53.Responder(identity="ns-test")
    wire = with_ar(opt(options=option(3, b"")), tail=b"\x00")      # trailing: FORMERR
    msg = check_reply(wire, pop53.answer(image, wire, CLIENT, responder=responder))
    assert int(msg.rcode()) == FORMERR
    assert [o.data if hasattr(o, "data") else o.nsid for o in msg.options] == [b"ns-test"]


# ---------------------------------------------------------------------------------------------
# Replies that must be well formed even where the answer path gets intricate.
# ---------------------------------------------------------------------------------------------
CHAIN_CASES = [
    ("x.d1.example.org.", NXDOMAIN,
     "DNAME d1 -> a.d2, DNAME d2 -> other: two DNAME hops (RFC 6672 §3)"),
    ("x.y.d3.example.org.", NOERROR,
     "DNAME d3 -> u.t, t is a zone cut: a referral after the synthesized CNAME"),
]


@pytest.mark.parametrize("qname,rcode,reason", CHAIN_CASES, ids=["dname-dname", "dname-cut"])
def test_chain_target_suffix_pointers(qname, rcode, reason):
    """Regression for B1 (notes/malformed.md, fixed in 5899cb7): the owner of a record after a
    chain hop was computed as if the chain target were written uncompressed."""
    image = pop53.compile_zones([str(ZONES / "chain.example.org.zone")])
    q = dns.message.make_query(qname, "A")
    wire = q.to_wire()
    msg = check_reply(wire, pop53.answer(image, wire, CLIENT))
    assert int(msg.rcode()) == rcode, reason


def test_chain_target_pointer_control():
    """The single-hop DNAME in the same zone is well formed (the chain cases above must fail
    for the pointer, not because the zone is broken)."""
    image = pop53.compile_zones([str(ZONES / "chain.example.org.zone")])
    wire = dns.message.make_query("x.d2.example.org.", "A").to_wire()
    msg = check_reply(wire, pop53.answer(image, wire, CLIENT))
    assert int(msg.rcode()) == NOERROR
    assert {r.rdtype for r in msg.answer} == {dns.rdatatype.DNAME, dns.rdatatype.CNAME,
                                             dns.rdatatype.A}


# dnspython (an independent parser) must reach the same verdict on the wire-format rows: it
# rejects what we FORMERR and accepts what we answer.  Where we are stricter on purpose:
STRICTER_THAN_DNSPYTHON = {
    "ar-pointer-into-header": "a pointer below offset 12 can only name header bytes; we refuse it",
    "ecs-scope-nonzero": "dnspython does not check SCOPE in queries; RFC 7871 §6 says it MUST be 0",
}
WIRE_ROWS = [c for c in CASES if c.id.startswith(("qname", "question", "ar-", "opt-", "ecs-"))
             and c.expect in (NOERROR, NXDOMAIN, REFUSED, FORMERR)]


@pytest.mark.parametrize("case", WIRE_ROWS, ids=[c.id for c in WIRE_ROWS])
def test_wire_verdict_matches_dnspython(case: Case):
    try:
        dns.message.from_wire(case.wire)
        dnspython_ok = True
    except dns.exception.DNSException:
        dnspython_ok = False
    ours_ok = case.expect != FORMERR
    if case.id in STRICTER_THAN_DNSPYTHON:
        assert dnspython_ok and not ours_ok, STRICTER_THAN_DNSPYTHON[case.id]
    else:
        assert dnspython_ok == ours_ok


# ---------------------------------------------------------------------------------------------
# Size limits with the largest question and the largest NSID payload (RFC 6891 §6.2.5, §7)
# ---------------------------------------------------------------------------------------------
Z_ZONE = Path(__file__).resolve().parents[1] / "fuzz" / "zones" / "z.zone"
LONG_Q = [
    (dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 59, b"z", b""]), "TXT"),
    (dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b"e" * 59, b"z", b""]), "A"),
]


def _long_identity_reply(identity: bytes, qname, qtype):
    image = pop53.compile_zones([str(Z_ZONE)])
    q = dns.message.make_query(qname, qtype, use_edns=0, payload=512,
                               options=[dns.edns.GenericOption(3, b"")])
    wire = q.to_wire()
    return wire, pop53.answer(image, wire, CLIENT, responder=pop53.Responder(identity=identity))


@pytest.mark.parametrize("identity", [b"ns-test", b"i" * 200, b"x" * 255],
                         ids=["identity-7", "identity-200", "identity-255"])
@pytest.mark.parametrize("qname,qtype", LONG_Q, ids=["exists-txt", "nxdomain"])
def test_long_identity_respects_limit(qname, qtype, identity):
    """Regression for B2 (notes/malformed.md): a 255-octet question plus a 255-octet NSID
    identity must still fit 512 octets (the NSID may be left out, RFC 5001 §2.3); a short
    identity is still sent."""
    wire, reply = _long_identity_reply(identity, qname, qtype)
    msg = check_reply(wire, reply)
    assert len(reply) <= 512, f"{len(reply)}-octet reply to a 512-octet limit"
    nsid = [o for o in msg.options if o.otype == 3]
    assert not nsid or nsid[0].nsid == identity
    if len(identity) < 16:
        assert nsid, "a short identity fits beside any question"
