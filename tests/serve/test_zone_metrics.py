"""Issue 14 point 12: per-zone counters by rcode and by query type, the answer-latency histogram
and the build info, scraped from /metrics after a known plan of queries: every number moves
exactly by what was sent, the zone that answered is the one counted (a CNAME into another zone
counts for the first), queries in no zone count in no zone, and a reload keeps each zone's
counts under its name."""
from __future__ import annotations

import shutil
import socket
import urllib.request

import Cython
import dns.message
import dns.query
from prometheus_client.parser import text_string_to_metric_families

from pop53 import __version__
from pop53 import config as cfgmod
from pop53.serve.server import Server

from integ_support import (EXAMPLE_ZONE, INTEG_ZONE, ZONES, free_port, make_query, metric, scrape,
                           start_with_retry)

INTEG = "integ.example."
RELOAD = "reload.example."


def _plan_udp(addr, plan):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i, (name, rdtype, count) in enumerate(plan):
            for k in range(count):
                rdclass = "CH" if name == "id.server." else "IN"
                s.sendto(make_query(name, rdtype, qid=i * 100 + k, rdclass=rdclass), addr)
                assert s.recv(65535)


def _zone(m, zone, **labels):
    (key, value), = labels.items()
    name = "pop53_zone_responses" if key == "rcode" else "pop53_zone_queries"
    return metric(m, name, zone=zone, **labels)


def _histogram(maddr, proto) -> dict:
    """pop53_answer_latency_seconds for one proto: count, sum and (le, cumulative count)."""
    url = f"http://{maddr[0]}:{maddr[1]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {"buckets": []}
    for fam in text_string_to_metric_families(text):
        if fam.name != "pop53_answer_latency_seconds":
            continue
        for smp in fam.samples:
            if smp.labels.get("proto") != proto:
                continue
            if smp.name.endswith("_bucket"):
                out["buckets"].append((float(smp.labels["le"]), smp.value))
            elif smp.name.endswith("_count"):
                out["count"] = smp.value
            elif smp.name.endswith("_sum"):
                out["sum"] = smp.value
    out["buckets"].sort()
    return out


def test_per_zone_counts_latency_and_build_info(tmp_path):
    integ = tmp_path / "integ.zone"
    reload_zone = tmp_path / "reload.zone"
    shutil.copy(INTEG_ZONE, integ)
    shutil.copy(ZONES / "reload-v1.zone", reload_zone)
    mport = free_port()
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 2, "identity": "zm",
                      "metrics": f"127.0.0.1:{mport}"},
           "zone": [{"name": INTEG, "file": str(integ)}, {"name": RELOAD, "file": str(reload_zone)},
                    {"name": "example.com.", "file": str(EXAMPLE_ZONE)}]}
    s = start_with_retry(lambda: Server(cfgmod.from_dict(doc, file="<zone metrics>")))
    try:
        addr, maddr = s.addresses[0], ("127.0.0.1", mport)
        before = scrape(maddr)
        assert not before.get("pop53_zone_responses")
        _plan_udp(addr, [("www.integ.example.", "A", 5), ("nx.integ.example.", "AAAA", 3),
                         ("integ.example.", "MX", 2), ("integ.example.", "TYPE999", 1),
                         ("caa.integ.example.", "CAA", 1), ("cross.integ.example.", "A", 2),
                         ("only1.reload.example.", "A", 2), ("www.not-ours.test.", "A", 3),
                         ("id.server.", "TXT", 2)])
        for i in range(2):
            dns.query.tcp(dns.message.make_query("www.integ.example.", "AAAA"), addr[0],
                          port=addr[1], timeout=2)
        m = scrape(maddr)
        # integ.example.: 5 A + 2 MX + 1 TYPE999 (NODATA) + 1 CAA + 2 cross (CNAME into
        # example.com., counted for the zone asked) + 2 AAAA over TCP; 3 NXDOMAIN
        assert _zone(m, INTEG, rcode="NOERROR") == 13
        assert _zone(m, INTEG, rcode="NXDOMAIN") == 3
        for qtype, n in (("A", 7), ("AAAA", 5), ("MX", 2), ("other", 1), ("CAA", 1)):
            assert _zone(m, INTEG, qtype=qtype) == n, qtype
        assert _zone(m, RELOAD, rcode="NOERROR") == 2
        assert _zone(m, RELOAD, qtype="A") == 2
        assert _zone(m, "example.com.", rcode="NOERROR") == 0      # only reached by the CNAME
        zone_total = sum(m["pop53_zone_responses"].values())
        assert zone_total == 13 + 3 + 2                            # REFUSED and CHAOS: no zone
        assert sum(m["pop53_zone_queries"].values()) == zone_total
        # latency: one observation per reply, UDP and TCP apart
        udp_replies = 5 + 3 + 2 + 1 + 1 + 2 + 2 + 3 + 2
        udp, tcp = _histogram(maddr, "udp"), _histogram(maddr, "tcp")
        assert udp["count"] == udp_replies and tcp["count"] == 2
        assert udp["buckets"][-1] == (float("inf"), udp_replies)
        assert 0 < udp["sum"] < udp_replies * 1.0
        counts = [v for _, v in udp["buckets"]]
        assert counts == sorted(counts) and len(counts) == 22            # cumulative
        info, = m["pop53_build_info"].items()
        labels = dict(info[0])
        assert info[1] == 1
        assert labels["version"] == __version__ and labels["cython"] == Cython.__version__
        assert "dnstap" in labels["features"].split(",")

        # a reload (version 2 of reload.example.: only2 instead of only1) keeps every count
        shutil.copy(ZONES / "reload-v2.zone", reload_zone)
        assert s.reload()
        _plan_udp(addr, [("only2.reload.example.", "A", 1), ("only1.reload.example.", "A", 1),
                         ("www.integ.example.", "TXT", 1)])
        m2 = scrape(maddr)
        assert _zone(m2, RELOAD, rcode="NOERROR") == 3
        assert _zone(m2, RELOAD, rcode="NXDOMAIN") == 1
        assert _zone(m2, RELOAD, qtype="A") == 4
        assert _zone(m2, INTEG, rcode="NOERROR") == 14
        assert _zone(m2, INTEG, qtype="TXT") == 1
    finally:
        s.stop()
