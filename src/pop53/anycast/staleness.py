"""Staleness of zone data, and the state file the monitoring agent reads (paper §4.2.2, §4.2.3).

Every secondary zone has a freshness clock: the wall-clock time of the last moment we knew our
copy was the primary's latest (an SOA check that showed no newer serial, or a completed transfer).
Its age is `now - last_ok`.  The machine is *stale* when any zone's age is over the configured
limit; a normal machine then self-suspends (the agent withdraws its routes).  An input-delayed
machine never reports itself stale: it is there to answer with intentionally old data when the
normal machines are gone (§4.2.3).

The state file (`<state>/xfr-status.json`, rewritten atomically every second by the engine) is:

    {"version": 1, "time": <unix>, "role": "normal"|"delayed", "stale": bool,
     "stale_after": <seconds>, "delay": <seconds>,
     "zones": {"example.org.": {"serial": 7, "age": 1.2, "last_ok": <unix>|null,
                                "expired": false, "stale": false, "pending": 0,
                                "pending_serials": [], "last_error": null}}}
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATE_FILE = "xfr-status.json"


def zone_age(last_ok: float | None, now: float | None = None) -> float | None:
    """Seconds since the zone was last known current; None when it never was."""
    if last_ok is None:
        return None
    return max(0.0, (now if now is not None else time.time()) - last_ok)


def zone_is_stale(last_ok: float | None, stale_after: float, now: float | None = None) -> bool:
    age = zone_age(last_ok, now)
    return age is None or age > stale_after


def machine_status(zones: dict[str, dict], *, role: str, stale_after: float, delay: float,
                   now: float | None = None) -> dict:
    """The whole-machine view from per-zone dicts (each with at least `last_ok`)."""
    now = time.time() if now is None else now
    out_zones = {}
    any_stale = False
    for name, z in zones.items():
        stale = zone_is_stale(z.get("last_ok"), stale_after, now)
        any_stale = any_stale or stale
        out_zones[name] = dict(z, age=zone_age(z.get("last_ok"), now), stale=stale)
    return {
        "version": 1,
        "time": now,
        "role": role,
        # §4.2.3: the input-delayed role is exempt from stale self-suspension.
        "stale": bool(any_stale and role != "delayed"),
        "stale_after": stale_after,
        "delay": delay,
        "zones": out_zones,
    }


def write_state(path: str | os.PathLike, status: dict) -> None:
    """Atomic replace, so the agent never reads half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(status, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_state(path: str | os.PathLike) -> dict:
    """For the agent: the last state written.  Raises OSError / ValueError if unreadable."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
