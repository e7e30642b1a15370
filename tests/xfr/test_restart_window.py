"""Issue 14 point 5 (first half): a configured secondary zone is never REFUSED.  Until its
first transfer (or the restore of its snapshot after a restart) it answers SERVFAIL, like a
file zone that did not load, and `pop53 ctl zones` says it is waiting; then it serves."""
from __future__ import annotations

import dns.rcode
import dns.zone

from pop53 import config as cfgmod
from pop53.serve.control import format_reply

from xfr_support import query, start_secondary, wait_for, zone_text

FILE_ZONE = "$ORIGIN file.example.\n$TTL 300\n@ SOA ns h 1 3600 600 86400 60\n@ NS ns\nns A 192.0.2.5\n"


def test_a_secondary_zone_answers_servfail_until_its_first_transfer(tmp_path, fake_primary):
    primary = fake_primary()                 # serves nothing yet: the transfer cannot happen
    (tmp_path / "file.zone").write_text(FILE_ZONE)
    cfg = cfgmod.from_dict({
        "server": {"listen": ["127.0.0.1:0"], "workers": 1},
        "xfr": {"min_refresh": 0.1, "timeout": 1.0},
        "zone": [{"name": "example.org.", "primaries": [f"127.0.0.1:{primary.port}"]},
                 {"name": "file.example.", "file": str(tmp_path / "file.zone")}]})
    server, service = start_secondary(cfg)
    try:
        port = server.addresses[0][1]
        assert query(port, "www.example.org.", "A").rcode() == dns.rcode.SERVFAIL
        assert query(port, "example.org.", "SOA").rcode() == dns.rcode.SERVFAIL
        assert query(port, "ns.file.example.", "A").rcode() == dns.rcode.NOERROR
        assert query(port, "elsewhere.test.", "A").rcode() == dns.rcode.REFUSED
        assert server.zone_waiting == ["example.org."] and not server.zones.served("example.org.")

        # the primary gets the zone: it transfers and serves, the stand-in is gone
        primary.versions[1] = dns.zone.from_text(zone_text(serial=1), "example.org.", relativize=False)
        primary.current = 1
        service.refresh_now("example.org.")
        wait_for(lambda: query(port, "www.example.org.", "A").rcode() == dns.rcode.NOERROR, 20,
                 what="the first transfer")
        assert server.zone_waiting == [] and server.zones.served("example.org.")
    finally:
        service.stop()
        server.stop()


def test_ctl_lists_waiting_zones():
    out = format_reply("zones", {"ok": True, "zones": {"a.": 3}, "failed": {},
                                 "waiting": ["b."]})
    assert out.splitlines() == ["a.  serial 3  ok", "b.  SERVFAIL  waiting for its first transfer"]
