"""Scoring in a running server: the Scorer its UDP workers share, the known table published to
them (one atomic store, the old table retired with the images: freed once every worker has
passed a batch boundary), the kernel drop counter turned on, the counters summed."""
from __future__ import annotations

import logging
import os
import socket
import time

from pop53 import _core
from pop53.errors import Pop53Error
from pop53.scoring import learnstate
from pop53.scoring.known import KnownPrefixes, compile_table, read_known
from pop53.serve.sockets import RCVBUF

log = logging.getLogger("pop53.scoring")

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
DEFAULT_COST_NS = 1000.0      # work per query assumed until a worker has measured its own
# The priority socket's queue, in ms of work: room for the known resolvers' bursts, but spoofed
# known sources filling it must not queue seconds of work ahead of the real ones
PRIORITY_MS = 8.0
MAX_QUEUE = 4 << 20           # the priority queue's ceiling, as the kernel counts a buffer
# the normal queue's ceiling: what the server's own UDP sockets hold (they ask for RCVBUF, which
# the kernel doubles), so a scored server never queues less than a plain one.  Until session 21
# it was MAX_QUEUE, half of that: 2.5% fewer replies at full speed without an attack under the
# bench's half-core cap (bench/results/attack-s21/capacity-cap-ab*.md)
NORMAL_QUEUE = 2 * RCVBUF


def datagram_truesize() -> int:
    """What the kernel charges a receive buffer per small datagram (the skb's truesize, which
    SO_RCVBUF counts, not the payload): measured once on loopback by filling a small buffer."""
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
        w.setblocking(False)
        for _ in range(4000):
            try:
                w.sendto(b"\0" * 40, r.getsockname())
            except OSError:
                break
        n = 0
        while True:
            try:
                r.recv(64)
                n += 1
            except OSError:
                break
        return max(256, r.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // max(n, 1))
    except OSError:
        return 1024
    finally:
        r.close()
        w.close()


# a worker's scoring_stats() keys summed over the workers (ScoringService.stats): per class,
# plain counters, queue-delay histograms
_PER_CLASS = ("admitted", "dropped", "nx_dropped")
_SUMMED = ("lifted", "kernel_drops", "kernel_drops_priority", "overload_ticks", "delay_ticks",
           "untrusted", "nx_demoted", "nx_spared", "trusted_marks", "regained", "yields",
           "risk_ticks", "redirected", "overflow_ticks", "purged", "fresh_floods",
           "overflow_held", "prio_filled")
_HISTOGRAMS = ("queue_delay", "priority_wait", "priority_latency")


class ScoringService:
    def __init__(self, settings: dict, state: str | None = None):
        self.scorer = _core.Scorer(**settings["scorer"])
        self.path: str | None = settings["known_resolvers"]
        self.known = KnownPrefixes(frozenset(), frozenset())      # published: file + learned
        self.from_file = KnownPrefixes(frozenset(), frozenset())
        self.learned = KnownPrefixes(frozenset(), frozenset())
        self.from_feed = KnownPrefixes(frozenset(), frozenset())   # the fleet's, by the feed
        self.last_error: str | None = None
        self.steer = settings.get("steer", False)
        self.steer_cookies = settings.get("steer_cookies", True)   # the kernel's cookie check
        self.steer_idle = settings.get("steer_idle", True)        # the workers' wake words
        # the controller's queue delay from kernel receive stamps (else the workers' clocks)
        self.kernel_stamps = settings["scorer"].get("kernel_stamps", False)
        self.queue_bytes = settings.get("queue_bytes", 0)
        # a short queue only with the kernel stage: without it known resolvers share the normal
        # socket, and a short queue would have the kernel drop them with the flood
        self.queue_ms = settings.get("queue_ms", 0.0) if self.steer and not self.queue_bytes else 0.0
        # what the kernel charges per datagram: sizes the queues, and bounds how many the
        # priority queue holds (the workers' queue delay by the clock, ext/udp_recv.pxi)
        self.truesize = datagram_truesize() if self.queue_ms or self.steer else 0
        # the kernel stage: first socket of each steered group, its worker count, its first
        # worker's slot in the wake map
        self.groups: list[tuple[socket.socket, int, int]] = []
        self.steering = ""                               # "ebpf" or "cbpf" once attached
        self.priority: dict[int, socket.socket] = {}     # normal socket's fd -> its priority socket
        self.wake_slot: dict[int, int] = {}              # normal socket's fd -> its wake slot
        self.wake_map = None         # the workers' wake words (ebpf.WakeMap), with steer_idle
        self.woken: set[int] = set()                     # groups (first slot) keeping them
        self.sized: dict[int, int] = {}                  # normal socket's fd -> SO_RCVBUF asked
        self._next_sizing = 0.0
        self.trust_map = None        # the kernel stage's trust bits (ebpf.TrustMap), with steer
        self.cookie_keys = None      # its server-cookie secrets (ebpf.CookieKeys), with cookies
        self.names = None            # its name filter (ebpf_relay.NameFilter), with the trust map
        if self.steer:
            from pop53.scoring import ebpf
            try:
                self.trust_map = ebpf.TrustMap()
                self.scorer.use_trust_buffer(self.trust_map.buf)
            except ebpf.EbpfUnavailable as exc:
                log.info("no trust map for the kernel stage (%s): known prefixes steered whole", exc)
            if self.trust_map is not None and settings.get("steer_names", True):
                from pop53.scoring.ebpf_relay import NameFilter
                try:
                    self.names = NameFilter()
                except ebpf.EbpfUnavailable as exc:
                    log.info("no name filter for the kernel stage (%s): relays' random names "
                             "reach the priority socket", exc)
            if self.steer_idle:
                try:
                    self.wake_map = ebpf.WakeMap()
                except ebpf.EbpfUnavailable as exc:
                    log.info("no wake words for the kernel stage (%s): workers poll", exc)
        from pop53.scoring.aging import TrustAging
        aging = settings.get("aging") or {"trust_ttl": 86400.0, "strict_calm": 600.0}
        self.aging = TrustAging(self.scorer, **aging)
        self._next_aging = 0.0
        self.learner = None
        self.on_learned = None            # called with each new learned table (the feed's publisher)
        if settings.get("learn"):
            from pop53.scoring.learn import Learner
            self.learner = Learner(self.scorer, **settings["learn"])
        # the learner's history survives a restart in the state directory (learnstate.py)
        self.learn_path = None
        if self.learner is not None and state:
            self.learn_path = os.path.join(state, learnstate.FILE)
            if learnstate.load(self.learn_path, self.learner):
                self.learned = self.learner.learned()
        self._saved = 0

    def housekeeping(self, server) -> None:
        """Called by the server's housekeeping thread: queue sizing, learning windows."""
        if self.queue_ms and time.monotonic() >= self._next_sizing:
            self._next_sizing = time.monotonic() + 1.0
            for i, w in enumerate(server.workers):
                if i < len(server.net.udp_socks):
                    cost = w.scoring_stats()["cost_ns"]
                    self.size_queue(server.net.udp_socks[i], cost)
                    prio = self.priority.get(server.net.udp_socks[i].fileno())
                    if prio is not None:
                        self.size_queue(prio, cost, PRIORITY_MS, priority=True)
        if time.monotonic() >= self._next_aging:        # once a second: stats build dicts
            self._next_aging = time.monotonic() + 1.0
            self.aging.step(sum(w.scoring_stats()["overload_ticks"] for w in server.workers))
        if self.learner is None:
            return
        learned = self.learner.step(server.workers)
        if self.learn_path and self.learner.closed != self._saved:
            self._saved = self.learner.closed
            try:
                learnstate.save(self.learn_path, self.learner)
            except OSError as exc:
                log.error("cannot save the learned resolvers to %s: %s", self.learn_path, exc)
        if learned is not None and learned != self.learned:
            self.learned = learned
            self.publish(server, self.from_file.union(learned).union(self.from_feed))
            log.info("learned %d known resolver prefix(es)", len(learned))
            if self.on_learned is not None:
                self.on_learned(learned)

    def prepare_socket(self, sock: socket.socket, priority: bool = False) -> None:
        """With kernel_stamps a priority socket gets each datagram's kernel receive time
        (SO_TIMESTAMPNS: the controller's priority wait, the known resolvers' latency per
        reply); a normal socket none (its worker reads one stamp per full batch with
        SIOCGSTAMPNS, the drop counters once a tick: ext/udp_loop.pxi).  Without, both are
        stamped as the server's other UDP sockets are ([server] receive_timestamps, sampled).
        Bound a normal socket's queue to `queue_bytes` (a queue longer than a few ms of work only
        delays answers under a flood); a priority socket keeps the server's default."""
        if priority and self.kernel_stamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if self.queue_bytes and not priority:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.queue_bytes)
        elif self.queue_ms:
            self.size_queue(sock, 0.0, PRIORITY_MS if priority else self.queue_ms, priority)

    def queue_for(self, cost_ns: float, ms: float | None = None, priority: bool = False) -> int:
        """The receive buffer (as the kernel counts it) holding `ms` (default `queue_ms`) of work
        at `cost_ns` per query (0: not measured yet), within 64 datagrams and NORMAL_QUEUE (a
        priority socket's: MAX_QUEUE)."""
        ms = self.queue_ms if ms is None else ms
        datagrams = ms * 1e6 / (cost_ns if cost_ns > 0 else DEFAULT_COST_NS)
        return int(min(MAX_QUEUE if priority else NORMAL_QUEUE, max(64, datagrams) * self.truesize))

    def size_queue(self, sock: socket.socket, cost_ns: float, ms: float | None = None,
                   priority: bool = False) -> None:
        """Size a socket's queue to `ms` (default `queue_ms`) of its worker's measured work: long
        enough to ride out the worker's scheduling stalls (a CPU quota's gap, a preemption)
        without dropping answers at its capacity, short enough that under a flood what is
        answered is at most that stale.  Re-set only when the size moves by more than a quarter."""
        want = self.queue_for(cost_ns, ms, priority)
        fd = sock.fileno()
        old = self.sized.get(fd, 0)
        if fd < 0 or (old and abs(want - old) * 4 < old):
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, max(2304, want // 2))  # the kernel doubles it
            self.sized[fd] = want
        except OSError:
            pass

    def watch_images(self, slot) -> None:
        """Refill the name filter from each image published (and from the one published now,
        if any), in its own thread: publishing does not wait for it."""
        if self.names is None:
            return
        slot.listeners.append(lambda image, _changed=None: self.names.follow(image.view))
        with slot.lock:
            self.names.follow(slot.current.view if slot.current is not None else None)

    @property
    def trust_fd(self) -> int:
        return self.trust_map.fd if self.trust_map is not None else -1

    def worker(self, w, sock: socket.socket) -> None:
        """Give a new worker its priority socket (drained before every batch of `sock`)."""
        prio = self.priority.get(sock.fileno())
        if prio is not None:
            slot = self.wake_slot.get(sock.fileno(), -1)
            if slot >= 0:
                w.set_priority(prio.fileno(), self.wake_map.buf, slot, self.truesize)
            else:
                w.set_priority(prio.fileno(), truesize=self.truesize)

    def set_cookie_secrets(self, current: bytes | None, previous: bytes | None) -> None:
        """The secrets of the kernel stage's server-cookie check ([server] cookie_secret and
        cookie_secret_previous; None: cookies off, and every address's cookie bit is cleared,
        so no address waits for a cookie it can no longer get).  At start, before attach, and
        at each config reload."""
        if self.trust_map is None or not self.steer_cookies:
            return
        if current is None:
            self.scorer.clear_cookies()
            if self.cookie_keys is not None:
                self.cookie_keys.set(bytes(16), None)
            return
        fresh = self.cookie_keys is None
        if fresh:
            from pop53.scoring import ebpf
            try:
                self.cookie_keys = ebpf.CookieKeys()
            except ebpf.EbpfUnavailable as exc:
                log.info("no server-cookie check in the kernel stage (%s)", exc)
                return
        self.cookie_keys.set(current, previous)
        if fresh:
            for sock, workers, first in self.groups:      # cookies turned on by a reload
                self._attach(sock, workers, first, self.known)

    def close(self) -> None:
        if self.cookie_keys is not None:
            self.cookie_keys.close()
        if self.trust_map is not None:
            self.trust_map.close()
        if self.names is not None:
            self.names.close()
        if self.wake_map is not None:
            self.wake_map.close()
        for s in self.priority.values():
            try:
                s.close()
            except OSError:
                pass

    def _attach(self, sock: socket.socket, workers: int, first: int, known: KnownPrefixes) -> None:
        """(Re)attach a group's program.  Its wake words say whether the program now attached
        keeps them (WAKE_ON): a worker waits in its normal socket's receive only then."""
        from pop53.scoring import steer
        wake = None
        if self.wake_map is not None and first + workers <= self.wake_map.slots:
            wake = (self.wake_map.fd, first)
        self.steering, kept = steer.attach(
            sock, workers, known.v4, known.v6, self.trust_fd,
            self.cookie_keys.fd if self.cookie_keys is not None else -1, wake,
            self.names.fd if self.names is not None else -1)
        if wake is not None and kept != (first in self.woken):
            _core.wake_switch(self.wake_map.buf, first, workers, kept)
            if kept:
                self.woken.add(first)
            else:
                self.woken.discard(first)

    def attach(self, group: list[socket.socket], workers: int) -> None:
        """Steer this group's known resolvers to its second block of sockets (steer.py)."""
        first = sum(n for _s, n, _f in self.groups)
        self._attach(group[0], workers, first, self.known)
        self.groups.append((group[0], workers, first))
        for k in range(workers):
            self.priority[group[k].fileno()] = group[workers + k]
            if first in self.woken:
                self.wake_slot[group[k].fileno()] = first + k

    def publish(self, server, known: KnownPrefixes) -> None:
        """Compile and publish `known` to the server's workers; retire the previous table."""
        table = compile_table(known) if known else None
        with server.slot.lock:
            old = self.scorer.holder
            self.scorer.publish(table)
            self.known = known
            for sock, workers, first in self.groups:
                self._attach(sock, workers, first, known)
            if old is not None:
                server.slot.retire(old)

    def load(self, server, *, strict: bool) -> bool:
        """(Re)read the known-resolvers file and publish it.  strict (at start): a bad file is
        an error; else (reload) it is logged and the previous table keeps serving."""
        try:
            known = read_known(self.path) if self.path else KnownPrefixes(frozenset(), frozenset())
        except Pop53Error as exc:
            self.last_error = str(exc)
            if strict:
                raise
            log.error("known resolvers not reloaded, the previous table stays: %s", exc)
            return False
        self.last_error = None
        self.from_file = known
        known = known.union(self.learned).union(self.from_feed)
        if known != self.known:
            self.publish(server, known)
            log.info("known resolvers: %d IPv4 /24s, %d IPv6 /56s", len(known.v4), len(known.v6))
        return True

    def install_feed(self, server, known: KnownPrefixes) -> None:
        """The fleet's known-resolver table from the metadata feed (checked like the file),
        published with the file's and the learned prefixes."""
        self.from_feed = known
        self.publish(server, self.from_file.union(self.learned).union(known))
        log.info("known resolvers from the feed: %d IPv4 /24s, %d IPv6 /56s", len(known.v4),
                 len(known.v6))

    @staticmethod
    def stats(workers) -> dict:
        """The workers' scoring counters summed; the controller level and shares: the highest
        level of any worker and the matching shares."""
        hist = len(_core.QUEUE_DELAY_BOUNDS_US) + 1
        total: dict = {"level": 0.0, "share": {}, "workers": [],
                       **{k: {} for k in _PER_CLASS}, **{k: 0 for k in _SUMMED},
                       **{k: [0] * hist for k in _HISTOGRAMS}}
        for w in workers:
            st = w.scoring_stats()
            total["workers"].append(st)
            for k in _PER_CLASS:
                for c, v in st[k].items():
                    total[k][c] = total[k].get(c, 0) + v
            for k in _SUMMED:
                total[k] += st[k]
            for k in _HISTOGRAMS:
                total[k] = [a + b for a, b in zip(total[k], st[k])]
            if st["level"] >= total["level"]:
                total["level"], total["share"] = st["level"], st["share"]
        return total
