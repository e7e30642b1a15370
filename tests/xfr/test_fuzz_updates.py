"""Hypothesis on the update path: random IXFR diffs and malformed transfer streams go through the
engine's real ingest (apply, validate, publish, journal).  The engine stays up, what is served
is always a version that passes the zone-file checks, a rejected update changes nothing, and an
accepted one equals a simple model of the diff."""
from __future__ import annotations

import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xfr_support import KEYNAME, SECRET, Recorder, free_port

from pop53.xfr import journal as jr
from pop53.xfr.config import parse_xfr_config
from pop53.xfr.inbound import Collector
from pop53.xfr.publisher import ImagePublisher
from pop53.xfr.service import XfrService
from pop53.xfr.versions import UpdateRejected
from pop53.zone.zonefile import zone_from_dnspython

ORIGIN = dns.name.from_text("fuzz.example.")
BASE = """\
$ORIGIN fuzz.example.
$TTL 300
@ SOA ns hostmaster 1 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
www A 192.0.2.1
mail MX 10 www
alias CNAME www
"""

LABELS = ["@", "www", "ns", "mail", "alias", "x", "y.x", "deep.y.x", "*", "sub"]
RDATA = {
    "A": ["192.0.2.1", "192.0.2.2", "198.51.100.7"],
    "AAAA": ["2001:db8::1", "2001:db8::2"],
    "TXT": ['"a"', '"b"', '"hello world"'],
    "CNAME": ["www.fuzz.example.", "elsewhere.example."],
    "NS": ["ns.fuzz.example.", "ns.other.example."],
    "MX": ["10 www.fuzz.example.", "20 mail.fuzz.example."],
    "DNAME": ["other.example."],
    "SOA": ["ns hostmaster 5 3600 600 86400 60"],
}


def rr(label, rdtype, text, ttl=300):
    name = ORIGIN if label == "@" else dns.name.from_text(label, ORIGIN)
    rd = dns.rdata.from_text(1, rdtype, text, origin=ORIGIN, relativize=False)
    return (name, ttl, rd)


rr_strategy = st.builds(
    lambda label, rdtype, i, ttl: rr(label, rdtype, RDATA[rdtype][i % len(RDATA[rdtype])], ttl),
    st.sampled_from(LABELS + ["out.of.zone."]).map(lambda l: "@" if l == "out.of.zone." else l),
    st.sampled_from([t for t in RDATA if t != "SOA"]),
    st.integers(0, 5),
    st.sampled_from([60, 300]),
)


def rrset_key(r):
    return (r[0], r[2].rdtype, r[2])


def model_of(zone):
    return {rrset_key(r) for r in jr.iter_rrs(zone) if r[2].rdtype != dns.rdatatype.SOA}


def make_engine(engines, tmp_path, publish=None, records=False):
    """An engine holding the BASE zone at serial 1; publish: also called with every version.
    records: the version in the records form (what a transfer read from wire gives), so that
    every diff is applied on the columns (pop53.xfr.recversion)."""
    rec = Recorder()

    def both(name, version):
        if publish is not None:
            publish(name, version)
        rec(name, version)
    cfg = parse_xfr_config({
        "server": {"state": str(tmp_path / "state")},
        "xfr": {"journal_keep": 5, "timeout": 0.2},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET}],
        "zone": [{"name": ORIGIN.to_text(), "primaries": [f"127.0.0.1:{free_port()}"], "key": KEYNAME}],
    }, "t.toml")
    e = XfrService(cfg, both)
    engines.append(e)
    e.start()
    zst = e.zones[ORIGIN]
    first = dns.zone.from_text(BASE, ORIGIN, relativize=False)
    if records:
        from pop53.zone.zonefile import zone_from_bytes
        first = zone_from_bytes(BASE.encode(), ORIGIN, source="fuzz seed")
    e.call(e.refresher.ingest(zst, None, ("full", first), "fuzz seed"))
    assert rec.serial(ORIGIN.to_text()) == 1
    return e, zst, rec


def served_is_valid(e, zst, rec):
    v = rec.versions[ORIGIN.to_text()]
    assert v.zone is zst.zone
    zone = zst.zone.columns.to_dnspython(ORIGIN) if hasattr(zst.zone, "columns") else zst.zone
    zone_from_dnspython(zone, source="check")  # raises if the served version is invalid
    assert e._thread.is_alive()


@pytest.mark.parametrize("records", [False, True], ids=["dnspython", "records"])
def test_random_ixfr_diffs(engines, tmp_path, records):
    e, zst, rec = make_engine(engines, tmp_path, records=records)
    outcomes = {"accepted": 0, "rejected": 0}

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(dels=st.lists(rr_strategy, max_size=4), adds=st.lists(rr_strategy, max_size=5),
           pick_existing=st.lists(st.integers(0, 50), max_size=3), serial_step=st.integers(-2, 3))
    def one(dels, adds, pick_existing, serial_step):
        before = zst.zone
        existing = [r for r in jr.iter_rrs(before) if r[2].rdtype != dns.rdatatype.SOA]
        dels = dels + [existing[i % len(existing)] for i in pick_existing if existing]
        old_soa = jr.soa_of(before)
        new_serial = (old_soa[2].serial + serial_step) % 2**32
        new_soa = (ORIGIN, 300, old_soa[2].replace(serial=new_serial))
        diff = jr.Diff(old_soa, new_soa, tuple(dels), tuple(adds))
        # the model: deletions must exist, then additions; SOA replaced
        model = model_of(before)
        fits = True
        for d in dels:
            if rrset_key(d) not in model:
                fits = False
                break
            model.discard(rrset_key(d))
        for a in adds:
            model.add(rrset_key(a))
        try:
            e.call(e.refresher.ingest(zst, before, ("steps", (diff,)), "fuzz"))
            accepted = True
        except (UpdateRejected, jr.DiffError):
            accepted = False
        if accepted:
            outcomes["accepted"] += 1
            assert fits
            assert zst.zone is not before and jr.serial_of(zst.zone) == new_serial
            assert model_of(zst.zone) == model
            assert jr.soa_of(zst.zone)[2] == new_soa[2]
        else:
            outcomes["rejected"] += 1
            assert zst.zone is before  # nothing changed
        served_is_valid(e, zst, rec)

    one()
    # Both branches were exercised (the strategy is not degenerate).
    print("diff outcomes", outcomes)
    assert outcomes["accepted"] >= 10 and outcomes["rejected"] >= 10, outcomes
    # And the engine's saved state still restores to what it serves.
    e2 = XfrService(e.config, Recorder())
    e2.load_saved()
    assert model_of(e2.zones[ORIGIN].zone) == model_of(zst.zone)
    assert jr.serial_of(e2.zones[ORIGIN].zone) == jr.serial_of(zst.zone)


def _valid_ixfr_wire(e, zst):
    """A real, valid IXFR response stream (single message) from the served version to a new one."""
    base = zst.zone
    old_soa = jr.soa_of(base)
    new_soa = (ORIGIN, 300, old_soa[2].replace(serial=(old_soa[2].serial + 1) % 2**32))
    q = dns.message.make_query(ORIGIN, "IXFR")
    r = dns.message.make_response(q)
    for name, ttl, rd in [new_soa, old_soa, rr("www", "A", "192.0.2.1"), new_soa,
                          rr("www", "A", "192.0.2.2"), new_soa]:
        rs = dns.rrset.RRset(name, 1, rd.rdtype)
        rs.add(rd, ttl)
        r.answer.append(rs)
    return q, r.to_wire()


def test_malformed_transfer_streams(engines, tmp_path):
    e, zst, rec = make_engine(engines, tmp_path)
    seen = {"applied": 0, "refused": 0}

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data):
        before = zst.zone
        q, wire = _valid_ixfr_wire(e, zst)
        mode = data.draw(st.sampled_from(["flip", "truncate", "splice", "random"]))
        w = bytearray(wire)
        if mode == "flip":
            for _ in range(data.draw(st.integers(1, 6))):
                i = data.draw(st.integers(0, len(w) - 1))
                w[i] = data.draw(st.integers(0, 255))
        elif mode == "truncate":
            w = w[: data.draw(st.integers(0, len(w) - 1))]
        elif mode == "splice":
            i = data.draw(st.integers(12, len(w)))
            w = w[:i] + data.draw(st.binary(max_size=40)) + w[i:]
        else:
            w = bytearray(data.draw(st.binary(max_size=200)))
        coll = Collector(ORIGIN, before, 1000, 1000)
        try:
            msg = dns.message.from_wire(bytes(w), xfr=True, origin=None, one_rr_per_rrset=True)
            with dns.xfr.Inbound(coll, dns.rdatatype.IXFR, jr.serial_of(before)) as inbound:
                inbound.process_message(msg)
        except Exception:
            coll.result = None  # the stream is refused before anything is applied
        try:
            if coll.result is not None:
                e.call(e.refresher.ingest(zst, before, coll.result, "fuzz stream"))
                seen["applied"] += zst.zone is not before
        except (UpdateRejected, jr.DiffError):
            pass
        if zst.zone is before:
            seen["refused"] += 1
        served_is_valid(e, zst, rec)

    one()
    print("malformed-stream outcomes", seen)
    assert seen["refused"] > 50, seen


def test_random_ixfr_diffs_through_the_image_publisher(engines, tmp_path):
    """The same random diffs, published by the real ImagePublisher (the IXFR fast path patches
    the image; compactions run in line): after every accepted update the served image answers
    exactly like a full compile of the served version."""
    import pop53
    from pop53.zone.compiler import compile_zone_data

    images = []
    pub = ImagePublisher(images.append, compact_in_background=False)
    pub.MAX_GROWTH = 1.6            # compactions happen too, in line, every few patches
    e, zst, rec = make_engine(engines, tmp_path, publish=pub)
    queries = []
    for label in LABELS + ["nx", "a.nx", "z.sub", "q.deep.y.x"]:
        name = ORIGIN if label == "@" else dns.name.from_text(label.replace("*", "w1"), ORIGIN)
        for t in ("A", "AAAA", "TXT", "MX", "NS", "CNAME", "DNAME", "SOA", "ANY"):
            q = dns.message.make_query(name, t, use_edns=0)
            q.id = 53
            queries.append(q.to_wire())

    def answers(image):
        return [pop53.answer(image, w, ("127.0.0.1", 5353)) for w in queries]

    outcomes = {"accepted": 0}

    @settings(max_examples=250, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(dels=st.lists(rr_strategy, max_size=3), adds=st.lists(rr_strategy, max_size=4),
           pick_existing=st.lists(st.integers(0, 50), max_size=3))
    def one(dels, adds, pick_existing):
        before = zst.zone
        existing = [r for r in jr.iter_rrs(before) if r[2].rdtype != dns.rdatatype.SOA]
        dels = dels + [existing[i % len(existing)] for i in pick_existing if existing]
        old_soa = jr.soa_of(before)
        new_soa = (ORIGIN, 300, old_soa[2].replace(serial=(old_soa[2].serial + 1) % 2**32))
        n0 = len(images)
        try:
            e.call(e.refresher.ingest(zst, before, ("steps", (jr.Diff(old_soa, new_soa, tuple(dels), tuple(adds)),)), "fuzz"))
        except (UpdateRejected, jr.DiffError):
            assert pub.zones[ORIGIN.to_text()].zone is before
            return
        outcomes["accepted"] += 1
        served = rec.versions[ORIGIN.to_text()]
        assert pub.last_image is images[-1] and len(images) > n0
        want = answers(compile_zone_data([served.data]))
        for image in images[n0:]:        # the patched image, and the compacted one if any
            assert answers(image) == want

    one()
    print("publisher", pub.stats, outcomes)
    assert outcomes["accepted"] >= 10 and pub.stats["patched"] >= 10, (pub.stats, outcomes)
    assert pub.stats["compacted"] >= 1, pub.stats
