"""The table of intentional differences: where Knot, NSD and pop53 answer the same query
differently on purpose, each entry with its reason.  docs/differential.md has the same table in
prose.  An entry is either

- a ``Quirk``: one implementation's policy, rewritten into pop53's policy before comparing
  (the rest of that reply is still compared exactly), or
- an ``Excuse``: two different, allowed choices, with a ``check`` that still constrains them.

pop53's policy is issue 2's: minimal responses (no NS RRset in the authority section of a
positive answer), CNAME and DNAME chains followed through every served zone (RFC 1034 §4.3.2,
RFC 6604 for the final rcode), TC when a referral's in-domain glue does not fit (RFC 9471 §3),
ANY answered with one RRset (RFC 8482 §4.1).

Ids start with the implementation whose behaviour an entry describes (``knot-``, ``nsd-``,
``pop53-``); ids without a prefix are choices every implementation makes its own way.  A
``pop53-`` entry is a choice the cited RFCs allow, never an excuse for being wrong: a pop53
mismatch that no entry covers is a bug to be written down in /work/notes/differential.md
(query, reference answer, pop53 answer, RFC section), not a new row.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import dns.name
import dns.rdatatype
import dns.zone

from dnsdiff import DNSSEC_AT_CNAME, ZONE_FILES, Case, Excuse, Quirk, Reply

ALL = frozenset({"knot", "nsd", "pop53"})


# --------------------------------------------------------------------------------------------
# What the zones hold (read with dnspython, independently of every server under test)


@lru_cache(maxsize=None)
def _zones() -> dict[dns.name.Name, dns.zone.Zone]:
    out = {}
    for p in ZONE_FILES:
        z = dns.zone.from_file(str(p), origin=None, relativize=False, check_origin=False)
        out[z.origin] = z
    return out


@lru_cache(maxsize=None)
def zone_of(name: str) -> dns.name.Name | None:
    """The served zone that holds ``name`` (the longest matching origin), or None."""
    n = dns.name.from_text(name.lower())
    best = None
    for origin in _zones():
        if n.is_subdomain(origin) and (best is None or len(origin) > len(best)):
            best = origin
    return best


def _exists(z: dns.zone.Zone, n: dns.name.Name) -> bool:
    """``n`` owns data or is an empty non-terminal (RFC 4592 §2.2.2) in ``z``."""
    return n in z.nodes or any(o.is_subdomain(n) and o != n for o in z.nodes)


@lru_cache(maxsize=None)
def rrsets_at(qname: str) -> dict[str, int]:
    """The RRsets an authoritative server holds for ``qname`` (type -> number of records):
    the node itself, or the wildcard at the closest encloser (RFC 4592 §3.3.1)."""
    origin = zone_of(qname)
    if origin is None:
        return {}
    z = _zones()[origin]
    n = dns.name.from_text(qname.lower())
    node = z.nodes.get(n)
    if node is None:
        enc = n.parent()
        while enc != origin and not _exists(z, enc):
            enc = enc.parent()
        if _exists(z, n):
            return {}
        node = z.nodes.get(dns.name.Name((b"*",) + enc.labels))
        if node is None:
            return {}
    return {dns.rdatatype.to_text(r.rdtype): len(r) for r in node.rdatasets}


@lru_cache(maxsize=None)
def below_cut(name: str) -> bool:
    """``name`` is at or below a delegation (a zone cut other than the apex) of its zone, so
    its data there is glue, not authoritative (RFC 1034 §4.2.1)."""
    origin = zone_of(name)
    if origin is None:
        return False
    z = _zones()[origin]
    n = dns.name.from_text(name)
    while n != origin:
        node = z.nodes.get(n)
        if node is not None and node.get_rdataset(1, dns.rdatatype.NS) is not None:
            return True
        n = n.parent()
    return False


# --------------------------------------------------------------------------------------------
# Helpers on normalized replies


def _is_referral(r: Reply) -> bool:
    return (not r.flags.get("AA") and not r.answer and r.rcode == "NOERROR"
            and any(rr.rdtype == "NS" for rr in r.authority))


def _chain_end(case: Case, r: Reply) -> tuple[str, str]:
    """Follow the CNAMEs of the answer section from the query name: (owner of the last CNAME,
    its target); ("", "") when the answer starts with no CNAME."""
    cnames = {rr.name: rr.target for rr in r.answer if rr.rdtype == "CNAME"}
    name, last, seen = case.qname.lower(), ("", ""), set()
    while name in cnames and name not in seen:
        seen.add(name)
        last = (name, cnames[name])
        name = cnames[name]
    return last


def _additional_targets(r: Reply) -> set[str]:
    """Names whose addresses belong in the additional section: the targets of NS, MX and SRV
    records in the answer and authority sections (RFC 1034 §3.7, RFC 2782)."""
    return {rr.target for rr in r.answer | r.authority if rr.rdtype in ("NS", "MX", "SRV")}


# --------------------------------------------------------------------------------------------
# Quirks: one implementation's policy, normalized into pop53's


def _strip_apex_ns(case: Case, r: Reply) -> Reply:
    apex_ns = {rr for rr in r.authority
               if rr.rdtype == "NS" and dns.name.from_text(rr.name) in _zones()}
    authority = r.authority - apex_ns
    keep = _additional_targets(dataclasses.replace(r, authority=authority))
    dropped = {rr.target for rr in apex_ns} - keep
    additional = frozenset(rr for rr in r.additional if rr.name not in dropped)
    return dataclasses.replace(r, authority=authority, additional=additional)


def _strip_glue_additional(case: Case, r: Reply) -> Reply:
    referral_ns = {rr.target for rr in r.authority if rr.rdtype == "NS"}
    return dataclasses.replace(r, additional=frozenset(
        rr for rr in r.additional if rr.name in referral_ns or not below_cut(rr.name)))


def _strip_cross_zone_additional(case: Case, r: Reply) -> Reply:
    pointers: dict[str, set] = {}
    for rr in r.answer | r.authority:
        if rr.rdtype in ("NS", "MX", "SRV"):
            pointers.setdefault(rr.target, set()).add(zone_of(rr.name))
    return dataclasses.replace(r, additional=frozenset(
        rr for rr in r.additional
        if rr.name not in pointers or zone_of(rr.name) in pointers[rr.name]))


def _has_cross_zone_additional(case: Case, r: Reply) -> bool:
    return _strip_cross_zone_additional(case, r).additional != r.additional


QUIRKS = [
    # NSD (minimal-responses: no, its default) puts the zone's own NS RRset into the authority
    # section of every positive answer, and the addresses of those name servers into the
    # additional section.  RFC 1034 §4.3.2 step 3a allows it ("the authority section may
    # contain..." is policy, RFC 2181 §5.4.1 ranks it below answer data); Knot and pop53 give
    # minimal responses.  Normalized: that NS RRset and the addresses only it asked for go.
    Quirk(
        id="nsd-authority-ns",
        impls=frozenset({"nsd"}),
        why="NSD adds the apex NS RRset (+ addresses) to positive answers; pop53 is minimal",
        applies=lambda case, r: (r.flags.get("AA", False) and bool(r.answer)
                                 and any(rr.rdtype == "NS" for rr in r.authority)),
        strip=_strip_apex_ns,
    ),
    # Knot and pop53 add glue addresses (data below a zone cut) to the additional section for
    # MX/SRV targets below a delegation; NSD adds only authoritative data there except in
    # referrals (RFC 1034 §4.3.2 step 6 says "authoritative data"; RFC 2181 §5.4.1 ranks glue
    # lowest, so a resolver will not use it).  Harmless either way; normalized to NSD's: such
    # glue goes unless a referral NS in the same reply names it.
    Quirk(
        id="knot-glue-as-additional",
        impls=frozenset({"knot", "pop53"}),
        why="Knot and pop53 give glue as additional data for MX/SRV targets; NSD does not",
        applies=lambda case, r: any(
            below_cut(rr.name) and rr.name not in {x.target for x in r.authority}
            for rr in r.additional),
        strip=_strip_glue_additional,
    ),
    # pop53 adds addresses for NS/MX/SRV targets from any zone in its image (issue 2:
    # "additional-section targets ... that are in the image"); Knot and NSD only from the
    # zone that holds the pointing record.  RFC 1034 §4.3.2 step 6 allows any authoritative
    # data; a resolver drops the out-of-bailiwick part.  Normalized: the cross-zone addresses
    # go.
    Quirk(
        id="pop53-cross-zone-additional",
        impls=frozenset({"pop53"}),
        why="pop53 adds NS/MX/SRV target addresses from other served zones",
        applies=_has_cross_zone_additional,
        strip=_strip_cross_zone_additional,
    ),
]


# --------------------------------------------------------------------------------------------
# Excuses: two allowed choices


def _knot_stops_at_zone_cut(case: Case, replies: dict) -> bool:
    """Knot follows a CNAME (or a DNAME's synthesized CNAME) only inside the zone it is
    answering from; a target in another served zone is left to the resolver.  (For the DNSSEC
    types at a CNAME owner the others do not follow at all: see _follows_cname.)"""
    k = replies.get("knot")
    if k is None or not k.answer or case.qtype in DNSSEC_AT_CNAME:
        return False
    owner, target = _chain_end(case, k)
    if not target or any(rr.name == target for rr in k.answer):
        return False
    tz = zone_of(target)
    return tz is not None and tz != zone_of(owner)


def _knot_answer_is_prefix(case: Case, replies: dict) -> str | None:
    k = replies["knot"]
    for name, r in replies.items():
        if name != "knot" and not k.answer <= r.answer:
            return f"knot's partial chain is not part of {name}'s answer"
    return None


def _any_one_rrset(case: Case, replies: dict) -> str | None:
    """RFC 8482 §4.1: one RRset of the name (or §4.2: a synthesized HINFO), complete; over TCP
    §4.4 also allows the conventional answer, every RRset of the name."""
    held = rrsets_at(case.qname)
    for name, r in replies.items():
        got: dict[str, int] = {}
        for rr in r.answer:
            got[rr.rdtype] = got.get(rr.rdtype, 0) + 1
        owners = {rr.name for rr in r.answer}
        if case.tcp and got == held and len(owners) == 1:
            continue
        if len(got) != 1 or len(owners) != 1:
            return f"{name} answered ANY with {len(got)} RRsets: {sorted(got)}"
        ((t, n),) = got.items()
        if t == "HINFO" and "HINFO" not in held:
            continue  # RFC 8482 §4.2 synthesized HINFO
        if t not in held:
            return f"{name} answered ANY with {t}, which {case.qname} does not hold"
        if n != held[t]:
            return f"{name} answered ANY with {n} of {held[t]} {t} records"
    return None


def _limit(case: Case) -> int:
    return 512 if case.edns is None else max(512, min(case.edns, 1232))


def _additional_relevant(case: Case, replies: dict) -> str | None:
    for name, r in replies.items():
        stray = {rr.name for rr in r.additional if rr.rdtype != "OPT"} - \
            _additional_targets(r)
        if stray:
            return f"{name}'s additional section holds unrelated names {sorted(stray)}"
    return None


def _cname_count(r: Reply) -> int:
    return sum(rr.rdtype == "CNAME" for rr in r.answer)


def _chain_cut(case: Case, r: Reply) -> bool:
    """The answer holds a chain of >= 5 CNAMEs whose last target has no records in it and
    no negative answer (SOA) for it either: the server stopped following."""
    _, target = _chain_end(case, r)
    return (_cname_count(r) >= 5 and bool(target)
            and not any(rr.name == target for rr in r.answer)
            and not any(rr.rdtype == "SOA" for rr in r.authority))


def _chain_cut_short(case: Case, replies: dict) -> bool:
    """One implementation stopped following a long chain before another did."""
    rs = list(replies.values())
    return any(_chain_cut(case, r) and any(
        o.answer > r.answer or (o.answer == r.answer and not _chain_cut(case, o)) for o in rs)
        for r in rs)


def _shorter_is_prefix(case: Case, replies: dict) -> str | None:
    rs = sorted(replies.items(), key=lambda kv: len(kv[1].answer))
    (sn, short), (ln, long_) = rs[0], rs[-1]
    if not short.answer <= long_.answer:
        return f"{sn}'s shortened chain is not part of {ln}'s answer"
    return None


def _is_bad_ecs(case: Case) -> bool:
    """An ECS option whose ADDRESS is longer than SOURCE PREFIX-LENGTH needs."""
    for code, data in case.options:
        if code == 8 and len(data) >= 4 and len(data) - 4 != (data[2] + 7) // 8:
            return True
    return False


def _any_stops_at_dname(case: Case, replies: dict) -> bool:
    """ANY whose pop53 answer holds a DNAME and its synthesized CNAME (not YXDOMAIN)."""
    if case.qtype != "ANY" or "pop53" not in replies:
        return False
    types = {rr.rdtype for rr in replies["pop53"].answer}
    return {"DNAME", "CNAME"} <= types


def _pop53_any_dname_prefix(case: Case, replies: dict) -> str | None:
    p = replies["pop53"]
    types = sorted(rr.rdtype for rr in p.answer)
    if types != ["CNAME", "DNAME"] or p.rcode != "NOERROR":
        return f"pop53 answered ANY below a DNAME with {types} {p.rcode}"
    for name, r in replies.items():
        if name != "pop53" and not p.answer <= r.answer:
            return f"pop53's DNAME+CNAME is not the start of {name}'s answer"
    return None


def _follows_cname(case: Case, r: Reply) -> bool:
    return any(rr.rdtype == "CNAME" and rr.name == case.qname.lower() for rr in r.answer)


def _follower(who: str, qtypes: tuple[str, ...]):
    """``who`` answered a DNSSEC-type query at a CNAME owner by following the CNAME."""
    def applies(case: Case, replies: dict) -> bool:
        return case.qtype in qtypes and who in replies and _follows_cname(case, replies[who])
    return applies


def _others_nodata_at_owner(who: str):
    """Every other implementation answered at the owner: NODATA with the owner's zone's SOA."""
    def check(case: Case, replies: dict) -> str | None:
        qname = dns.name.from_text(case.qname.lower())
        for name, r in replies.items():
            if name == who:
                continue
            soa = [rr.name for rr in r.authority if rr.rdtype == "SOA"]
            if r.answer or r.rcode != "NOERROR" or len(r.authority) != 1 or len(soa) != 1 or \
                    not qname.is_subdomain(dns.name.from_text(soa[0])):
                return f"{name} did not answer {case.qtype} at the CNAME owner with NODATA"
        return None
    return check


def _follows_cname_excuse(id_: str, who: str, qtypes: tuple[str, ...], why: str) -> Excuse:
    return Excuse(id=id_, between=ALL, why=why, applies=_follower(who, qtypes),
                  fields=("answer", "authority", "additional", "rcode"),
                  check=_others_nodata_at_owner(who))


EXCUSES = [
    # QTYPE RRSIG, NSEC (which may live beside a CNAME, RFC 2181 §10.1, RFC 4035 §2.5) and
    # NSEC3 at a CNAME owner: pop53 answers at the owner for all three (issue 9, wire bug 3).
    # Knot does for RRSIG and NSEC but follows the CNAME for NSEC3; NSD answers at the owner
    # for NSEC3, and for RRSIG/NSEC only when the owner holds them, else it follows.  Over
    # unsigned zones the follower's answer is the chain; the others must give NODATA there.
    _follows_cname_excuse(
        "knot-nsec3-follows-cname", "knot", ("NSEC3",),
        "QTYPE NSEC3 at a CNAME owner: Knot follows the CNAME, pop53 and NSD answer there"),
    _follows_cname_excuse(
        "nsd-nsec-rrsig-follow-cname", "nsd", ("NSEC", "RRSIG"),
        "QTYPE NSEC/RRSIG at an unsigned CNAME owner: NSD follows, pop53 and Knot answer there"),
    # ANY below a DNAME: pop53 (like BIND 9.18) treats the synthesized CNAME as it treats a
    # real one, which QTYPE ANY matches (RFC 1034 §4.3.2 3a), and stops: DNAME + CNAME.  Knot
    # and NSD read RFC 6672 §3.1 "go back to step 1" literally for ANY and continue at the
    # target (yet stop for QTYPE CNAME).  Both are complete enough under RFC 8482 §4.1.
    Excuse(
        id="pop53-any-below-dname",
        between=ALL,
        why="ANY below a DNAME: pop53 stops at the synthesized CNAME; Knot/NSD follow it",
        applies=_any_stops_at_dname,
        fields=("answer", "authority", "additional", "rcode"),
        check=_pop53_any_dname_prefix,
    ),
    # Knot (edns-client-subnet off, its default) and NSD (no ECS support) ignore option 8;
    # pop53 parses ECS (issue 2) and answers a malformed one with FORMERR, as RFC 7871 §7.1.1
    # requires of a server that implements it.  The OPT record is still compared.
    Excuse(
        id="pop53-ecs-validated",
        between=ALL,
        why="pop53 validates ECS (RFC 7871 §7.1.1 FORMERR); Knot/NSD ignore the option",
        applies=lambda case, replies: _is_bad_ecs(case) and "pop53" in replies,
        fields=("rcode", "flags.AA", "answer", "authority", "additional"),
        check=lambda case, replies: (None if replies["pop53"].rcode == "FORMERR"
                                     else f"pop53 rcode {replies['pop53'].rcode}"),
    ),
    # QCLASS ANY (issue 9, wire bug 4): every server answers with the IN data.  RFC 1034
    # §3.7.1: "responses to QCLASS=* queries can never be authoritative" (a server cannot know
    # every class); pop53 and NSD clear AA, Knot sets it.
    Excuse(
        id="knot-qclass-any-aa",
        between=ALL,
        why="QCLASS ANY: Knot sets AA; pop53 and NSD clear it (RFC 1034 §3.7.1)",
        applies=lambda case, replies: case.qclass == "ANY" and "knot" in replies,
        fields=("flags.AA",),
        check=lambda case, replies: next(
            (f"{n} set AA for QCLASS ANY" for n, r in replies.items()
             if n != "knot" and r.flags.get("AA")), None),
    ),
    # NSD answers a negative QCLASS ANY query (NXDOMAIN, NODATA) with an empty authority
    # section; pop53 and Knot give the SOA as for class IN (RFC 2308 §3), so a resolver can
    # cache the negative answer.
    Excuse(
        id="nsd-qclass-any-no-soa",
        between=ALL,
        why="QCLASS ANY negative answers: NSD leaves out the SOA; pop53 and Knot include it",
        applies=lambda case, replies: (
            case.qclass == "ANY" and "nsd" in replies and not replies["nsd"].answer
            and not replies["nsd"].authority and replies["nsd"].rcode in ("NOERROR", "NXDOMAIN")),
        fields=("authority",),
        check=lambda case, replies: next(
            (f"{n}'s negative answer to QCLASS ANY has no SOA" for n, r in replies.items()
             if n != "nsd" and [rr.rdtype for rr in r.authority] != ["SOA"]), None),
    ),
    # CHAOS ANY at the identity names: pop53 and NSD (and BIND) answer with the TXT record, the
    # one RRset there is (RFC 8482 §4.1); Knot answers only QTYPE TXT and refuses ANY like
    # every other type.  Check: the others answer exactly that one TXT record.
    Excuse(
        id="knot-chaos-any-refused",
        between=ALL,
        why="CHAOS ANY at id.server. etc.: Knot refuses it, pop53 and NSD answer the TXT",
        applies=lambda case, replies: (
            case.qclass == "CH" and case.qtype == "ANY" and "knot" in replies
            and replies["knot"].rcode == "REFUSED"),
        fields=("rcode", "answer", "flags.AA"),
        check=lambda case, replies: next(
            (f"{n} did not answer CHAOS ANY with the one TXT record" for n, r in replies.items()
             if n != "knot" and (r.rcode != "NOERROR" or [(rr.name, rr.rdclass, rr.rdtype)
                                                          for rr in r.answer]
                                 != [(case.qname, "CH", "TXT")])), None),
    ),
    # CHAOS TXT id.server./hostname.bind./version.* (RFC 4892): Knot and NSD answer with AA=0,
    # pop53 with AA=1 (as BIND does: it serves a "bind." CHAOS zone).  RFC 4892 sets no rule.
    Excuse(
        id="chaos-aa",
        between=ALL,
        why="CHAOS identity answers: AA differs (no RFC rule)",
        applies=lambda case, replies: case.qclass == "CH" and case.category == "chaos",
        fields=("flags.AA",),
    ),
    # How many CNAMEs a server follows before handing the rest to the resolver is policy
    # (RFC 1034 §4.3.2 only asks that loops end; Knot puts 5 CNAMEs into one answer, pop53 8,
    # NSD follows all 11 of lc01..lc12).
    # The shorter answer must be the start of the longer one.
    Excuse(
        id="cname-chain-limit",
        between=ALL,
        why="each server follows a different number of CNAMEs in one answer",
        applies=_chain_cut_short,
        fields=("answer", "authority", "additional", "rcode"),
        check=_shorter_is_prefix,
    ),
    # NSD leaves the question out of its REFUSED reply for a class it has no zones in (HS)
    # and of NOTIMP; Knot and pop53 echo it.  An error reply may carry the question or not
    # (RFC 1035 §4.1.1 copies it; ARCHITECTURE point 4 "at most header, question and OPT").
    Excuse(
        id="nsd-error-no-question",
        between=ALL,
        why="NSD omits the question from REFUSED (unserved class) and NOTIMP",
        applies=lambda case, replies: (
            "nsd" in replies and replies["nsd"].rcode in ("REFUSED", "NOTIMP")
            and not replies["nsd"].question),
        fields=("question",),
    ),
    # Knot answers a CNAME whose target lies in another zone (even one it serves, even a
    # child zone) with the CNAME alone; NSD and pop53 go on through every served zone
    # (RFC 1034 §4.3.2 step 3a "... and go back to step 1", issue 2).  Both are allowed: the
    # resolver restarts the query at the target.  Knot's answer must be the start of the other.
    Excuse(
        id="knot-cname-zone-cut",
        between=ALL,
        why="Knot does not follow CNAME/DNAME targets into another zone",
        applies=_knot_stops_at_zone_cut,
        fields=("answer", "authority", "additional", "rcode"),
        check=_knot_answer_is_prefix,
    ),
    # ANY (RFC 8482 §4.1): "respond with one RRset of the name"; which one is the server's
    # choice (Knot takes the first in its tree order, NSD another).  Both answers must be one
    # complete RRset that the name holds (or a synthesized HINFO, §4.2).  Over TCP §4.4 lets a
    # server give the conventional answer instead (pop53 does; Knot and NSD give one RRset).
    Excuse(
        id="any-one-rrset",
        between=ALL,
        why="RFC 8482: each server picks a different RRset for ANY",
        applies=lambda case, replies: (
            case.qtype == "ANY" and case.qclass == "IN"
            and all(r.answer and not r.flags.get("TC")
                                        and r.rcode == "NOERROR" for r in replies.values())
            and not all(any(rr.rdtype == "CNAME" for rr in r.answer)
                        for r in replies.values())),
        fields=("answer", "authority", "additional"),
        check=_any_one_rrset,
    ),
    # NSD 4.6 answers a referral whose glue does not all fit with as much glue as fits and
    # TC=0; RFC 9471 §3 (2023, after NSD 4.6) requires TC=1 when in-domain glue is left out,
    # which Knot and pop53 do.
    Excuse(
        id="nsd-glue-no-tc",
        between=ALL,
        why="NSD 4.6 leaves out in-domain glue without setting TC (before RFC 9471)",
        applies=lambda case, replies: (
            "nsd" in replies and _is_referral(replies["nsd"])
            and not replies["nsd"].flags.get("TC")
            and any(r.flags.get("TC") for r in replies.values())),
        fields=("flags.TC", "answer", "authority", "additional"),
    ),
    # When the additional section does not all fit, RFC 2181 §9 drops it without TC; which
    # records still fit is each server's order.  Each must at least be relevant.
    Excuse(
        id="additional-partial",
        between=ALL,
        why="additional records that fit only partly: each server keeps a different part",
        applies=lambda case, replies: (
            len({r.additional for r in replies.values()}) > 1
            and any(len(r.raw) > _limit(case) - 64 for r in replies.values())),
        fields=("additional",),
        check=_additional_relevant,
    ),
]
