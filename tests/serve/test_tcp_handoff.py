"""Issue 15: the data-plane TCP loop hands a connection to the control plane at its first
NOTIFY / AXFR / IXFR / TSIG message.  The real transfer engine (pop53.xfr) serves AXFR out of a
file zone; queries pipelined before and after the AXFR on the same connection are answered in
order, and several TCP loops (tcp_workers) share the limits."""
from __future__ import annotations

import dns.message
import dns.rdatatype
import pytest

import pop53.config as cfgmod
from pop53.xfr import secondary

from integ_support import (INTEG_ZONE, IDENTITY, frame, make_query, msg_id, read_frame,
                           tcp_connect, wait_for)

ORIGIN = "integ.example."


@pytest.fixture
def primary():
    """pop53 as a primary of the integ zone: AXFR allowed from 127.0.0.1."""
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "identity": IDENTITY,
                      "tcp_workers": 2},
           "zone": [{"name": ORIGIN, "file": str(INTEG_ZONE), "allow_transfer": ["127.0.0.1/32"]}]}
    cfg = cfgmod.from_dict(doc, file="<handoff test>")
    server, service = secondary.build(cfg)
    server.start()
    service.start()
    yield server
    service.stop()
    server.stop()


def test_axfr_pipelined_between_queries_is_handed_over_in_order(primary):
    addr = primary.addresses[0]
    before = make_query("www.integ.example.", qid=11)
    axfr = make_query(ORIGIN, "AXFR", qid=12, edns=None)
    after = make_query("www.integ.example.", "AAAA", qid=13)
    with tcp_connect(addr, timeout=10) as s:
        s.sendall(frame(before) + frame(axfr) + frame(after))
        first = read_frame(s)
        assert msg_id(first) == 11                  # answered by the C loop, before the handoff
        stream = []
        soas = 0
        while soas < 2:                             # AXFR: SOA ... SOA (RFC 5936 §2.2)
            m = dns.message.from_wire(read_frame(s), one_rr_per_rrset=True)
            assert m.id == 12 and m.rcode() == 0
            stream.append(m)
            soas += sum(1 for rr in m.answer if rr.rdtype == dns.rdatatype.SOA)
        last = read_frame(s)                        # the query after the AXFR, on the same
        assert msg_id(last) == 13                   # connection, now served by the control side
    records = sum(len(m.answer) for m in stream)
    assert records > 20
    assert primary.tcp.counters.stats()["control"] >= 1


def test_several_tcp_loops_share_the_limits(primary):
    # tcp_workers = 2: both loops take connections; the shared count returns to zero
    addr = primary.addresses[0]
    socks = [tcp_connect(addr) for _ in range(20)]
    try:
        for i, s in enumerate(socks):
            s.sendall(frame(make_query("www.integ.example.", qid=500 + i)))
        assert [msg_id(read_frame(s)) for s in socks] == list(range(500, 520))
        assert primary.tcp.connections == 20
        per_loop = [lp.stats()["tcp"] for lp in primary.tcp.loops]
        assert sum(per_loop) >= 20
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: primary.tcp.connections == 0, 3.0)
