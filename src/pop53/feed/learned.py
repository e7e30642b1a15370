"""A server's learned resolvers, shared with the fleet (issue 13, "shareable across the fleet").

With `[feed] publish_key` and `[scoring] learn_window`, every time this server's learned table
changes it is signed with the server's own key and published as a `resolvers` message named
after the server (`[feed] name`).  Every other server applies it with its own learned table, its
file and the operator's published table (the union: pop53.feed.service.ServerSink).  A server's
key belongs in the others' `[feed] resolver_keys`, which are trusted for `resolvers` messages
only: a machine's key can never change a map or a target's liveness.

Publishing runs on its own thread (a NATS round trip must never hold the housekeeping thread);
only the newest table waits to be sent, and a failed publish is retried with a backoff."""
from __future__ import annotations

import logging
import threading

from pop53.feed.publisher import Publisher
from pop53.scoring.known import KnownPrefixes, format_known

log = logging.getLogger("pop53.feed")


class LearnedPublisher:
    def __init__(self, publisher: Publisher, name: str, *, retry: float = 2.0):
        self.publisher = publisher
        self.name = name
        self.retry = retry
        self.sent = 0                       # tables published (acknowledged by JetStream)
        self.failed = 0
        self._pending: KnownPrefixes | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="pop53-learned-pub", daemon=True)

    def start(self) -> "LearnedPublisher":
        self._thread.start()
        return self

    def offer(self, known: KnownPrefixes) -> None:
        """Called by the scoring service when its learned table changed (never blocks)."""
        with self._cond:
            self._pending = known
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._pending is not None)
                if self._stop:
                    return
                known = self._pending
                self._pending = None
            text = format_known(known, f"learned by {self.name}")
            try:
                self.publisher.send_sync("resolvers", self.name, text.encode())
            except Exception as exc:  # noqa: BLE001  (NATS down: keep the newest, retry)
                self.failed += 1
                delay = min(60.0, max(self.retry, delay * 2))
                log.warning("feed: learned resolvers not published (%s); retrying in %.0f s",
                            exc or type(exc).__name__, delay)
                with self._cond:
                    if self._pending is None:
                        self._pending = known
                    self._cond.wait_for(lambda: self._stop, timeout=delay)
                continue
            delay = 0.0
            self.sent += 1
            log.info("feed: published %d learned resolver prefix(es) as resolvers %s",
                     len(known), self.name)
