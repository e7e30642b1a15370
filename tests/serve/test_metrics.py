"""Issue 3: the Prometheus endpoint parses (prometheus_client's own parser) and counts exactly
what the test sent: queries by transport and type, responses by rcode, truncated and dropped
replies, bytes, per-worker counters, zone serials, the image generation."""
from __future__ import annotations

import collections
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from integ_support import (EXAMPLE_ZONE, INTEG_ZONE, free_port, make_query, metric, scrape,
                           tcp_exchange, udp_exchange, udp_socket, wait_for)


def udp_plan() -> list[bytes]:
    qs = []
    add = lambda *a, **k: qs.append(make_query(*a, qid=len(qs) + 1, **k))  # noqa: E731
    for _ in range(10):
        add("www.integ.example.", "A")
    for _ in range(4):
        add("www.example.com.", "AAAA")
    for _ in range(3):
        add("integ.example.", "MX")
    for _ in range(2):
        add("big.integ.example.", "TXT", edns=None)          # does not fit 512: TC=1
    add("many.integ.example.", "A")                          # does not fit 1232: TC=1
    for _ in range(4):
        add("nx.integ.example.", "A")                        # NXDOMAIN
    for _ in range(3):
        add("www.not-ours.test.", "A")                       # REFUSED
    for _ in range(2):
        add("id.server.", "TXT", rdclass="CH")
    add("integ.example.", "SOA")
    add("_dns._udp.integ.example.", "SRV")
    # opcode STATUS: NOTIMP (RFC 1035 §4.1.1)
    status = bytearray(make_query("www.integ.example.", "A", qid=len(qs) + 1))
    status[2] = (status[2] & 0x87) | (2 << 3)
    qs.append(bytes(status))
    # EDNS version 1: BADVERS (RFC 6891 §6.1.3)
    q = dns.message.make_query("www.integ.example.", "A", use_edns=1)
    q.id = len(qs) + 1
    qs.append(q.to_wire())
    return qs


def tcp_plan() -> list[bytes]:
    return [make_query("huge.integ.example.", "TXT", qid=1001),        # 30 KB, never TC on TCP
            make_query("big.integ.example.", "TXT", qid=1002, edns=None),
            make_query("www.integ.example.", "AAAA", qid=1003),
            make_query("nx.example.com.", "MX", qid=1004),
            make_query("www.integ.example.", "A", qid=1005),
            make_query("caa.integ.example.", "CAA", qid=1006),
            make_query("www.not-ours.test.", "NS", qid=1007)]


DROPPED = [  # no reply: shorter than a header, or QR=1 (RFC 1035 §4.1.1; issue 2 policy table)
    b"\x12\x34\x01",
    b"",
    b"\x00" * 11,
    struct.pack("!6H", 0x4444, 0x8100, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",
    struct.pack("!6H", 0x4445, 0x8400, 1, 1, 0, 0) + b"\x00\x00\x01\x00\x01",
]


def qtype_label(wire: bytes) -> str:
    # the C counters have one slot per type below 256 and one shared slot, "other", above
    t = dns.message.from_wire(wire).question[0].rdtype
    return "other" if t >= 256 else dns.rdatatype.to_text(t)


def test_metrics_count_what_was_sent(start_server):
    mport = free_port()
    s = start_server([INTEG_ZONE, EXAMPLE_ZONE], workers=2, metrics=f"127.0.0.1:{mport}")
    maddr = ("127.0.0.1", mport)
    first = scrape(maddr)
    assert metric(first, "pop53_queries", proto="udp") == 0
    assert metric(first, "pop53_queries", proto="tcp") == 0

    udp_q, tcp_q = udp_plan(), tcp_plan()
    udp_r = []
    with udp_socket(s.addresses[0]) as sock:
        for w in udp_q:
            r = udp_exchange(sock, w)
            assert r is not None
            udp_r.append(r)
        for w in DROPPED:
            sock.send(w)
    tcp_r = tcp_exchange(s.addresses[0], tcp_q)
    assert len(tcp_r) == len(tcp_q)

    # the dropped ones have no reply to wait for: wait until the counters show them
    assert wait_for(lambda: metric(scrape(maddr), "pop53_dropped") >= len(DROPPED), 5.0)
    fams = scrape(maddr)

    n_udp = len(udp_q) + len(DROPPED)
    assert metric(fams, "pop53_queries", proto="udp") == n_udp
    assert metric(fams, "pop53_queries", proto="tcp") == len(tcp_q)
    assert metric(fams, "pop53_dropped") == len(DROPPED)

    replies = udp_r + tcp_r
    rcodes = collections.Counter(dns.rcode.to_text(dns.message.from_wire(r).rcode()) for r in replies)
    assert {"NOERROR", "NXDOMAIN", "REFUSED", "NOTIMP", "BADVERS"} <= set(rcodes)
    got_rcodes = {dict(k)["rcode"]: v for k, v in fams["pop53_responses"].items() if v}
    assert got_rcodes == dict(rcodes)

    qtypes = collections.Counter(qtype_label(w) for w in udp_q + tcp_q)
    got_types = {dict(k)["qtype"]: v for k, v in fams["pop53_queries_by_type"].items() if v}
    assert got_types == dict(qtypes)

    truncated = sum(bool(dns.message.from_wire(r).flags & dns.flags.TC) for r in replies)
    assert truncated == 3                     # the three UDP ones that do not fit; none on TCP
    assert metric(fams, "pop53_truncated") == truncated

    assert metric(fams, "pop53_received_bytes") == sum(map(len, udp_q + DROPPED + tcp_q))
    assert metric(fams, "pop53_sent_bytes") == sum(map(len, replies))

    per_worker = {dict(k)["worker"]: v for k, v in fams["pop53_worker_queries"].items()}
    assert sorted(per_worker) == ["0", "1"]
    assert sum(per_worker.values()) == n_udp
    assert per_worker == {str(w.index): w.stats()["queries"] for w in s.workers}
    batches = sum(fams["pop53_worker_batches"].values())
    assert 1 <= batches <= n_udp

    assert metric(fams, "pop53_zone_serial", zone="integ.example.") == 2026010101
    assert metric(fams, "pop53_zone_serial", zone="example.com.") == 2026112101
    assert 0 <= metric(fams, "pop53_zone_age_seconds", zone="integ.example.") < 60
    assert metric(fams, "pop53_image_generation") == s.shared.generation == 1
    assert metric(fams, "pop53_image_bytes") == len(s.current_image)
    assert metric(fams, "pop53_reload_failures") == 0

    # a new image bumps the generation (a reload of unchanged files publishes none); counters
    # only ever grow
    s.set_zones(dict(s.zones.data))
    again = scrape(maddr)
    assert metric(again, "pop53_image_generation") == 2
    assert metric(again, "pop53_queries", proto="udp") == n_udp
