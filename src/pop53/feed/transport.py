"""NATS JetStream, both ends.  The stream keeps the last message of every subject (maps are full
snapshots, liveness is a state), so a subscriber that starts, restarts or reconnects first gets
the current state of every subject, then every change, in order."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import nats
from nats.js.api import DeliverPolicy, StorageType, StreamConfig

from pop53.anycast import staleness
from pop53.feed.message import MAX_MESSAGE
from pop53.feed.receiver import Receiver
from pop53.xfr.metrics import metric

log = logging.getLogger("pop53.feed")
STATUS_FILE = "feed-status.json"


async def ensure_stream(js, name: str, prefix: str, replicas: int = 1) -> None:
    """The publisher's side: create the stream once (idempotent).  On a NATS cluster,
    `replicas` = 3 keeps it available with one node down (JetStream's Raft quorum)."""
    cfg = StreamConfig(name=name, subjects=[f"{prefix}.>"], max_msgs_per_subject=1,
                       storage=StorageType.FILE, max_msg_size=MAX_MESSAGE,
                       num_replicas=replicas)
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(cfg)


async def publish(servers: list[str], subj: str, wire: bytes, *, stream: str, prefix: str,
                  timeout: float = 10.0) -> int:
    """Publish one signed message and wait for JetStream's acknowledgement; returns its
    stream sequence number."""
    nc = await nats.connect(servers=servers, connect_timeout=timeout, max_reconnect_attempts=2,
                            allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=timeout)
        await ensure_stream(js, stream, prefix)
        ack = await js.publish(subj, wire, stream=stream)
        return ack.seq
    finally:
        await nc.close()


async def fetch_last(servers: list[str], subj: str, *, stream: str, timeout: float = 10.0
                     ) -> bytes | None:
    """The stream's last message on `subj` (the publisher's base for a map delta), or None."""
    nc = await nats.connect(servers=servers, connect_timeout=timeout, max_reconnect_attempts=2,
                            allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=timeout)
        try:
            return (await js.get_last_msg(stream, subj)).data
        except nats.js.errors.NotFoundError:
            return None
    finally:
        await nc.close()


class Subscriber:
    """A thread with its own event loop: connects (and reconnects, forever), follows the stream
    with an ordered consumer, hands every message to the Receiver, applies delayed messages when
    due and rewrites the staleness file the agent reads once a second."""

    def __init__(self, servers: list[str], receiver: Receiver, *, stream: str = "POP53"):
        self.servers = servers
        self.receiver = receiver
        self.stream = stream
        self.connected = False
        self.url: str | None = None          # HOST:PORT of the NATS server connected to
        self.learned = None                  # pop53.feed.learned.LearnedPublisher, if any
        self.on_stop: list = []              # called by stop(), before the thread is joined
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Subscriber":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="pop53-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for hook in self.on_stop:
            hook()
        if self._thread:
            self._thread.join(timeout)

    async def _main(self) -> None:
        tick = asyncio.create_task(self._ticker())
        while not self._stop.is_set():
            try:
                await self._follow()
            except Exception as exc:  # noqa: BLE001  (a broken connection is retried)
                log.warning("feed: %s; retrying", exc or type(exc).__name__)
            self.connected = False
            await asyncio.sleep(0.5)
        tick.cancel()

    async def _follow(self) -> None:
        async def disconnected():
            self.connected = False

        async def reconnected():
            self.connected = True
            self.url = str(nc.connected_url.netloc) if nc.connected_url else None

        async def error(exc):
            # one line, not the client's default traceback on stderr for every failed attempt
            log.debug("feed: NATS: %s", exc or type(exc).__name__)

        nc = await nats.connect(servers=self.servers, connect_timeout=2, reconnect_time_wait=0.2,
                                max_reconnect_attempts=-1, disconnected_cb=disconnected,
                                reconnected_cb=reconnected, error_cb=error)
        try:
            # A consumer lost with its node is found missing two to four idle heartbeats later
            # ([feed] consumer_heartbeat; nats-py checks every two) and recreated; an attempt
            # during an election fails after 2 s and the next check retries it (docs/feed.md).
            js = nc.jetstream(timeout=2)
            prefix = self.receiver.settings.prefix

            async def on_msg(m):
                self.receiver.receive(m.subject, m.data)

            await js.subscribe(f"{prefix}.>", stream=self.stream, cb=on_msg, ordered_consumer=True,
                               deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                               idle_heartbeat=self.receiver.settings.consumer_heartbeat)
            self.connected = True
            self.url = str(nc.connected_url.netloc) if nc.connected_url else None
            log.info("feed: following stream %s on %s", self.stream, ", ".join(self.servers))
            while not self._stop.is_set() and not nc.is_closed:
                await asyncio.sleep(0.1)
        finally:
            if not nc.is_closed:
                await nc.close()

    async def _ticker(self) -> None:
        while not self._stop.is_set():
            self.receiver.tick()
            self.write_status()
            await asyncio.sleep(min(1.0, max(0.05, self.receiver.settings.delay / 10 or 1.0)))

    def write_status(self, now: float | None = None) -> None:
        """<state>/feed-status.json in the transfer engine's format, so the agent's
        `xfr-status` staleness source reads it (the feed is one "zone" named `feed`)."""
        r = self.receiver
        now = time.time() if now is None else now
        age = r.age(now)
        metric("Gauge", "pop53_feed_age_seconds", "seconds since the feed's last heartbeat "
               "(-1: none yet)", ()).set(-1 if age is None else age)
        metric("Gauge", "pop53_feed_stale", "1 when the feed is stale (this machine should not "
               "serve)", ()).set(int(r.stale(now)))
        if not r.settings.state:
            return
        st = staleness.machine_status({"feed": {"last_ok": r.heartbeat, "connected": self.connected,
                                                "applied": dict(r.applied),
                                                "refused": dict(r.refused)}},
                                      role="delayed" if r.settings.delay > 0 else "normal",
                                      stale_after=r.settings.stale_after,
                                      delay=r.settings.delay, now=now)
        staleness.write_state(f"{r.settings.state}/{STATUS_FILE}", st)
