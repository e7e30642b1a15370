"""Zone loads as an operator sees them (issue 14 points 6 and 10): one log line per zone
loaded, "zone example.com. loaded: serial 7 -> 8, 1204 records, 0.021 s", and the serial check
of a primary: a zone file that changed while its serial did not increase (RFC 1982 serial
arithmetic) is served here but never reaches the secondaries, which only transfer a higher
serial (RFC 1996 §4.7, RFC 1995).  [server] serial_check says what to do: "warn" (default),
"refuse" (the previous version keeps serving) or "off".
"""
from __future__ import annotations

import logging

import dns.serial

log = logging.getLogger("pop53.zone")

POLICIES = ("warn", "refuse", "off")


def check_loads(loaded: dict[str, dict], served: dict[str, int], files: dict[str, dict],
                policy: str = "warn") -> dict[str, str]:
    """loaded: origin -> ZoneData.summary() of the zones just read; served: origin -> serial
    answered now; files: origin -> {path: sha256} they were read from.  Logs one line per zone
    and returns {origin: error} of those the serial check refuses (the caller keeps their
    previous version)."""
    refused = {}
    for name, z in sorted(loaded.items()):
        old, new = served.get(name), z["serial"]
        changed = name in files and files[name] != z["files"]
        if policy != "off" and old is not None and changed \
                and not dns.serial.Serial(new) > dns.serial.Serial(old):
            problem = (f"zone {name} changed but its serial did not increase ({old} -> {new}): "
                       "secondaries will not transfer the change")
            if policy == "refuse":
                refused[name] = f"{problem}; refused (server.serial_check)"
                continue
            log.warning("%s", problem, extra={"fields": {
                "event": "serial_not_increased", "zone": name, "serial_old": old, "serial": new}})
        serial = f"{old} -> {new}" if old is not None and old != new else str(new)
        log.info("zone %s loaded: serial %s, %d records, %.3f s", name, serial, z["records"],
                 z["seconds"], extra={"fields": {
                     "event": "zone_loaded", "zone": name, "serial_old": old, "serial": new,
                     "records": z["records"], "seconds": round(z["seconds"], 6)}})
    return refused
