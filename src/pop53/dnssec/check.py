"""`pop53 check` for signed zones: signatures that expire within a window, signatures made by a
key the zone's DNSKEY RRset does not hold, and signatures that do not verify with it (dnspython's
dns.dnssec; off the serving path)."""
from __future__ import annotations

import dataclasses
import datetime
import time

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.rrset

DEFAULT_WINDOW_DAYS = 7.0
VERIFY_LIMIT = 20_000      # signatures verified per zone; above, an even sample (said so)


@dataclasses.dataclass(frozen=True)
class Finding:
    level: str          # "error" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def check_signatures(zone, origin: dns.name.Name, *, now: float | None = None,
                     window_days: float = DEFAULT_WINDOW_DAYS,
                     verify_limit: int = VERIFY_LIMIT) -> list[Finding]:
    """Findings for one zone (a dns.zone.Zone).  Unsigned zones (no RRSIG) give none."""
    now = time.time() if now is None else now
    horizon = now + window_days * 86400
    z = origin.to_text()
    pairs = []          # (rrset, rrsig rdata)
    for name, node in zone.nodes.items():
        covered = {(r.rdtype, r.covers): r for r in node.rdatasets}
        for rds in node.rdatasets:
            if rds.rdtype != dns.rdatatype.RRSIG:
                continue
            target = covered.get((rds.covers, dns.rdatatype.NONE))
            rrset = None
            if target is not None:
                rrset = dns.rrset.RRset(name, target.rdclass, target.rdtype)
                rrset.update(target)
            for sig in rds:
                pairs.append((name, rds.covers, rrset, sig))
    if not pairs:
        return []
    out: list[Finding] = []
    dnskey = zone.get_rdataset(origin, dns.rdatatype.DNSKEY)
    if dnskey is None:
        return [Finding("error", f"zone {z}: {len(pairs)} RRSIGs but no DNSKEY RRset at the apex")]
    keys = {(dns.dnssec.key_id(k), k.algorithm) for k in dnskey}
    keyset = dns.rrset.RRset(origin, dnskey.rdclass, dns.rdatatype.DNSKEY)
    keyset.update(dnskey)
    unknown, expired, early, soon, orphan = [], [], [], [], []
    for name, covers, rrset, sig in pairs:
        what = f"{name} {dns.rdatatype.to_text(covers)}"
        if sig.signer != origin:
            unknown.append(f"{what} signed by {sig.signer} (not the zone)")
        elif (sig.key_tag, sig.algorithm) not in keys:
            unknown.append(f"{what} by key tag {sig.key_tag} algorithm {sig.algorithm}")
        if rrset is None:
            orphan.append(what)
        if sig.expiration < now:
            expired.append((sig.expiration, what))
        elif sig.inception > now:
            early.append((sig.inception, what))
        elif sig.expiration < horizon:
            soon.append((sig.expiration, what))

    def listing(items: list) -> str:
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    if unknown:
        out.append(Finding("error", f"zone {z}: {len(unknown)} signatures made by a key the DNSKEY "
                                    f"RRset does not hold: {listing(unknown)}"))
    if expired:
        expired.sort()
        out.append(Finding("error", f"zone {z}: {len(expired)} signatures have expired (first "
                                    f"{expired[0][1]} at {_when(expired[0][0])})"))
    if early:
        early.sort()
        out.append(Finding("error", f"zone {z}: {len(early)} signatures are not valid yet (first "
                                    f"{early[0][1]} from {_when(early[0][0])})"))
    if soon:
        soon.sort()
        out.append(Finding("warning", f"zone {z}: {len(soon)} signatures expire within "
                                      f"{window_days:g} days (first {soon[0][1]} at "
                                      f"{_when(soon[0][0])}); re-sign the zone"))
    if orphan:
        out.append(Finding("warning", f"zone {z}: RRSIGs without the RRset they cover: {listing(orphan)}"))
    # Cryptographic check: does the DNSKEY RRset verify the signatures?
    todo = [(r, s) for _n, _c, r, s in pairs
            if r is not None and (s.key_tag, s.algorithm) in keys and s.signer == origin]
    step = max(1, -(-len(todo) // verify_limit)) if verify_limit else 0
    sample = todo[::step] if step else []
    bad = []
    for rrset, sig in sample:
        try:
            dns.dnssec.validate_rrsig(rrset, sig, {origin: keyset},
                                      now=min(max(now, sig.inception), sig.expiration))
        except dns.dnssec.ValidationFailure:
            bad.append(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} (key tag {sig.key_tag})")
    if bad:
        scope = "" if step == 1 else f" (an even sample of {len(sample)} of {len(todo)} checked)"
        out.append(Finding("error", f"zone {z}: {len(bad)} signatures do not verify with the "
                                    f"zone's DNSKEY{scope}: {listing(bad)}"))
    return out
