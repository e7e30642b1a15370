"""Inbound transfers (RFC 1995 IXFR, RFC 5936 AXFR): the TCP reader, and the transaction
manager dns.xfr.Inbound writes into, which only collects (a new zone, or RFC 1995 steps)."""
from __future__ import annotations

import gc
import queue
import socket
import struct
import threading
import time
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.node
import dns.query
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.transaction
import dns.xfr
import dns.zone

from pop53.serve import dnstap
from pop53.xfr import journal as jr
from pop53.xfr.config import Peer
from pop53.xfr.versions import UpdateRejected

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA
AXFR = dns.rdatatype.AXFR
IXFR = dns.rdatatype.IXFR


class CollectTxn:
    """What dns.xfr.Inbound writes into.  For AXFR (replacement) it builds a fresh zone; for IXFR
    it records the operations in order and splits them into RFC 1995 steps on commit."""

    def __init__(self, mgr: "Collector", replacement: bool):
        self.mgr = mgr
        self.replacement = replacement
        self.count = 0
        if replacement:
            self.zone = jr.new_zone_like(mgr.base) if mgr.base is not None else \
                dns.zone.Zone(mgr.origin, IN, relativize=False)
        else:
            self.ops: list[tuple[str, dns.name.Name, dns.rdataset.Rdataset]] = []

    # a full transfer freezes what it has built every this many records (see _limit)
    FREEZE_EVERY = 200_000

    def _limit(self, n: int) -> None:
        before = self.count
        self.count += n
        if self.replacement and before // self.FREEZE_EVERY != self.count // self.FREEZE_EVERY:
            # A million-name transfer builds millions of objects, and every full collection on
            # the way walks all of them again (measured: 17 collections, ~35 s of a 180 s load).
            # Frozen objects are not walked; the settle after the compile reclaims any garbage.
            gc.freeze()
        limit = self.mgr.max_records if self.replacement else self.mgr.max_diff
        if self.count > limit:
            raise UpdateRejected(f"transfer of {self.mgr.origin} exceeds "
                                 f"{'[xfr] max_records' if self.replacement else '[xfr] max_diff'} "
                                 f"({limit})")

    def _check(self, name: dns.name.Name, rds: dns.rdataset.Rdataset) -> None:
        if rds.rdclass != IN:
            raise dns.exception.FormError(f"class {dns.rdataclass.to_text(rds.rdclass)} RR in transfer")
        if rds.rdtype in (dns.rdatatype.OPT, dns.rdatatype.TSIG, AXFR, IXFR, dns.rdatatype.ANY):
            raise dns.exception.FormError(f"meta type {dns.rdatatype.to_text(rds.rdtype)} in transfer")

    def add(self, name, rds):
        self._check(name, rds)
        self._limit(len(rds))
        if self.replacement:
            node = self.zone.nodes.get(name)
            if node is None:
                node = self.zone.nodes[name] = dns.node.Node()
            target = jr.rdataset_for(node, rds.rdtype, rds.covers)
            if dns.rdatatype.is_singleton(rds.rdtype) and len(set(target) | set(rds)) > 1:
                raise UpdateRejected(f"transfer of {self.mgr.origin} has two "
                                     f"{dns.rdatatype.to_text(rds.rdtype)} records at {name} "
                                     "(RFC 2181 §10.1)")
            target.update(rds)
        else:
            self.ops.append(("add", name, rds))

    def delete_exact(self, name, rds):
        self._check(name, rds)
        self._limit(len(rds))
        if self.replacement:
            raise dns.exception.FormError("delete in a full transfer")
        self.ops.append(("del", name, rds))

    def replace(self, name, rds):
        self._check(name, rds)
        if self.replacement:
            node = self.zone.nodes.get(name)
            if node is None:
                node = self.zone.nodes[name] = dns.node.Node()
            jr.put_rdataset(node, jr.plain_rdataset(rds))
        else:
            if rds.rdtype != SOA or name != self.mgr.origin:
                raise dns.exception.FormError("replace of a non-SOA in IXFR")
            self.ops.append(("soa", name, rds))

    def commit(self):
        if self.replacement:
            self.mgr.result = ("full", self.zone)
        else:
            self.mgr.result = ("steps", self._steps())

    def rollback(self):
        pass

    def _steps(self) -> tuple[jr.Diff, ...]:
        # Inbound reports, per step: deletions, the new SOA, additions; then the final SOA again.
        # An addition-phase that meets a deletion starts the next step (RFC 1995 §4).
        def rr(name, rds):
            return (name, rds.ttl, next(iter(rds)))

        old_soa = jr.soa_of(self.mgr.base)
        steps: list[jr.Diff] = []
        dels: list = []
        adds: list = []
        new_soa = None
        for op, name, rds in self.ops:
            if op == "del":
                if new_soa is not None:  # previous step complete
                    steps.append(jr.Diff(old_soa, new_soa, tuple(dels), tuple(adds)))
                    old_soa, new_soa, dels, adds = new_soa, None, [], []
                dels.extend((name, rds.ttl, rd) for rd in rds)
            elif op == "soa":
                if new_soa is not None:
                    steps.append(jr.Diff(old_soa, new_soa, tuple(dels), tuple(adds)))
                    old_soa, dels, adds = new_soa, [], []
                new_soa = rr(name, rds)
            else:
                if new_soa is None:
                    raise dns.exception.FormError("IXFR addition before the new SOA")
                adds.extend((name, rds.ttl, rd) for rd in rds)
        if new_soa is None:
            raise dns.exception.FormError("IXFR without an end SOA")
        last = jr.Diff(old_soa, new_soa, tuple(dels), tuple(adds))
        # The final SOA repeats the last step's new SOA: not a step of its own.
        if not (steps and not dels and not adds and last.new_serial == last.old_serial):
            steps.append(last)
        if not steps:
            raise dns.exception.FormError("empty IXFR")
        return tuple(steps)


class Collector(dns.transaction.TransactionManager):
    def __init__(self, origin: dns.name.Name, base: dns.zone.Zone | None, max_records: int, max_diff: int):
        self.origin = origin
        self.base = base
        self.max_records = max_records
        self.max_diff = max_diff
        self.result: tuple[str, Any] | None = None

    def reader(self):  # make_query is always given the serial explicitly
        raise NotImplementedError

    def writer(self, replacement: bool = False):
        if not replacement and self.base is None:
            raise dns.exception.FormError("incremental transfer without a base version")
        return CollectTxn(self, replacement)

    def origin_information(self):
        return (self.origin, False, self.origin)

    def get_class(self):
        return IN


class ReceiptClock:
    """RFC 8945 §5.2.3 checks a TSIG's time against the time the message was *received*.
    dnspython checks against `time.time()` at parse time, which for a large transfer (parsed
    minutes after it arrived) fails with BADTIME.  This stands in for the `time` module inside
    dns.message: a thread that sets `local.t` (our transfer parser, per message) gets that
    time; every other caller gets the real clock."""

    def __init__(self, real):
        self._real = real
        self.local = threading.local()

    def time(self):
        t = getattr(self.local, "t", None)
        return self._real.time() if t is None else t

    def __getattr__(self, name):
        return getattr(self._real, name)


def receipt_clock() -> ReceiptClock:
    clock = dns.message.time
    if not isinstance(clock, ReceiptClock):
        clock = dns.message.time = ReceiptClock(clock)
    return clock


# The receive buffer asked for before connecting (the kernel caps it at net.core.rmem_max): a
# primary that finds the window full for too long drops the transfer (Knot: tcp-io-timeout,
# 500 ms), and autotuning grows the window only as fast as a busy reader drains it.
RCVBUF = 4 << 20


def _connect(primary: Peer, timeout: float) -> socket.socket:
    err = None
    for family, kind, proto, _name, addr in socket.getaddrinfo(primary.host, primary.port, 0,
                                                              socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.settimeout(timeout)
            sock.connect(addr)
            return sock
        except OSError as exc:
            sock.close()
            err = exc
    raise err if err is not None else OSError(f"cannot resolve {primary.host}")


class _Stream:
    """A transfer's TCP connection: the query sent, then a reader thread that drains the socket
    into memory while messages are parsed, so a primary does not wait for a slow consumer (Knot
    drops a client that has not read for `tcp-io-timeout`, 500 ms by default, which a Python
    parser of a large zone always hits).  Iterating gives (time received, message) until the
    caller stops; a closed or silent connection raises."""

    def __init__(self, primary: Peer, wire: bytes, timeout: float, lifetime: float, max_bytes: int):
        self.deadline = time.monotonic() + lifetime
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.frames: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.thread = None
        self.received = 0        # message octets, as the sender logs them (xfr/translog.py)
        self.sock = _connect(primary, timeout)
        self.t0 = time.time()
        self.ends = (self.sock.getsockname()[:2], self.sock.getpeername()[:2])   # for dnstap
        self.zone = dnstap.qname_wire(wire)
        try:
            self.sock.sendall(struct.pack("!H", len(wire)) + wire)
            self._tap(wire, ())                 # dnstap: RESOLVER_QUERY (docs/dnstap.md)
            self.thread = threading.Thread(target=self._read, name="pop53-xfr-reader", daemon=True)
            self.thread.start()
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        total = 0
        try:
            f = self.sock.makefile("rb")
            while not self.stop.is_set():
                hdr = f.read(2)
                if len(hdr) < 2:
                    raise EOFError("EOF")
                (n,) = struct.unpack("!H", hdr)
                body = f.read(n)
                if len(body) < n:
                    raise EOFError("EOF inside a message")
                total += n + 2
                self.received += n
                if total > self.max_bytes:
                    raise UpdateRejected(f"transfer exceeds {self.max_bytes} octets "
                                         "([xfr] max_transfer_bytes)")
                self.frames.put((time.time(), body))
                self._tap(None, (body,))        # each message: RESOLVER_RESPONSE
        except BaseException as exc:  # handed to the parser; it decides
            self.frames.put(exc)

    def _tap(self, query, replies) -> None:
        if dnstap._current is not None:
            dnstap.control(dnstap.RESOLVER, True, *self.ends, query, replies, self.t0, self.zone)

    def __iter__(self):
        while True:
            remaining = min(self.timeout, self.deadline - time.monotonic())
            if remaining <= 0:
                raise dns.exception.Timeout("transfer lifetime exceeded")
            try:
                item = self.frames.get(timeout=remaining)
            except queue.Empty:
                raise dns.exception.Timeout(f"no message for {remaining:.1f} s") from None
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.thread is not None:
            self.thread.join(self.timeout)


def inbound_transfer(primary: Peer, txn_manager, query: dns.message.Message, serial: int | None,
                     timeout: float, lifetime: float, max_bytes: int) -> int:
    """AXFR/IXFR over TCP into `txn_manager` (dns.xfr.Inbound does the RFC 1995/5936 state
    machine and TSIG chaining, as in dns.query.inbound_xfr), read through a _Stream; returns
    the octets received."""
    stream = _Stream(primary, query.to_wire(), timeout, lifetime, max_bytes)
    clock = receipt_clock()
    try:
        rdtype = query.question[0].rdtype
        with dns.xfr.Inbound(txn_manager, rdtype, serial) as inbound:
            tsig_ctx = None
            first = True
            for received, body in stream:
                clock.local.t = received
                try:
                    r = dns.message.from_wire(body, keyring=query.keyring, request_mac=query.mac,
                                              xfr=True, origin=txn_manager.from_wire_origin(),
                                              tsig_ctx=tsig_ctx, multi=True, one_rr_per_rrset=True)
                finally:
                    clock.local.t = None
                if not query.is_response(r, xfr_continuation=not first):
                    raise dns.query.BadResponse
                first = False
                tsig_ctx = r.tsig_ctx
                if inbound.process_message(r):
                    break
    finally:
        stream.close()
    return stream.received
