"""DNS over TCP (RFC 7766): the data-plane loops, and the control plane's share of TCP.

Queries are answered by `_core.TcpLoop` (ext/tcp.pxi): `tcp_workers` threads, each an epoll
loop with the GIL released, sharing one `_core.TcpGroup` (the limits and counters).  They do
pipelining, half-close, the idle / incomplete-message / write timeouts, the global and
per-address connection limits and the per-connection query limit, with no Python object per
connection or per query.

A message for the control plane (NOTIFY, AXFR/IXFR, TSIG-signed) hands its whole connection
over: the loop passes the socket, the answers it already made and the unanswered bytes through
a ring and wakes this module's asyncio thread with a byte on a pipe.  From then on the
connection is served here, one message at a time, as before: control messages by the control
handler, other queries by `_core.Counters.answer`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading

from pop53 import _core
from pop53.serve import dnstap

log = logging.getLogger("pop53.tcp")


def _packed(peer) -> bytes | None:
    """The peer's address as 4 or 16 bytes (server cookies are bound to it)."""
    try:
        host = peer[0]
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%")[0])
    except (OSError, TypeError, IndexError):
        return None


class TcpCounters:
    """The counters of every TCP loop plus the handed-over connections, as one stats dict."""

    def __init__(self, tcp: "TcpServer"):
        self.tcp = tcp
        self.handed = _core.Counters()

    def stats(self) -> dict:
        parts = [lp.stats() for lp in self.tcp.loops] + [self.handed.stats()]
        out: dict = {"rcode": {}, "qtype": {}}
        for st in parts:
            for k, v in st.items():
                if isinstance(v, int):
                    out[k] = out.get(k, 0) + v
                else:
                    d = out.setdefault(k, {})
                    for kk, vv in v.items():
                        d[kk] = d.get(kk, 0) + vv
        out.update(self.tcp.group.stats())
        out["tcp_control_connections"] = self.tcp.handed_connections
        out["tcp_control_refused"] = self.tcp.control_refused
        return out


class TcpServer:
    def __init__(self, server, socks: list[socket.socket]):
        self.server = server
        self.socks = socks
        cfg = server.config
        self.group = _core.TcpGroup(
            max_connections=cfg.tcp_max_connections, max_per_ip=cfg.tcp_max_per_ip,
            max_queries=cfg.tcp_max_queries, idle_timeout=cfg.tcp_idle_timeout,
            message_timeout=cfg.tcp_message_timeout, busy_timeout=cfg.tcp_busy_timeout,
            write_timeout=cfg.tcp_write_timeout)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        control = getattr(server, "control_plane", server.control_handler) is not None
        self.loops = [_core.TcpLoop(self.group, [s.fileno() for s in socks], i, control, self._wake_w)
                      for i in range(cfg.tcp_workers)]
        self.counters = TcpCounters(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads: list[threading.Thread] = []
        self.handed_connections = 0       # connections now served here (handed over)
        self.control_refused = 0          # handoffs closed: tcp_max_control_connections
        self._ready = threading.Event()
        self._stopping = None

    @property
    def connections(self) -> int:
        return self.group.connections + self.handed_connections

    @property
    def refused_connections(self) -> int:
        return self.group.stats()["tcp_refused"]

    def start(self) -> None:
        for lp in self.loops:
            t = threading.Thread(target=lp.run, args=(self.server.shared, self.server.responder),
                                 name=f"pop53-tcp-{lp.index}", daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._run, name="pop53-tcp-control", daemon=True)
        t.start()
        self.threads.append(t)
        self._ready.wait(5)

    def stop(self) -> None:
        for lp in self.loops:
            lp.stop()
        if self.loop is not None and self._stopping is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass
        for t in self.threads:
            t.join(2)
        for lp in self.loops:
            for fd, *_ in lp.take_handoffs():
                os.close(fd)
        # close the wake pipe once, and only when its reader is gone: stop() may be called
        # again, and a descriptor number closed twice may by then belong to someone else
        if self._wake_r >= 0 and not any(t.is_alive() for t in self.threads):
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = -1

    # -- the control plane's connections (asyncio) ---------------------------------------------
    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._stopping = asyncio.Event()
        self.loop.add_reader(self._wake_r, self._take)
        self._ready.set()
        try:
            self.loop.run_until_complete(self._stopping.wait())
        finally:
            self.loop.remove_reader(self._wake_r)
            self.loop.close()

    def _take(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        limit = self.server.config.tcp_max_control_connections
        for lp in self.loops:
            for fd, _addr, out, rest, queries in lp.take_handoffs():
                if self.handed_connections >= limit:
                    # every one is a Python object and an asyncio task: a flood of NOTIFYs or
                    # signed queries must not grow them without bound (issue 15)
                    self.control_refused += 1
                    os.close(fd)
                    continue
                self.handed_connections += 1      # counted now: the task starts later
                self.loop.create_task(self._adopt(fd, out, rest, queries))

    async def _adopt(self, fd: int, out: bytes, rest: bytes, queries: int) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        reader = asyncio.StreamReader(limit=65536 + 2)
        reader.feed_data(rest)     # before the transport reads anything: order is kept
        try:
            try:
                transport, protocol = await self.loop.connect_accepted_socket(
                    lambda: asyncio.StreamReaderProtocol(reader), sock)
            except OSError:
                sock.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
            if out:
                writer.write(out)
            await self._handle(reader, writer, queries)
        finally:
            self.handed_connections -= 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      done: int) -> None:
        cfg = self.server.config
        peer = writer.get_extra_info("peername")
        ours = writer.get_extra_info("sockname")
        try:
            for _ in range(max(0, cfg.tcp_max_queries - done)):
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), cfg.tcp_idle_timeout)
                    (n,) = struct.unpack("!H", head)
                    msg = await asyncio.wait_for(reader.readexactly(n), cfg.tcp_message_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break           # EOF (possibly a half-close after the last query), idle, reset
                replies = self._answer(msg, peer)
                # dnstap: every message of a handed-over connection, AUTH_QUERY + AUTH_RESPONSE(s)
                dnstap.control(dnstap.AUTH, True, ours, peer, msg, replies)
                for reply in replies:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    def _answer(self, msg: bytes, peer) -> list[bytes]:
        image = self.server.current_image
        maps = self.server.shared.maps_holder
        act, reply = self.counters.handed.answer(
            image.view if image is not None else None, msg, self.server.responder, True,
            _packed(peer) if self.server.responder.cookies or maps is not None else None, maps)
        if act == _core.ACTION_CONTROL:
            handler = self.server.control_plane
            if handler is not None:
                try:
                    out = handler.handle_tcp(msg, peer)
                except Exception:
                    log.exception("control handler failed on a TCP message from %s", peer)
                    out = None
                if out is not None:
                    return list(out)
        return [reply] if reply is not None else []
