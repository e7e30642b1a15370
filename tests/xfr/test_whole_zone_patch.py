"""Issue 14 point 2 with transfers on: a reloaded file zone and a full transfer (AXFR) of a
transferred zone are spliced into the served image zone by zone (xfr/wholepatch.py), not
compiled again with every zone; the spliced image answers as a full compile does."""
from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import dns.zone

import pop53
from pop53 import config as cfgmod

from xfr_support import query, start_secondary as start, wait_for, zone_text

FILE_ZONE = ("$ORIGIN file.example.\n$TTL 300\n@ SOA ns h {serial} 3600 600 86400 60\n@ NS ns\n"
             "ns A 192.0.2.5\n{extra}")


def _answers(image, name: str, rdtype: str):
    q = dns.message.make_query(name, rdtype)
    r = dns.message.from_wire(pop53.answer(image, q.to_wire(), ("127.0.0.1", 53)))
    return r.rcode(), sorted(rd.to_text() for rrset in r.answer for rd in rrset)


def test_reload_and_axfr_patch_one_zone(tmp_path, fake_primary):
    primary = fake_primary()
    primary.set(dns.zone.from_text(zone_text(serial=1), "example.org.", relativize=False))
    (tmp_path / "file.zone").write_text(FILE_ZONE.format(serial=1, extra="a A 192.0.2.1\n"))
    cfg = cfgmod.from_dict({
        "server": {"listen": ["127.0.0.1:0"], "workers": 1},
        "xfr": {"min_refresh": 0.1, "timeout": 1.0},
        "zone": [{"name": "example.org.", "primaries": [f"127.0.0.1:{primary.port}"]},
                 {"name": "file.example.", "file": str(tmp_path / "file.zone")}]})
    server, service = start(cfg)
    pub = service.publish_cb
    try:
        port = server.addresses[0][1]
        wait_for(lambda: query(port, "www.example.org.", "A").rcode() == dns.rcode.NOERROR, 20,
                 what="the first transfer")
        compiled = pub.stats["compiled"]
        spliced = pub.stats["spliced"]

        # a reload with one changed file zone: spliced, not compiled
        (tmp_path / "file.zone").write_text(
            FILE_ZONE.format(serial=2, extra="a A 192.0.2.2\nb.deep TXT new\n"))
        server.zones.reload()
        assert pub.stats["spliced"] == spliced + 1 and pub.stats["compiled"] == compiled
        assert [rd.address for rd in query(port, "a.file.example.", "A").answer[0]] == ["192.0.2.2"]
        assert query(port, "b.deep.file.example.", "TXT").answer
        assert query(port, "www.example.org.", "A").rcode() == dns.rcode.NOERROR
        # the engine keeps the file zone in the records form, and its reload as a diff (IXFR out)
        fst = service.zones[dns.name.from_text("file.example.")]
        assert hasattr(fst.zone, "columns") and fst.zone._zone is None
        assert [(s.old_serial, s.new_serial) for s in fst.history[-1].steps] == [(1, 2)]

        # a full transfer (retransfer) of the secondary zone: that zone alone spliced
        primary.set(dns.zone.from_text(zone_text(serial=2, extra="new 300 IN A 192.0.2.77\n"),
                                       "example.org.", relativize=False))
        service.refresher.retransfer_now("example.org.")
        wait_for(lambda: query(port, "new.example.org.", "A").answer, 20, what="the AXFR")
        assert pub.stats["spliced"] == spliced + 2 and pub.stats["compiled"] == compiled
        assert service.stats["xfr_in.axfr.ok"] == 2
        # the full transfer became one diff in the journal (records form, a small zone)
        sst = service.zones[dns.name.from_text("example.org.")]
        step = sst.history[-1].steps[0]
        assert (step.old_serial, step.new_serial) == (1, 2)
        assert [str(n) for n, _t, _r in step.added] == ["new.example.org."] and not step.deleted

        # the spliced image answers as a full compile of the same zones
        img = server.slot.current
        full = pub.recompile()
        for name in ("a.file.example.", "b.deep.file.example.", "deep.file.example.",
                     "new.example.org.", "www.example.org.", "nothere.example.org.",
                     "example.org.", "file.example."):
            for t in ("A", "TXT", "SOA", "NS"):
                assert _answers(img, name, t) == _answers(full, name, t), (name, t)
    finally:
        service.stop()
        server.stop()
