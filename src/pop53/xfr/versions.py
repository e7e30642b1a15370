"""Zone versions: what the transfer engine hands to `publish`, and the one check every update
passes before it may be published (`validate_version`)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import dns.rdataclass
import dns.rdatatype
import dns.zone

from pop53.errors import Pop53Error, ZoneError
from pop53.xfr import journal as jr

log = logging.getLogger("pop53.xfr")

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA


class UpdateRejected(Pop53Error):
    """A zone update failed validation, compile or a size limit; the old version keeps serving."""



@dataclasses.dataclass(frozen=True)
class ZoneVersion:
    """One version of one zone, as handed to `publish`.  `zone` has absolute names and is never
    changed after it is created (the journal and old readers may still hold it).  `data` is the
    validated `pop53.zone.zonefile.ZoneData`.  `steps` is what changed since the previously published
    version (None after a full load), for an incremental compiler; `changed` the owner names.
    For a transfer read from wire `zone` and `data` are one ZoneData in the records form."""

    name: str
    serial: int
    zone: dns.zone.Zone
    data: Any
    records: int
    steps: tuple[jr.Diff, ...] | None = None
    changed: frozenset | None = None
    # records form (pop53.xfr.recversion): a ZoneData of the changed names, their ancestors and
    # the apex, which is what the image patcher reads (data.zone would build the whole zone)
    view: Any = None


Publish = Callable[[str, "ZoneVersion | None"], None]


def validate_version(zone: dns.zone.Zone, source: str, records: int, max_records: int,
                     changed: frozenset | None = None) -> Any:
    """The single place an update is checked before it may be published: the size limit, then
    exactly the checks a zone file gets (pop53.zone.zonefile).  Raises UpdateRejected.
    `changed`: the owner names an IXFR diff touched, when `zone` is that diff applied to a
    version that passed these checks; then only those names (and their ancestors) are checked
    (`pop53.zone.incremental.validate_changes`, which runs the full check when it cannot be sure)."""
    if records > max_records:
        raise UpdateRejected(f"{source}: {records} records exceed the limit of {max_records} "
                             "([xfr] max_records)")
    if changed is not None and not zone.relativize:
        from pop53.zone.incremental import validate_changes
        from pop53.zone.zonefile import ZoneData
        data = ZoneData(origin=zone.origin, zone=zone, source=source, lines={})
        try:
            validate_changes(data, changed)
        except ZoneError as exc:
            raise UpdateRejected(str(exc)) from None
        for w in data.warnings[:10]:
            log.warning("%s", w)
        return data
    try:
        from pop53.zone.zonefile import zone_from_dnspython
    except ImportError:  # the zone-file module arrives with the server work; minimal checks until then
        zone_from_dnspython = None
    if zone_from_dnspython is not None:
        try:
            data = zone_from_dnspython(zone, source=source)
        except ZoneError as exc:
            raise UpdateRejected(str(exc)) from None
        warnings = getattr(data, "warnings", None) or []
        for w in warnings[:10]:  # e.g. occluded data below a cut: served as BIND/Knot do
            log.warning("%s", w)
        if len(warnings) > 10:
            log.warning("%s: %d more warnings", source, len(warnings) - 10)
        return data
    apex = zone.nodes.get(zone.origin)
    if apex is None or apex.get_rdataset(IN, SOA) is None or apex.get_rdataset(IN, dns.rdatatype.NS) is None:
        raise UpdateRejected(f"{source}: zone {zone.origin} needs an SOA and NS records at the apex")
    return None
