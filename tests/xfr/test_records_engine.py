"""The secondary engine on the records path (issue 15 point 3): a Knot primary's AXFR and IXFR
are read from wire into the records form and kept so (no dnspython zone is built), IXFR is
applied on the columns and patched into the image, what the engine serves out (AXFR and IXFR)
equals Knot's own transfers of the same serial, and a restart restores the columns snapshot."""
from __future__ import annotations

import base64
import gc

import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import pytest

import pop53
from pop53.xfr import recversion as rv
from pop53.xfr.axfr_records import axfr_zone, xfr_records
from pop53.xfr.config import KeyConf, Peer, parse_xfr_config
from pop53.xfr.publisher import ImagePublisher
from pop53.xfr.service import XfrService

from xfr_support import KEYNAME, SECRET, Recorder, free_port, wait_for
from test_axfr_records import EXTRA, _rrsets_of_records
from test_knot_primary import knot_primary

pytestmark = pytest.mark.peers

ZONE = "example.org."
ORIGIN = dns.name.from_text(ZONE)


def _key() -> KeyConf:
    return KeyConf(dns.name.from_text(KEYNAME), dns.name.from_text("hmac-sha256"),
                   base64.b64decode(SECRET))


def _engine(engines, tmp_path, knot_port, pop_port, publish):
    cfg = parse_xfr_config({
        "server": {"state": str(tmp_path / "state")},
        "xfr": {"status_interval": 0.2},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET}],
        "zone": [{"name": ZONE, "primaries": [f"127.0.0.1:{knot_port}"], "key": KEYNAME,
                  "allow_transfer": ["127.0.0.1"]}],
    }, "t.toml")
    e = XfrService(cfg, publish)
    engines.append(e)
    e.start()
    e.start_listener("127.0.0.1", pop_port)
    return e


def _axfr(port: int):
    return _rrsets_of_records(axfr_zone(Peer("127.0.0.1", port), ORIGIN, _key(), 10.0, 60.0,
                                        1 << 30, 1_000_000).columns)


def _answer(image, name: str, rdtype: str) -> list[str]:
    q = dns.message.make_query(name, rdtype)
    r = dns.message.from_wire(pop53.answer(image, q.to_wire(), ("127.0.0.1", 53)))
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


def _rdata_objects() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, dns.rdata.Rdata))


def test_knot_axfr_and_ixfr_kept_in_the_records_form(knot_factory, engines, tmp_path):
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port, extra=EXTRA)
    rec = Recorder()
    images = []
    pub = ImagePublisher(images.append, compact_in_background=False)

    def both(name, version):
        pub(name, version)
        rec(name, version)

    gc.collect()
    before = _rdata_objects()
    e = _engine(engines, tmp_path, k.port, pop_port, both)
    wait_for(lambda: rec.serial(ZONE) == 1, 20, what="initial AXFR")
    st = e.zones[ORIGIN]
    v = rec.versions[ZONE]
    # the first AXFR: columns, no dnspython zone, no dnspython object per record
    assert rv.is_records(v.zone) and v.zone is v.data and v.zone._zone is None
    assert len(v.zone.columns) > 9000
    gc.collect()
    assert _rdata_objects() - before < 100
    assert pub.stats["compiled"] == 1
    # what pop53 serves out by AXFR (encoded from the columns) is Knot's zone
    knot1 = _axfr(k.port)
    assert _axfr(pop_port) == knot1 == _rrsets_of_records(v.zone.columns)

    # NOTIFY + IXFR: a change, an addition and a deletion, applied on the columns
    k.change(ZONE, ("www", "300", "A", "192.0.2.2"), ("new.deep", "300", "A", "192.0.2.77"),
             ("h5", "600", "TXT", "\"moved\""), unsets=(("www", "A"), ("h7",)))
    wait_for(lambda: rec.serial(ZONE) == 2, 20, what="serial 2 by IXFR")
    assert e.stats["xfr_in.ixfr.ok"] == 1 and e.stats["xfr_in.axfr.ok"] == 1
    v2 = rec.versions[ZONE]
    assert rv.is_records(v2.zone) and v2.zone._zone is None and v2.view is not None
    assert {n.to_text() for n in v2.changed} >= {"www.example.org.", "new.deep.example.org.",
                                                  "h5.example.org.", "h7.example.org."}
    knot2 = _axfr(k.port)
    assert _rrsets_of_records(v2.zone.columns) == knot2 != knot1
    assert st.records == len(v2.zone.columns)
    # patched into the image, not compiled again; it answers the new data
    assert pub.stats["patched"] == 1 and pub.stats["compiled"] == 1
    img = images[-1]
    assert _answer(img, "www.example.org.", "A") == ["192.0.2.2"]
    assert _answer(img, "new.deep.example.org.", "A") == ["192.0.2.77"]
    assert _answer(img, "h7.example.org.", "A") == []
    assert sorted(_answer(img, "h5.example.org.", "TXT")) == ['"host 5" "two"', '"moved"']
    # the patched image answers as a full compile of the new version
    full = pop53.compile_zone_data([v2.data])
    for name in ("www", "new.deep", "deep", "h5", "h7", "h8", "sub", "ns.sub"):
        for t in ("A", "TXT", "NS", "AAAA"):
            assert _answer(img, f"{name}.{ZONE}", t) == _answer(full, f"{name}.{ZONE}", t)

    # IXFR out from the journal's step; AXFR out of the new version equals Knot's
    kind, steps, _n = xfr_records(Peer("127.0.0.1", pop_port), ORIGIN, _key(), 10.0, 60.0,
                                  1 << 30, 1_000_000, serial=1, max_diff=1000)
    assert kind == "steps" and [(s.old_serial, s.new_serial) for s in steps] == [(1, 2)]
    assert {(o.lower(), t) for o, t, _ttl, _rd in steps[0].added} >= {
        (dns.name.from_text("new.deep", ORIGIN).to_wire(), 1),
        (dns.name.from_text("www", ORIGIN).to_wire(), 1)}
    assert _axfr(pop_port) == knot2

    # restart: the columns snapshot (snapshot.rec) and the journal restore serial 2
    wait_for(lambda: (tmp_path / "state" / "example.org" / "snapshot.rec").exists(), 10,
             what="snapshot")
    e2 = XfrService(e.config, Recorder())
    e2.load_saved()
    z = e2.zones[ORIGIN].zone
    assert rv.is_records(z) and e2.zones[ORIGIN].serial == 2
    assert _rrsets_of_records(z.columns) == knot2


def test_a_bad_ixfr_from_wire_is_refused_and_nothing_changes(knot_factory, engines, tmp_path):
    """A delete of a record that is not there (a journal that disagrees): the records-form
    apply refuses it (DiffError) and the engine repairs with AXFR, as the dnspython path did."""
    from pop53.xfr import journal as jr

    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port)
    rec = Recorder()
    e = _engine(engines, tmp_path, k.port, pop_port, rec)
    wait_for(lambda: rec.serial(ZONE) == 1, 20, what="initial AXFR")
    base = e.zones[ORIGIN].zone
    bad = rv.WireStep(rv.from_diff(jr.Diff(jr.soa_of(base), jr.soa_of(base), (), ())).old_soa,
                      rv.from_diff(jr.Diff(jr.soa_of(base), jr.soa_of(base), (), ())).new_soa,
                      ((dns.name.from_text("nothere", ORIGIN).to_wire(), 1, 300, b"\x01\x02\x03\x04"),),
                      ())
    with pytest.raises(jr.DiffError):
        rv.apply_steps(base, [bad], "test")
    assert e.zones[ORIGIN].zone is base
