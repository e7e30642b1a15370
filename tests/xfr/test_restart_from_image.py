"""Issue 14 point 5 (second half): a restarted secondary answers its transferred zones at once
from the image it served before (mapped from the state directory), not after re-parsing their
snapshots, and never REFUSED; here with the primary down."""
from __future__ import annotations

import json

import dns.rcode
import dns.zone

from pop53 import config as cfgmod

from xfr_support import query, start_secondary as start, wait_for, zone_text

FILE_ZONE = "$ORIGIN file.example.\n$TTL 300\n@ SOA ns h 1 3600 600 86400 60\n@ NS ns\nns A 192.0.2.5\n"


def saved_with_data(state) -> None:
    """Wait until the image saved holds the transferred zone, and its snapshot is written."""
    def ready():
        try:
            meta = json.loads((state / "xfr.img.json").read_text())
        except (OSError, ValueError):
            return False
        return meta["waiting"] == [] and (state / "example.org" / "snapshot.rec").exists()
    wait_for(ready, 10, what="the saved image and snapshot")


def first_run(tmp_path, primary, serial: int):
    """A secondary of example.org. (serial `serial` at `primary`) with a file zone and a state
    directory: transfers, saves, stops.  Returns its config and the answer for www."""
    primary.set(dns.zone.from_text(zone_text(serial=serial), "example.org.", relativize=False))
    (tmp_path / "file.zone").write_text(FILE_ZONE)
    cfg = cfgmod.from_dict({
        "server": {"listen": ["127.0.0.1:0"], "workers": 1, "state": str(tmp_path / "state")},
        "xfr": {"min_refresh": 0.1, "timeout": 1.0},
        "zone": [{"name": "example.org.", "primaries": [f"127.0.0.1:{primary.port}"]},
                 {"name": "file.example.", "file": str(tmp_path / "file.zone")}]})
    server, service = start(cfg)
    try:
        port = server.addresses[0][1]
        wait_for(lambda: query(port, "www.example.org.", "A").rcode() == dns.rcode.NOERROR, 20,
                 what="the first transfer")
        before = query(port, "www.example.org.", "A").answer
        saved_with_data(tmp_path / "state")
    finally:
        service.stop()
        server.stop()
    primary.stop()            # the primary is down for the restart
    return cfg, before


def test_a_restarted_secondary_answers_from_its_saved_image_with_the_primary_down(
        tmp_path, fake_primary):
    cfg, before = first_run(tmp_path, fake_primary(), 7)

    # restarted: before the engine restores anything, the zone answers from the saved image
    server, service = start(cfg, with_engine=False)
    try:
        port = server.addresses[0][1]
        r = query(port, "www.example.org.", "A")
        assert r.rcode() == dns.rcode.NOERROR and r.answer == before
        assert query(port, "example.org.", "SOA").answer[0][0].serial == 7
        assert server.zone_waiting == [] and server.zones.served("example.org.")
        assert query(port, "ns.file.example.", "A").rcode() == dns.rcode.NOERROR
        # the engine restores its snapshot and keeps serving it (primary still down)
        gen = server.slot.generation
        service.start()
        assert server.slot.generation > gen          # its own image replaced the saved one
        r = query(port, "www.example.org.", "A")
        assert r.rcode() == dns.rcode.NOERROR and r.answer == before
    finally:
        service.stop()
        server.stop()


def test_a_changed_file_zone_makes_the_saved_image_unusable(tmp_path, fake_primary):
    cfg, _ = first_run(tmp_path, fake_primary(), 3)
    (tmp_path / "file.zone").write_text(FILE_ZONE.replace("192.0.2.5", "192.0.2.6"))
    server, service = start(cfg, with_engine=False)
    try:
        port = server.addresses[0][1]
        assert query(port, "ns.file.example.", "A").answer[0][0].address == "192.0.2.6"
        # not from the image: the transferred zone waits for its restore (SERVFAIL, not REFUSED)
        assert query(port, "www.example.org.", "A").rcode() == dns.rcode.SERVFAIL
    finally:
        service.stop()
        server.stop()
