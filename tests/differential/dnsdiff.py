"""Differential-test harness: the query corpus, the normal form of a reply, the comparison and
the table of intentional differences.  docs/differential.md explains the method.

The corpus is generated from the zones in ``zones/`` (deterministic: same zones -> same
queries, same IDs, same 0x20 case), so a failing case can be replayed by its key.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone

ZONE_DIR = Path(__file__).resolve().parent / "zones"
ZONE_FILES = sorted(ZONE_DIR.glob("*.zone"))

# Names no served zone covers: REFUSED (issue 2; RFC 1034 §4.3.2 step 2 finds no zone).
# "example." is the parent of every served zone, not served itself.
OUT_OF_ZONE = ["example.", ".", "nowhere.invalid.", "www.example.net.", "diff.example.com.",
               "xdiff.example.", "iff.example."]

# Types asked at every name, beside the types the name actually holds.
BASE_TYPES = ["A", "AAAA", "NS", "SOA", "MX", "TXT", "CNAME", "DNAME", "SRV", "DS", "ANY",
              "TYPE65280"]

# Names whose answers are big enough that the buffer size decides between a full answer, a
# dropped additional section and TC (RFC 2181 §9, RFC 6891 §7).
SIZE_SENSITIVE = ["big", "big6", "huge", "bigchain", "bigdeleg", "host.bigdeleg", "mxbig", "@",
                  "txt-long", "_sip._tcp"]
SIZE_TYPES = ["A", "AAAA", "TXT", "NS", "MX", "SRV", "ANY"]
# (EDNS payload or None for no EDNS, DO bit)
SIZE_VARIANTS = [(None, False), (512, False), (600, False), (1232, False), (1232, True),
                 (4096, False), (4096, True)]

CHAOS_NAMES = ["id.server.", "hostname.bind.", "version.bind.", "version.server."]

# Types asked at every CNAME owner beside the base types: the DNSSEC types that may live beside
# a CNAME are answered at the owner, not by following it (RFC 2181 §10.1, RFC 4035 §2.5;
# issue 9, wire bug 3).
DNSSEC_AT_CNAME = ["NSEC", "NSEC3", "RRSIG"]

# Types asked at names that should not exist (NXDOMAIN is the same for every type).
NEGATIVE_TYPES = ["A", "MX", "TXT", "NS", "DS", "ANY"]


@dataclass(frozen=True)
class Case:
    """One query.  ``key`` is stable and names the case in reports."""

    category: str
    qname: str            # exactly as sent (0x20 case kept)
    qtype: str
    qclass: str = "IN"
    edns: int | None = 1232   # advertised UDP payload size; None = no OPT record
    do: bool = False
    rd: bool = False
    nsid: bool = False
    tcp: bool = False
    edns_version: int = 0
    options: tuple = ()       # extra EDNS options: ((code, payload bytes), ...)
    opcode: int = 0
    flags: tuple = ()         # extra header flags set in the query: ("CD", "AD")
    qid: int = 0

    @property
    def key(self) -> str:
        e = "noedns" if self.edns is None else f"edns{self.edns}"
        extra = "".join([",do" if self.do else "", ",rd" if self.rd else "",
                         ",nsid" if self.nsid else "", ",tcp" if self.tcp else "",
                         f",v{self.edns_version}" if self.edns_version else "",
                         "".join(f",opt{code}:{len(data)}" for code, data in self.options),
                         f",opcode{self.opcode}" if self.opcode else "",
                         "".join(f",{f.lower()}" for f in self.flags)])
        cls = "" if self.qclass == "IN" else f" {self.qclass}"
        return f"{self.qname}{cls} {self.qtype} [{e}{extra}]"

    def wire(self) -> bytes:
        opts = [dns.edns.GenericOption(dns.edns.NSID, b"")] if self.nsid else []
        opts += [dns.edns.GenericOption(code, data) for code, data in self.options]
        q = dns.message.make_query(
            self.qname, self.qtype, self.qclass,
            use_edns=self.edns_version if self.edns is not None else False,
            payload=self.edns or 512, want_dnssec=self.do, options=opts or None)
        q.id = self.qid
        q.flags = dns.flags.RD if self.rd else 0
        for f in self.flags:
            q.flags |= dns.flags.from_text(f)
        q.set_opcode(self.opcode)
        return q.to_wire()


# --------------------------------------------------------------------------------------------
# Corpus


def _categorize(rel: str) -> str:
    """The rule of issue 2 that a zone-relative owner name mainly exercises."""
    first = rel.split(".")[0]
    if "wild" in rel or first == "*" or rel.startswith("*"):
        return "wildcard"
    if first.startswith(("dn", "to-dname")) or "dn" == first:
        return "dname"
    if "deleg" in rel or "sibling" in rel or "nsonly" in rel or rel.endswith("sub") \
            or first in ("mxglue", "mxdeleg"):
        return "referral"
    if first in ("alias", "self", "out", "bigchain") or "chain" in first or "loop" in first \
            or first.startswith(("cross", "to-", "lc", "back")):
        return "cname"
    if first in ("ent", "deep", "y") or rel.endswith(("ent", "deep")):
        return "ent"
    if first.startswith("txt"):
        return "txt"
    if first.startswith("unk"):
        return "unknown-type"
    if first in ("big", "big6", "huge"):
        return "size"
    if first.startswith(("mx", "_")) or first in ("@", "mail", "sip"):
        return "additional"
    return "exact"


def _zone_names(path: Path) -> tuple[dns.name.Name, dict[dns.name.Name, set[str]]]:
    z = dns.zone.from_file(str(path), origin=None, relativize=False, check_origin=False)
    names: dict[dns.name.Name, set[str]] = {}
    for name, node in z.nodes.items():
        names[name] = {dns.rdatatype.to_text(rds.rdtype) for rds in node.rdatasets}
    return z.origin, names


def _mixed_case(name: str, rng: random.Random) -> str:
    """The same name with a random 0x20 pattern (draft-vixie-dnsext-dns0x20), never all-lower."""
    if not any(c.isalpha() for c in name):
        return name
    while True:
        out = "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c.lower()
                      for c in name)
        if out != name.lower():
            return out


def build_corpus(zone_files: Iterable[Path] = ZONE_FILES) -> list[Case]:
    """Every owner name x several types, plus names derived from each (NX child, below a
    wildcard, below a delegation, ENTs, NX siblings), out-of-zone names, CHAOS, mixed case,
    with and without EDNS, with DO, small and large buffers.  Deterministic."""
    rng = random.Random(53)
    cases: list[Case] = []

    def add(category: str, qname: str, qtype: str, **kw) -> None:
        cases.append(Case(category, qname, qtype, **kw))

    for path in zone_files:
        origin, names = _zone_names(path)
        # Empty non-terminals: ancestors of owners (inside the zone) that own nothing.
        ents = set()
        for n in names:
            p = n.parent() if n != origin else origin
            while p != origin and p.is_subdomain(origin):
                if p not in names:
                    ents.add(p)
                p = p.parent()
        targets: dict[str, tuple[str, set[str]]] = {}
        for n, types in names.items():
            rel = n.relativize(origin).to_text()
            targets[n.to_text()] = (_categorize(rel), types)
        for n in ents:
            targets[n.to_text()] = ("ent", set())
            # Below an empty non-terminal: NXDOMAIN, and no wildcard synthesis even beside a
            # wildcard (ent.wild.: RFC 4592 §2.2.2, the ENT is the closest encloser).
            # (Where the ENT holds a wildcard, e.g. wild., the name is synthesized instead.)
            wild = dns.name.Name((b"*",) + n.labels) in names
            targets.setdefault(f"nx-below.{n.to_text()}", ("wildcard" if wild else "ent", set()))
        for n, types in list(names.items()):
            rel = n.relativize(origin).to_text()
            cat = _categorize(rel)
            if n.labels[0] == b"*":
                # Below a wildcard: one label and two labels (RFC 4592 §2.2.1).
                for below in ("foo", "a.b", "Wild-Card.Case"):
                    targets.setdefault(f"{below}.{n.parent().to_text()}", ("wildcard", set()))
            elif "NS" in types and n != origin:
                for below in ("host", "a.b"):
                    targets.setdefault(f"{below}.{n.to_text()}", ("referral", set()))
            elif "DNAME" in types:
                for below in ("www", "x", "a.b"):
                    targets.setdefault(f"{below}.{n.to_text()}", ("dname", set()))
            else:
                # Below an existing name with no wildcard: NXDOMAIN (also for wildcard
                # owners' siblings such as explicit.wild: no synthesis below them).
                targets.setdefault(f"nx-below.{n.to_text()}",
                                   ("referral" if cat == "referral" else "negative", set()))
        targets.setdefault(f"nx.{origin.to_text()}", ("negative", set()))
        targets.setdefault(f"a.b.nx.{origin.to_text()}", ("negative", set()))
        # A name under dn-long whose DNAME substitution overflows 255 octets (RFC 6672 §2.2:
        # YXDOMAIN).
        if dns.name.from_text("dn-long", origin) in names:
            long_owner = ".".join(["q" * 50] * 2) + ".dn-long." + origin.to_text()
            targets[long_owner] = ("dname", set())

        for qname, (cat, types) in sorted(targets.items()):
            base = NEGATIVE_TYPES if cat == "negative" else BASE_TYPES
            qtypes = list(dict.fromkeys(base + sorted(types)))
            if "CNAME" in types:
                qtypes += DNSSEC_AT_CNAME
            for j, qt in enumerate(qtypes):
                # Alternately a plain RD=1 query without EDNS (stub-style) and an EDNS 1232
                # query with RD=0 (the size category tries every buffer on the big answers);
                # A and ANY get both.
                if qt in ("A", "ANY") or j % 2 == 0:
                    add(cat, qname, qt, edns=None, rd=True)
                if qt in ("A", "ANY") or j % 2 == 1:
                    add(cat, qname, qt, edns=1232)
            # The same name in mixed case (0x20), for the first type it holds and ANY.
            mc = _mixed_case(qname, rng)
            for qt in list(dict.fromkeys(sorted(types)[:1] + ["A", "ANY"])):
                add("mixed-case", mc, qt, edns=1232)
            # DO bit: no DNSSEC data is served; the answer must not change (RFC 3225 §3).
            add("do-bit", qname, "A", edns=4096, do=True)

        for rel in SIZE_SENSITIVE:
            qname = origin.to_text() if rel == "@" else f"{rel}.{origin.to_text()}"
            owner = dns.name.from_text(qname)
            if owner not in names and (owner.parent() == origin or owner.parent() not in names):
                continue    # (host.bigdeleg: below the delegation, which must exist)
            for qt in SIZE_TYPES:
                for edns, do in SIZE_VARIANTS:
                    add("size", qname, qt, edns=edns, do=do)
                # Over TCP the limit is 65535 (RFC 7766 §8): the answers that were truncated
                # over UDP must now come whole.
                add("tcp", qname, qt, edns=None, tcp=True)
                add("tcp", qname, qt, edns=1232, tcp=True)

    for qname in OUT_OF_ZONE:
        for qt in ("A", "NS", "SOA", "ANY"):
            add("refused", qname, qt, edns=None, rd=True)
            add("refused", qname, qt, edns=1232)
    # Classes other than IN for served names (RFC 1034 §4.3.2: no zone of that class).
    for qc in ("CH", "HS"):
        add("refused", "www.diff.example.", "A", qclass=qc)
    for qname in CHAOS_NAMES:
        add("chaos", qname, "TXT", qclass="CH", edns=None)
        add("chaos", qname, "TXT", qclass="CH", edns=1232)
        # other types: REFUSED (issue 9, wire bug 5); ANY: see knot-chaos-any-refused
        for qt in ("A", "SOA", "NS", "ANY"):
            add("chaos", qname, qt, qclass="CH", edns=1232)
    # QCLASS ANY (RFC 1035 §3.2.5): the IN data of the served zones, never authoritative
    # (RFC 1034 §3.7.1); outside them REFUSED (issue 9, wire bug 4).
    for qname, qt in (("www.diff.example.", "A"), ("www.diff.example.", "MX"),
                      ("diff.example.", "SOA"), ("nx.diff.example.", "A"),
                      ("alias.diff.example.", "A"), ("cross.diff.example.", "A"),
                      ("host.deleg.diff.example.", "A"), ("www.example.net.", "A"),
                      ("version.bind.", "TXT")):
        add("qclass", qname, qt, qclass="ANY", edns=None, rd=True)
        add("qclass", qname, qt, qclass="ANY", edns=1232)
    for qname in ("www.diff.example.", "nx.diff.example.", "example."):
        add("nsid", qname, "A", nsid=True)
    # Header and EDNS handling (ARCHITECTURE point 4, RFC 6891): EDNS version 1 -> BADVERS
    # (§6.1.3); unknown options ignored (§6.1.2); ECS (RFC 7871) and a client COOKIE (RFC 7873)
    # on a server without those features: ignored; CD and AD in the query (RFC 6840 §5.7-5.8);
    # opcodes other than QUERY -> NOTIMP (RFC 1035 §4.1.1), NOTIFY excepted.
    ecs = bytes.fromhex("00011800c00002")            # family 1, /24, scope 0, 192.0.2
    bad_ecs = bytes.fromhex("0001180000c00002")      # 4 address octets for a /24: malformed
    cookie = bytes.fromhex("0102030405060708")       # client cookie only
    for qname in ("www.diff.example.", "nx.diff.example."):
        add("header", qname, "A", edns_version=1)
        add("header", qname, "A", options=((65001, b"xyz"),))
        add("header", qname, "A", options=((8, ecs),))
        add("header", qname, "A", options=((8, bad_ecs),))
        add("header", qname, "A", options=((10, cookie),))
        add("header", qname, "A", flags=("CD",))
        add("header", qname, "A", flags=("AD",))
        add("header", qname, "A", edns=None, opcode=2)      # STATUS
        add("header", qname, "A", edns=None, opcode=3)      # unassigned

    # Stable message IDs: the index, so a report line maps back to one query.
    return [dataclasses.replace(c, qid=(i * 7919) & 0xFFFF) for i, c in enumerate(cases)]


# --------------------------------------------------------------------------------------------
# Normal form of a reply


@dataclass
class Reply:
    """What is compared: header bits, question exactly, sections as sets, and the OPT record."""

    raw: bytes
    error: str | None = None        # unparsable reply
    id: int = 0
    rcode: str = ""
    opcode: str = ""
    flags: dict[str, bool] = field(default_factory=dict)
    question: tuple = ()
    answer: frozenset = frozenset()
    authority: frozenset = frozenset()
    additional: frozenset = frozenset()
    edns: tuple | None = None       # (version, DO, NSID bytes or None)
    payload: int | None = None      # advertised size, reported but not compared

    def section(self, name: str) -> frozenset:
        return getattr(self, name)


COMPARED_FLAGS = ("QR", "AA", "TC", "RD", "RA", "AD", "CD")
SECTIONS = ("answer", "authority", "additional")


class RR(NamedTuple):
    """One resource record in normal form.  ``target`` (the name an NS, MX, SRV, CNAME or
    DNAME points to, lowercased) is derived from ``rdata`` and only there for the difference
    rules; it never makes two records unequal on its own."""

    name: str        # owner, lowercased
    ttl: int
    rdclass: str
    rdtype: str
    rdata: str       # canonical wire form (RFC 4034 §6.2: embedded names lowercased), hex
    target: str = ""


_TARGET = {"NS": "target", "CNAME": "target", "DNAME": "target", "MX": "exchange",
           "SRV": "target", "PTR": "target"}


def _rrs(section) -> frozenset:
    out = set()
    for rrset in section:
        typ = dns.rdatatype.to_text(rrset.rdtype)
        for rd in rrset:
            attr = _TARGET.get(typ)
            out.add(RR(rrset.name.to_text().lower(), rrset.ttl,
                       dns.rdataclass.to_text(rrset.rdclass), typ, rd.to_digestable().hex(),
                       getattr(rd, attr).to_text().lower() if attr else ""))
    return frozenset(out)


def normalize(raw: bytes | None) -> Reply | None:
    """None stays None (no reply: a drop or a timeout).  Cached: several tests compare the
    same replies; callers must not modify the returned Reply (use dataclasses.replace)."""
    if raw is None:
        return None
    return _normalize(bytes(raw))


@lru_cache(maxsize=65536)
def _normalize(raw: bytes) -> Reply:
    r = Reply(raw)
    try:
        m = dns.message.from_wire(raw, ignore_trailing=False, one_rr_per_rrset=True)
    except dns.exception.DNSException as e:
        # A truncated reply may legitimately stop mid-section: parse the header only.
        r.error = f"{type(e).__name__}: {e}"
        if len(raw) >= 12:
            r.id = int.from_bytes(raw[:2], "big")
            fl = int.from_bytes(raw[2:4], "big")
            r.rcode = dns.rcode.to_text(fl & 0xF)
            r.flags = {f: bool(fl & dns.flags.from_text(f)) for f in COMPARED_FLAGS}
        return r
    r.id = m.id
    r.rcode = dns.rcode.to_text(m.rcode())
    r.opcode = dns.opcode.to_text(m.opcode())
    r.flags = {f: bool(m.flags & dns.flags.from_text(f)) for f in COMPARED_FLAGS}
    r.question = tuple((rr.name.to_text(), dns.rdataclass.to_text(rr.rdclass),
                        dns.rdatatype.to_text(rr.rdtype)) for rr in m.question)
    r.answer, r.authority, r.additional = _rrs(m.answer), _rrs(m.authority), _rrs(m.additional)
    if m.edns >= 0:
        nsid = next((o.data if hasattr(o, "data") else o.to_wire()
                     for o in m.options if o.otype == dns.edns.NSID), None)
        r.edns = (m.edns, bool(m.ednsflags & dns.flags.DO), nsid)
        r.payload = m.payload
    return r


def fmt_rr(rr: RR) -> str:
    shown = rr.target or rr.rdata[:48] + ("…" if len(rr.rdata) > 48 else "")
    return f"{rr.name} {rr.ttl} {rr.rdclass} {rr.rdtype} {shown}"


# --------------------------------------------------------------------------------------------
# Comparison with a table of intentional differences


@dataclass(frozen=True)
class Quirk:
    """A documented policy of one implementation that differs from pop53's (issue 2) without
    being wrong per the RFCs.  ``strip`` rewrites that implementation's reply into pop53's
    policy (for example: drop the NS RRset NSD adds to the authority section of positive
    answers), so everything else in the reply is still compared exactly."""

    id: str
    impls: frozenset
    why: str
    applies: Callable[[Case, Reply], bool]
    strip: Callable[[Case, Reply], Reply]


@dataclass(frozen=True)
class Excuse:
    """A documented difference between two implementations that cannot be normalized away
    (each makes a different, allowed choice: which RRset answers ANY, what a truncated reply
    holds).  Used when both compared implementations are in ``between`` and
    ``applies(case, replies)`` holds (``replies``: implementation name -> Reply).  It excuses
    the listed ``fields`` (``"answer"``, ``"additional"``, ``"flags.TC"``, ``"rcode"``, ...);
    ``check``, when given, must still return None, so an excused field stays constrained (e.g.
    "each ANY answer is exactly one RRset of the name")."""

    id: str
    between: frozenset
    why: str
    applies: Callable[[Case, dict], bool]
    fields: tuple[str, ...]
    check: Callable[[Case, dict], str | None] | None = None


def compare(case: Case, a_name: str, a: Reply | None, b_name: str, b: Reply | None,
            quirks: Iterable[Quirk] = (), excuses: Iterable[Excuse] = ()
            ) -> tuple[list[str], set[str]]:
    """The differences between two replies to ``case`` that no quirk or excuse accounts for,
    and the ids of the quirks and excuses that were used."""
    if a is None or b is None:
        if a is None and b is None:
            return [], set()
        return [f"reply: {a_name}={'none' if a is None else a.rcode} "
                f"{b_name}={'none' if b is None else b.rcode}"], set()
    if a.error or b.error:
        return [f"unparsable: {a_name}={a.error} {b_name}={b.error}"], set()
    used: set[str] = set()
    replies = {}
    for name, reply in ((a_name, a), (b_name, b)):
        for q in quirks:
            if name in q.impls and q.applies(case, reply):
                reply = q.strip(case, reply)
                used.add(q.id)
        replies[name] = reply
    a, b = replies[a_name], replies[b_name]
    excused: set[str] = set()
    problems: list[str] = []
    for d in excuses:
        if a_name in d.between and b_name in d.between and d.applies(case, replies):
            used.add(d.id)
            excused.update(d.fields)
            if d.check is not None:
                msg = d.check(case, replies)
                if msg:
                    problems.append(f"[{d.id}] {msg}")

    def differs(field_name: str, va, vb) -> None:
        if field_name not in excused and va != vb:
            problems.append(f"{field_name}: {a_name}={va!r} {b_name}={vb!r}")

    differs("id", a.id, b.id)
    differs("rcode", a.rcode, b.rcode)
    differs("opcode", a.opcode, b.opcode)
    for f in COMPARED_FLAGS:
        differs(f"flags.{f}", a.flags.get(f), b.flags.get(f))
    differs("question", a.question, b.question)
    differs("edns", a.edns, b.edns)
    truncated = a.flags.get("TC") and b.flags.get("TC")
    for s in SECTIONS:
        # Both truncated: what a server puts into a TC reply is its own policy (RFC 2181 §9
        # allows a partial answer section); the client must retry over TCP anyway.
        if truncated or s in excused:
            continue
        sa, sb = a.section(s), b.section(s)
        if sa != sb:
            lines = [f"{s}:"]
            lines += [f"  only {a_name}: {fmt_rr(rr)}" for rr in sorted(sa - sb)]
            lines += [f"  only {b_name}: {fmt_rr(rr)}" for rr in sorted(sb - sa)]
            problems.append("\n    ".join(lines))
    return problems, used


# --------------------------------------------------------------------------------------------
# Running the corpus


CATEGORIES = ["exact", "cname", "wildcard", "dname", "referral", "ent", "negative", "additional",
              "txt", "unknown-type", "mixed-case", "size", "tcp", "do-bit", "refused", "chaos",
              "qclass", "nsid", "header"]

IDENTITY = "pop53-differential"
VERSION = "pop53-differential-version"


def reference_zones():
    from tests.support.refservers import Zone
    return [Zone.from_file(p) for p in ZONE_FILES]


def query_reference(kind: str, corpus: list[Case]) -> list[bytes | None]:
    """Start the reference server ``kind`` on the corpus zones, send every case (UDP, or TCP
    for ``tcp`` cases), stop it, and return the raw replies in corpus order."""
    from tests.support.refservers import server_class
    with server_class(kind)(reference_zones(), identity=IDENTITY, version=VERSION) as srv:
        out = []
        for c in corpus:
            # A loaded 2-core CI box can lose a loopback datagram or stall past the timeout:
            # retry twice before recording "no reply".
            for _ in range(3):
                reply = srv.query(c.wire(), tcp=c.tcp)
                if reply is not None:
                    break
            out.append(reply)
        return out


def query_pop53(corpus: list[Case]) -> list[bytes | None]:
    """pop53's replies to the corpus, in process: ``pop53.answer(image, wire, client)`` on the
    image compiled from the same zone files, with the same identity as the references."""
    import pop53
    image = pop53.compile_zones([str(p) for p in ZONE_FILES])
    kw = {}
    if hasattr(pop53, "Responder"):
        kw["responder"] = pop53.Responder(identity=IDENTITY, version=VERSION)
    return [pop53.answer(image, c.wire(), ("127.0.0.1", 5300), tcp=c.tcp, **kw)
            for c in corpus]


def mismatches(corpus: list[Case], a_name: str, a_raw: list, b_name: str, b_raw: list,
               quirks=(), excuses=(), category: str | None = None):
    """[(case, problems)] for every case (of ``category``) whose replies differ in a way the
    table does not account for, and the table entries used."""
    out, used = [], set()
    for c, ra, rb in zip(corpus, a_raw, b_raw):
        if category is not None and c.category != category:
            continue
        probs, u = compare(c, a_name, normalize(ra), b_name, normalize(rb), quirks, excuses)
        used |= u
        if probs:
            out.append((c, probs))
    return out, used


def must_agree(corpus: list[Case], a_name: str, a_raw: list, b_name: str, b_raw: list,
               quirks, excuses, category: str) -> None:
    """Fail the calling test with the report when any case of ``category`` differs in a way
    the table does not account for (every test_vs_* and test_references use this)."""
    import pytest

    found, _ = mismatches(corpus, a_name, a_raw, b_name, b_raw, quirks, excuses, category)
    if found:
        pytest.fail(report(found), pytrace=False)


def report(found: list, limit: int = 25) -> str:
    lines = [f"{len(found)} unexplained difference(s):"]
    for c, probs in found[:limit]:
        lines.append(f"  {c.key} (id {c.qid})")
        lines += ["      " + p.replace("\n", "\n      ") for p in probs]
    if len(found) > limit:
        lines.append(f"  ... and {len(found) - limit} more")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print every unexplained difference, grouped by rule, for a pair of implementations:
    ``python tests/differential/dnsdiff.py knot pop53 [--category C] [--limit N]``."""
    import argparse
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import dnsdiff_table as table
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("a", choices=["knot", "nsd", "bind", "pop53"])
    ap.add_argument("b", choices=["knot", "nsd", "bind", "pop53"])
    ap.add_argument("--category", choices=CATEGORIES)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--raw", action="store_true", help="ignore the table of differences")
    args = ap.parse_args(argv)
    corpus = build_corpus()
    replies = {}
    for name in {args.a, args.b}:
        replies[name] = query_pop53(corpus) if name == "pop53" else query_reference(name, corpus)
    quirks, excuses = ((), ()) if args.raw else (table.QUIRKS, table.EXCUSES)
    found, used = mismatches(corpus, args.a, replies[args.a], args.b, replies[args.b],
                             quirks, excuses, args.category)
    for cat in CATEGORIES:
        group = [f for f in found if f[0].category == cat]
        if group:
            print(f"=== {cat}: " + report(group, args.limit))
    print(f"{args.a} vs {args.b}: {len(found)} unexplained of {len(corpus)} queries; "
          f"table entries used: {sorted(used)}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
