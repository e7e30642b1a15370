"""Catalog zones (RFC 9432).  As a consumer: a secondary zone flagged `catalog = true` is
transferred like any other; each version lists member zones, and those become secondary zones
of the same primaries with the same TSIG key, added and removed as the catalog changes, without
a restart (pop53.xfr.zoneset).

The catalog's format (RFC 9432 §4):
    version.CATZ       TXT "2"                    the schema version; required (§4.2.1)
    <id>.zones.CATZ    PTR member.example.        one member zone per unique id (§4.3)
    group.<id>.zones.CATZ  TXT "name"             its group (§4.4.2), optional, reported only
A catalog whose version property is missing or not "2" is not processed (§4.2.1: "MUST NOT be
processed"), and the members keep what they were.  A member that is also configured in
[[zone]] (or in another catalog) keeps its first owner (§5.4: a consumer must not let a catalog
take over a zone configured otherwise); the conflict is logged.

As a producer (`CatalogProducer`), a [[zone]] with `catalog = true` and neither primaries nor a
file is generated here: it lists this server's file zones, for consumers such as Knot
(`catalog-role: interpret`) to pick up.
"""
from __future__ import annotations

import hashlib
import logging
import time

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone

from pop53.xfr import zoneset
from pop53.xfr.config import ZoneConf

log = logging.getLogger("pop53.xfr")

SCHEMA_VERSION = "2"
_ZONES = dns.name.Name((b"zones",))


class CatalogError(ValueError):
    pass


def members_of(zone: dns.zone.Zone) -> dict[dns.name.Name, dict]:
    """{member origin: {"id": unique id, "group": str | None}} of one catalog version."""
    origin = zone.origin
    version = zone.get_rdataset(dns.name.Name((b"version",)).concatenate(origin), "TXT")
    texts = [b"".join(rd.strings).decode("ascii", "replace") for rd in version or ()]
    if texts != [SCHEMA_VERSION]:
        raise CatalogError(f"version property is {texts or 'missing'}, not [\"2\"] "
                           "(RFC 9432 §4.2.1): not processed")
    base = _ZONES.concatenate(origin)
    out: dict[dns.name.Name, dict] = {}
    for name, node in zone.nodes.items():
        name = name if name.is_absolute() else name.concatenate(origin)
        if not name.is_subdomain(base) or len(name) != len(base) + 1:
            continue
        ptrs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.PTR)
        if ptrs is None:
            continue
        if len(ptrs) != 1:       # §4.3: exactly one PTR per unique id; else ignore it
            log.warning("catalog %s: %s has %d PTR records; ignored", origin, name, len(ptrs))
            continue
        member = next(iter(ptrs)).target
        uid = name.labels[0].decode("ascii", "replace")
        if member in out:        # §4.3: the same zone under two ids: ignore the duplicates
            log.warning("catalog %s: member %s listed twice; the first id is kept", origin, member)
            continue
        group = zone.get_rdataset(dns.name.Name((b"group",)).concatenate(name), "TXT")
        out[member] = {"id": uid, "group": (b"".join(next(iter(group)).strings).decode()
                                            if group else None)}
    return out


class CatalogConsumer:
    """Keeps the engine's member zones in step with its catalog zones."""

    def __init__(self, svc):
        self.svc = svc
        # catalog origin -> {member origin: {"id", "group"}}
        self.members: dict[dns.name.Name, dict[dns.name.Name, dict]] = {}

    def owned(self) -> dict[dns.name.Name, dns.name.Name]:
        """member -> its catalog."""
        return {m: cat for cat, ms in self.members.items() for m in ms}

    def changed(self, catalog: dns.name.Name, zone: dns.zone.Zone) -> dict:
        """A new version of `catalog` is served: add and remove member zones."""
        st = self.svc.zones.get(catalog)
        if st is None:
            return {}
        try:
            wanted = members_of(zone)
        except CatalogError as exc:
            log.error("catalog %s: %s", catalog, exc)
            st.last_error = str(exc)
            return {}
        before = self.members.get(catalog, {})
        owners = self.owned()
        added, removed = [], []
        for member in [m for m in before if m not in wanted]:
            zoneset.remove_zone(self.svc, member, publish=False)
            removed.append(member.to_text())
        keep = {m: v for m, v in before.items() if m in wanted}
        for member, info in wanted.items():
            if member in before:
                continue
            if member in self.svc.zones or owners.get(member, catalog) != catalog:
                log.error("catalog %s: member %s is configured elsewhere; not taken over "
                          "(RFC 9432 §5.4)", catalog, member)
                continue
            zoneset.add_zone(self.svc, ZoneConf(member, st.conf.primaries, st.conf.key),
                             publish=False)
            keep[member] = info
            added.append(member.to_text())
        self.members[catalog] = keep
        if added or removed:       # one compile for the whole change (stand-ins, removals)
            zoneset.republish(self.svc, drop=tuple(removed))
            log.info("catalog %s: %d member(s); added %s; removed %s", catalog, len(keep),
                     ", ".join(added) or "-", ", ".join(removed) or "-")
        return {"added": added, "removed": removed}

    def drop(self, catalog: dns.name.Name) -> None:
        """The catalog itself left the configuration: its members go with it."""
        for member in self.members.pop(catalog, {}):
            zoneset.remove_zone(self.svc, member, publish=False)

    def status(self) -> dict:
        return {cat.to_text(): {m.to_text(): info for m, info in ms.items()}
                for cat, ms in self.members.items()}


# ---------------------------------------------------------------------------- producer
def unique_id(member: str) -> str:
    """A member's unique id label (RFC 9432 §4.3: any label, stable for the member): a hash
    of its canonical name, as Knot does, so it survives restarts and reloads."""
    wire = dns.name.from_text(member).canonicalize().to_wire()
    return hashlib.sha256(wire).hexdigest()[:16]


def catalog_text(members: list[str], serial: int) -> str:
    """A version-2 catalog (RFC 9432 §4) listing `members`.  The SOA and NS are placeholders
    under the invalid TLD (§4.1: the catalog is not meant to be resolved)."""
    lines = [f"@ 0 IN SOA invalid. invalid. {serial} 3600 600 2147483646 0",
             "@ 0 IN NS invalid.", 'version 0 IN TXT "2"']
    lines += [f"{unique_id(m)}.zones 0 IN PTR {m}" for m in sorted(members)]
    return "\n".join(lines) + "\n"


class CatalogProducer:
    """The catalog zones this server generates (`catalog = true` on a [[zone]] without
    primaries or file): each lists every file zone (our primaries).  A new version, with a
    higher serial, only when the member set changed; secondaries get it by NOTIFY and IXFR
    like any of our zones (XfrService.set_local_zone)."""

    def __init__(self):
        self.made: dict[str, tuple[frozenset, object]] = {}   # origin -> (members, ZoneData)

    def build(self, config) -> list:
        from pop53.zone.zonefile import zone_from_text

        out = []
        members = frozenset(z.name for z in config.zones if z.file is not None)
        for z in config.zones:
            if not z.raw.get("catalog") or z.raw.get("primaries"):
                continue
            old = self.made.get(z.name)
            if old is not None and old[0] == members:
                out.append(old[1])
                continue
            serial = int(time.time()) & 0xFFFFFFFF
            if old is not None:
                serial = max(serial, (old[1].serial + 1) & 0xFFFFFFFF)
            data = zone_from_text(catalog_text(sorted(members), serial),
                                  dns.name.from_text(z.name), source=f"<catalog {z.name}>")
            self.made[z.name] = (members, data)
            out.append(data)
        self.made = {d.origin.to_text(): self.made[d.origin.to_text()] for d in out}
        return out
