"""Random queries at mapped names (any type, any ECS bytes, any source address, UDP sizes,
TCP) never crash, and every reply parses; a well-formed ECS query gets its option echoed."""
from __future__ import annotations

import struct

import dns.message
from hypothesis import HealthCheck, given, settings, strategies as st

from pop53 import _core

from .mapkit import Mapping, image

M = None


def mapping():
    global M
    if M is None:
        targets = {f"t{i}": ([f"192.0.2.{i + 1}", f"2001:db8::{i + 1}"], f"n{i}.w10.cdn.example.")
                   for i in range(8)}
        regions = {f"r{i}": [f"t{i}", f"t{(i + 3) % 8}"] for i in range(8)}
        lines = [f"10.{i}.0.0/16 r{i % 8}" for i in range(64)] + ["2001:db8::/32 r3", "0.0.0.0/1 r5"]
        M = Mapping(lines, "r0", targets, [
            {"name": "www.cdn.example.", "regions": regions},
            {"name": "c.cdn.example.", "type": "CNAME", "regions": regions},
            {"name": "w10.cdn.example.", "type": "NS", "regions": regions, "ttl": 4000}])
    return M


NAMES = [b"\x03www\x03cdn\x07example\x00", b"\x01c\x03cdn\x07example\x00",
         b"\x02n1\x03w10\x03cdn\x07example\x00", b"\x03w10\x03cdn\x07example\x00"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NAMES), st.integers(0, 300), st.integers(0, 0xFFFF),
       st.integers(0, 3), st.integers(0, 140), st.integers(0, 140), st.binary(max_size=20),
       st.integers(0, 0xFFFF), st.booleans(), st.binary(min_size=4, max_size=4))
def test_random_ecs_queries(name, qtype, payload, family, src, scope, addr, opt_extra, tcp, client):
    ecs = struct.pack(">HBB", family, src, scope) + addr
    opts = struct.pack(">HH", 8, len(ecs)) + ecs
    if opt_extra & 1:
        opts += struct.pack(">HH", 3, 0)            # NSID
    opt = b"\x00" + struct.pack(">HHIH", 41, payload, 0, len(opts)) + opts
    wire = struct.pack(">HHHHHH", 0x1234, 0, 1, 0, 0, 1) + name + struct.pack(">HH", qtype, 1) + opt
    act, reply = _core.answer(image().view, wire, _core.Responder(identity=b"fuzz"), tcp,
                              client, mapping().snap)
    assert reply is not None
    r = dns.message.from_wire(reply)
    if r.rcode() == 0 and r.edns >= 0:
        echoed = [o for o in r.options if o.otype == 8]
        assert len(echoed) == 1 and echoed[0].srclen == src
