"""Helpers of the DNSSEC tests: query a server, the normal form of a reply, and signature
checks of every RRset in a reply against the zone's DNSKEY (dnspython's dns.dnssec)."""
from __future__ import annotations

import time

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

PROOF_TYPES = {dns.rdatatype.NSEC, dns.rdatatype.NSEC3}


def make_query(qname: str, qtype: str, *, do: bool = True, payload: int = 1232,
               qid: int = 4242) -> bytes:
    q = dns.message.make_query(qname, qtype, want_dnssec=do, payload=payload, use_edns=0)
    q.id = qid
    return q.to_wire()


def is_proof(rrset) -> bool:
    return rrset.rdtype in PROOF_TYPES or (rrset.rdtype == dns.rdatatype.RRSIG
                                           and rrset.covers in PROOF_TYPES)


def normal_form(raw: bytes) -> dict:
    """rcode, header flags, and each section as a sorted list of presentation lines."""
    m = dns.message.from_wire(raw)
    out = {"rcode": dns.rcode.to_text(m.rcode()), "flags": dns.flags.to_text(m.flags)}
    for name, sec in (("answer", m.answer), ("authority", m.authority),
                      ("additional", m.additional)):
        out[name] = sorted(line for rr in sec for line in rr.to_text().splitlines())
        out[name + "_proof"] = sorted(line for rr in sec if is_proof(rr)
                                      for line in rr.to_text().splitlines())
    return out


def signature_problems(raw: bytes, dnskey: dns.rrset.RRset | dict, now: float | None = None) -> list[str]:
    """Every RRset of the reply that has RRSIGs beside it must verify against the zone's
    DNSKEY (or {zone name: DNSKEY RRset} of several zones); an RRset the zone signs must not
    travel without them (checked by the caller's `must_sign`).  Returns the problems found
    (empty: all good)."""
    m = dns.message.from_wire(raw)
    keys = dnskey if isinstance(dnskey, dict) else {dnskey.name: dnskey}
    problems = []
    for sec in (m.answer, m.authority, m.additional):
        sigs = {(rr.name, rr.covers): rr for rr in sec if rr.rdtype == dns.rdatatype.RRSIG}
        for rr in sec:
            if rr.rdtype == dns.rdatatype.RRSIG:
                if m.question[0].rdtype != dns.rdatatype.RRSIG and \
                        (rr.name, rr.covers) not in {(x.name, x.rdtype) for x in sec}:
                    problems.append(f"RRSIG without its RRset: {rr.name} {rr.covers!r}")
                continue
            sig = sigs.get((rr.name, rr.rdtype))
            if sig is None:
                continue
            try:
                dns.dnssec.validate(rr, sig, keys, now=now or time.time())
            except dns.dnssec.ValidationFailure as exc:
                problems.append(f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)}: {exc}")
    return problems


def differences(a: bytes, b: bytes) -> dict:
    """What differs between two replies beyond the tolerance (docs/dnssec.md): proof records
    (NSEC/NSEC3 and their RRSIGs) may differ, but there must be as many of them; everything
    else must be equal.  Empty: the replies agree."""
    na, nb = normal_form(a), normal_form(b)
    if na == nb or knot_gave_up(a) and nb["rcode"] == na["rcode"]:
        return {}
    out = {k: (na[k], nb[k]) for k in ("rcode", "flags") if na[k] != nb[k]}
    for sec in ("answer", "authority", "additional"):
        rest_a = sorted(set(na[sec]) - set(na[sec + "_proof"]))
        rest_b = sorted(set(nb[sec]) - set(nb[sec + "_proof"]))
        if rest_a != rest_b or len(na[sec + "_proof"]) != len(nb[sec + "_proof"]):
            out[sec] = (na[sec], nb[sec])
    return out


def knot_gave_up(raw: bytes) -> bool:
    """Knot 3.2.6 answers an NXDOMAIN whose closest encloser has no NSEC3 (an empty non-terminal
    NSEC3 opt-out left bare) with AA clear and nothing in authority: no SOA, no proof.  pop53
    sends the closest provable encloser's proof (RFC 5155 §7.2.2, §6); delv checks it
    (test_delv.py: "y.deep").  Such a Knot reply is not a reference."""
    m = dns.message.from_wire(raw)
    return (m.rcode() == dns.rcode.NXDOMAIN and not m.flags & dns.flags.AA
            and not m.answer and not m.authority)
