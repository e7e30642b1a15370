"""Knot DNS as the primary of pop53's xfr engine: AXFR at start, then NOTIFY + IXFR with TSIG."""
from __future__ import annotations

import pytest

from xfr_support import (KEYNAME, SECRET, Recorder, free_port, knot_pop53_peer, wait_for,
                         zone_text)

from pop53.xfr.config import parse_xfr_config
from pop53.xfr.service import XfrService

pytestmark = pytest.mark.peers

ZONE = "example.org."


def knot_primary(knot_factory, pop_port, serial=1, extra="", refresh=3600, retry=600, expire=86400,
                 policy="", zone_opts=""):
    """policy, zone_opts: more configuration (a `policy:` section, more zone options), written
    with the body's 8-space indentation (test_knot_signing_primary.py signs with them)."""
    k = knot_factory("primary")
    (k.dir / "example.org.zone").write_text(zone_text(ZONE, serial, refresh, retry, expire, extra))
    k.write_conf(knot_pop53_peer(pop_port, "transfer") + f"""\
{policy}        zone:
          - domain: {ZONE}
            file: "{k.dir}/example.org.zone"
            notify: pop53
            acl: pop53
            zonefile-sync: -1
            journal-content: changes
            serial-policy: increment
{zone_opts}        """)
    k.start()
    return k


def engine_config(tmp_path, knot_port, **xfr_opts):
    doc = {
        "server": {"state": str(tmp_path / "state")},
        "xfr": {"status_interval": 0.2, **xfr_opts},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET}],
        "zone": [{"name": ZONE, "primaries": [f"127.0.0.1:{knot_port}"], "key": KEYNAME}],
    }
    return parse_xfr_config(doc, "test.toml")


def start_engine(engines, cfg, pop_port, rec):
    e = XfrService(cfg, rec)
    engines.append(e)
    e.start()
    e.start_listener("127.0.0.1", pop_port)
    return e


def test_notify_ixfr_from_knot(knot_factory, engines, tmp_path):
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port)
    rec = Recorder()
    e = start_engine(engines, engine_config(tmp_path, k.port), pop_port, rec)

    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="initial AXFR")
    assert e.stats["xfr_in.axfr.ok"] == 1
    assert rec.rdata(ZONE, "www.example.org.", "A") == ["192.0.2.1"]

    # An update on the primary reaches us by NOTIFY + IXFR (not a timer: refresh is 3600 s).
    k.change(ZONE, ("new", "300", "A", "192.0.2.77"))
    wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2 after NOTIFY")
    assert e.stats["notify.accepted"] >= 1
    assert e.stats["xfr_in.ixfr.ok"] == 1
    assert rec.rdata(ZONE, "new.example.org.", "A") == ["192.0.2.77"]
    v = rec.versions[ZONE]
    assert v.steps is not None and len(v.steps) == 1
    assert [str(n) for n, _t, _r in v.steps[0].added] == ["new.example.org."]

    # A change and a deletion in one transaction.
    k.change(ZONE, ("www", "300", "A", "192.0.2.2"), unsets=(("www", "A"), ("new",)))
    wait_for(lambda: rec.serial(ZONE) == 3, 10, what="serial 3")
    assert rec.rdata(ZONE, "www.example.org.", "A") == ["192.0.2.2"]
    assert rec.rdata(ZONE, "new.example.org.", "A") is None
    assert e.stats["xfr_in.ixfr.ok"] == 2
    assert e.stats["xfr_in.axfr.ok"] == 1
    # Every published version went through the zone-file checks (pop53.zone.zonefile.ZoneData).
    assert type(rec.versions[ZONE].data).__name__ == "ZoneData"
