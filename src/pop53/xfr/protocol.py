"""The control-message protocol shared by every transfer path: parsing with TSIG verification
(RFC 8945), the refusal replies, signing, and the rate-limited log of what was refused.

Input safety (the lecture's "That's one of ours!"): a control message must be signed with the
zone's key and well formed; anything else is refused, counted (`stats`, Prometheus) and logged
with its sender."""
from __future__ import annotations

import collections
import logging
import struct
import time
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig

from pop53.xfr.config import KeyConf, ZoneConf
from pop53.xfr.metrics import count

log = logging.getLogger("pop53.xfr")

TSIG_FUDGE = 300  # RFC 8945 §10: 300 s recommended


class Refuse(Exception):
    """Refuse a control message with `reason` (counted, logged); `reply` may be None (drop)."""

    def __init__(self, reason: str, reply: bytes | None):
        self.reason = reason
        self.reply = reply


# the UDP payload we advertise in the replies made here (DNS Flag Day 2020, RFC 6891 §6.2.5)
OUR_PAYLOAD = 1232


def _response_to(wire: bytes) -> tuple[dns.message.Message | None, dns.message.Message | None]:
    """(an empty response to the request in `wire`, the request read without checking its
    TSIG); the response keeps the request's EDNS (RFC 6891 §7: an error reply carries the OPT
    too).  (None, None) for a response or a request without a readable header and question."""
    try:
        q = dns.message.from_wire(wire, keyring=False, question_only=True)
    except Exception:
        return None, None
    if q.flags & dns.flags.QR:
        return None, None
    try:  # the whole message, TSIG read but not validated (keyring=False: no signing either)
        full = dns.message.from_wire(wire, keyring=False)
    except Exception:
        full = None
    return dns.message.make_response(full or q, our_payload=OUR_PAYLOAD), full


def tsig_error_reply(wire: bytes, tsig_error: int) -> bytes | None:
    """RFC 8945 §5.3.2: an unsigned NOTAUTH reply carrying a TSIG RR with the error and an empty
    MAC (BADTIME also carries our time in Other Data)."""
    r, full = _response_to(wire)
    if r is None:
        return None
    keyname = dns.name.root
    alg = dns.tsig.HMAC_SHA256
    orig_id = r.id
    if full is not None and full.tsig is not None:  # key name, algorithm and original id
        keyname = full.keyname
        trd = full.tsig[0]
        alg, orig_id = trd.algorithm, trd.original_id
    r.set_rcode(dns.rcode.NOTAUTH)
    out = r.to_wire()
    now = int(time.time())
    other = struct.pack("!HI", now >> 32, now & 0xFFFFFFFF) if tsig_error == dns.rcode.BADTIME else b""
    trd = dns.rdtypes.ANY.TSIG.TSIG(dns.rdataclass.ANY, dns.rdatatype.TSIG, alg, now, TSIG_FUDGE,
                                    b"", orig_id, tsig_error, other)
    rdata = trd.to_digestable()
    # RFC 8945 §4.2: the TSIG RR is the last record of the additional section (after the OPT)
    rr = keyname.to_wire() + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)) + rdata
    arcount = struct.unpack("!H", out[10:12])[0] + 1
    return out[:10] + struct.pack("!H", arcount) + out[12:] + rr


def badtime_reply(wire: bytes, keyring: dict) -> bytes | None:
    """RFC 8945 §5.2.3: NOTAUTH with TSIG error BADTIME, our time in Other Data, and (unlike
    BADKEY and BADSIG) signed with the request's key: its MAC was good, only the clock is off."""
    r, full = _response_to(wire)
    key = keyring.get(full.keyname) if full is not None and full.tsig is not None else None
    if r is None or key is None:
        return tsig_error_reply(wire, dns.rcode.BADTIME)
    trd = full.tsig[0]
    now = int(time.time())
    r.set_rcode(dns.rcode.NOTAUTH)
    r.use_tsig(key, full.keyname, TSIG_FUDGE, trd.original_id, dns.rcode.BADTIME,
               struct.pack("!HI", now >> 32, now & 0xFFFFFFFF))
    r.request_mac = trd.mac
    return r.to_wire()


def simple_reply(wire: bytes, rcode: int) -> bytes | None:
    """An unsigned reply with `rcode` (and the request's EDNS) to an unparsed request."""
    r, _full = _response_to(wire)
    if r is None:
        return None
    r.set_rcode(rcode)
    return r.to_wire()


def reply_msg(msg: dns.message.Message, rcode: int) -> bytes:
    """A reply to a parsed request; signed with the request's key when it was signed."""
    r = dns.message.make_response(msg, our_payload=OUR_PAYLOAD)
    r.set_rcode(rcode)
    return r.to_wire()


def parse_control(wire: bytes, keyring: dict) -> dns.message.Message:
    """Parse and verify TSIG; raise Refuse with the reply to send."""
    if len(wire) < 12:
        raise Refuse("short", None)
    if wire[2] & 0x80:  # QR: a response is never a request; never answer one (loops)
        raise Refuse("response", None)
    try:
        return dns.message.from_wire(wire, keyring=keyring)
    except dns.message.UnknownTSIGKey:
        raise Refuse("badkey", tsig_error_reply(wire, dns.rcode.BADKEY)) from None
    except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm):
        raise Refuse("badsig", tsig_error_reply(wire, dns.rcode.BADSIG)) from None
    except dns.tsig.BadTime:
        raise Refuse("badtime", badtime_reply(wire, keyring)) from None
    except dns.tsig.PeerError:
        raise Refuse("malformed", simple_reply(wire, dns.rcode.FORMERR)) from None
    except Exception:  # any parse failure: FORMERR if there is a header and question
        raise Refuse("malformed", simple_reply(wire, dns.rcode.FORMERR)) from None


def check_key(msg: dns.message.Message, conf: ZoneConf) -> None:
    """RFC 8945 §5.2: a zone with a key accepts only messages signed with that key."""
    want = conf.key
    if want is None:
        return
    if not msg.had_tsig:
        raise Refuse("unsigned", reply_msg(msg, dns.rcode.REFUSED))
    if msg.keyname != want.name:
        raise Refuse("wrongkey", reply_msg(msg, dns.rcode.REFUSED))


def sign(msg: dns.message.Message, key: KeyConf | None) -> None:
    """Sign a message we send (NOTIFY, SOA check) with the zone's key, if it has one."""
    if key is not None:
        msg.use_tsig(key.tsig_key(), fudge=TSIG_FUDGE)


class Refusals:
    """Counts every refused control message and logs it with its sender (the lecture's lost
    server sent bad messages for months), but at most once per 10 s per (sender, kind, reason)
    so a flood cannot fill the disk."""

    def __init__(self, stats: collections.Counter):
        self.stats = stats
        self._log_last: dict[tuple, list] = {}

    def __call__(self, kind: str, reason: str, peer, zone: str = "-", detail: str = "") -> None:
        count(self.stats, f"refused.{kind}.{reason}", "pop53_xfr_refused_total",
              "control messages refused, by kind and reason", kind=kind, reason=reason)
        key = (peer[0] if peer else "?", kind, reason)
        now = time.monotonic()
        ent = self._log_last.setdefault(key, [0.0, 0])
        if now - ent[0] >= 10.0:
            extra = f" ({ent[1]} more suppressed)" if ent[1] else ""
            log.warning("refused %s from %s zone %s: %s%s%s", kind, key[0], zone, reason,
                        f": {detail}" if detail else "", extra)
            ent[0], ent[1] = now, 0
        else:
            ent[1] += 1


def answer_signed(wire: bytes, keyring: dict, answer: Callable[[bytes], bytes | None],
                  tcp: bool) -> tuple[str | None, bytes | None]:
    """A TSIG-signed ordinary query (RFC 8945 §5.2): the key is checked first; a query that
    fails gets NOTAUTH with the TSIG error (BADKEY, BADSIG, BADTIME), one that passes is
    answered by `answer` (the data plane, given the query without its TSIG RR) and the answer
    is signed (§5.3).  Returns (refusal reason or None, reply); (None, None) when `wire` is not
    a readable signed request (the data plane's own reply stands)."""
    try:
        peek = dns.message.from_wire(wire, keyring=False)
    except Exception:
        return None, None           # the data plane owns the malformed-packet policy
    if peek.tsig is None or peek.flags & dns.flags.QR:
        return None, None
    try:
        msg = parse_control(wire, keyring)
    except Refuse as r:
        return r.reason, r.reply
    peek.tsig = None                # the same query, unsigned: what the data plane reads
    try:
        plain = answer(peek.to_wire())
        if plain is None:
            return None, None
        r = dns.message.from_wire(plain)
    except Exception:
        return None, None
    r.use_tsig(msg.keyring, msg.keyname, TSIG_FUDGE, None, 0, b"", msg.keyalgorithm)
    r.request_mac = msg.mac
    limit = 65535 if tcp else max(512, msg.payload if msg.edns >= 0 else 512)
    try:
        return None, r.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # RFC 8945 §5.3 with RFC 1035 §4.1.1: what does not fit goes out truncated, signed
        t = dns.message.make_response(msg, our_payload=OUR_PAYLOAD, fudge=TSIG_FUDGE)
        t.flags |= dns.flags.TC | (r.flags & dns.flags.AA)
        t.set_rcode(r.rcode())
        return None, t.to_wire()
