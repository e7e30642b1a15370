"""DNS over TCP (RFC 7766) on the same answer path as UDP.

Length-framed messages; several queries pipelined on one connection (each answered as soon as
it is read); a client that half-closes after sending still gets every answer; idle timeout,
per-connection query limit and a global connection limit; answers up to 65535 bytes, never
truncated.  The sockets are plain listening sockets (no TCP Fast Open), so no data is processed
before the handshake completes.  Runs an asyncio loop in its own thread; the answer itself runs
in C with the GIL released.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading

from pop53 import _core

log = logging.getLogger("pop53.tcp")


def _packed(peer) -> bytes | None:
    """The peer's address as 4 or 16 bytes (server cookies are bound to it)."""
    try:
        host = peer[0]
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%")[0])
    except (OSError, TypeError, IndexError):
        return None


class TcpServer:
    def __init__(self, server, socks: list[socket.socket]):
        self.server = server
        self.socks = socks
        self.counters = _core.Counters()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.connections = 0
        self.refused_connections = 0
        self._servers = []
        self._ready = threading.Event()
        self._stopping = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="pop53-tcp", daemon=True)
        self.thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._stopping = asyncio.Event()

        async def main():
            for s in self.socks:
                self._servers.append(await asyncio.start_server(self._handle, sock=s, limit=65536 + 2))
            self._ready.set()
            await self._stopping.wait()
            for srv in self._servers:
                srv.close()
            for srv in self._servers:
                try:
                    await asyncio.wait_for(srv.wait_closed(), 0.5)
                except (asyncio.TimeoutError, Exception):
                    pass

        try:
            self.loop.run_until_complete(main())
        finally:
            self.loop.close()

    def stop(self) -> None:
        if self.loop is not None and self._stopping is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass
        if self.thread is not None:
            self.thread.join(2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.server.config
        if self.connections >= cfg.tcp_max_connections:
            self.refused_connections += 1
            writer.close()
            return
        self.connections += 1
        peer = writer.get_extra_info("peername")
        try:
            for _ in range(cfg.tcp_max_queries):
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), cfg.tcp_idle_timeout)
                    (n,) = struct.unpack("!H", head)
                    msg = await asyncio.wait_for(reader.readexactly(n), cfg.tcp_idle_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break           # EOF (possibly a half-close after the last query), idle, reset
                for reply in self._answer(msg, peer):
                    writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.connections -= 1
            try:
                writer.close()
            except Exception:
                pass

    def _answer(self, msg: bytes, peer) -> list[bytes]:
        image = self.server.current_image
        maps = self.server.shared.maps_holder
        act, reply = self.counters.answer(image.view if image is not None else None, msg,
                                          self.server.responder, True,
                                          _packed(peer) if self.server.responder.cookies or
                                          maps is not None else None, maps)
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
