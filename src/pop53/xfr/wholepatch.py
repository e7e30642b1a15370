"""One whole zone patched into the served image (issue 14 point 2, with transfers on): a full
transfer (AXFR) of a zone, or a reloaded file zone, replaces that zone's names in the image with
the IXFR patcher (pop53.zone.incremental.patch_image, every name of the old and the new version
changed) instead of compiling every zone again.  For zones up to PATCH_RECORDS records (the
patch works name by name in Python); bigger ones, a zone new to the image or a SERVFAIL
stand-in (its data is marked expired), signed zones, and what the patcher does not take are
compiled in full by the caller."""
from __future__ import annotations

from typing import Any

from pop53.zone.zonefile import ZoneData

PATCH_RECORDS = 50_000


def _records(data) -> int:
    if data.columns is not None and data._zone is None:
        return len(data.columns)
    return data.records


def patch_whole_zone(image, data: ZoneData, prev: ZoneData | None) -> Any:
    """`image` with zone `data.origin` replaced by `data`, or None (compile in full)."""
    from pop53.serve.zonepatch import zone_names
    from pop53.zone.incremental import patch_image

    if image is None or prev is None or _records(data) > PATCH_RECORDS \
            or _records(prev) > PATCH_RECORDS:
        return None
    old = zone_names(image, data.origin)
    if old is None:
        return None
    view = data
    if data.columns is not None and data._zone is None:
        # a dnspython view of the (small) zone for the patcher, not cached on the version
        view = ZoneData(origin=data.origin, zone=data.columns.to_dnspython(data.origin),
                        source=data.source)
    return patch_image(image, data.origin, view, old | set(view.zone.nodes))
