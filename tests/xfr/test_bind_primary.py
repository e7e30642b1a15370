"""BIND 9 as the primary of pop53: AXFR at start, then an update made at BIND reaches pop53 by a
TSIG-signed NOTIFY (RFC 1996, RFC 8945) and an IXFR (RFC 1995): in the xfr engine alone, and end
to end through `pop53 serve` answering on its UDP port."""
from __future__ import annotations

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from bind_support import Bind
from xfr_support import (KEYNAME, SECRET, Recorder, a_records, free_port, start_pop53_secondary,
                         stop_process, wait_for, zone_text)

from pop53.xfr.config import parse_xfr_config
from pop53.xfr.recversion import dns_zone
from pop53.xfr.service import XfrService

pytestmark = pytest.mark.peers

ZONE = "example.org."



def bind_primary(bind_factory, pop_port, dynamic=True, serial=1) -> Bind:
    # refresh 3600: within a test only a NOTIFY can make pop53 look again, never its timer.
    b = bind_factory("primary")
    b.write_conf({ZONE: zone_text(ZONE, serial, refresh=3600)}, pop_port, dynamic=dynamic)
    b.start([ZONE])
    return b


def start_engine(engines, tmp_path, bind_port, pop_port, rec):
    doc = {
        "server": {"state": str(tmp_path / "state")},
        "xfr": {"status_interval": 0.2},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET}],
        "zone": [{"name": ZONE, "primaries": [f"127.0.0.1:{bind_port}"], "key": KEYNAME}],
    }
    e = XfrService(parse_xfr_config(doc, "test.toml"), rec)
    engines.append(e)
    e.start()
    e.start_listener("127.0.0.1", pop_port)
    return e


def added_names(version) -> list[str]:
    assert version.steps is not None and len(version.steps) == 1, "not one incremental step"
    return sorted(str(n) for n, _t, rd in version.steps[0].added if rd.rdtype != 6)


def deleted_names(version) -> list[str]:
    return sorted(str(n) for n, _t, rd in version.steps[0].deleted if rd.rdtype != 6)


def test_dynamic_updates_at_bind_arrive_by_notify_and_ixfr(bind_factory, engines, tmp_path):
    pop_port = free_port()
    b = bind_primary(bind_factory, pop_port)
    rec = Recorder()
    e = start_engine(engines, tmp_path, b.port, pop_port, rec)

    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="initial AXFR from BIND")
    assert e.stats["xfr_in.axfr.ok"] == 1
    assert e.stats["xfr_in.ixfr.ok"] == 0
    assert rec.rdata(ZONE, "www.example.org.", "A") == ["192.0.2.1"]
    assert rec.rdata(ZONE, "mail.example.org.", "MX") == ["10 www.example.org."]

    # A signed dynamic update at BIND: BIND bumps the serial, journals the diff and NOTIFYs us.
    notifies = e.stats["notify.accepted"]
    b.update(ZONE, add=(("new", 300, "A", "192.0.2.77"),))
    assert b.serial(ZONE) == 2
    try:
        wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2 after BIND's NOTIFY")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; engine {e.status()}\n{b.log_tail()}") from None
    assert e.stats["notify.accepted"] > notifies
    assert e.stats["xfr_in.ixfr.ok"] == 1, dict(e.stats)
    assert e.stats["xfr_in.axfr.ok"] == 1, dict(e.stats)
    assert rec.rdata(ZONE, "new.example.org.", "A") == ["192.0.2.77"]
    assert added_names(rec.versions[ZONE]) == ["new.example.org."]

    # A change and a deletion in one update: also one IXFR step, and the name is gone.
    b.update(ZONE, delete=(("new",), ("www", "A")), add=(("www", 300, "A", "192.0.2.2"),))
    wait_for(lambda: rec.serial(ZONE) == 3, 10, what="serial 3 after BIND's NOTIFY")
    assert rec.rdata(ZONE, "www.example.org.", "A") == ["192.0.2.2"]
    assert dns.name.from_text("new." + ZONE) not in dns_zone(rec.versions[ZONE].zone).nodes
    v = rec.versions[ZONE]
    assert added_names(v) == ["www.example.org."]
    assert deleted_names(v) == ["new.example.org.", "www.example.org."]
    assert e.stats["xfr_in.ixfr.ok"] == 2, (dict(e.stats), b.log_tail(80))
    assert e.stats["xfr_in.axfr.ok"] == 1, dict(e.stats)
    assert type(v.data).__name__ == "ZoneData"   # went through the zone-file checks
    assert b.transfers_out(ZONE) == ["AXFR", "IXFR", "IXFR"], b.log_tail()


def test_zone_file_edit_and_reload_at_bind_arrives_by_ixfr(bind_factory, engines, tmp_path):
    """The operator's other way: edit the file, bump the serial, reload.  With
    ixfr-from-differences BIND diffs old against new and serves that diff by IXFR."""
    pop_port = free_port()
    b = bind_primary(bind_factory, pop_port, dynamic=False)
    rec = Recorder()
    e = start_engine(engines, tmp_path, b.port, pop_port, rec)
    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="initial AXFR from BIND")

    b.reload(zone_text(ZONE, 2, refresh=3600, extra="added 300 IN TXT \"from the file\"\n")
             .replace("www IN A 192.0.2.1\n", ""), ZONE)
    wait_for(lambda: b.serial(ZONE) == 2, 10, what="BIND reloaded serial 2")
    try:
        wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2 after BIND's NOTIFY")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; engine {e.status()}\n{b.log_tail()}") from None
    assert e.stats["xfr_in.ixfr.ok"] == 1, dict(e.stats)
    assert e.stats["xfr_in.axfr.ok"] == 1, dict(e.stats)
    v = rec.versions[ZONE]
    assert added_names(v) == ["added.example.org."]
    assert deleted_names(v) == ["www.example.org."]
    assert rec.rdata(ZONE, "added.example.org.", "TXT") == ['"from the file"']
    assert rec.rdata(ZONE, "www.example.org.", "A") is None
    assert b.transfers_out(ZONE) == ["AXFR", "IXFR"], b.log_tail()


def rcode_of(port: int, name: str) -> int | None:
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1.0)
    except Exception:
        return None
    return r.rcode()


def test_pop53_serve_answers_updates_made_at_bind(bind_factory, tmp_path):
    pop_port = free_port()
    b = bind_primary(bind_factory, pop_port)
    proc = start_pop53_secondary(tmp_path / "pop53", pop_port, b.port, ZONE, identity="sec-bind")
    try:
        wait_for(lambda: a_records(pop_port, "www.example.org.") == ["192.0.2.1"], 20,
                 what="the zone transferred from BIND and served")
        assert rcode_of(pop_port, "new.example.org.") == dns.rcode.NXDOMAIN

        b.update(ZONE, add=(("new", 300, "A", "192.0.2.77"),))
        wait_for(lambda: a_records(pop_port, "new.example.org.") == ["192.0.2.77"], 10,
                 what="the record added at BIND served by pop53")
        r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=pop_port, timeout=1)
        assert r.answer[0][0].serial == 2

        # A deletion at BIND: the name disappears from pop53 (NXDOMAIN, RFC 1034 §4.3.2).
        b.update(ZONE, delete=(("new",),))
        wait_for(lambda: rcode_of(pop_port, "new.example.org.") == dns.rcode.NXDOMAIN, 10,
                 what="the name deleted at BIND gone from pop53")
        r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=pop_port, timeout=1)
        assert r.answer[0][0].serial == 3
        assert a_records(pop_port, "www.example.org.") == ["192.0.2.1"]
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out
    # BIND's own account of what it sent pop53: the zone once in full, then each update as a
    # real incremental diff (not an IXFR answered AXFR-style).
    assert b.transfers_out(ZONE) == ["AXFR", "IXFR", "IXFR"], b.log_tail()
