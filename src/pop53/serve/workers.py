"""The listening side: sockets, the UDP worker threads, the TCP server and the housekeeping
thread.

Workers are threads, one per core and listen address, each running the nogil batch loop of
`_core.Worker` over its own SO_REUSEPORT socket; they read the image published in the
`ImageSlot`.  What the data plane sets aside (NOTIFY, transfers, TSIG-signed queries) is taken
from each worker by the housekeeping thread and handed to the control plane.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from pop53 import _core
from pop53.config import Config, Listen
from pop53.serve import dnstap
from pop53.serve.imageslot import ImageSlot
from pop53.serve.sockets import _start_error, mtu_mode, tcp_socket, udp_socket

log = logging.getLogger("pop53.server")
HOUSEKEEPING_MS = 20        # the housekeeping round while something waits
CALLBACK_MS = 100           # ... while only callbacks are due (scoring: queue sizing, learning;
                            # 20 ms was ~0.8% of a core in Python, 0.1 us a query at 60k q/s)
IDLE_MS = 1000              # and with nothing to do (woken at once for anything new)


class Workers:
    def __init__(self, slot: ImageSlot, responder, limiter, scoring=None):
        self.slot = slot
        self.responder = responder
        self.limiter = limiter            # one RRL table for all UDP workers (TCP is never limited)
        self.scoring = scoring            # pop53.scoring.service.ScoringService or None
        self.stamp_every = 1              # seconds per stamped one (bind; 1: always)
        self.coalesce_us = 0              # pause after a small UDP batch (bind)
        self.workers: list[_core.Worker] = []
        self.udp_socks: list[socket.socket] = []
        self.tcp_socks: list[socket.socket] = []
        self.tcp = None
        self.xdp = None                   # pop53.serve.xdp.XdpService (its workers join these)
        self.threads: list[threading.Thread] = []
        self.housekeeping: list[Callable[[], None]] = []    # run every 100 ms (CALLBACK_MS)
        self._stop = threading.Event()
        # the housekeeping thread sleeps on this eventfd: a worker that sets a control message
        # aside, a retired image or map to reclaim, and stop() wake it (no 20 ms polling when
        # idle: each round cost ~0.15 ms of CPU, 50 times a second, loaded or not)
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        slot.wake = self.wake

    def readers(self) -> list:
        """Every loop that reads the published image: UDP workers and TCP loops."""
        return self.workers + (self.tcp.loops if self.tcp is not None else [])

    # -- sockets -------------------------------------------------------------------------------
    def bind(self, config: Config) -> None:
        # kernel receive stamps during one second in N (ext/kstamp.pxi); scoring with
        # kernel_stamps reads every batch's
        self.stamp_every = (config.receive_timestamp_every if config.receive_timestamps and
                            not self._kernel_stamps() else 1)
        # scoring's workers drain a priority socket and yield under a quota: no pause there
        self.coalesce_us = config.udp_coalesce_us if self.scoring is None else 0
        for addr in config.listen:
            try:
                self._bind(addr, config)
            except OSError as exc:
                raise _start_error(exc, f"cannot listen on {addr}") from None

    def _kernel_stamps(self) -> bool:
        return self.scoring is not None and self.scoring.kernel_stamps

    def _stamps_always(self, cfg: Config) -> bool:
        """SO_TIMESTAMPNS on the socket for good: stamping every batch.  A sampled worker asks
        with SO_TIMESTAMPING in its windows instead (ext/kstamp.pxi); a worker scored with
        kernel_stamps reads one stamp per full batch from the socket (SIOCGSTAMPNS,
        ext/udp_loop.pxi), which SO_TIMESTAMPNS would stop the kernel from keeping."""
        return cfg.receive_timestamps and self.stamp_every <= 1 and not self._kernel_stamps()

    def _bind(self, addr: Listen, cfg: Config) -> None:
        # with port 0 the first UDP socket picks the port and TCP and the rest of the group
        # follow it; if that port is taken for TCP, pick again
        for attempt in range(20):
            first = udp_socket(addr, self._stamps_always(cfg), cfg.edns_max)
            a = Listen(addr.host, first.getsockname()[1])
            try:
                tsock = tcp_socket(a)
                break
            except OSError as exc:
                first.close()
                if addr.port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        addr = a
        try:
            group = [first] + [udp_socket(addr, self._stamps_always(cfg), cfg.edns_max)
                               for _ in range(cfg.workers - 1)]
        except OSError:
            first.close()
            tsock.close()
            raise
        if self.scoring is not None and self.scoring.steer:
            # a priority socket per worker, for known resolvers only (pop53.scoring.steer)
            group += [udp_socket(addr, self._stamps_always(cfg), cfg.edns_max)
                      for _ in range(cfg.workers)]
            self.scoring.attach(group, cfg.workers)
        elif cfg.reuseport_bpf:
            from pop53.ecmp import reuseport
            reuseport.attach_cbpf(group[0], len(group))
        if self.scoring is not None:
            for i, s in enumerate(group):
                self.scoring.prepare_socket(s, priority=i >= cfg.workers)
            group = group[:cfg.workers]     # priority sockets belong to their workers (scoring)
        self.udp_socks.extend(group)
        self.tcp_socks.append(tsock)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listen address (ports resolved when 0 was given)."""
        return [s.getsockname()[:2] for s in self.tcp_socks]

    # -- threads -------------------------------------------------------------------------------
    def _thread(self, i: int, w, name: str | None = None) -> threading.Thread:
        return threading.Thread(target=w.run, args=(self.slot.shared, self.responder, self.limiter,
                                                    self.scoring and self.scoring.scorer),
                                name=name or f"pop53-udp-{i}", daemon=True)

    def start(self, server, control_plane: Callable[[], object],
              prepare: Callable[[], None] = lambda: None) -> None:
        """Run a worker per UDP socket, the TCP loops (pop53.serve.tcp, given the server whose
        image and control plane they use) and the housekeeping thread."""
        from pop53.serve.tcp import TcpServer

        self._control_plane = control_plane
        for i, s in enumerate(self.udp_socks):
            w = _core.Worker(s.fileno(), i, True)
            w.set_wake(self._wakefd)
            w.sample_stamps(self.stamp_every)
            w.set_coalesce(self.coalesce_us)
            if self.scoring is not None:
                self.scoring.worker(w, s)   # its priority socket, drained first
            self.workers.append(w)
            self.threads.append(self._thread(i, w))
        if server.xdp is not None:
            server.xdp.join(self)           # its workers and threads after the socket ones
        self.xdp = server.xdp
        self.tcp = TcpServer(server, self.tcp_socks)
        prepare()                           # every reader exists; no thread runs yet
        for t in self.threads:
            t.start()
        self.tcp.start()
        hk = threading.Thread(target=self._housekeeping, name="pop53-housekeeping", daemon=True)
        hk.start()
        self.threads.append(hk)

    def restart(self, responder, limiter, edns_max: int | None = None) -> None:
        """New answer settings from a config reload (identity, NSID, CHAOS, EDNS size, cookies;
        RRL): each UDP worker stops at a batch boundary and runs again with them, one at a
        time; its socket queues what arrives meanwhile, so no query is lost.  edns_max: the
        sockets' path-MTU mode follows it (sockets.mtu_mode)."""
        self.responder, self.limiter = responder, limiter
        if edns_max is not None:
            for s in self.udp_socks:
                mtu_mode(s, edns_max)
        for i, w in enumerate(self.workers):
            w.stop()
            self.threads[i].join(2)
            self.threads[i] = self._thread(i, w, self.threads[i].name)
            self.threads[i].start()

    def wake(self) -> None:
        try:
            if self._wakefd >= 0:
                os.eventfd_write(self._wakefd, 1)
        except OSError:
            pass                    # closed (stopped) or saturated: nothing to do

    def _housekeeping(self) -> None:
        poll = select.poll()
        poll.register(self._wakefd, select.POLLIN)
        pending = 0
        while not self._stop.is_set():
            # every 20 ms while something waits (holders to reclaim after two quiescent points
            # of every reader, XDP workers that do not wake us), every 100 ms for the callbacks
            # (scoring's queue sizing and learning); else only when woken
            busy = pending or self.xdp is not None
            if poll.poll(HOUSEKEEPING_MS if busy else CALLBACK_MS if self.housekeeping
                         else IDLE_MS):
                try:
                    os.eventfd_read(self._wakefd)
                except BlockingIOError:
                    pass
            if self._stop.is_set():
                break
            pending = self.slot.reclaim()
            for fn in self.housekeeping:
                fn()
            for i, w in enumerate(self.workers):
                for msg, addr in w.take_control():
                    self._control_udp(self.udp_socks[i] if i < len(self.udp_socks)
                                      else self.xdp.control_socket(addr), msg, addr)

    def _control_udp(self, sock: socket.socket, msg: bytes, rawaddr: bytes) -> None:
        peer = _sockaddr(rawaddr)
        try:
            reply = self._control_plane().handle_udp(msg, peer)
        except Exception:
            log.exception("control handler failed on a message from %s", peer)
            reply = None
        if reply is None:
            image = self.slot.current
            _act, reply = _core.answer(image.view if image else None, msg, self.responder, False)
        dnstap.control(dnstap.AUTH, False, sock.getsockname(), peer, msg, [reply] if reply else ())
        if reply:
            try:
                sock.sendto(reply, peer)
            except OSError:
                pass

    def stop(self, before_join: Callable[[], None] = lambda: None) -> None:
        self._stop.set()
        self.wake()
        for w in self.workers:
            w.stop()
        before_join()
        if self.tcp is not None:
            self.tcp.stop()
        deadline = time.monotonic() + 2
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.xdp is not None:
            self.xdp.close()                # detach the XDP programs
        for s in self.udp_socks + self.tcp_socks:
            try:
                s.close()
            except OSError:
                pass
        if self.scoring is not None:
            self.scoring.close()
        if self._wakefd >= 0 and not any(t.is_alive() for t in self.threads):
            # no worker can write to it any more (one still running keeps it open)
            self.slot.wake = lambda: None
            os.close(self._wakefd)
            self._wakefd = -1

    def stats(self) -> dict:
        total: dict = {}
        counters = [w.stats() for w in self.workers]
        if self.tcp is not None:
            counters.append(self.tcp.counters.stats())
        for c in counters:
            for k, v in c.items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
        return total


def _sockaddr(raw: bytes) -> tuple:
    family = struct.unpack_from("=H", raw, 0)[0]
    if family == socket.AF_INET:
        port = struct.unpack_from("!H", raw, 2)[0]
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6:
        port = struct.unpack_from("!H", raw, 2)[0]
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, 0, 0)
    raise ValueError(f"unknown address family {family}")
