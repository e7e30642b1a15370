"""One log line per zone transfer, received or served (issue 14 point 10; Knot logs the same
facts per transfer): the type (AXFR or IXFR, as answered), the zone, serial old -> new, the
octets on the wire, the duration, the peer (the primary for a transfer in) and the TSIG key.

Text: ``zone example.com.: AXFR in from 192.0.2.1:53, serial 7 -> 9, 1234 bytes, 0.012 s,
key xfr-key.``; in JSON ([log] format = "json") the same facts are fields (``event`` =
"transfer", ``direction``, ``type``, ``zone``, ``serial_old``, ``serial_new``, ``bytes``,
``seconds``, ``peer``, ``key``), so scripts never parse the message."""
from __future__ import annotations

import logging

log = logging.getLogger("pop53.xfr")


def key_text(key) -> str | None:
    """The TSIG key's name as text (a dnspython Name or a str), None when unsigned."""
    return None if key is None else str(key)


def log_transfer(direction: str, kind: str, zone, old: int | None, new: int | None,
                 nbytes: int, seconds: float, peer, key) -> None:
    """`direction` "in" (from a primary) or "out" (to a secondary); `kind` "AXFR"/"IXFR" as the
    transfer was answered (an IXFR answered in full is an AXFR); `old` None: no previous
    version (in) or an AXFR request (out)."""
    key = key_text(key)
    fields = {"event": "transfer", "direction": direction, "type": kind, "zone": str(zone),
              "serial_old": old, "serial_new": new, "bytes": nbytes,
              "seconds": round(seconds, 6), "peer": str(peer), "key": key}
    log.info("zone %s: %s %s %s %s, serial %s -> %s, %d bytes, %.3f s, key %s", zone, kind,
             direction, "from" if direction == "in" else "to", peer,
             "none" if old is None else old, "none" if new is None else new, nbytes, seconds,
             key or "none", extra={"fields": fields})
