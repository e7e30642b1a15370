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


def tsig_error_reply(wire: bytes, tsig_error: int) -> bytes | None:
    """RFC 8945 §5.3.2: an unsigned NOTAUTH reply carrying a TSIG RR with the error and an empty
    MAC (BADTIME also carries our time in Other Data)."""
    try:
        q = dns.message.from_wire(wire, keyring=False, question_only=True)
    except Exception:
        return None
    if q.flags & dns.flags.QR:
        return None
    keyname = dns.name.root
    alg = dns.tsig.HMAC_SHA256
    orig_id = q.id
    try:  # read the TSIG RR without validating, for key name, algorithm and original id
        full = dns.message.from_wire(wire, keyring=False)
        if full.tsig is not None:
            keyname = full.keyname
            trd = full.tsig[0]
            alg, orig_id = trd.algorithm, trd.original_id
    except Exception:
        pass
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NOTAUTH)
    out = r.to_wire()
    now = int(time.time())
    other = struct.pack("!HI", now >> 32, now & 0xFFFFFFFF) if tsig_error == dns.rcode.BADTIME else b""
    trd = dns.rdtypes.ANY.TSIG.TSIG(dns.rdataclass.ANY, dns.rdatatype.TSIG, alg, now, TSIG_FUDGE,
                                    b"", orig_id, tsig_error, other)
    rdata = trd.to_digestable()
    rr = keyname.to_wire() + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)) + rdata
    arcount = struct.unpack("!H", out[10:12])[0] + 1
    return out[:10] + struct.pack("!H", arcount) + out[12:] + rr


def simple_reply(wire: bytes, rcode: int) -> bytes | None:
    try:
        q = dns.message.from_wire(wire, keyring=False, question_only=True)
    except Exception:
        return None
    if q.flags & dns.flags.QR:
        return None
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return r.to_wire()


def reply_msg(msg: dns.message.Message, rcode: int) -> bytes:
    """A reply to a parsed request; signed with the request's key when it was signed."""
    r = dns.message.make_response(msg)
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
        raise Refuse("badtime", tsig_error_reply(wire, dns.rcode.BADTIME)) from None
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
