"""The feed inside `pop53 serve`: `[feed]` parsed, the server as the sink (map messages checked
exactly like map files, target messages set liveness, resolvers messages checked like the
`[scoring] known_resolvers` file and published with it), the last applied messages
restored from the state directory before NATS is reached, and the subscriber started."""
from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

from pop53.errors import ConfigError, Pop53Error
from pop53.feed.message import NAME_RE, KeyRing, read_private
from pop53.feed.publisher import Publisher, parse_target_payload
from pop53.feed.receiver import FeedSettings, Receiver
from pop53.feed.transport import Subscriber

log = logging.getLogger("pop53.feed")


class ServerSink:
    """Feeds a server: maps and liveness into its pop53.mapping.service.MappingState, the
    known-resolver table into its pop53.scoring.service.ScoringService."""

    def __init__(self, server):
        self.server = server
        self.state = server.mapping
        self.resolvers: dict = {}       # message name -> KnownPrefixes (the operator's, each server's)

    def validate(self, kind: str, name: str, payload: bytes, source: str):
        from pop53.mapping.mapfile import compile_map_bytes
        from pop53.mapping.snapshot import SnapshotBuilder

        if kind == "resolvers":
            from pop53.scoring.known import parse_known
            if self.server.scoring is None:
                raise Pop53Error(f"{source}: this server has no [scoring]")
            try:
                return parse_known(payload.decode("utf-8"), source)
            except UnicodeDecodeError as exc:
                raise Pop53Error(f"{source}: not UTF-8 text: {exc.reason}") from None
        if self.state is None:
            raise Pop53Error(f"{source}: this server has no [[map]] / [[target]]")
        cfg = self.state.cfg
        if kind == "target":
            if name not in self.state.live:
                raise Pop53Error(f"{source}: no [[target]] named {name!r}")
            return parse_target_payload(payload, source)
        m = cfg.maps.get(name)
        if m is None:
            raise Pop53Error(f"{source}: no [[map]] named {name!r}")
        table = compile_map_bytes(payload, source, m.default, m.regions)
        SnapshotBuilder(cfg, {**self.state.builder.tables, name: table})   # regions answerable
        return table

    def apply(self, kind: str, name: str, prepared) -> None:
        if kind == "resolvers":
            # one table per name (the operator's list, each server's learned prefixes): the
            # fleet's table is their union, so a server's update replaces only its own part
            self.resolvers[name] = prepared
            fleet = None
            for known in self.resolvers.values():
                fleet = known if fleet is None else fleet.union(known)
            self.server.scoring.install_feed(self.server, fleet)
        elif kind == "target":
            self.state.set_target(name, prepared)
        else:
            self.state.install(name, prepared)


def _list(doc: dict, key: str, file: str | None, required: bool) -> list[str]:
    v = doc.get(key, None if required else [])
    if v is None:
        raise ConfigError("missing", file=file, key=f"feed.{key}")
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError("must be a list of strings", file=file, key=f"feed.{key}")
    return v


def parse(doc: dict, file: str | None, base: str | None, state: str | None):
    """(servers, FeedSettings, KeyRing, nats stream) from [feed], or None without one."""
    f = doc.get("feed")
    if f is None:
        return None
    servers = _list(f, "servers", file, True)
    if not servers or not all(s.startswith(("nats://", "tls://")) for s in servers):
        raise ConfigError("give nats://HOST:PORT URLs", file=file, key="feed.servers")
    rel = (lambda p: str(Path(base) / p)) if base else (lambda p: p)
    keys = KeyRing.from_files([rel(p) for p in _list(f, "trusted_keys", file, True)],
                              [x if len(x) == 16 else rel(x) for x in _list(f, "revoked_keys", file, False)])
    if not keys.keys:
        raise ConfigError("no trusted key: nothing could be applied", file=file, key="feed.trusted_keys")
    nums = {}
    for k, default in (("delay", 0.0), ("stale_after", 30.0)):
        v = f.get(k, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError("must be a number >= 0", file=file, key=f"feed.{k}")
        nums[k] = float(v)
    v = f.get("consumer_heartbeat", 0.5)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.1 <= v <= 30:
        raise ConfigError("must be a number from 0.1 to 30 (seconds)", file=file,
                          key="feed.consumer_heartbeat")
    nums["consumer_heartbeat"] = float(v)
    strs = {}
    for k, default in (("stream", "pop53"), ("prefix", "pop53"), ("nats_stream", "POP53")):
        v = f.get(k, default)
        if not isinstance(v, str) or not v or " " in v:
            raise ConfigError("must be a non-empty word", file=file, key=f"feed.{k}")
        strs[k] = v
    keys = keys.limited([rel(p) for p in _list(f, "resolver_keys", file, False)],
                        frozenset({"resolvers"}), key="feed.resolver_keys")
    settings = FeedSettings(stream=strs["stream"], prefix=strs["prefix"], state=state, **nums)
    return servers, settings, keys, strs["nats_stream"]


def publishing(doc: dict, file: str | None, base: str | None) -> tuple[object, str] | None:
    """([feed] publish_key's private key, this server's name) or None: the server publishes
    its learned resolvers (pop53.feed.learned)."""
    f = doc.get("feed") or {}
    path = f.get("publish_key")
    if path is None:
        return None
    if not isinstance(path, str) or not path:
        raise ConfigError("must be a path", file=file, key="feed.publish_key")
    name = f.get("name", re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "server")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{name!r}: use 1-64 letters, digits, '-' and '_'", file=file, key="feed.name")
    try:
        key = read_private(str(Path(base) / path) if base else path)
    except ConfigError as exc:
        raise ConfigError(str(exc), file=file, key="feed.publish_key") from None
    scoring = doc.get("scoring")
    if not isinstance(scoring, dict) or not scoring.get("learn_window"):
        raise ConfigError("publishes learned resolvers: set [scoring] learn_window too",
                          file=file, key="feed.publish_key")
    return key, name


def attach(server) -> Subscriber | None:
    """Start the feed for a server whose mapping is attached.  Saved messages are applied first
    (a restart with NATS down serves the last good data, and reports itself stale)."""
    cfg = server.config
    base = str(Path(cfg.source).parent) if getattr(cfg, "source", None) else None
    parsed = parse(cfg.doc, cfg.source, base, cfg.state)
    if parsed is None:
        return None
    if server.mapping is None and server.scoring is None:
        raise ConfigError("a [feed] carries maps, liveness and known resolvers: configure "
                          "[[map]], [[target]] and [[mapped]], or [scoring], first",
                          file=cfg.source, key="feed")
    servers, settings, keys, nats_stream = parsed
    pub = publishing(cfg.doc, cfg.source, base)
    receiver = Receiver(settings, keys, ServerSink(server))
    n = receiver.restore()
    if n:
        log.info("feed: %d saved message(s) restored from %s", n, cfg.state)
    sub = Subscriber(servers, receiver, stream=nats_stream).start()
    if pub is not None and server.scoring is not None and server.scoring.learner is not None:
        from pop53.feed.learned import LearnedPublisher
        publisher = Publisher(servers, pub[0], stream=settings.stream, prefix=settings.prefix,
                              nats_stream=nats_stream, sender=pub[1])
        sub.learned = LearnedPublisher(publisher, pub[1]).start()
        server.scoring.on_learned = sub.learned.offer
        sub.on_stop.append(sub.learned.stop)
    return sub
