"""A pure-Python authoritative server (asyncio + dnspython): what a Python user would write.

It is the "without pop53" baseline of the benchmark: one asyncio datagram endpoint, one zone
loaded with ``dns.zone.from_file``, and per query a ``dns.message`` parsed, answered and
rendered.  It follows RFC 1034 §4.3.2 for the cases the benchmark's query mix exercises: exact
match with AA, CNAME chased inside the zone, NXDOMAIN / NODATA with the SOA in the authority
section, REFUSED outside the zone, FORMERR-free drop of unparseable packets.

Run: ``python -m bench.peers.pyserver --zone FILE --listen 127.0.0.1:5353``
"""
from __future__ import annotations

import argparse
import asyncio
import signal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

_MAX_CNAME_HOPS = 8


def answer(zone: dns.zone.Zone, query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    q = query.question[0]
    qname, qtype = q.name, q.rdtype
    if not qname.is_subdomain(zone.origin):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    response.flags |= dns.flags.AA
    soa = zone.find_rrset(zone.origin, dns.rdatatype.SOA)
    for _ in range(_MAX_CNAME_HOPS):
        node = zone.get_node(qname)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(soa)
            return response
        rdataset = node.get_rdataset(dns.rdataclass.IN, qtype)
        if rdataset is not None:
            response.answer.append(_rrset(qname, rdataset))
            return response
        cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is None:
            response.authority.append(soa)  # NODATA
            return response
        response.answer.append(_rrset(qname, cname))
        qname = cname[0].target
        if not qname.is_subdomain(zone.origin):
            return response
    return response


def _rrset(name: dns.name.Name, rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    return rrset


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, zone: dns.zone.Zone):
        self.zone = zone
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        response = answer(self.zone, query)
        limit = query.payload if query.edns >= 0 else 512
        try:
            wire = response.to_wire(max_size=max(512, limit))
        except dns.exception.TooBig:
            response.flags |= dns.flags.TC
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            wire = response.to_wire()
        self.transport.sendto(wire, addr)


async def _serve(zone: dns.zone.Zone, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(zone),
                                                       local_addr=(host, port))
    try:
        await stop
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="asyncio + dnspython authoritative server (bench)")
    p.add_argument("--zone", required=True)
    p.add_argument("--listen", default="127.0.0.1:5353")
    a = p.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    zone = dns.zone.from_file(a.zone, relativize=False)
    asyncio.run(_serve(zone, host.strip("[]"), int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
