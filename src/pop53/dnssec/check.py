"""`pop53 check` for signed zones: signatures that expire within a window, signatures made by a
key the zone's DNSKEY RRset does not hold, RRSIGs without the RRset they cover, and signatures
that do not verify with the DNSKEY RRset (dnspython's dns.dnssec; off the serving path).

The findings are made once (`_findings`) from a `SigTable`: every RRSIG of the zone as arrays,
in one order (owner in zone order, covered type, then as written), so the same zone gives the
same findings whichever form it was read in.  Two forms make a table: a dnspython zone
(`check_signatures`, zones read by dnspython or received by transfer) and the scanner's record
columns (pop53.dnssec.sigcols, `check_columns`: a 1M-name signed zone without an object per
record).  Only the signatures sampled for the cryptographic check become dnspython objects."""
from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Callable

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.rrset
import numpy as np

DEFAULT_WINDOW_DAYS = 7.0
VERIFY_LIMIT = 20_000      # signatures verified per zone; above, an even sample (said so)


@dataclasses.dataclass(frozen=True)
class Finding:
    level: str          # "error" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclasses.dataclass
class SigTable:
    """A zone's RRSIGs, one entry per distinct signature, in the order findings list them."""
    expiration: np.ndarray      # int64 seconds (RFC 4034 3.1.5)
    inception: np.ndarray
    key_tag: np.ndarray         # int64
    algorithm: np.ndarray       # int64
    own: np.ndarray             # bool: the signer name is the zone's apex (RFC 4035 5.3.1)
    orphan: np.ndarray          # bool: no RRset of the covered type at the owner
    what: Callable[[int], str]          # "owner TYPE" of signature i
    signer: Callable[[int], str]        # signer name of signature i
    pair: Callable[[int], tuple]        # (dns.rrset.RRset covered, RRSIG rdata) of signature i


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _listing(items: list, total: int) -> str:
    return ", ".join(items) + (f" and {total - len(items)} more" if total > len(items) else "")


def _first(values: np.ndarray, idx: np.ndarray) -> int:
    """The signature among `idx` with the smallest value; the first in zone order on a tie."""
    return int(idx[int(np.argmin(values[idx]))])


def no_dnskey(origin: dns.name.Name, n_sigs: int) -> list[Finding]:
    return [Finding("error", f"zone {origin.to_text()}: {n_sigs} RRSIGs but no DNSKEY RRset at the apex")]


def _findings(origin: dns.name.Name, t: SigTable, keyset: dns.rrset.RRset, now: float,
              window_days: float, verify_limit: int) -> list[Finding]:
    z = origin.to_text()
    horizon = now + window_days * 86400
    keys = np.array(sorted((dns.dnssec.key_id(k) << 8) | k.algorithm for k in keyset), dtype=np.int64)
    known = t.own & np.isin((t.key_tag << 8) | t.algorithm, keys)
    out: list[Finding] = []
    unknown = np.flatnonzero(~known)
    if len(unknown):
        shown = [f"{t.what(i)} signed by {t.signer(i)} (not the zone)" if not t.own[i] else
                 f"{t.what(i)} by key tag {t.key_tag[i]} algorithm {t.algorithm[i]}"
                 for i in unknown[:5].tolist()]
        out.append(Finding("error", f"zone {z}: {len(unknown)} signatures made by a key the DNSKEY "
                                    f"RRset does not hold: {_listing(shown, len(unknown))}"))
    expired = t.expiration < now
    early = ~expired & (t.inception > now)
    soon = ~expired & ~early & (t.expiration < horizon)
    if expired.any():
        idx = np.flatnonzero(expired)
        i = _first(t.expiration, idx)
        out.append(Finding("error", f"zone {z}: {len(idx)} signatures have expired (first "
                                    f"{t.what(i)} at {_when(int(t.expiration[i]))})"))
    if early.any():
        idx = np.flatnonzero(early)
        i = _first(t.inception, idx)
        out.append(Finding("error", f"zone {z}: {len(idx)} signatures are not valid yet (first "
                                    f"{t.what(i)} from {_when(int(t.inception[i]))})"))
    if soon.any():
        idx = np.flatnonzero(soon)
        i = _first(t.expiration, idx)
        out.append(Finding("warning", f"zone {z}: {len(idx)} signatures expire within "
                                      f"{window_days:g} days (first {t.what(i)} at "
                                      f"{_when(int(t.expiration[i]))}); re-sign the zone"))
    orphan = np.flatnonzero(t.orphan)
    if len(orphan):
        shown = [t.what(i) for i in orphan[:5].tolist()]
        out.append(Finding("warning", f"zone {z}: RRSIGs without the RRset they cover: "
                                      f"{_listing(shown, len(orphan))}"))
    # Cryptographic check: does the DNSKEY RRset verify the signatures?  (RFC 4035 5.3)
    todo = np.flatnonzero(known & ~t.orphan)
    step = max(1, -(-len(todo) // verify_limit)) if verify_limit else 0
    sample = todo[::step].tolist() if step else []
    bad = []
    for i in sample:
        rrset, sig = t.pair(i)
        try:
            dns.dnssec.validate_rrsig(rrset, sig, {origin: keyset},
                                      now=min(max(now, sig.inception), sig.expiration))
        except dns.dnssec.ValidationFailure:
            bad.append(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} (key tag {sig.key_tag})")
    if bad:
        scope = "" if step == 1 else f" (an even sample of {len(sample)} of {len(todo)} checked)"
        out.append(Finding("error", f"zone {z}: {len(bad)} signatures do not verify with the "
                                    f"zone's DNSKEY{scope}: {_listing(bad[:5], len(bad))}"))
    return out


def check_signatures(zone, origin: dns.name.Name, *, now: float | None = None,
                     window_days: float = DEFAULT_WINDOW_DAYS,
                     verify_limit: int = VERIFY_LIMIT) -> list[Finding]:
    """Findings for one zone (a dns.zone.Zone).  Unsigned zones (no RRSIG) give none."""
    now = time.time() if now is None else now
    rows = []          # (node ordinal, covers, position, name, rrset or None, rrsig rdata)
    for n, (name, node) in enumerate(zone.nodes.items()):
        covered = {(r.rdtype, r.covers): r for r in node.rdatasets}
        for rds in node.rdatasets:
            if rds.rdtype != dns.rdatatype.RRSIG:
                continue
            target = covered.get((rds.covers, dns.rdatatype.NONE))
            rrset = None
            if target is not None:
                rrset = dns.rrset.RRset(name, target.rdclass, target.rdtype)
                rrset.update(target)
            for k, sig in enumerate(rds):
                rows.append((n, int(rds.covers), k, name, rrset, sig))
    if not rows:
        return []
    dnskey = zone.get_rdataset(origin, dns.rdatatype.DNSKEY)
    if dnskey is None:
        return no_dnskey(origin, len(rows))
    rows.sort(key=lambda r: r[:3])
    keyset = dns.rrset.RRset(origin, dnskey.rdclass, dns.rdatatype.DNSKEY)
    keyset.update(dnskey)

    def col(f, dtype=np.int64):
        return np.fromiter((f(r[5]) for r in rows), dtype=dtype, count=len(rows))

    table = SigTable(
        expiration=col(lambda s: s.expiration), inception=col(lambda s: s.inception),
        key_tag=col(lambda s: s.key_tag), algorithm=col(lambda s: s.algorithm),
        own=col(lambda s: s.signer == origin, bool),
        orphan=np.fromiter((r[4] is None for r in rows), dtype=bool, count=len(rows)),
        what=lambda i: f"{rows[i][3]} {dns.rdatatype.to_text(rows[i][1])}",
        signer=lambda i: str(rows[i][5].signer),
        pair=lambda i: (rows[i][4], rows[i][5]))
    return _findings(origin, table, keyset, now, window_days, verify_limit)
