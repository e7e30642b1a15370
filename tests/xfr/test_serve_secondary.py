"""End to end through `pop53 serve`: a real Knot primary, pop53 as its TSIG-authenticated
secondary on the server's own port (NOTIFY arrives through the data plane's control ring, the
IXFR is applied, compiled and swapped), and a file zone served beside it; then a restart that
serves the transferred zone from saved state at once."""
from __future__ import annotations

import time

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest

from xfr_support import a_records, free_port, start_pop53_secondary, stop_process, wait_for
from test_knot_primary import ZONE, knot_primary

pytestmark = pytest.mark.peers

FILE_ZONE = """$ORIGIN local.test.
$TTL 300
@ IN SOA ns h 5 3600 600 86400 60
@ IN NS ns
ns IN A 192.0.2.53
www IN A 192.0.2.80
"""


def ask(port, name, rdtype="A"):
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)


def start_pop53(tmp_path, pop_port, knot_port):
    return start_pop53_secondary(tmp_path / "pop53", pop_port, knot_port, ZONE, identity="sec-1",
                                 workers=2, file_zone=("local.test.", FILE_ZONE))


def test_pop53_serve_as_secondary_of_knot(knot_factory, tmp_path):
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port)
    proc = start_pop53(tmp_path, pop_port, k.port)
    try:
        wait_for(lambda: a_records(pop_port, "www.example.org.") == ["192.0.2.1"], 20,
                 what="the zone transferred from Knot and served")
        assert a_records(pop_port, "www.local.test.") == ["192.0.2.80"]      # the file zone beside it
        # an update on the primary: NOTIFY to our serving port, IXFR, a new image
        k.change(ZONE, ("new", "300", "A", "192.0.2.77"))
        t0 = time.monotonic()
        wait_for(lambda: a_records(pop_port, "new.example.org.") == ["192.0.2.77"], 15,
                 what="the IXFR'd record served")
        assert time.monotonic() - t0 < 15
        r = ask(pop_port, "example.org.", "SOA")
        assert r.answer[0][0].serial == 2
        # an unsigned NOTIFY from a stranger changes nothing and is refused
        n = dns.message.make_query(ZONE, "SOA")
        n.set_opcode(dns.opcode.NOTIFY)
        resp = dns.query.udp(n, "127.0.0.1", port=pop_port, timeout=2)
        assert resp.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTAUTH)
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out
    # restart: the transferred zone is served from saved state before any transfer
    k.stop()
    proc = start_pop53(tmp_path, pop_port, k.port)
    try:
        wait_for(lambda: a_records(pop_port, "new.example.org.") == ["192.0.2.77"], 20,
                 what="saved zone served after restart with the primary down")
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out



def test_ixfr_updates_under_query_load_are_never_mixed(knot_factory, tmp_path):
    """Version N has `mx MX N mail` and `mail A 10.0.N.25`: an answer (MX in the answer section,
    the target's address in additional: two nodes) mixing two versions would pair N with
    another M.  Queries run without pause while Knot pushes updates by NOTIFY + IXFR."""
    import threading

    pop_port = free_port()
    extra = "mx 300 IN MX 1 mail\nmail 300 IN A 10.0.1.25\n"
    k = knot_primary(knot_factory, pop_port, extra=extra)
    proc = start_pop53(tmp_path, pop_port, k.port)
    seen, wrong, lost, answered = set(), [], [0], [0]
    stop_flag = threading.Event()

    def client():
        s = dns.message.make_query("mx." + ZONE, "MX")
        deadline = time.monotonic() + 60
        while not stop_flag.is_set() and time.monotonic() < deadline:
            try:
                r = dns.query.udp(s, "127.0.0.1", port=pop_port, timeout=1.0)
            except Exception:
                lost[0] += 1
                continue
            answered[0] += 1
            prefs = [rd.preference for rrset in r.answer for rd in rrset]
            addrs = [rd.address for rrset in r.additional for rd in rrset if rrset.rdtype == 1]
            if len(prefs) != 1 or addrs != [f"10.0.{prefs[0]}.25"]:
                wrong.append((prefs, addrs))
            else:
                seen.add(prefs[0])

    try:
        wait_for(lambda: a_records(pop_port, "mail." + ZONE) == ["10.0.1.25"], 20, what="first version")
        t = threading.Thread(target=client)
        t.start()
        try:
            for n in range(2, 6):
                k.change(ZONE, ("mx", "300", "MX", f"{n} mail.{ZONE}"), ("mail", "300", "A", f"10.0.{n}.25"),
                         unsets=(("mx", "MX"), ("mail", "A")))
                wait_for(lambda n=n: a_records(pop_port, "mail." + ZONE) == [f"10.0.{n}.25"], 15,
                         what=f"version {n} served")
        finally:
            stop_flag.set()
            t.join(70)
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out
    assert not wrong, wrong[:5]
    assert lost[0] == 0 and answered[0] > 50
    assert {1, 5} <= seen and len(seen) >= 3, seen


def scrape(port: int) -> dict:
    """{(family, labels tuple): value} from the server's Prometheus endpoint."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_compaction_inside_the_server_and_the_xfr_metrics(knot_factory, tmp_path):
    """compact_growth = 1.0: every patched image starts a compaction, a full compile in a child
    forked from the serving process (worker threads running); every update stays visible and
    the compacted image keeps all of them.  The engine's metrics are on the server's endpoint."""
    pop_port, mport = free_port(), free_port()
    k = knot_primary(knot_factory, pop_port)
    proc = start_pop53_secondary(tmp_path / "pop53", pop_port, k.port, ZONE, workers=2,
                                 xfr_extra="compact_growth = 1.0\n",
                                 server_extra=f'metrics = "127.0.0.1:{mport}"\n')
    images = lambda path: scrape(mport).get(("pop53_xfr_images_total", (("path", path),)), 0)  # noqa: E731
    try:
        wait_for(lambda: a_records(pop_port, "www.example.org.") == ["192.0.2.1"], 20,
                 what="the zone transferred from Knot and served")
        for i in range(4):
            k.change(ZONE, (f"n{i}", "300", "A", f"192.0.2.{10 + i}"))
            wait_for(lambda: a_records(pop_port, f"n{i}.example.org.") == [f"192.0.2.{10 + i}"], 15,
                     what=f"update {i} served")
        wait_for(lambda: images("compacted") >= 1 and images("patched") >= 4, 30,
                 what="a compaction installed")
        # after the compactions: every update still answered, the latest serial served
        wait_for(lambda: images("compacted") + images("compactions_dropped") >= 1
                 and ask(pop_port, "example.org.", "SOA").answer[0][0].serial == 5, 10,
                 what="serial 5")
        for i in range(4):
            assert a_records(pop_port, f"n{i}.example.org.") == [f"192.0.2.{10 + i}"]
        m = scrape(mport)
        assert m[("pop53_xfr_updates_applied_total", (("zone", ZONE),))] >= 5
        assert m[("pop53_xfr_stale", ())] == 0
        assert ("pop53_xfr_zone_age_seconds", (("zone", ZONE),)) in m
        assert images("compiled") == 1                  # only the first load compiled in line
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out


def test_operator_commands_for_transferred_zones(knot_factory, tmp_path):
    """`pop53 ctl xfr | refresh ZONE | retransfer ZONE` on a running secondary: freshness, an
    SOA check now, a full transfer now (a repair), and clear errors for zones that are not ours."""
    import json
    import subprocess
    import sys

    pop_port, mport = free_port(), free_port()
    sock = tmp_path / "ctl.sock"
    k = knot_primary(knot_factory, pop_port)
    proc = start_pop53_secondary(tmp_path / "pop53", pop_port, k.port, ZONE, workers=1,
                                 server_extra=f'metrics = "127.0.0.1:{mport}"\ncontrol = "{sock}"\n')

    def ctl(*args):
        r = subprocess.run([sys.executable, "-m", "pop53", "ctl", "--json", "-s", str(sock), *args],
                           capture_output=True, text=True, timeout=30)
        return r.returncode, json.loads(r.stdout)

    axfrs = lambda: scrape(mport).get(("pop53_xfr_in_total", (("kind", "axfr"), ("result", "ok"), ("zone", ZONE))), 0)  # noqa: E731
    soa_ok = lambda: scrape(mport).get(("pop53_xfr_soa_checks_total", (("result", "ok"), ("zone", ZONE))), 0)  # noqa: E731
    try:
        wait_for(lambda: a_records(pop_port, "www.example.org.") == ["192.0.2.1"], 20,
                 what="the zone transferred from Knot and served")
        wait_for(lambda: sock.exists(), 10, what="the control socket")
        rc, out = ctl("xfr")
        assert rc == 0 and out["zones"][ZONE]["serial"] == 1 and out["stale"] is False, out
        assert axfrs() == 1
        before = soa_ok()
        rc, out = ctl("refresh", ZONE)
        assert rc == 0 and out["queued"] == "refresh"
        wait_for(lambda: soa_ok() > before, 10, what="an SOA check")
        assert axfrs() == 1                          # current: nothing transferred
        rc, out = ctl("retransfer", ZONE)
        assert rc == 0
        wait_for(lambda: axfrs() == 2, 10, what="a full transfer")
        assert a_records(pop_port, "www.example.org.") == ["192.0.2.1"]
        # the next change still arrives incrementally (the forced AXFR was one-off)
        k.change(ZONE, ("after", "300", "A", "192.0.2.99"))
        wait_for(lambda: a_records(pop_port, "after.example.org.") == ["192.0.2.99"], 15,
                 what="the IXFR after the repair")
        assert axfrs() == 2
        rc, out = ctl("refresh", "nope.example.")
        assert rc == 1 and "not configured" in out["error"]
        rc, out = ctl("retransfer")
        assert rc == 1 and "usage" in out["error"]
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out
