"""Online signing of mapped answers (issue 12): the RRSIGs of every distinct mapped answer RRset,
made off the hot path when a mapping snapshot is built (pop53/mapping/snapshot.py), cached by
the RRset's content, and renewed before they expire.

A zone whose `[[zone]]` names `dnssec_keys = "DIR"` (BIND key files) has its mapped A, AAAA
and CNAME answers signed with its zone-signing keys (RFC 4035 §2.2: every authoritative RRset
but the delegation NS and glue).  The zone itself arrives signed (docs/dnssec.md); for its
NSEC/NSEC3 chain to cover a mapped name, the signed zone holds that name with an RRset of each
mapped type (its content is never served: the mapped answer is), see docs/dnssec-online.md.

Signatures are deterministic (RFC 6979 ECDSA, Ed25519) and keyed by (owner, type, TTL, RDATA),
so a liveness flip back to an earlier answer reuses its signature.  Validity: inception one hour
back (clock skew), expiration `dnssec_validity` later; a signature is renewed once less than
`dnssec_refresh` of it is left (MappingState republishes the snapshot then).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset

from pop53.dnssec import keys as dkeys
from pop53.errors import ConfigError

SKEW = 3600                       # inception this far back: resolvers with slow clocks
DEFAULT_VALIDITY = 14 * 86400     # as Knot's rrsig-lifetime
T_RRSIG = 46


@dataclasses.dataclass
class ZoneSigning:
    origin: dns.name.Name
    keys: list                    # [dkeys.SigningKey] that sign answers (ZSKs)
    validity: int
    refresh: int                  # renew when less than this is left


class OnlineSigner:
    """RRSIGs for mapped answers.  Thread-safe; `made` counts signatures created (never grows
    with queries: the data plane only reads what build() wrote)."""

    def __init__(self, zones: list[ZoneSigning], clock=time.time):
        self.zones = sorted(zones, key=lambda z: -len(z.origin.labels))
        self.clock = clock
        self.made = 0
        self._cache: dict = {}        # content -> (rrsig wires, expiration)
        self._used: set = set()
        self._lock = threading.Lock()

    def zone_of(self, owner: dns.name.Name) -> ZoneSigning | None:
        for z in self.zones:
            if owner.is_subdomain(z.origin):
                return z
        return None

    def begin(self) -> None:
        """A snapshot build starts: signatures it does not use are dropped at end()."""
        with self._lock:
            self._used = set()

    def end(self) -> None:
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k in self._used}

    def sign(self, owner_wire: bytes, rtype: int, ttl: int, rdatas: list[bytes]) -> list[bytes]:
        """RRSIG RDATA (wire) over the RRset, one per zone-signing key; [] when the owner's
        zone is not signed online.  Reuses a cached signature with enough validity left."""
        owner = dns.name.from_wire(owner_wire, 0)[0]
        z = self.zone_of(owner)
        if z is None:
            return []
        key = (owner_wire.lower(), rtype, ttl, tuple(rdatas))
        now = int(self.clock())
        with self._lock:
            self._used.add(key)
            hit = self._cache.get(key)
        if hit is not None and hit[1] - now > z.refresh:
            return hit[0]
        rds = dns.rdataset.Rdataset(dns.rdataclass.IN, rtype, ttl=ttl)
        for r in rdatas:
            rds.add(dns.rdata.from_wire(dns.rdataclass.IN, rtype, r, 0, len(r)))
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rtype)
        rrset.update(rds)
        exp = now + z.validity
        sigs = []
        for k in z.keys:
            sig = dns.dnssec.sign(rrset, k.private, z.origin, k.dnskey, inception=now - SKEW,
                                  expiration=exp, origin=None)
            sigs.append(sig.to_digestable())
        with self._lock:
            self.made += len(sigs)
            self._cache[key] = (sigs, exp)
        return sigs

    def next_refresh(self) -> float | None:
        """When the earliest cached signature must be renewed (epoch seconds), None if none."""
        with self._lock:
            items = list(self._cache.items())
        best = None
        for key, (_, exp) in items:
            z = self.zone_of(dns.name.from_wire(key[0], 0)[0])
            t = exp - z.refresh if z is not None else exp
            best = t if best is None or t < best else best
        return best


def from_config(cfg) -> OnlineSigner | None:
    """The signer of a Config: every [[zone]] with `dnssec_keys`; None when there is none.
    Raises ConfigError (naming the key) for a bad directory, key file or validity."""
    zones = []
    base = os.path.dirname(os.path.abspath(cfg.source)) if getattr(cfg, "source", None) else ""
    for i, zc in enumerate(getattr(cfg, "zones", ())):
        d = zc.raw.get("dnssec_keys")
        if d is None:
            continue
        where = f"zone[{i}]"
        if not isinstance(d, str):
            raise ConfigError("must be a string (a directory of key files)", file=cfg.source,
                              key=f"{where}.dnssec_keys")
        validity = zc.raw.get("dnssec_validity", DEFAULT_VALIDITY)
        refresh = zc.raw.get("dnssec_refresh", None)
        if not isinstance(validity, int) or isinstance(validity, bool) or validity < 60:
            raise ConfigError("must be an integer of seconds >= 60", file=cfg.source,
                              key=f"{where}.dnssec_validity")
        if refresh is None:
            refresh = validity // 2
        if not isinstance(refresh, int) or isinstance(refresh, bool) or not 0 < refresh < validity:
            raise ConfigError("must be an integer of seconds between 0 and dnssec_validity",
                              file=cfg.source, key=f"{where}.dnssec_refresh")
        path = d if os.path.isabs(d) else os.path.join(base, d)
        origin = dns.name.from_text(zc.name)
        try:
            ks = dkeys.zone_signing_keys(dkeys.load_dir(path, origin))
        except ConfigError as exc:
            raise ConfigError(exc.message, file=cfg.source, key=f"{where}.dnssec_keys") from None
        zones.append(ZoneSigning(origin, ks, validity, refresh))
    return OnlineSigner(zones) if zones else None


def check_mapped_names(image, mcfg, signer: OnlineSigner) -> None:
    """Every mapped name of a zone signed online must be in the zone's NSEC/NSEC3 chain with
    the types it answers (else a validator finds its positive answer contradicted by the
    chain, and no NODATA there can be proven, RFC 4035 §3.1.3): the signed zone must hold the
    name with an RRset of each mapped type.  Asked of the image itself (no mapping), DO=1."""
    import dns.flags
    import dns.message

    from pop53 import _core
    responder = _core.Responder()
    for i, res in enumerate(mcfg.mapped):
        owner = dns.name.from_text(res.name)
        if signer.zone_of(owner) is None or res.type == "NS":
            continue
        types = {None: ("A", "AAAA"), "A": ("A",), "AAAA": ("AAAA",), "CNAME": ("CNAME",)}[res.type]
        for t in types:
            q = dns.message.make_query(owner, t, want_dnssec=True)
            _, wire = _core.answer(image.view, q.to_wire(), responder, True, b"\x7f\0\0\1")
            r = dns.message.from_wire(wire) if wire else None
            ok = r is not None and any(rr.name == owner and rr.rdtype == dns.rdatatype.from_text(t)
                                       for rr in r.answer) and \
                any(rr.rdtype == T_RRSIG for rr in r.answer)
            if not ok:
                raise ConfigError(
                    f"{res.name} is signed online but its signed zone does not hold the name "
                    f"with a signed {t} RRset, so its NSEC/NSEC3 record cannot list {t}: add a "
                    f"{t} record at the name before signing the zone (docs/dnssec-online.md)",
                    file=mcfg.source, key=f"mapped[{i}].name")
