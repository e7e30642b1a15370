"""One whole zone put into the served image (issue 14 point 2, with transfers on) instead of
compiling every zone again: a full transfer (AXFR) of a zone, an IXFR the name-by-name patcher
(pop53.zone.incremental) turns down (names or NSEC3 owners added or removed in a signed zone, a
new cut, a name at or below another zone), a reloaded file zone, and a zone passing its SOA
expire.  The zone is compiled alone in C with the image's hash seed and spliced in
(zone/splice.py): any size, signed or not, nested in another zone or naming targets in one.
(It replaces the whole-zone patch, which rewrote every name of the zone through the IXFR patcher
in Python and took unsigned zones up to 50,000 records only.)"""
from __future__ import annotations

from typing import Any

from pop53.zone.zonefile import ZoneData


def splice_zone(image, data: ZoneData | None, expired: bool = False) -> Any:
    """`image` with zone `data.origin` compiled alone and spliced in whole; `expired` marks it
    past its SOA expire (SERVFAIL, its data kept, as compile_zone_data(..., expired=[origin])).
    None when the splice turns it down (zone/splice.py: `splice.last_reason`)."""
    if image is None or data is None:
        return None
    from pop53.zone.compiler import compile_zone_data
    from pop53.zone.splice import splice

    one = compile_zone_data([data], seed=image.view.seed,
                            expired=[data.origin] if expired else ())
    return splice(image, {data.origin.to_wire().lower(): one})
