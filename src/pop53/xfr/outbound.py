"""Serving our zones to secondaries: SOA for their refresh checks, AXFR (RFC 5936) and IXFR
(RFC 1995) over TCP, NOTIFY out (RFC 1996); and a small TCP + UDP listener for all of it."""
from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.renderer
import dns.tsig
import dns.zone

from pop53.serve import dnstap
from pop53.xfr import journal as jr
from pop53.xfr import recversion as rv
from pop53.xfr.config import Peer
from pop53.xfr.metrics import count
from pop53.xfr.protocol import (OUR_PAYLOAD, TSIG_FUDGE, Refuse, check_key, parse_control, reply_msg, sign,
                                simple_reply)
from pop53.xfr.state import EnginePart, ZoneState
from pop53.xfr.translog import log_transfer

log = logging.getLogger("pop53.xfr")

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA
AXFR = dns.rdatatype.AXFR
IXFR = dns.rdatatype.IXFR


def _tsig_size(key) -> int:
    """Octets of the TSIG RR signed with `key` (RFC 8945 §4.2), 0 without a key."""
    if key is None:
        return 0
    return (len(key.name.to_wire()) + 10 + len(key.algorithm.to_wire()) + 16
            + dns.tsig.mac_sizes[key.algorithm])


class Outbound(EnginePart):
    """The primary side of every zone: answers its secondaries and NOTIFYs them on change."""

    def __init__(self, svc):
        super().__init__(svc)
        self._notify_tasks: set[asyncio.Task] = set()
        self._notify_by_peer: dict[tuple, asyncio.Task] = {}

    def handle_query(self, wire: bytes, peer) -> bytes | None:
        """Answers the SOA of our zones (our own secondaries' refresh check, RFC 1034 §4.3.5),
        TSIG-aware.  None: not a question for us (the data plane answers everything else)."""
        if len(wire) < 12 or ((wire[2] >> 3) & 0xF) != dns.opcode.QUERY or wire[2] & 0x80:
            return None
        try:
            msg = parse_control(wire, self.svc.keyring)
        except Refuse as r:
            if r.reason in ("malformed", "short", "response"):
                return None  # the data plane owns the malformed-packet policy
            self.svc.refused("query", r.reason, peer)
            return r.reply
        if len(msg.question) != 1 or msg.question[0].rdtype != SOA:
            return None
        st = self.zones.get(msg.question[0].name)
        if st is None:
            return None
        if st.zone is None or st.expired:
            return reply_msg(msg, dns.rcode.SERVFAIL)
        r = dns.message.make_response(msg)
        r.flags |= dns.flags.AA
        name, ttl, rd = jr.soa_of(st.zone)
        rrset = r.find_rrset(r.answer, name, IN, SOA, create=True)
        rrset.add(rd, ttl)
        return r.to_wire()

    # ---------------------------------------------------------------- AXFR/IXFR out
    def _request(self, wire: bytes, peer, kinds) -> tuple | list[bytes] | None:
        """Check a transfer request (its QTYPE one of `kinds`): None when it is not one; the
        refusal to send (a list, maybe empty); or (request, zone state, zone, client serial)."""
        if len(wire) < 12 or ((wire[2] >> 3) & 0xF) != dns.opcode.QUERY or wire[2] & 0x80:
            return None
        # Cheap peek at the QTYPE so ordinary queries never pay for a full parse here.
        try:
            qmsg = dns.message.from_wire(wire, keyring=False, question_only=True)
        except Exception:
            return None
        if len(qmsg.question) != 1 or qmsg.question[0].rdtype not in kinds:
            return None
        try:
            msg = parse_control(wire, self.svc.keyring)
            q = msg.question[0]
            st = self.zones.get(q.name)
            if st is None:
                raise Refuse("notauth", reply_msg(msg, dns.rcode.NOTAUTH))
            if not st.conf.transfer_allowed(peer[0]):
                # REFUSED as NSD and BIND send (RFC 5936 §4.2 leaves the policy to us; NOTIMP
                # would claim transfers are not implemented)
                raise Refuse("not_allowed", reply_msg(msg, dns.rcode.REFUSED))
            check_key(msg, st.conf)
            if q.rdclass != IN:
                raise Refuse("malformed", reply_msg(msg, dns.rcode.FORMERR))
            client_serial = None
            if q.rdtype == IXFR:
                # RFC 1995 §3: the authority section holds the client's SOA.
                if len(msg.authority) != 1 or msg.authority[0].rdtype != SOA or \
                        msg.authority[0].name != q.name or len(msg.authority[0]) != 1:
                    raise Refuse("malformed", reply_msg(msg, dns.rcode.FORMERR))
                client_serial = msg.authority[0][0].serial
            zone = st.zone
            if zone is None or st.expired:
                raise Refuse("no_data", reply_msg(msg, dns.rcode.SERVFAIL))
        except Refuse as r:
            self.svc.refused("xfr", r.reason, peer)
            return [r.reply] if r.reply is not None else []
        return msg, st, zone, client_serial

    def _plan(self, st: ZoneState, zone, client_serial):
        """(kind, RRs) of the answer: "uptodate" (our SOA), "ixfr" (the journal's steps from
        the client's serial) or "axfr" (the whole zone; also RFC 1995 §4's answer to an IXFR
        the journal cannot serve)."""
        current = jr.serial_of(zone)
        if client_serial is not None and not jr.serial_gt(current, client_serial):
            return "uptodate", iter([jr.soa_of(zone)])
        steps = None
        if client_serial is not None:
            steps = self._ixfr_steps(list(st.history), client_serial, current)
        if steps is not None:
            return "ixfr", self._ixfr_rrs(zone, steps)
        return "axfr", self._axfr_rrs(zone)

    def _served_out(self, msg, st, kind: str, peer, client_serial, zone, out, t0) -> None:
        count(self.stats, f"xfr_out.{kind}", "pop53_xfr_out_total", "transfers served",
              zone=st.name, kind=kind)
        # the type as answered: an IXFR the journal cannot serve goes out as an AXFR (RFC 1995 §4)
        log_transfer("out", "AXFR" if kind == "axfr" else "IXFR", st.name, client_serial,
                     jr.serial_of(zone), sum(len(m) for m in out or ()),
                     time.monotonic() - t0, Peer(peer[0], peer[1]) if len(peer) > 1 else peer[0],
                     msg.keyname if msg.had_tsig else None)

    def handle_tcp_query(self, wire: bytes, peer) -> list[bytes] | None:
        """AXFR (RFC 5936) / IXFR (RFC 1995) of our zones to allowed secondaries.
        Returns the response messages (None: not an XFR query)."""
        req = self._request(wire, peer, (AXFR, IXFR))
        if req is None or isinstance(req, list):
            return req
        msg, st, zone, client_serial = req
        t0 = time.monotonic()
        kind, rrs = self._plan(st, zone, client_serial)
        out = self._render(msg, rrs)
        self._served_out(msg, st, kind, peer, client_serial, zone, out, t0)
        return out

    def handle_udp_ixfr(self, wire: bytes, peer) -> bytes | None:
        """IXFR over UDP (RFC 1995 §2): the IXFR when it fits in one datagram, else a reply
        with the single current SOA (the client then asks over TCP).  None: not an IXFR (AXFR
        over UDP is not defined, RFC 5936 §4.2: the data plane's NOTIMP stands, as Knot's and
        NSD's)."""
        req = self._request(wire, peer, (IXFR,))
        if req is None or isinstance(req, list):
            return req[0] if req else None
        msg, st, zone, client_serial = req
        limit = max(512, msg.payload) if msg.edns >= 0 else 512
        t0 = time.monotonic()
        kind, rrs = self._plan(st, zone, client_serial)
        out = self._render(msg, rrs, limit, single=True) if kind != "axfr" else None
        if out is None:
            kind, out = "udp_soa", self._render(msg, iter([jr.soa_of(zone)]), limit, single=True)
        self._served_out(msg, st, kind, peer, client_serial, zone, out, t0)
        return out[0] if out else None

    @staticmethod
    def _ixfr_steps(history: list[jr.Record], client_serial: int, current: int):
        steps = [s for rec in history for s in rec.steps]
        for i, s in enumerate(steps):
            if s.old_serial == client_serial:
                chain = steps[i:]
                ok = all(a.new_serial == b.old_serial for a, b in zip(chain, chain[1:]))
                if ok and chain[-1].new_serial == current:
                    return chain
        return None

    @staticmethod
    def _axfr_rrs(zone):
        soa = jr.soa_of(zone)
        yield soa
        if rv.is_records(zone):
            # the records form: each RR encoded once, its owner compressed against the
            # question (RFC 1035 §4.1.4; every owner is at or below it), no dnspython object
            cut = len(zone.origin.to_wire())
            pack = struct.Struct("!HHIH").pack
            for owner, t, ttl, rd in rv.wire_rrs(zone):
                yield b"".join((owner[:-cut], b"\xc0\x0c", pack(t, IN, ttl, len(rd)), rd))
            yield soa
            return
        for name, node in zone.nodes.items():
            for rds in node.rdatasets:
                if rds.rdtype == SOA:
                    continue
                yield (name, rds)
        yield soa

    @staticmethod
    def _ixfr_rrs(zone, steps):
        cur = jr.soa_of(zone)
        yield cur
        for s in steps:
            yield s.old_soa
            yield from s.deleted
            yield s.new_soa
            yield from s.added
        yield cur

    def _render(self, query: dns.message.Message, items, limit: int = 65535,
                single: bool = False) -> list[bytes] | None:
        """Pack RRs into as few messages of at most `limit` octets as they fit in, each
        TSIG-signed when the query was (RFC 8945 §5.3.1 allows every message to be signed; Knot
        and NSD accept it) and with an OPT when the query had one (RFC 6891 §7).  `single`: one
        message or None."""
        key = query.keyring if query.had_tsig else None
        q = query.question[0]
        out: list[bytes] = []
        ctx = None
        room = limit - _tsig_size(key) - (11 if query.edns >= 0 else 0)

        def new():
            r = dns.renderer.Renderer(id=query.id, flags=dns.flags.QR | dns.flags.AA, max_size=room)
            r.add_question(q.name, q.rdtype, q.rdclass)
            return r

        def finish(r):
            nonlocal ctx
            r.max_size = limit
            if query.edns >= 0:
                r.add_edns(0, 0, OUR_PAYLOAD)
            r.write_header()
            if key is not None:
                ctx = r.add_multi_tsig(ctx, key.name, key, TSIG_FUDGE, query.id, 0, b"",
                                       query.mac, key.algorithm)
            out.append(r.get_wire())

        r = new()
        n = 0
        for item in items:
            if isinstance(item, bytes):         # an encoded RR (_axfr_rrs, records form)
                if r.output.tell() + len(item) > r.max_size:
                    if n == 0 or single:
                        if single:
                            return None
                        raise dns.exception.TooBig
                    finish(r)
                    r, n = new(), 0
                r._set_section(dns.renderer.ANSWER)
                r.output.write(item)
                r.counts[dns.renderer.ANSWER] += 1
                n += 1
                continue
            if len(item) == 3:
                name, ttl, rd = item
                rds = dns.rdataset.Rdataset(IN, rd.rdtype, rd.covers(), ttl)
                rds.add(rd, ttl)
            else:
                name, rds = item
            try:
                r.add_rdataset(dns.renderer.ANSWER, name, rds)
                n += 1
            except dns.exception.TooBig:
                if n == 0 or single:
                    if single:
                        return None
                    raise
                finish(r)
                r, n = new(), 0
                r.add_rdataset(dns.renderer.ANSWER, name, rds)
                n += 1
        finish(r)
        return out

    # ---------------------------------------------------------------- NOTIFY out
    def send_notifies(self, st: ZoneState) -> None:
        if self.svc.loop is None or not st.conf.notify:
            return

        def go():
            for peer in st.conf.notify:
                # A newer version supersedes a NOTIFY still being retried for an older one.
                old = self._notify_by_peer.get((st.name, peer))
                if old is not None and not old.done():
                    old.cancel()
                t = asyncio.ensure_future(self._notify_one(st, peer))
                self._notify_by_peer[(st.name, peer)] = t
                self._notify_tasks.add(t)
                t.add_done_callback(self._notify_tasks.discard)
        try:
            if asyncio.get_running_loop() is self.svc.loop:
                go()
                return
        except RuntimeError:
            pass
        self.svc.loop.call_soon_threadsafe(go)

    async def _notify_one(self, st: ZoneState, peer: Peer) -> None:
        """RFC 1996 §3.6: retry (here with a doubling timeout) until a reply or retries run out."""
        zone = st.zone
        if zone is None:
            return
        timeout = 1.0
        for attempt in range(self.config.notify_retries + 1):
            q = dns.message.make_query(st.conf.name, SOA)
            q.flags = dns.flags.AA  # before set_opcode: the opcode lives in the flags word
            q.set_opcode(dns.opcode.NOTIFY)
            name, ttl, rd = jr.soa_of(zone)
            q.find_rrset(q.answer, name, IN, SOA, create=True).add(rd, ttl)
            sign(q, st.conf.key)
            t0 = time.time()
            try:
                r = await dns.asyncquery.udp(q, peer.host, timeout=timeout, port=peer.port)
                dnstap.control(dnstap.RESOLVER, False, None, (peer.host, peer.port), q.wire,
                               [r.wire], t0)
                if r.rcode() == dns.rcode.NOERROR:
                    count(self.stats, "notify.sent", "pop53_xfr_notify_sent_total",
                           "NOTIFY acknowledged by secondaries", zone=st.name)
                    return
                log.warning("zone %s: NOTIFY to %s answered %s", st.name, peer, dns.rcode.to_text(r.rcode()))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if q.wire is not None:      # sent, no (valid) answer: the query alone
                    dnstap.control(dnstap.RESOLVER, False, None, (peer.host, peer.port), q.wire,
                                   (), t0)
                log.debug("zone %s: NOTIFY to %s attempt %d: %s: %s", st.name, peer, attempt,
                          type(exc).__name__, exc)
                if attempt == self.config.notify_retries:
                    log.warning("zone %s: NOTIFY to %s failed: %s", st.name, peer, exc)
                    count(self.stats, "notify.failed", "pop53_xfr_notify_failed_total",
                           "NOTIFY never acknowledged", zone=st.name)
                timeout = min(timeout * 2, 8.0)


# ---------------------------------------------------------------- listeners
async def serve(svc, host: str, port: int, answer: Callable[[bytes, tuple], bytes | None] | None = None):
    """A small TCP + UDP listener for NOTIFY, SOA and XFR (RFC 7766 framing on TCP).  The
    server's own sockets will call the handle_* functions instead; `answer` lets it route
    ordinary queries to the data plane here meanwhile.  Must run on the engine's loop."""
    loop = asyncio.get_running_loop()

    def dispatch(wire: bytes, peer, tcp: bool) -> list[bytes]:
        try:
            r = svc.handle_notify(wire, peer)
            if r is not None:
                return [r]
            if tcp:
                rs = svc.handle_tcp_query(wire, peer)
                if rs is not None:
                    return rs
            else:
                r = svc.outbound.handle_udp_ixfr(wire, peer)
                if r is not None:
                    return [r]
            r = svc.handle_query(wire, peer)
            if r is not None:
                return [r]
            if answer is not None:
                r = answer(wire, peer)
                return [r] if r is not None else []
            r = simple_reply(wire, dns.rcode.REFUSED)
            return [r] if r is not None else []
        except Exception as exc:  # never let one message kill the listener
            log.exception("xfr listener: %s", exc)
            return []

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            for r in dispatch(data, addr, False):
                self.transport.sendto(r, addr)

    async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername")
        try:
            for _ in range(1000):  # bounded messages per connection
                try:
                    hdr = await asyncio.wait_for(reader.readexactly(2), 30)
                    (n,) = struct.unpack("!H", hdr)
                    wire = await asyncio.wait_for(reader.readexactly(n), 30)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break
                replies = await loop.run_in_executor(None, dispatch, wire, peer, True)
                for r in replies:
                    writer.write(struct.pack("!H", len(r)) + r)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_tcp, host, port, reuse_address=True)
    transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
    svc._servers.extend([server, transport])
    return server, transport
