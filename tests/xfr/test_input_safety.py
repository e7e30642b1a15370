"""Input safety (paper §4.2.3, issue 4): an update that fails validation, does not fit, is badly
signed, is cut short, is too big or fails to compile is rejected with a clear error and a metric,
and the previous version keeps serving.  The primary here is scriptable (real sockets and TSIG) so
it can send what a real primary would refuse to."""
from __future__ import annotations

import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.tsig
import dns.zone
import pytest

from xfr_support import KEYNAME, SECRET, Recorder, free_port, tsig_key, wait_for

from pop53.xfr import journal
from pop53.xfr.config import parse_xfr_config
from pop53.xfr.inbound import CollectTxn, Collector
from pop53.xfr.service import XfrService

ZONE = "safe.example."
BASE = """\
$ORIGIN safe.example.
$TTL 300
@ SOA ns hostmaster {serial} 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
www A 192.0.2.1
{extra}
"""


def zone(serial, extra="", base=BASE):
    # check_origin=False: some versions are deliberately broken (e.g. no NS at the apex)
    return dns.zone.from_text(base.format(serial=serial, extra=extra), ZONE, relativize=False,
                              check_origin=False)


@pytest.fixture
def setup(engines, fake_primary, tmp_path):
    def make(**xfr_opts):
        p = fake_primary(tsig_key())
        p.set(zone(1))
        rec = Recorder()
        cfg = parse_xfr_config({
            "server": {"state": str(tmp_path / "state")},
            "xfr": {"status_interval": 0.2, "timeout": 2, **xfr_opts},
            "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET}],
            "zone": [{"name": ZONE, "primaries": [f"127.0.0.1:{p.port}"], "key": KEYNAME}],
        }, "t.toml")
        e = XfrService(cfg, rec)
        engines.append(e)
        e.start()
        e.port = free_port()
        e.start_listener("127.0.0.1", e.port)
        wait_for(lambda: rec.serial(ZONE) == 1, 10, what="serial 1")
        return p, e, rec
    return make


def forced(serial, *rrs):
    """zone(serial) plus RRs added behind the parser's back (dnspython's reader refuses some of
    the broken data a primary could still send)."""
    z = zone(serial)
    for text in rrs:
        name, rdtype, rdata = text.split(None, 2)
        n = dns.name.from_text(name, dns.name.from_text(ZONE))
        node = z.nodes.setdefault(n, dns.node.Node())
        rd = dns.rdata.from_text(1, rdtype, rdata, origin=dns.name.from_text(ZONE), relativize=False)
        journal.rdataset_for(node, rd.rdtype, rd.covers()).add(rd, 300)
    return z


def push(p, e, z):
    """Make `z` current on the primary and NOTIFY the engine."""
    p.set(z)
    p.notify(e.port, ZONE)


def served(e):
    st = e.zones[dns.name.from_text(ZONE)]
    return st.serial


BAD_UPDATES = [
    ("CNAME and other data", ("www CNAME ns",), "CNAME and other data"),
    ("no NS at the apex", None, "no NS records at the zone apex"),
    ("data below a DNAME", "d DNAME other.example.\nx.d TXT hidden", "below the DNAME"),
    ("two CNAMEs", "hook", "two CNAME records"),
]


@pytest.mark.parametrize("case,extra,message", BAD_UPDATES)
def test_invalid_ixfr_rejected_old_version_kept(setup, case, extra, message):
    p, e, rec = setup()
    if extra == "hook":
        # dnspython itself cannot hold two CNAMEs at one name, so craft the IXFR by hand.
        bad = zone(2)
        origin = dns.name.from_text(ZONE)

        def hook(q):
            soa2, soa1 = journal.soa_of(bad), journal.soa_of(p.versions[1])
            c = dns.name.from_text("c", origin)
            cn = [(c, 300, dns.rdata.from_text(1, "CNAME", t)) for t in ("a.example.", "b.example.")]
            return p.serve_xfr(q, [soa2, soa1, soa2, *cn, soa2])
        p.xfr_hook = hook
    elif extra is None:
        bad = zone(2, base=BASE.replace("@ NS ns\n", ""))
    elif isinstance(extra, tuple):
        bad = forced(2, *extra)
    else:
        bad = zone(2, extra)
    push(p, e, bad)
    wait_for(lambda: e.stats["update.rejected.validation"] >= 1, 10, what="rejection")
    assert served(e) == 1 and rec.serial(ZONE) == 1
    assert rec.calls == [(ZONE, 1)]
    st = e.status()["zones"][ZONE]
    assert message in st["last_error"], st["last_error"]
    # The primary fixes it: the next version goes through (the rejected one left no trace).
    p.xfr_hook = None
    p.set(zone(3, "fixed TXT ok"))
    p.notify(e.port, ZONE)
    wait_for(lambda: rec.serial(ZONE) == 3, 10, what="serial 3")
    assert rec.rdata(ZONE, "fixed.safe.example.", "TXT") == ['"ok"']
    assert rec.rdata(ZONE, "www.safe.example.", "A") == ["192.0.2.1"]


def test_two_cnames_in_one_axfr_message_rejected(setup):
    """Two CNAMEs at one name inside one AXFR message: parsed RR by RR (one_rr_per_rrset), so
    dnspython's message reader cannot quietly keep only the last one (RFC 2181 §10.1)."""
    p, e, rec = setup()
    bad = zone(2)
    origin = dns.name.from_text(ZONE)

    def hook(q):
        if q.question[0].rdtype == dns.rdatatype.IXFR:
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.NOTIMP)       # force the full transfer
            return [r.to_wire()]
        soa = journal.soa_of(bad)
        c = dns.name.from_text("c", origin)
        cn = [(c, 300, dns.rdata.from_text(1, "CNAME", t)) for t in ("a.example.", "b.example.")]
        rest = [r for r in journal.iter_rrs(bad) if r[2].rdtype != dns.rdatatype.SOA]
        return p.render(q, [[soa, *rest, *cn, soa]])   # one message
    p.xfr_hook = hook
    push(p, e, bad)
    wait_for(lambda: e.stats["update.rejected.validation"] + e.stats.get("update.rejected.transfer", 0) >= 1
             or "two CNAME" in (e.status()["zones"][ZONE].get("last_error") or ""), 10, what="rejection")
    assert served(e) == 1 and rec.serial(ZONE) == 1
    # the records path's words (the zone-file checks); the dnspython path said "two CNAME records"
    assert "a second CNAME record at one name" in e.status()["zones"][ZONE]["last_error"]


def test_ixfr_that_does_not_fit_falls_back_to_axfr(setup):
    p, e, rec = setup()
    good = zone(2, "new A 192.0.2.2")

    def hook(q):
        if q.question[0].rdtype == dns.rdatatype.IXFR:
            soa = journal.soa_of(good)
            old = journal.soa_of(p.versions[1])
            ghost = (dns.name.from_text("ghost." + ZONE), 300, dns.rdata.from_text(1, 1, "192.0.2.99"))
            return p.serve_xfr(q, [soa, old, ghost, soa, soa])  # deletes an RR we do not have
        return None
    p.xfr_hook = hook
    push(p, e, good)
    wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2 by AXFR")
    assert e.stats["update.rejected.diff"] == 1
    assert p.requests[-2:] == ["IXFR", "AXFR"]
    assert rec.rdata(ZONE, "new.safe.example.", "A") == ["192.0.2.2"]


def test_ixfr_refused_falls_back_to_axfr(setup):
    p, e, rec = setup()

    def hook(q):
        if q.question[0].rdtype == dns.rdatatype.IXFR:
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.NOTIMP)
            return [r.to_wire()]
        return None
    p.xfr_hook = hook
    push(p, e, zone(2, "new A 192.0.2.2"))
    wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2 by AXFR")
    assert e.stats["ixfr.fallback"] == 1


@pytest.mark.parametrize("how", ["unsigned last message", "bad MAC", "cut short", "wrong key"])
def test_malformed_transfer_rejected(setup, how):
    p, e, rec = setup()
    good = zone(2, "new A 192.0.2.2")

    def hook(q):
        rrs = [journal.soa_of(good)] + [r for r in journal.iter_rrs(good)
                                         if r[2].rdtype != dns.rdatatype.SOA] + [journal.soa_of(good)]
        half = len(rrs) // 2
        if how == "unsigned last message":
            a = p.render(q, [rrs[:half]])
            b = p.render(q, [rrs[half:]], sign=False)
            return a + b
        msgs = p.render(q, [rrs[:half], rrs[half:]])
        if how == "bad MAC":
            last = bytearray(msgs[-1])
            last[-10] ^= 0xFF  # inside the MAC
            return [msgs[0], bytes(last)]
        if how == "cut short":
            return msgs[:1]
        if how == "wrong key":
            other = dns.tsig.Key(KEYNAME, "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC0xMjM=", dns.tsig.HMAC_SHA256)
            saved = p.key
            p.key = other
            try:
                return p.render(q, [rrs])
            finally:
                p.key = saved
    p.xfr_hook = hook
    p.ixfr = False
    p.set(good)
    p.notify(e.port, ZONE)
    wait_for(lambda: e.stats["xfr_in.ixfr.malformed"] + e.stats["xfr_in.axfr.malformed"] >= 1, 15,
             what="malformed transfer noticed")
    assert served(e) == 1 and rec.calls == [(ZONE, 1)]
    # A good transfer afterwards works.
    p.xfr_hook = None
    p.notify(e.port, ZONE)
    wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2")


def test_size_limit(setup):
    p, e, rec = setup(max_records=8)
    big = zone(2, "\n".join(f"h{i} A 192.0.2.{i}" for i in range(10)))
    push(p, e, big)
    wait_for(lambda: e.stats["update.rejected.validation"] >= 1, 10, what="size rejection")
    assert served(e) == 1
    assert "max_records" in e.status()["zones"][ZONE]["last_error"]


def test_publish_failure_keeps_old_version(setup):
    """The compiler (publish callback) refuses a version: nothing changes, the journal does not
    record it, and the next good version goes through."""
    p, e, rec = setup()
    rec.refuse_serials.add(2)
    push(p, e, zone(2, "new A 192.0.2.2"))
    wait_for(lambda: e.stats["update.rejected.publish"] >= 1, 10, what="publish rejection")
    assert served(e) == 1 and rec.serial(ZONE) == 1
    st = e.zones[dns.name.from_text(ZONE)]
    assert st.latest_serial == 1
    p.set(zone(3, "new A 192.0.2.3"))
    p.notify(e.port, ZONE)
    wait_for(lambda: rec.serial(ZONE) == 3, 10, what="serial 3")
    assert rec.rdata(ZONE, "new.safe.example.", "A") == ["192.0.2.3"]



def test_a_big_full_transfer_freezes_what_it_built(monkeypatch):
    """Every FREEZE_EVERY records a full transfer calls gc.freeze(), so the collector does not
    walk the growing zone again and again; a diff (IXFR) never does."""
    import gc

    import dns.rrset
    import dns.xfr

    monkeypatch.setattr(CollectTxn, "FREEZE_EVERY", 10)
    origin = dns.name.from_text(ZONE)
    z = zone(1, "\n".join(f"h{i} A 192.0.2.{i % 250 + 1}" for i in range(35)))
    q = dns.message.make_query(origin, "AXFR")
    r = dns.message.make_response(q)
    soa = journal.soa_of(z)
    for name, ttl, rd in [soa] + [x for x in journal.iter_rrs(z) if x[2].rdtype != dns.rdatatype.SOA] + [soa]:
        rs = dns.rrset.RRset(name, 1, rd.rdtype)
        rs.add(rd, ttl)
        r.answer.append(rs)
    wire = r.to_wire()
    gc.unfreeze()
    try:
        col = Collector(origin, None, 1000, 1000)
        with dns.xfr.Inbound(col, dns.rdatatype.AXFR, None) as inbound:
            assert inbound.process_message(dns.message.from_wire(wire, xfr=True, one_rr_per_rrset=True))
        assert gc.get_freeze_count() > 0
        assert col.result is not None and len(col.result[1].nodes) >= 35
    finally:
        gc.unfreeze()
