"""Scoring in a running server: the Scorer its UDP workers share, the known table published to
them (one atomic store, the old table retired with the images: freed once every worker has
passed a batch boundary), the kernel drop counter turned on, the counters summed."""
from __future__ import annotations

import logging
import socket

from pop53 import _core
from pop53.errors import Pop53Error
from pop53.scoring.known import KnownPrefixes, compile_table, read_known

log = logging.getLogger("pop53.scoring")

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)


class ScoringService:
    def __init__(self, settings: dict):
        self.scorer = _core.Scorer(**settings["scorer"])
        self.path: str | None = settings["known_resolvers"]
        self.known = KnownPrefixes(frozenset(), frozenset())      # published: file + learned
        self.from_file = KnownPrefixes(frozenset(), frozenset())
        self.learned = KnownPrefixes(frozenset(), frozenset())
        self.from_feed = KnownPrefixes(frozenset(), frozenset())   # the fleet's, by the feed
        self.last_error: str | None = None
        # the kernel stage: first socket of each steered group and its worker count
        self.steer = settings.get("steer", False)
        self.queue_bytes = settings.get("queue_bytes", 0)
        self.groups: list[tuple[socket.socket, int]] = []
        self.learner = None
        if settings.get("learn"):
            from pop53.scoring.learn import Learner
            self.learner = Learner(self.scorer, **settings["learn"])

    def housekeeping(self, server) -> None:
        """Called by the server's housekeeping thread: learning windows."""
        if self.learner is None:
            return
        learned = self.learner.step(server.workers)
        if learned is not None and learned != self.learned:
            self.learned = learned
            self.publish(server, self.from_file.union(learned).union(self.from_feed))
            log.info("learned %d known resolver prefix(es)", len(learned))

    def prepare_socket(self, sock: socket.socket, priority: bool = False) -> None:
        """Ask the kernel for its drop counter with each datagram (the controller's input);
        bound a normal socket's queue to `queue_bytes` (a queue longer than a few ms of work
        only delays answers under a flood); a priority socket keeps the server's default."""
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        if self.queue_bytes and not priority:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.queue_bytes)

    def attach(self, group: list[socket.socket], workers: int) -> None:
        """Steer this group's known resolvers to its second block of sockets (steer.py)."""
        from pop53.scoring import steer
        steer.attach(group[0], workers, self.known.v4)
        self.groups.append((group[0], workers))

    def publish(self, server, known: KnownPrefixes) -> None:
        """Compile and publish `known` to the server's workers; retire the previous table."""
        table = compile_table(known) if known else None
        with server.slot.lock:
            old = self.scorer.holder
            self.scorer.publish(table)
            self.known = known
            if self.groups:
                from pop53.scoring import steer
                for sock, workers in self.groups:
                    steer.attach(sock, workers, known.v4)
            if old is not None:
                server.slot.retire(old)

    def load(self, server, *, strict: bool) -> bool:
        """(Re)read the known-resolvers file and publish it.  strict (at start): a bad file is
        an error; else (reload) it is logged and the previous table keeps serving."""
        if not self.path:
            return True
        try:
            known = read_known(self.path)
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
        total: dict = {"admitted": {}, "dropped": {}, "lifted": 0, "kernel_drops": 0,
                       "overload_ticks": 0, "level": 0.0, "share": {}, "workers": []}
        for w in workers:
            st = w.scoring_stats()
            total["workers"].append(st)
            for k in ("admitted", "dropped"):
                for c, v in st[k].items():
                    total[k][c] = total[k].get(c, 0) + v
            for k in ("lifted", "kernel_drops", "overload_ticks"):
                total[k] += st[k]
            if st["level"] >= total["level"]:
                total["level"], total["share"] = st["level"], st["share"]
        return total
