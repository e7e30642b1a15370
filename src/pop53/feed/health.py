"""`pop53 health`: probe targets from one place per PoP and publish their liveness, so N
nameservers do not each probe every target.

A target goes down after `fall` failed probes in a row and up after `rise` good ones
(hysteresis); its state starts as `initial` and is published at start, on every change, and
again every `republish` seconds (a lost message heals; receivers drop repeats by version only
when older).  Probes: `tcp` (connect), `http` (GET, expected status), `dns` (an answer with
the expected rcode)."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

import dns.asyncquery
import dns.message
import dns.rcode

from pop53.config import read_toml
from pop53.errors import ConfigError
from pop53.feed.message import NAME_RE, read_private
from pop53.feed.publisher import Publisher, target_payload

log = logging.getLogger("pop53.health")
KINDS = ("tcp", "http", "dns")


@dataclass
class Check:
    target: str
    kind: str
    address: str = ""            # host:port for tcp and dns
    url: str = ""                # for http
    status: int = 200            # http: the status that means up
    qname: str = "."             # dns
    qtype: str = "SOA"
    rcode: str = "NOERROR"
    timeout: float = 1.0
    initial: str = "up"


@dataclass
class HealthConfig:
    servers: list[str]
    key: str
    checks: list[Check]
    interval: float = 1.0
    rise: int = 2
    fall: int = 3
    republish: float = 30.0
    sender: str = field(default_factory=socket.gethostname)
    stream: str = "pop53"
    prefix: str = "pop53"


_TOP = {"servers", "key", "interval", "rise", "fall", "republish", "sender", "stream", "prefix"}
_CHECK = set(Check.__dataclass_fields__)


def load_config(path: str) -> HealthConfig:
    doc = read_toml(path)
    extra = sorted(set(doc) - {"health", "check"})
    if extra:
        raise ConfigError("unknown table (expected [health] and [[check]])", file=path, key=extra[0])
    h = doc.get("health", {})
    for k in sorted(set(h) - _TOP):
        raise ConfigError("unknown key", file=path, key=f"health.{k}")
    for k in ("servers", "key"):
        if k not in h:
            raise ConfigError("missing", file=path, key=f"health.{k}")
    checks = []
    for i, c in enumerate(doc.get("check", [])):
        where = f"check[{i}]"
        for k in sorted(set(c) - _CHECK):
            raise ConfigError("unknown key", file=path, key=f"{where}.{k}")
        try:
            chk = Check(**c)
        except TypeError as exc:
            raise ConfigError(str(exc), file=path, key=where) from None
        if not NAME_RE.match(str(chk.target)):
            raise ConfigError(f"invalid target name {chk.target!r}", file=path, key=f"{where}.target")
        if chk.kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}", file=path, key=f"{where}.kind")
        if chk.kind in ("tcp", "dns") and ":" not in chk.address:
            raise ConfigError("address must be HOST:PORT", file=path, key=f"{where}.address")
        if chk.kind == "http" and not chk.url.startswith("http://"):
            raise ConfigError("url must start with http://", file=path, key=f"{where}.url")
        if chk.initial not in ("up", "down"):
            raise ConfigError("initial must be up or down", file=path, key=f"{where}.initial")
        if any(x.target == chk.target for x in checks):
            raise ConfigError(f"target {chk.target!r} is checked twice", file=path,
                              key=f"{where}.target")
        checks.append(chk)
    if not checks:
        raise ConfigError("no [[check]]", file=path, key="check")
    cfg = HealthConfig(list(h["servers"]), str(h["key"]), checks,
                       **{k: h[k] for k in _TOP - {"servers", "key"} if k in h})
    if cfg.rise < 1 or cfg.fall < 1 or cfg.interval <= 0:
        raise ConfigError("rise and fall must be >= 1, interval > 0", file=path, key="health")
    return cfg


def _hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def probe(c: Check) -> bool:
    """One probe; True when the target answered as expected within its timeout."""
    try:
        if c.kind == "tcp":
            host, port = _hostport(c.address)
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), c.timeout)
            w.close()
            return True
        if c.kind == "http":
            rest = c.url[len("http://"):]
            hostport, _, path = rest.partition("/")
            host, port = _hostport(hostport) if ":" in hostport else (hostport, 80)
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), c.timeout)
            w.write(f"GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            line = await asyncio.wait_for(r.readline(), c.timeout)
            w.close()
            parts = line.split()
            return len(parts) >= 2 and parts[1] == str(c.status).encode()
        host, port = _hostport(c.address)
        q = dns.message.make_query(c.qname, c.qtype)
        a = await dns.asyncquery.udp(q, host, port=port, timeout=c.timeout)
        return a.rcode() == dns.rcode.from_text(c.rcode)
    except (OSError, asyncio.TimeoutError, ValueError, dns.exception.DNSException):
        return False


class Hysteresis:
    """Up after `rise` good probes in a row, down after `fall` bad ones."""

    def __init__(self, up: bool, rise: int, fall: int):
        self.up, self.rise, self.fall = up, rise, fall
        self.run = 0          # consecutive probes disagreeing with the current state

    def feed(self, ok: bool) -> bool:
        """Returns True when the state changed."""
        if ok == self.up:
            self.run = 0
            return False
        self.run += 1
        if self.run >= (self.rise if ok else self.fall):
            self.up, self.run = ok, 0
            return True
        return False


async def run(cfg: HealthConfig, *, rounds: int | None = None, publisher: Publisher | None = None) -> dict:
    """Probe every `interval`; publish on change and every `republish` seconds.  `rounds`
    bounds the loop (tests); returns the final states."""
    pub = publisher or Publisher(cfg.servers, read_private(cfg.key), stream=cfg.stream,
                                 prefix=cfg.prefix, sender=cfg.sender)
    states = {c.target: Hysteresis(c.initial == "up", cfg.rise, cfg.fall) for c in cfg.checks}
    sent: dict[str, float] = {}
    n = 0
    while rounds is None or n < rounds:
        t0 = time.monotonic()
        results = await asyncio.gather(*(probe(c) for c in cfg.checks))
        for c, ok in zip(cfg.checks, results):
            st = states[c.target]
            changed = st.feed(ok)
            if changed:
                log.info("health: %s is %s", c.target, "up" if st.up else "down")
            if changed or time.monotonic() - sent.get(c.target, -1e9) >= cfg.republish:
                try:
                    await pub.send("target", c.target, target_payload(st.up))
                    sent[c.target] = time.monotonic()
                except Exception as exc:  # noqa: BLE001  (NATS down: retried next round)
                    log.warning("health: cannot publish %s: %s", c.target, exc)
        n += 1
        if rounds is None or n < rounds:
            await asyncio.sleep(max(0.0, cfg.interval - (time.monotonic() - t0)))
    return {t: s.up for t, s in states.items()}
