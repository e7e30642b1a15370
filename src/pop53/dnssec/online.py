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
import logging
import os
import struct
import threading
import time

import dns.flags
import dns.name
import dns.rdatatype
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pop53.dnssec import keys as dkeys
from pop53.errors import ConfigError

SKEW = 3600                       # inception this far back: resolvers with slow clocks
DEFAULT_VALIDITY = 14 * 86400     # as Knot's rrsig-lifetime
T_RRSIG, T_CNAME = 46, 5
# RFC 6979 deterministic nonces: the same RRset signed twice gives the same RRSIG
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
# RFC 5702 §3: RSASSA-PKCS1-v1_5 (deterministic too)
_RSA_HASH = {dkeys.ALG_RSASHA256: hashes.SHA256(), dkeys.ALG_RSASHA512: hashes.SHA512()}
log = logging.getLogger("pop53.dnssec")


@dataclasses.dataclass
class ZoneSigning:
    origin: dns.name.Name
    keys: list                    # [dkeys.SigningKey] that sign answers (dkeys.select)
    validity: int
    refresh: int                  # renew when less than this is left
    read: list = dataclasses.field(default_factory=list)  # every key of the directory
    where: str = ""               # the directory, for errors
    cfgkey: str = ""              # zone[i].dnssec_keys

    @property
    def ident(self) -> tuple:
        """What the signatures depend on besides the RRset: a change re-signs everything."""
        return (tuple((k.tag, k.dnskey.algorithm, k.dnskey.flags) for k in self.keys),
                self.validity, self.refresh)


class OnlineSigner:
    """RRSIGs for mapped answers.  Thread-safe; `made` counts signatures created (never grows
    with queries: the data plane only reads what build() wrote)."""

    def __init__(self, zones: list[ZoneSigning], clock=time.time):
        self.zones = sorted(zones, key=lambda z: -len(z.origin.labels))
        self.clock = clock
        self.made = 0
        self._cache: dict = {}        # content -> (rrsig wires, expiration)
        self._used: set = set()
        self._zones: dict = {}        # owner wire -> ZoneSigning or False
        self._lock = threading.Lock()

    def zone_of(self, owner: dns.name.Name) -> ZoneSigning | None:
        for z in self.zones:
            if owner.is_subdomain(z.origin):
                return z
        return None

    def update(self, zones: list[ZoneSigning]) -> bool:
        """Sign with new keys/settings (a reload): returns whether anything changed.  The
        published snapshot keeps its signatures until the next build replaces it; the old
        signatures leave the cache at that build's end() (their ident no longer matches)."""
        zones = sorted(zones, key=lambda z: -len(z.origin.labels))
        with self._lock:
            before = {z.origin: z.ident for z in self.zones}
            self.zones = zones
            self._zones = {}
        changed = before != {z.origin: z.ident for z in zones}
        for z in zones:
            if before.get(z.origin) != z.ident:
                log.info("zone %s: mapped answers are signed by key tags %s", z.origin,
                         [k.tag for k in z.keys])
        return changed

    def reselect(self, image) -> bool:
        """The zones' signing keys again, from the keys already read and the DNSKEY RRset and
        SOA signatures `image` serves (a zone reloaded or transferred, e.g. one step of a key
        roll).  A zone whose keys cannot be chosen keeps its current ones (logged)."""
        out = []
        for z in self.zones:
            try:
                keys = dkeys.select(z.read, z.origin, *zone_keyinfo(image, z.origin), z.where)
            except ConfigError as exc:
                log.error("zone %s: keeping the current online signing keys: %s", z.origin, exc)
                keys = z.keys
            out.append(dataclasses.replace(z, keys=keys))
        return self.update(out)

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
        z = self._zones.get(owner_wire)
        if z is None:
            z = self._zones[owner_wire] = self.zone_of(dns.name.from_wire(owner_wire, 0)[0]) or False
        if z is False:
            return []
        key = (owner_wire.lower(), rtype, ttl, tuple(rdatas), z.ident)
        now = int(self.clock())
        with self._lock:
            self._used.add(key)
            hit = self._cache.get(key)
        if hit is not None and hit[1] - now > z.refresh:
            return hit[0]
        exp = now + z.validity
        sigs = [rrsig(owner_wire, rtype, ttl, rdatas, k, z.origin, now - SKEW, exp) for k in z.keys]
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


def _canonical_rdata(rtype: int, rd: bytes) -> bytes:
    """RFC 4034 §6.2 (RFC 6840 §5.1): the names in a CNAME's RDATA in lowercase (wire label
    lengths are below 64, so bytes.lower() changes only the letters)."""
    return rd.lower() if rtype == T_CNAME else rd


def rrsig(owner_wire: bytes, rtype: int, ttl: int, rdatas: list[bytes], key, signer: dns.name.Name,
          inception: int, expiration: int) -> bytes:
    """The RDATA (wire) of the RRSIG of one RRset by one key (RFC 4034 §3.1.8.1): the signed
    data is the RRSIG RDATA without its signature, then the RRs in canonical form and order.
    Built here rather than through dns.dnssec.sign, whose per-call overhead is several times
    the signature itself (bench/micro/signing.py); verified with dns.dnssec.validate and delv
    in tests/dnssec/test_online_*.py."""
    owner = owner_wire.lower()
    labels = 0
    p = 0
    while owner[p]:
        labels += 1
        p += owner[p] + 1
    if owner[1:2] == b"*" and owner[0] == 1:
        labels -= 1             # RFC 4034 §3.1.3: a wildcard owner's label is not counted
    head = struct.pack("!HBBIIIH", rtype, key.dnskey.algorithm, labels, ttl, expiration,
                       inception, key.tag) + signer.canonicalize().to_wire()
    rrs = sorted(_canonical_rdata(rtype, rd) for rd in rdatas)
    data = head + b"".join(owner + struct.pack("!HHIH", rtype, 1, ttl, len(rd)) + rd
                           for i, rd in enumerate(rrs) if i == 0 or rd != rrs[i - 1])
    alg = key.dnskey.algorithm
    if alg == dkeys.ALG_P256:
        r, s = decode_dss_signature(key.private.sign(data, _ECDSA))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")     # RFC 6605 §4
    elif alg in _RSA_HASH:
        sig = key.private.sign(data, padding.PKCS1v15(), _RSA_HASH[alg])    # RFC 5702 §3
    else:
        sig = key.private.sign(data)                             # RFC 8080 §3
    return head + sig


def read_config(cfg) -> list[ZoneSigning]:
    """Every [[zone]] with `dnssec_keys`, its key files read (keys not chosen yet).  Raises
    ConfigError naming the key file and `zone[i].dnssec_keys` for a bad directory, key file
    or validity."""
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
            read = dkeys.load_dir(path, origin)
        except ConfigError as exc:
            raise ConfigError(exc.message, file=cfg.source, key=f"{where}.dnssec_keys") from None
        zones.append(ZoneSigning(origin, [], validity, refresh, read, path,
                                 f"{where}.dnssec_keys"))
    return zones


def choose(zones: list[ZoneSigning], image, source=None) -> list[ZoneSigning]:
    """The signing keys of each zone (dkeys.select) from what `image` (or None) serves.
    Raises ConfigError naming the key directory when none of its keys is published.  A zone
    with no key chosen yet (only key store keys, zone not loaded) signs nothing until
    reselect() finds its DNSKEY."""
    out = []
    for z in zones:
        try:
            keys = dkeys.select(z.read, z.origin, *zone_keyinfo(image, z.origin), z.where)
        except ConfigError as exc:
            raise ConfigError(exc.message, file=source, key=z.cfgkey) from None
        out.append(dataclasses.replace(z, keys=keys))
    return out


def from_config(cfg, image=None) -> OnlineSigner | None:
    """The signer of a Config: every [[zone]] with `dnssec_keys`; None when there is none.
    Raises ConfigError (naming the key) for a bad directory, key file or validity, or keys
    none of which the zone in `image` publishes."""
    zones = read_config(cfg)
    return OnlineSigner(choose(zones, image, cfg.source)) if zones else None


def zone_keyinfo(image, origin: dns.name.Name) -> tuple:
    """(the DNSKEY RDATAs at the zone's apex, {(tag, algorithm)} of the RRSIGs over its SOA)
    as `image` answers them; (None, set()) when the image has no signed zone there."""
    import dns.message

    from pop53 import _core
    if image is None:
        return None, set()
    found = {}
    for t in ("DNSKEY", "SOA"):
        q = dns.message.make_query(origin, t, want_dnssec=True)
        _, wire = _core.answer(image.view, q.to_wire(), _core.Responder(), True, b"\x7f\0\0\1")
        r = dns.message.from_wire(wire) if wire else None
        if r is None or not r.flags & dns.flags.AA:
            return None, set()
        found[t] = [rr for rr in r.answer if rr.name == origin]
    dnskeys = [rd for rr in found["DNSKEY"] if rr.rdtype == dns.rdatatype.DNSKEY for rd in rr]
    signers = {(rd.key_tag, rd.algorithm) for rr in found["SOA"]
               if rr.rdtype == T_RRSIG and rr.covers == dns.rdatatype.SOA for rd in rr}
    if not dnskeys:
        return None, set()
    return dnskeys, signers


def _check_mapped_cut(image, responder, owner, mcfg, i) -> None:
    """A mapped delegation in a signed zone: the zone must hold it as a static delegation (an NS
    placeholder at the cut), so that its NSEC/NSEC3 record proves the DS's absence (RFC 4035
    §3.1.4); its NS and glue are never served (the mapped ones are)."""
    import dns.message

    from pop53 import _core
    q = dns.message.make_query(owner, "NS", want_dnssec=True)
    _, wire = _core.answer(image.view, q.to_wire(), responder, True, b"\x7f\0\0\1")
    r = dns.message.from_wire(wire) if wire else None
    if r is None or not any(rr.name == owner and rr.rdtype == dns.rdatatype.NS
                            for rr in r.authority):
        raise ConfigError(
            f"{owner} is a mapped delegation in a zone signed online, but the signed zone does "
            f"not delegate it, so no NSEC/NSEC3 record can prove it has no DS: add an NS record "
            f"at the name before signing the zone (docs/dnssec-online.md)",
            file=mcfg.source, key=f"mapped[{i}].name")


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
        if signer.zone_of(owner) is None:
            continue
        if res.type == "NS":
            _check_mapped_cut(image, responder, owner, mcfg, i)
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
