"""Metadata refresh: secondary zones over NOTIFY/IXFR/AXFR with TSIG, and serving our own zones.

Protocols (dnspython does the message work):
  RFC 1034 §4.3.5  SOA refresh/retry/expire timers        RFC 1982  serial arithmetic
  RFC 1995         IXFR (incremental transfer)            RFC 5936  AXFR
  RFC 1996         NOTIFY                                 RFC 8945  TSIG

The engine (`XfrService`) runs on one asyncio loop (its own thread via `start()`, or the server's
loop via `await run()`).  Its interface to the server is small (docs/xfr.md):

  publish(zone_name: str, version: ZoneVersion | None) -> None
      called (from a worker thread, one call at a time) for every version that should be served;
      `None` means the zone expired and must answer SERVFAIL.  It compiles and swaps the image; if
      it raises Pop53Error the update is rejected and the previous version keeps serving.

  handle_tcp_query(wire, peer) -> list[bytes] | None    AXFR/IXFR out (None: not an XFR query)
  handle_notify(wire, peer) -> bytes | None             NOTIFY in (None: not a NOTIFY / drop)
  handle_query(wire, peer) -> bytes | None              SOA of our zones (for our secondaries'
                                                        refresh checks, TSIG-aware); None: not ours
  set_local_zone(name, zone)                            a zone we are primary for (file zones):
                                                        journaled, served, NOTIFY sent on change
  status() -> dict                                      staleness/expiry (pop53.anycast.staleness)

Input safety (the lecture's "That's one of ours!"): a control message must be signed with the
zone's key and well formed; anything else is refused, counted (`stats`, Prometheus) and logged
with its sender.  An update is validated with the same checks as a zone file, then published;
an update that fails anywhere is rejected and nothing already serving changes.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import gc
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.renderer
import dns.rdtypes.ANY.TSIG
import dns.transaction
import dns.tsig
import dns.xfr
import dns.zone

from pop53.xfr import journal as jr
from pop53.anycast import staleness
from pop53.config import parse_listen
from pop53.errors import ConfigError, Pop53Error, ZoneError
from pop53.xfr.isolate import run_in_fork

log = logging.getLogger("pop53.xfr")

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA
AXFR = dns.rdatatype.AXFR
IXFR = dns.rdatatype.IXFR

# RFC 8945 §6: HMAC-MD5 is deprecated and SHA-1 discouraged; we accept SHA-1 for old peers but
# never MD5.
ALGORITHMS = {
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
TSIG_FUDGE = 300  # RFC 8945 §10: 300 s recommended


class UpdateRejected(Pop53Error):
    """A zone update failed validation, compile or a size limit; the old version keeps serving."""


# =============================================================================================
# Configuration
# =============================================================================================

@dataclasses.dataclass(frozen=True)
class Peer:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class KeyConf:
    name: dns.name.Name
    algorithm: dns.name.Name
    secret: bytes

    def tsig_key(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, self.algorithm)


@dataclasses.dataclass(frozen=True)
class ZoneConf:
    name: dns.name.Name
    primaries: tuple[Peer, ...] = ()
    key: KeyConf | None = None
    notify: tuple[Peer, ...] = ()
    allow_transfer: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def secondary(self) -> bool:
        return bool(self.primaries)

    def transfer_allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.allow_transfer)

    def is_primary(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(ipaddress.ip_address(p.host) == addr for p in self.primaries)


@dataclasses.dataclass(frozen=True)
class XfrConfig:
    state: Path | None = None
    zones: tuple[ZoneConf, ...] = ()
    keys: tuple[KeyConf, ...] = ()
    role: str = "normal"              # "normal" | "delayed" (paper §4.2.3)
    delay: float = 0.0                # input-delayed role: apply every update this much later
    stale_after: float = 3600.0       # a zone older than this makes the machine stale (§4.2.2)
    max_records: int = 5_000_000      # an update making a zone larger is rejected
    max_diff: int = 1_000_000         # an IXFR with more RRs than this is rejected
    max_transfer_bytes: int = 1 << 30  # a transfer stream larger than this is cut off
    journal_keep: int = 100           # journal records kept per zone (IXFR served from them)
    timeout: float = 10.0             # per message, SOA checks and transfers
    transfer_lifetime: float = 300.0  # whole transfer
    min_refresh: float = 1.0          # floor under SOA refresh/retry (a 0 would spin)
    notify_retries: int = 5           # RFC 1996 §3.6
    status_interval: float = 1.0      # how often the state file is rewritten
    compact_growth: float = 1.25      # a patched image is compacted past this x the last compile


def parse_peer(text: Any, key: str, file: str | None) -> Peer:
    """"ADDRESS[:PORT]" / "[V6]:PORT" of a primary or secondary (default port 53; no names)."""
    addr = parse_listen(text, key, file)
    if addr.port == 0:
        raise ConfigError(f"bad port in {text!r}", file=file, key=key)
    return Peer(addr.host, addr.port)


def _number(doc: dict, name: str, default, key: str, file, *, minimum=0, integer=False):
    if name not in doc:
        return default
    v = doc[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ConfigError(f"expected a{'n integer' if integer else ' number'}, got {v!r}",
                          file=file, key=f"{key}.{name}")
    if v < minimum:
        raise ConfigError(f"must be at least {minimum}, got {v}", file=file, key=f"{key}.{name}")
    return v


ZONE_KEYS = frozenset({"name", "primaries", "key", "notify", "allow_transfer"})


def _server_zone_keys() -> frozenset:
    try:
        from pop53.config import ZONE_KEYS as server_keys
    except ImportError:
        server_keys = {"file"}
    return frozenset(server_keys)


def parse_xfr_config(doc: dict, file: str | None = None) -> XfrConfig:
    """The xfr part of the server's TOML (already parsed into a dict).  Keys:

    [server] state          directory for snapshots, journals, the status file
    [xfr] role, delay, stale_after, max_records, max_diff, journal_keep, timeout,
          transfer_lifetime, min_refresh, notify_retries, status_interval, compact_growth
    [[key]] name, algorithm, secret
    [[zone]] name, primaries, key, notify, allow_transfer   (other [[zone]] keys are the server's)

    Raises ConfigError naming the file and the key path."""
    if not isinstance(doc, dict):
        raise ConfigError("top level is not a table", file=file)
    server = doc.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError("expected a table", file=file, key="server")
    state = server.get("state")
    if state is not None and (not isinstance(state, str) or not state):
        raise ConfigError(f"expected a directory path, got {state!r}", file=file, key="server.state")

    xfr = doc.get("xfr", {})
    if not isinstance(xfr, dict):
        raise ConfigError("expected a table", file=file, key="xfr")
    known = {f.name for f in dataclasses.fields(XfrConfig)} - {"state", "zones", "keys"}
    for k in xfr:
        if k not in known:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", file=file, key=f"xfr.{k}")
    # `delay` and `stale_after` may also sit in [server] (the server's config reserves them
    # there); one place only.
    for k in ("delay", "stale_after"):
        if k in server:
            if k in xfr:
                raise ConfigError("set in both [server] and [xfr]; keep one", file=file, key=f"xfr.{k}")
            xfr = dict(xfr, **{k: server[k]})
    delay = _number(xfr, "delay", 0.0, "xfr", file)
    role = xfr.get("role", "delayed" if delay else "normal")
    if role not in ("normal", "delayed"):
        raise ConfigError(f"must be \"normal\" or \"delayed\", got {role!r}", file=file, key="xfr.role")
    if role == "delayed" and delay <= 0:
        raise ConfigError("the delayed role needs a delay > 0 (seconds)", file=file, key="xfr.delay")
    if role == "normal" and delay:
        raise ConfigError("a delay is only meaningful with role = \"delayed\"", file=file, key="xfr.delay")
    opts = dict(
        role=role, delay=float(delay),
        stale_after=float(_number(xfr, "stale_after", 3600.0, "xfr", file, minimum=1)),
        max_records=_number(xfr, "max_records", 5_000_000, "xfr", file, minimum=1, integer=True),
        max_diff=_number(xfr, "max_diff", 1_000_000, "xfr", file, minimum=1, integer=True),
        max_transfer_bytes=_number(xfr, "max_transfer_bytes", 1 << 30, "xfr", file, minimum=65536,
                                   integer=True),
        journal_keep=_number(xfr, "journal_keep", 100, "xfr", file, minimum=0, integer=True),
        timeout=float(_number(xfr, "timeout", 10.0, "xfr", file, minimum=0.1)),
        transfer_lifetime=float(_number(xfr, "transfer_lifetime", 300.0, "xfr", file, minimum=1)),
        min_refresh=float(_number(xfr, "min_refresh", 1.0, "xfr", file, minimum=0.1)),
        notify_retries=_number(xfr, "notify_retries", 5, "xfr", file, minimum=0, integer=True),
        status_interval=float(_number(xfr, "status_interval", 1.0, "xfr", file, minimum=0.1)),
        compact_growth=float(_number(xfr, "compact_growth", 1.25, "xfr", file, minimum=1)),
    )

    keys: dict[dns.name.Name, KeyConf] = {}
    raw_keys = doc.get("key", [])
    if not isinstance(raw_keys, list):
        raise ConfigError("expected an array of tables ([[key]])", file=file, key="key")
    for i, k in enumerate(raw_keys):
        where = f"key[{i}]"
        if not isinstance(k, dict):
            raise ConfigError("expected a table", file=file, key=where)
        for field in ("name", "algorithm", "secret"):
            if not isinstance(k.get(field), str) or not k.get(field):
                raise ConfigError("missing or not a string", file=file, key=f"{where}.{field}")
        try:
            name = dns.name.from_text(k["name"])
        except dns.exception.DNSException as exc:
            raise ConfigError(f"bad key name: {exc}", file=file, key=f"{where}.name") from None
        if name in keys:
            raise ConfigError(f"duplicate key {name}", file=file, key=f"{where}.name")
        alg = ALGORITHMS.get(k["algorithm"].lower().rstrip("."))
        if alg is None:
            raise ConfigError(f"unsupported algorithm {k['algorithm']!r} (supported: "
                              f"{', '.join(ALGORITHMS)})", file=file, key=f"{where}.algorithm")
        try:
            secret = base64.b64decode(k["secret"], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("secret is not valid base64", file=file, key=f"{where}.secret") from None
        if len(secret) < 16:
            # RFC 8945 §6.1: keys should be at least as long as the HMAC output; 16 is a floor.
            raise ConfigError("secret is shorter than 16 octets", file=file, key=f"{where}.secret")
        keys[name] = KeyConf(name, alg, secret)

    zones: list[ZoneConf] = []
    raw_zones = doc.get("zone", [])
    if not isinstance(raw_zones, list):
        raise ConfigError("expected an array of tables ([[zone]])", file=file, key="zone")
    seen = set()
    for i, z in enumerate(raw_zones):
        where = f"zone[{i}]"
        if not isinstance(z, dict):
            raise ConfigError("expected a table", file=file, key=where)
        if not isinstance(z.get("name"), str):
            raise ConfigError("missing or not a string", file=file, key=f"{where}.name")
        for k in z:
            if k not in ZONE_KEYS | _server_zone_keys():
                raise ConfigError(f"unknown key (known: {', '.join(sorted(ZONE_KEYS | _server_zone_keys()))})",
                                  file=file, key=f"{where}.{k}")
        try:
            name = dns.name.from_text(z["name"])
        except dns.exception.DNSException as exc:
            raise ConfigError(f"bad zone name: {exc}", file=file, key=f"{where}.name") from None
        if name in seen:
            raise ConfigError(f"zone {name} configured twice", file=file, key=f"{where}.name")
        seen.add(name)

        def peers(field, _z=z, _where=where):
            v = _z.get(field, [])
            if not isinstance(v, list):
                raise ConfigError("expected a list of addresses", file=file, key=f"{_where}.{field}")
            return tuple(parse_peer(p, f"{_where}.{field}[{j}]", file) for j, p in enumerate(v))

        primaries = peers("primaries")
        notify = peers("notify")
        if primaries and z.get("file") is not None:
            raise ConfigError("a zone is either loaded from a file or a secondary of primaries, "
                              "not both", file=file, key=f"{where}.primaries")
        key = None
        if "key" in z:
            if not isinstance(z["key"], str):
                raise ConfigError("expected a key name", file=file, key=f"{where}.key")
            try:
                key = keys.get(dns.name.from_text(z["key"]))
            except dns.exception.DNSException:
                key = None
            if key is None:
                raise ConfigError(f"no [[key]] named {z['key']!r}", file=file, key=f"{where}.key")
        allow = z.get("allow_transfer")
        if allow is None:
            nets = tuple(ipaddress.ip_network(p.host) for p in notify)
        else:
            if not isinstance(allow, list):
                raise ConfigError("expected a list of addresses or prefixes", file=file,
                                  key=f"{where}.allow_transfer")
            nets = []
            for j, a in enumerate(allow):
                try:
                    nets.append(ipaddress.ip_network(a, strict=False))
                except (ValueError, TypeError):
                    raise ConfigError(f"bad address or prefix {a!r}", file=file,
                                      key=f"{where}.allow_transfer[{j}]") from None
            nets = tuple(nets)
        zones.append(ZoneConf(name, primaries, key, notify, nets))

    if any(z.primaries for z in zones) and state is None:
        log.warning("%s: no [server] state directory: secondary zones start empty after a restart",
                    file or "config")
    return XfrConfig(state=Path(state) if state else None, zones=tuple(zones),
                     keys=tuple(keys.values()), **opts)


# =============================================================================================
# Metrics
# =============================================================================================

try:
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - prometheus-client is a pinned dependency
    _prom = None

_metrics: dict[str, Any] = {}


def _metric(kind: str, name: str, doc: str, labels: tuple[str, ...]):
    """Created once per process on the default registry (the server's /metrics)."""
    if _prom is None:
        return None
    m = _metrics.get(name)
    if m is None:
        m = getattr(_prom, kind)(name, doc, labels)
        _metrics[name] = m
    return m


def _count(stats: collections.Counter, key: str, metric: str, doc: str, **labels) -> None:
    stats[key] += 1
    try:  # metrics must never break the engine's logic
        m = _metric("Counter", metric, doc, tuple(labels))
        if m is not None:
            m.labels(**labels).inc()
    except Exception as exc:  # pragma: no cover
        log.error("metric %s: %s", metric, exc)


# =============================================================================================
# Zone versions and the publish interface
# =============================================================================================

@dataclasses.dataclass(frozen=True)
class ZoneVersion:
    """One version of one zone, as handed to `publish`.  `zone` has absolute names and is never
    changed after it is created (the journal and old readers may still hold it).  `data` is the
    validated `pop53.zone.zonefile.ZoneData`.  `steps` is what changed since the previously published
    version (None after a full load), for an incremental compiler; `changed` the owner names."""

    name: str
    serial: int
    zone: dns.zone.Zone
    data: Any
    records: int
    steps: tuple[jr.Diff, ...] | None = None
    changed: frozenset | None = None


Publish = Callable[[str, "ZoneVersion | None"], None]


def validate_version(zone: dns.zone.Zone, source: str, records: int, max_records: int,
                     changed: frozenset | None = None) -> Any:
    """The single place an update is checked before it may be published: the size limit, then
    exactly the checks a zone file gets (pop53.zone.zonefile).  Raises UpdateRejected.
    `changed`: the owner names an IXFR diff touched, when `zone` is that diff applied to a
    version that passed these checks; then only those names (and their ancestors) are checked
    (`pop53.zone.incremental.validate_changes`, which runs the full check when it cannot be sure)."""
    if records > max_records:
        raise UpdateRejected(f"{source}: {records} records exceed the limit of {max_records} "
                             "([xfr] max_records)")
    if changed is not None and not zone.relativize:
        from pop53.zone.incremental import validate_changes
        from pop53.zone.zonefile import ZoneData
        data = ZoneData(origin=zone.origin, zone=zone, source=source, lines={})
        try:
            validate_changes(data, changed)
        except ZoneError as exc:
            raise UpdateRejected(str(exc)) from None
        for w in data.warnings[:10]:
            log.warning("%s", w)
        return data
    try:
        from pop53.zone.zonefile import zone_from_dnspython
    except ImportError:  # the zone-file module arrives with the server work; minimal checks until then
        zone_from_dnspython = None
    if zone_from_dnspython is not None:
        try:
            data = zone_from_dnspython(zone, source=source)
        except ZoneError as exc:
            raise UpdateRejected(str(exc)) from None
        warnings = getattr(data, "warnings", None) or []
        for w in warnings[:10]:  # e.g. occluded data below a cut: served as BIND/Knot do
            log.warning("%s", w)
        if len(warnings) > 10:
            log.warning("%s: %d more warnings", source, len(warnings) - 10)
        return data
    apex = zone.nodes.get(zone.origin)
    if apex is None or apex.get_rdataset(IN, SOA) is None or apex.get_rdataset(IN, dns.rdatatype.NS) is None:
        raise UpdateRejected(f"{source}: zone {zone.origin} needs an SOA and NS records at the apex")
    return None


class ImagePublisher:
    """The glue to the server (issue 3): keeps the validated data of every zone the image holds
    and hands each new image to `server_publish(image)` (one atomic swap; the image is always a
    full image).  Zones loaded from files are passed as `static`.

    An IXFR update (`version.changed`, diff from the version we last published) is first tried
    as a patch of the current image (`pop53.zone.incremental.patch_image`: milliseconds instead of a
    full compile); structural changes fall back to `compile_zone_data`.  Replaced records stay
    in a patched image as garbage: once it has grown past MAX_GROWTH times the last full
    compile, the patched image is still published at once, and a compaction starts in the
    background (a full compile in a forked child, so it does not take the GIL from the engine);
    the updates published meanwhile are patched onto its result before it is swapped in.  An
    expired zone (`version is None`) keeps its last data in the image, marked expired: the data
    plane answers SERVFAIL for it (RFC 1035 §3.3.13 via `compile_zone_data(..., expired=[...])`)."""

    # a patched image may grow to this multiple of the last full compile before we compact
    MAX_GROWTH = 1.25
    # after a full compile with at least this many nodes, the heap is settled (settle_heap)
    SETTLE_NODES = 50_000
    COMPACT_TIMEOUT = 1800.0

    def __init__(self, server_publish: Callable[[Any], None], static: list | tuple = (),
                 compile_zone_data: Callable | None = None, incremental: bool = True,
                 compact_in_background: bool = True, check_image: Callable | None = None):
        self.server_publish = server_publish
        # raises (a Pop53Error, e.g. the server's max_image_bytes) for an image that must not
        # be published: the update is rejected and the previous image keeps serving
        self.check_image = check_image
        self.static = list(static)
        self.zones: dict[str, Any] = {}
        self.expired: set[str] = set()
        self._compile = compile_zone_data
        self.incremental = incremental
        self.compact_in_background = compact_in_background
        self.last_image = None
        self._full_size = 0
        self.stats = {"patched": 0, "compiled": 0, "compacted": 0, "compactions_dropped": 0}
        self.last_fallback: str | None = None
        self._lock = threading.RLock()
        # the compaction in flight: its generation, and the names changed since its snapshot
        self._gen = 0
        self._compacting: threading.Thread | None = None
        self._since: dict[str, set] = {}
        if incremental:
            from pop53.zone import incremental as _inc  # noqa: F401  (imported now, not on the first update)

    def _compiler(self) -> Callable:
        if self._compile is not None:
            return self._compile
        from pop53.zone.compiler import compile_zone_data
        return compile_zone_data

    def _try_patch(self, name: str, version: ZoneVersion):
        if not self.incremental or self.last_image is None or not version.changed \
                or name in self.expired or name not in self.zones or not version.steps:
            return None
        prev = self.zones[name]
        # the diff must start at the version this image holds (a rejected or skipped update
        # in between would make the changed names incomplete)
        if prev is None or version.steps[0].old_serial != prev.serial:
            return None
        from pop53.zone.incremental import patch_image
        image = patch_image(self.last_image, name, version.data, version.changed)
        if image is None:
            self.last_fallback = patch_image.last_reason
        return image

    def __call__(self, name: str, version: ZoneVersion | None) -> None:
        with self._lock:
            self._publish(name, version)

    def _counted(self, path: str) -> None:
        self.stats[path] += 1
        try:  # metrics must never break publishing
            m = _metric("Counter", "pop53_xfr_images_total", "images published for transferred "
                        "zones, by how they were made", ("path",))
            if m is not None:
                m.labels(path=path).inc()
        except Exception as exc:  # pragma: no cover
            log.error("metric pop53_xfr_images_total: %s", exc)

    def _publish(self, name: str, version: ZoneVersion | None) -> None:
        zones = dict(self.zones)
        expired = set(self.expired)
        if version is None:
            expired.add(name)
        else:
            zones[name] = version.data
            expired.discard(name)
        try:
            image = self._try_patch(name, version) if version is not None else None
        except Exception as exc:  # a patcher bug must not cost the update: compile in full
            log.exception("zone %s: incremental patch failed, compiling in full: %s", name, exc)
            image = None
        patched = image is not None
        if patched and self.check_image is not None:
            try:
                self.check_image(image)
            except Pop53Error as exc:
                # the garbage of earlier patches may be what is over the limit: compact now
                log.info("zone %s: patched image refused (%s); compiling in full", name, exc)
                image, patched = None, False
        if image is None:
            image = self._compile_all(zones, expired, name)
            if self.check_image is not None:
                self.check_image(image)
        self.server_publish(image)
        self.zones = zones
        self.expired = expired
        self.last_image = image
        if patched:
            self._counted("patched")
            if self._compacting is not None:
                self._since.setdefault(name, set()).update(version.changed)
            elif len(image) > self.MAX_GROWTH * self._full_size:
                self._start_compaction()
        else:
            self._counted("compiled")
            self._full_size = len(image)
            self._gen += 1          # a compaction in flight is stale now
            if image.counts["nodes"] >= self.SETTLE_NODES or \
                    image.counts["records"] >= _CollectTxn.FREEZE_EVERY:
                settle_heap()
            if self.incremental:    # the next update's patch starts from a ready index
                from pop53.zone.incremental import patch_index
                patch_index(image)

    def _compile_all(self, zones: dict, expired: set, name: str, static: list | None = None):
        present = [d for d in zones.values() if d is not None]
        exp = sorted(z for z in expired if zones.get(z) is not None)
        everything = (self.static if static is None else static) + present
        compile_ = self._compiler()
        try:
            return compile_(everything, expired=exp) if exp else compile_(everything)
        except Pop53Error:
            raise
        except Exception as exc:  # a compiler bug must not take the engine down
            raise UpdateRejected(f"zone {name}: compile failed: {type(exc).__name__}: {exc}") from None

    # ---------------------------------------------------------------- background compaction
    def _start_compaction(self) -> None:
        """Compile the current zone set again, away from the engine (call with the lock)."""
        self._gen += 1
        gen = self._gen
        zones, expired, static = dict(self.zones), set(self.expired), list(self.static)
        self._since = {}
        self.last_fallback = "compaction"
        if not self.compact_in_background:
            image = self._compile_all(zones, expired, "(compaction)", static)
            self._install_compacted(gen, image, zones, expired, static)
            return
        t = threading.Thread(target=self._compact, args=(gen, zones, expired, static),
                             name="pop53-compact", daemon=True)
        self._compacting = t
        t.start()

    def _compact(self, gen: int, zones: dict, expired: set, static: list) -> None:
        import os
        import tempfile
        from pop53.zone.images import load_image
        fd, path = tempfile.mkstemp(prefix="pop53-compact-", suffix=".img")
        os.close(fd)
        image = None
        try:
            t0 = time.monotonic()
            self._compiler()            # imported here, before the fork

            def work():
                self._compile_all(zones, expired, "(compaction)", static).save(path)
            run_in_fork(work, "image compaction", self.COMPACT_TIMEOUT)
            image = load_image(path)
            from pop53.zone.incremental import patch_index
            patch_index(image)      # outside the lock: the engine keeps publishing meanwhile
            log.info("compaction: %d bytes compiled in %.1f s", len(image), time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - the patched image keeps serving
            log.error("compaction failed, the patched image keeps serving: %s", exc)
        finally:
            try:
                os.unlink(path)     # the mapping keeps the data
            except OSError:
                pass
        with self._lock:
            self._compacting = None
            if image is not None:
                self._install_compacted(gen, image, zones, expired, static)

    def _install_compacted(self, gen, image, zones, expired, static) -> None:
        """Swap in a compacted image, with the updates published since its snapshot patched
        onto it (call with the lock).  Dropped when a full compile or an expiry intervened."""
        from pop53.zone.incremental import patch_image
        since, self._since = self._since, {}
        if gen != self._gen or expired != self.expired or static != self.static \
                or set(zones) != set(self.zones):
            self._counted("compactions_dropped")
            return
        full_size = len(image)
        for name, data in self.zones.items():
            if data is zones[name]:
                continue
            image = patch_image(image, name, data, since.get(name, ())) if since.get(name) else None
            if image is None:
                log.info("compaction dropped: zone %s changed meanwhile and did not patch", name)
                self._counted("compactions_dropped")
                return
        if self.check_image is not None:
            try:
                self.check_image(image)
            except Pop53Error as exc:
                log.info("compaction dropped: %s", exc)
                self._counted("compactions_dropped")
                return
        self.server_publish(image)
        self.last_image = image
        self._full_size = full_size
        self._counted("compacted")

    def wait_compaction(self, timeout: float) -> bool:
        """For tests and benchmarks: wait until no compaction is in flight."""
        t = self._compacting
        if t is not None:
            t.join(timeout)
        return self._compacting is None


def settle_heap() -> None:
    """Collect once, then freeze what is left (gc.freeze): a zone of a million names is millions
    of dnspython objects, and every full (generation 2) collection walks all of them (measured:
    0.5 s at 100,000 names, falling on whichever update allocates next).  Frozen objects are
    never walked; they are still freed by reference counting, and anything they leave in a
    reference cycle is reclaimed at the next settle (unfreeze first)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


# =============================================================================================
# Inbound transfers: a transaction manager that only collects
# =============================================================================================

class _CollectTxn:
    """What dns.xfr.Inbound writes into.  For AXFR (replacement) it builds a fresh zone; for IXFR
    it records the operations in order and splits them into RFC 1995 steps on commit."""

    def __init__(self, mgr: "_Collector", replacement: bool):
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


class _Collector(dns.transaction.TransactionManager):
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
        return _CollectTxn(self, replacement)

    def origin_information(self):
        return (self.origin, False, self.origin)

    def get_class(self):
        return IN


class _ReceiptClock:
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


def _receipt_clock() -> _ReceiptClock:
    clock = dns.message.time
    if not isinstance(clock, _ReceiptClock):
        clock = dns.message.time = _ReceiptClock(clock)
    return clock


def inbound_transfer(primary: Peer, txn_manager, query: dns.message.Message, serial: int | None,
                     timeout: float, lifetime: float, max_bytes: int) -> None:
    """AXFR/IXFR over TCP into `txn_manager` (dns.xfr.Inbound does the RFC 1995/5936 state
    machine and TSIG chaining, as in dns.query.inbound_xfr).  Unlike dns.query.inbound_xfr, a
    reader thread drains the socket into memory while messages are parsed: a primary does not
    wait for a slow consumer (Knot drops a client that has not read for `tcp-io-timeout`,
    500 ms by default, which a Python parser of a large zone always hits)."""
    import queue

    deadline = time.monotonic() + lifetime
    wire = query.to_wire()
    sock = socket.create_connection((primary.host, primary.port), timeout=timeout)
    frames: queue.Queue = queue.Queue()
    stop = threading.Event()

    def reader():
        total = 0
        try:
            f = sock.makefile("rb")
            while not stop.is_set():
                hdr = f.read(2)
                if len(hdr) < 2:
                    raise EOFError("EOF")
                (n,) = struct.unpack("!H", hdr)
                body = f.read(n)
                if len(body) < n:
                    raise EOFError("EOF inside a message")
                total += n + 2
                if total > max_bytes:
                    raise UpdateRejected(f"transfer exceeds {max_bytes} octets ([xfr] max_transfer_bytes)")
                frames.put((time.time(), body))
        except BaseException as exc:  # handed to the parser; it decides
            frames.put(exc)

    t = None
    clock = _receipt_clock()
    try:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        t = threading.Thread(target=reader, name="pop53-xfr-reader", daemon=True)
        t.start()
        rdtype = query.question[0].rdtype
        with dns.xfr.Inbound(txn_manager, rdtype, serial) as inbound:
            tsig_ctx = None
            first = True
            done = False
            while not done:
                remaining = min(timeout, deadline - time.monotonic())
                if remaining <= 0:
                    raise dns.exception.Timeout("transfer lifetime exceeded")
                try:
                    item = frames.get(timeout=remaining)
                except queue.Empty:
                    raise dns.exception.Timeout(f"no message for {remaining:.1f} s") from None
                if isinstance(item, BaseException):
                    raise item
                received, body = item
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
                done = inbound.process_message(r)
                tsig_ctx = r.tsig_ctx
    finally:
        stop.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        if t is not None:
            t.join(timeout)


# =============================================================================================
# TSIG helpers for messages we receive
# =============================================================================================

class _Refuse(Exception):
    """Internal: refuse a control message; `reply` may be None (drop)."""

    def __init__(self, reason: str, reply: bytes | None):
        self.reason = reason
        self.reply = reply


def _tsig_error_reply(wire: bytes, tsig_error: int) -> bytes | None:
    """RFC 8945 §5.3.2: an unsigned NOTAUTH reply carrying a TSIG RR with the error and an empty
    MAC (BADTIME also carries our time in Other Data)."""
    try:
        q = dns.message.from_wire(wire, keyring=False, question_only=True)
    except Exception:
        return None
    if q.flags & dns.flags.QR:
        return None
    keyname = dns.name.root
    alg = dns.tsig.HMAC_SHA256
    orig_id = q.id
    try:  # read the TSIG RR without validating, for key name, algorithm and original id
        full = dns.message.from_wire(wire, keyring=False)
        if full.tsig is not None:
            keyname = full.keyname
            trd = full.tsig[0]
            alg, orig_id = trd.algorithm, trd.original_id
    except Exception:
        pass
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NOTAUTH)
    out = r.to_wire()
    now = int(time.time())
    other = struct.pack("!HI", now >> 32, now & 0xFFFFFFFF) if tsig_error == dns.rcode.BADTIME else b""
    trd = dns.rdtypes.ANY.TSIG.TSIG(dns.rdataclass.ANY, dns.rdatatype.TSIG, alg, now, TSIG_FUDGE,
                                    b"", orig_id, tsig_error, other)
    rdata = trd.to_digestable()
    rr = keyname.to_wire() + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)) + rdata
    arcount = struct.unpack("!H", out[10:12])[0] + 1
    return out[:10] + struct.pack("!H", arcount) + out[12:] + rr


def _simple_reply(wire: bytes, rcode: int) -> bytes | None:
    try:
        q = dns.message.from_wire(wire, keyring=False, question_only=True)
    except Exception:
        return None
    if q.flags & dns.flags.QR:
        return None
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return r.to_wire()


# =============================================================================================
# Per-zone state
# =============================================================================================

@dataclasses.dataclass
class _Pending:
    due: float
    zone: dns.zone.Zone
    data: Any
    record: jr.Record
    records: int
    changed: frozenset | None


class _ZoneState:
    def __init__(self, conf: ZoneConf, store: jr.ZoneStore | None):
        self.conf = conf
        self.name = conf.name.to_text()
        self.store = store
        self.zone: dns.zone.Zone | None = None       # published (served) version
        self.data: Any = None
        self.records = 0
        self.latest: dns.zone.Zone | None = None     # newest validated version (pending or served)
        self.latest_records = 0
        self.history: list[jr.Record] = []           # applied records, oldest first (IXFR out)
        self.pending: collections.deque[_Pending] = collections.deque()
        self.last_ok: float | None = None
        self.expired = False
        self.last_error: str | None = None
        self.next_check = 0.0
        self.force_axfr = False
        self.wake: asyncio.Event | None = None
        self.refreshing = False
        self.records_since_snapshot = 0
        self.store_lock: asyncio.Lock | None = None
        self.snapshot_lock: asyncio.Lock | None = None
        self.journaled: set[int] = set()     # id() of the records the journal file holds

    @property
    def serial(self) -> int | None:
        return jr.serial_of(self.zone) if self.zone is not None else None

    @property
    def latest_serial(self) -> int | None:
        return jr.serial_of(self.latest) if self.latest is not None else None

    def soa_timers(self) -> tuple[int, int, int]:
        z = self.latest or self.zone
        if z is None:
            return (60, 10, 7 * 86400)
        soa = jr.soa_of(z)[2]
        return (soa.refresh, soa.retry, soa.expire)


# =============================================================================================
# The service
# =============================================================================================

class XfrService:
    """Secondary engine + outbound XFR + NOTIFY, for every zone in `config`."""

    def __init__(self, config: XfrConfig, publish: Publish | None = None):
        self.config = config
        self.publish_cb = publish
        self.stats: collections.Counter = collections.Counter()
        self.zones: dict[dns.name.Name, _ZoneState] = {}
        for zc in config.zones:
            store = jr.ZoneStore(config.state, zc.name) if config.state else None
            self.zones[zc.name] = _ZoneState(zc, store)
        self.keyring = {k.name: k.tsig_key() for k in config.keys}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._publish_lock: asyncio.Lock | None = None
        self._started = threading.Event()
        self._log_last: dict[tuple, list] = {}
        self._servers: list[Any] = []
        self._notify_tasks: set[asyncio.Task] = set()
        self._notify_by_peer: dict[tuple, asyncio.Task] = {}
        self._writes: set[asyncio.Task] = set()   # background snapshot writes
        # Per zone, the phases of the last update (time.monotonic()), for bench/ and debugging:
        # notify, xfr_start, xfr_done, applied, validated, published.
        self.timings: dict[str, dict[str, float]] = {}

    # ---------------------------------------------------------------- lifecycle
    def load_saved(self) -> None:
        """Restore every secondary zone from `<state>`: the snapshot plus the journal, so a
        restarted machine serves at once and then asks the primary only for what changed."""
        for st in self.zones.values():
            if st.store is None or not st.conf.secondary:
                continue
            try:
                self._restore(st)
            except (jr.JournalError, jr.DiffError, UpdateRejected) as exc:
                log.error("zone %s: saved state unusable (%s); starting empty", st.name, exc)
                _count(self.stats, "restore.failed", "pop53_xfr_restore_failures_total",
                       "saved zone states that could not be used", zone=st.name)
                st.zone = st.latest = None

    def _restore(self, st: _ZoneState) -> None:
        zone = st.store.load_snapshot()
        if zone is None:
            return
        recs = st.store.load_journal()
        serial = jr.serial_of(zone)
        # The chain of records after the snapshot: the last record starting at its serial.
        start = None
        for i in range(len(recs) - 1, -1, -1):
            if recs[i].old_serial == serial:
                start = i
                break
        history: list[jr.Record] = []
        if start is None:
            # Maybe the snapshot is newer than every record; keep those that end at it.
            tail = [r for r in recs if r.new_serial == serial]
            if tail:
                history = recs[:recs.index(tail[-1]) + 1]
            start = len(recs)
        else:
            history = recs[:start]
        records = jr.count_records(zone)
        data = validate_version(zone, f"{st.store.snapshot}", records, self.config.max_records)
        now = time.time()
        served = (zone, data, records)
        latest = zone
        pending: list[_Pending] = []
        for rec in recs[start:]:
            try:
                new, changed, delta = jr.apply_steps(latest, rec.steps)
            except jr.DiffError as exc:
                log.warning("zone %s: journal record %d->%d does not apply (%s); ignoring the rest",
                            st.name, rec.old_serial, rec.new_serial, exc)
                break
            n = (pending[-1].records if pending else records) + delta
            if self.config.delay and rec.received + self.config.delay > now:
                pending.append(_Pending(rec.received + self.config.delay, new, None, rec, n,
                                        frozenset(changed)))
            else:
                records = n
                history.append(rec)
                served = (new, None, n)
            latest = new
        if served[1] is None:
            served = (served[0], validate_version(served[0], "journal replay", served[2],
                                                  self.config.max_records), served[2])
        for p in pending:
            p.data = validate_version(p.zone, "journal replay", p.records, self.config.max_records)
        st.zone, st.data, st.records = served
        st.latest = latest
        st.latest_records = pending[-1].records if pending else st.records
        st.pending.extend(pending)
        st.history = history[-self.config.journal_keep:] if self.config.journal_keep else []
        meta = st.store.load_meta()
        last_ok = meta.get("last_ok")
        st.last_ok = float(last_ok) if isinstance(last_ok, (int, float)) else None
        _count(self.stats, "restore.ok", "pop53_xfr_restores_total", "zones restored from saved state",
               zone=st.name)
        log.info("zone %s: restored serial %s from saved state (%d pending)", st.name, st.serial, len(pending))

    def _initial_publish(self) -> None:
        for st in self.zones.values():
            if st.zone is not None:
                expired = self._is_expired(st, time.time())
                st.expired = expired
                self._call_publish(st.name, None if expired else self._version(st, st.zone, st.data, st.records))

    def start(self) -> "XfrService":
        """Run the engine on its own thread and loop.  Restores saved state first and publishes
        it before returning, so a restarted machine serves at once."""
        self.load_saved()
        self._initial_publish()
        self._thread = threading.Thread(target=self._thread_main, name="pop53-xfr", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise Pop53Error("xfr engine did not start")
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.run(_restored=True))
        finally:
            loop.close()

    async def run(self, _restored: bool = False) -> None:
        """The engine's main coroutine (use this to run on the server's own loop)."""
        if not _restored:
            self.load_saved()
            self._initial_publish()
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._publish_lock = asyncio.Lock()
        for st in self.zones.values():
            st.wake = asyncio.Event()
            if st.conf.secondary:
                self._tasks.append(asyncio.create_task(self._zone_loop(st), name=f"xfr {st.name}"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="xfr housekeeping"))
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            for t in self._tasks + list(self._notify_tasks):
                t.cancel()
            if self._writes:  # let a snapshot being written finish (bounded)
                await asyncio.wait(list(self._writes), timeout=120)
            await asyncio.gather(*self._tasks, *self._notify_tasks, return_exceptions=True)
            for s in self._servers:
                s.close()
            self._tasks.clear()

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the engine's loop from another thread (tests, the server)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # ---------------------------------------------------------------- logging of refusals
    def _refused(self, kind: str, reason: str, peer, zone: str = "-", detail: str = "") -> None:
        _count(self.stats, f"refused.{kind}.{reason}", "pop53_xfr_refused_total",
               "control messages refused, by kind and reason", kind=kind, reason=reason)
        # Logged with the sender (the lecture's lost server sent bad messages for months), but at
        # most once per 10 s per (sender, kind, reason) so a flood cannot fill the disk.
        key = (peer[0] if peer else "?", kind, reason)
        now = time.monotonic()
        ent = self._log_last.setdefault(key, [0.0, 0])
        if now - ent[0] >= 10.0:
            extra = f" ({ent[1]} more suppressed)" if ent[1] else ""
            log.warning("refused %s from %s zone %s: %s%s%s", kind, key[0], zone, reason,
                        f": {detail}" if detail else "", extra)
            ent[0], ent[1] = now, 0
        else:
            ent[1] += 1

    # ---------------------------------------------------------------- parsing control messages
    def _parse(self, wire: bytes, peer, kind: str) -> dns.message.Message:
        """Parse and verify TSIG; raise _Refuse with the reply to send."""
        if len(wire) < 12:
            raise _Refuse("short", None)
        if wire[2] & 0x80:  # QR: a response is never a request; never answer one (loops)
            raise _Refuse("response", None)
        try:
            return dns.message.from_wire(wire, keyring=self.keyring)
        except dns.message.UnknownTSIGKey:
            raise _Refuse("badkey", _tsig_error_reply(wire, dns.rcode.BADKEY)) from None
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm):
            raise _Refuse("badsig", _tsig_error_reply(wire, dns.rcode.BADSIG)) from None
        except dns.tsig.BadTime:
            raise _Refuse("badtime", _tsig_error_reply(wire, dns.rcode.BADTIME)) from None
        except dns.tsig.PeerError:
            raise _Refuse("malformed", _simple_reply(wire, dns.rcode.FORMERR)) from None
        except Exception:  # any parse failure: FORMERR if there is a header and question
            raise _Refuse("malformed", _simple_reply(wire, dns.rcode.FORMERR)) from None

    def _check_key(self, msg: dns.message.Message, st: _ZoneState) -> None:
        """RFC 8945 §5.2: a zone with a key accepts only messages signed with that key."""
        want = st.conf.key
        if want is None:
            return
        if not msg.had_tsig:
            raise _Refuse("unsigned", _simple_reply_msg(msg, dns.rcode.REFUSED))
        if msg.keyname != want.name:
            raise _Refuse("wrongkey", _simple_reply_msg(msg, dns.rcode.REFUSED))

    # ---------------------------------------------------------------- NOTIFY in (RFC 1996)
    def handle_notify(self, wire: bytes, peer) -> bytes | None:
        """A NOTIFY over UDP or TCP.  Returns the reply (None: not a NOTIFY, or drop)."""
        if len(wire) < 12 or ((wire[2] >> 3) & 0xF) != dns.opcode.NOTIFY:
            return None
        try:
            msg = self._parse(wire, peer, "notify")
            if len(msg.question) != 1:
                raise _Refuse("malformed", _simple_reply_msg(msg, dns.rcode.FORMERR))
            q = msg.question[0]
            st = self.zones.get(q.name)
            # Unknown zone or not a secondary here: RFC 1996 §3.10 lets us refuse.
            if st is None or not st.conf.secondary:
                raise _Refuse("notauth", _simple_reply_msg(msg, dns.rcode.NOTAUTH))
            if not st.conf.is_primary(peer[0]):
                raise _Refuse("not_primary", _simple_reply_msg(msg, dns.rcode.REFUSED))
            self._check_key(msg, st)
            # Well signed but malformed is refused too: RFC 1996 §3.7 allows only an SOA of the
            # zone in the answer section, class IN, type SOA.
            if q.rdtype != SOA or q.rdclass != IN or msg.authority or \
                    any(r.rdtype != SOA or r.name != q.name for r in msg.answer) or \
                    any(len(r) != 1 for r in msg.answer):
                raise _Refuse("malformed", _simple_reply_msg(msg, dns.rcode.FORMERR))
        except _Refuse as r:
            self._refused("notify", r.reason, peer, detail=f"{len(wire)} octets")
            return r.reply
        _count(self.stats, "notify.accepted", "pop53_xfr_notify_received_total",
               "NOTIFY messages accepted", zone=st.name)
        log.info("NOTIFY for %s from %s", st.name, peer[0])
        self.timings[st.name] = {"notify": time.monotonic()}
        self._wake(st)
        reply = dns.message.make_response(msg)
        reply.flags |= dns.flags.AA
        return reply.to_wire()

    def _wake(self, st: _ZoneState) -> None:
        if self.loop is not None and st.wake is not None:
            self.loop.call_soon_threadsafe(st.wake.set)

    def refresh_now(self, name: str) -> None:
        """Operator command: check the primary now (like a NOTIFY)."""
        self._wake(self._secondary(name))

    def retransfer_now(self, name: str) -> None:
        """Operator command: a full transfer now, whatever the serials say (a repair; like
        `knotc zone-retransfer` or `rndc retransfer`)."""
        st = self._secondary(name)
        st.force_axfr = True
        self._wake(st)

    def _secondary(self, name: str) -> _ZoneState:
        try:
            st = self.zones[dns.name.from_text(name)]
        except dns.exception.DNSException as exc:
            raise KeyError(f"bad zone name {name!r}: {exc}") from None
        except KeyError:
            raise KeyError(f"zone {name} is not configured") from None
        if not st.conf.secondary:
            raise KeyError(f"zone {name} is not a secondary (it has no primaries)")
        return st

    # ---------------------------------------------------------------- queries for our zones
    def _served(self, qname) -> _ZoneState | None:
        st = self.zones.get(qname)
        if st is None or st.zone is None or st.expired:
            return None
        return st

    def handle_query(self, wire: bytes, peer) -> bytes | None:
        """Answers the SOA of our zones (our own secondaries' refresh check, RFC 1034 §4.3.5),
        TSIG-aware.  None: not a question for us (the data plane answers everything else)."""
        if len(wire) < 12 or ((wire[2] >> 3) & 0xF) != dns.opcode.QUERY or wire[2] & 0x80:
            return None
        try:
            msg = self._parse(wire, peer, "query")
        except _Refuse as r:
            if r.reason in ("malformed", "short", "response"):
                return None  # the data plane owns the malformed-packet policy
            self._refused("query", r.reason, peer)
            return r.reply
        if len(msg.question) != 1 or msg.question[0].rdtype != SOA:
            return None
        st = self.zones.get(msg.question[0].name)
        if st is None:
            return None
        if st.zone is None or st.expired:
            return _simple_reply_msg(msg, dns.rcode.SERVFAIL)
        r = dns.message.make_response(msg)
        r.flags |= dns.flags.AA
        name, ttl, rd = jr.soa_of(st.zone)
        rrset = r.find_rrset(r.answer, name, IN, SOA, create=True)
        rrset.add(rd, ttl)
        return r.to_wire()

    # ---------------------------------------------------------------- AXFR/IXFR out
    def handle_tcp_query(self, wire: bytes, peer) -> list[bytes] | None:
        """AXFR (RFC 5936) / IXFR (RFC 1995) of our zones to allowed secondaries.
        Returns the response messages (None: not an XFR query)."""
        if len(wire) < 12 or ((wire[2] >> 3) & 0xF) != dns.opcode.QUERY or wire[2] & 0x80:
            return None
        # Cheap peek at the QTYPE so ordinary queries never pay for a full parse here.
        try:
            qmsg = dns.message.from_wire(wire, keyring=False, question_only=True)
        except Exception:
            return None
        if len(qmsg.question) != 1 or qmsg.question[0].rdtype not in (AXFR, IXFR):
            return None
        try:
            msg = self._parse(wire, peer, "xfr")
            q = msg.question[0]
            st = self.zones.get(q.name)
            if st is None:
                raise _Refuse("notauth", _simple_reply_msg(msg, dns.rcode.NOTAUTH))
            if not st.conf.transfer_allowed(peer[0]):
                raise _Refuse("not_allowed", _simple_reply_msg(msg, dns.rcode.REFUSED))
            self._check_key(msg, st)
            if q.rdclass != IN:
                raise _Refuse("malformed", _simple_reply_msg(msg, dns.rcode.FORMERR))
            client_serial = None
            if q.rdtype == IXFR:
                # RFC 1995 §3: the authority section holds the client's SOA.
                if len(msg.authority) != 1 or msg.authority[0].rdtype != SOA or \
                        msg.authority[0].name != q.name or len(msg.authority[0]) != 1:
                    raise _Refuse("malformed", _simple_reply_msg(msg, dns.rcode.FORMERR))
                client_serial = msg.authority[0][0].serial
            zone = st.zone
            if zone is None or st.expired:
                raise _Refuse("no_data", _simple_reply_msg(msg, dns.rcode.SERVFAIL))
        except _Refuse as r:
            self._refused("xfr", r.reason, peer)
            return [r.reply] if r.reply is not None else []
        history = list(st.history)
        steps = None
        if client_serial is not None:
            steps = self._ixfr_steps(history, client_serial, jr.serial_of(zone))
        if client_serial is not None and not jr.serial_gt(jr.serial_of(zone), client_serial):
            kind = "uptodate"
            rrs = iter([jr.soa_of(zone)])
        elif steps is not None:
            kind = "ixfr"
            rrs = self._ixfr_rrs(zone, steps)
        else:
            kind = "axfr"
            rrs = self._axfr_rrs(zone)
        _count(self.stats, f"xfr_out.{kind}", "pop53_xfr_out_total", "transfers served",
               zone=st.name, kind=kind)
        log.info("%s of %s to %s (%s)", dns.rdatatype.to_text(q.rdtype), st.name, peer[0], kind)
        return self._render(msg, rrs)

    @staticmethod
    def _ixfr_steps(history: list[jr.Record], client_serial: int, current: int):
        steps = [s for rec in history for s in rec.steps]
        for i, s in enumerate(steps):
            if s.old_serial == client_serial:
                chain = steps[i:]
                ok = all(a.new_serial == b.old_serial for a, b in zip(chain, chain[1:]))
                if ok and chain[-1].new_serial == current:
                    return chain
        return None

    @staticmethod
    def _axfr_rrs(zone: dns.zone.Zone):
        soa = jr.soa_of(zone)
        yield soa
        for name, node in zone.nodes.items():
            for rds in node.rdatasets:
                if rds.rdtype == SOA:
                    continue
                yield (name, rds)
        yield soa

    @staticmethod
    def _ixfr_rrs(zone, steps):
        cur = jr.soa_of(zone)
        yield cur
        for s in steps:
            yield s.old_soa
            yield from s.deleted
            yield s.new_soa
            yield from s.added
        yield cur

    def _render(self, query: dns.message.Message, items) -> list[bytes]:
        """Pack RRs into as few messages as fit in 64 KiB, each TSIG-signed when the query was
        (RFC 8945 §5.3.1 allows every message to be signed; Knot and NSD accept it)."""
        key = query.keyring if query.had_tsig else None
        q = query.question[0]
        out: list[bytes] = []
        ctx = None
        limit = 65535 - 512  # room for the TSIG RR

        def new():
            r = dns.renderer.Renderer(id=query.id, flags=dns.flags.QR | dns.flags.AA, max_size=limit)
            r.add_question(q.name, q.rdtype, q.rdclass)
            return r

        def finish(r):
            nonlocal ctx
            r.write_header()
            if key is not None:
                r.max_size = 65535
                ctx = r.add_multi_tsig(ctx, key.name, key, TSIG_FUDGE, query.id, 0, b"",
                                       query.mac, key.algorithm)
            out.append(r.get_wire())

        r = new()
        n = 0
        for item in items:
            if len(item) == 3:
                name, ttl, rd = item
                rds = dns.rdataset.Rdataset(IN, rd.rdtype, rd.covers(), ttl)
                rds.add(rd, ttl)
            else:
                name, rds = item
            try:
                r.add_rdataset(dns.renderer.ANSWER, name, rds)
                n += 1
            except dns.exception.TooBig:
                if n == 0:
                    raise
                finish(r)
                r, n = new(), 0
                r.add_rdataset(dns.renderer.ANSWER, name, rds)
                n += 1
        finish(r)
        return out

    # ---------------------------------------------------------------- primary role (local zones)
    def set_local_zone(self, name: str, zone: dns.zone.Zone) -> None:
        """A zone we are primary for changed (or appeared): record the diff in the journal so
        secondaries can IXFR, and NOTIFY them.  `zone` must have absolute names and must not be
        changed afterwards."""
        origin = dns.name.from_text(name)
        st = self.zones.get(origin)
        if st is None:
            st = self.zones[origin] = _ZoneState(ZoneConf(origin), None)
        if st.conf.secondary:
            raise Pop53Error(f"zone {name} is a secondary here; its data comes from its primaries")
        if zone.relativize:
            raise Pop53Error("set_local_zone needs a zone with absolute names (relativize=False)")
        old = st.zone
        if old is not None and jr.serial_of(old) == jr.serial_of(zone):
            return
        if old is not None:
            rec = jr.Record((jr.diff_zones(old, zone),), time.time(), full=True)
            st.history = (st.history + [rec])[-self.config.journal_keep:] if self.config.journal_keep else []
        st.zone = st.latest = zone
        st.records = st.latest_records = jr.count_records(zone)
        st.last_ok = time.time()
        if old is not None:
            self._send_notifies(st)

    # ---------------------------------------------------------------- the refresh loop
    async def _zone_loop(self, st: _ZoneState) -> None:
        st.next_check = 0.0  # at start: check at once (serve saved data meanwhile)
        while True:
            now = time.time()
            due = st.next_check
            if st.pending:
                due = min(due, st.pending[0].due)
            if st.zone is not None and not st.expired and st.last_ok is not None:
                due = min(due, st.last_ok + st.soa_timers()[2] + 0.01)
            try:
                await asyncio.wait_for(st.wake.wait(), timeout=max(0.0, due - now))
                notified = True
            except asyncio.TimeoutError:
                notified = False
            st.wake.clear()
            now = time.time()
            try:
                await self._apply_due(st, now)
                if notified or now >= st.next_check:
                    ok = await self._refresh(st)
                    refresh, retry, _expire = st.soa_timers()
                    wait = refresh if ok else retry
                    st.next_check = time.time() + max(self.config.min_refresh, wait)
                await self._check_expire(st, time.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine must survive anything a peer can cause
                log.exception("zone %s: refresh loop error: %s", st.name, exc)
                _count(self.stats, "engine.error", "pop53_xfr_engine_errors_total",
                       "unexpected errors in the refresh loop", zone=st.name)
                st.next_check = time.time() + max(self.config.min_refresh, st.soa_timers()[1])

    def _is_expired(self, st: _ZoneState, now: float) -> bool:
        if not st.conf.secondary or st.zone is None:
            return False
        if st.last_ok is None:
            return False  # never checked since a restore without meta: give it one expire period
        return now - st.last_ok > st.soa_timers()[2]

    async def _check_expire(self, st: _ZoneState, now: float) -> None:
        if st.zone is None or st.expired or not self._is_expired(st, now):
            return
        # RFC 1034 §4.3.5: after expire without a refresh the data is no longer authoritative.
        st.expired = True
        _count(self.stats, "zone.expired", "pop53_xfr_zone_expired_total",
               "zones that expired (SOA expire passed without a refresh)", zone=st.name)
        log.error("zone %s expired: no successful refresh for %.0f s (SOA expire %d); answering "
                  "SERVFAIL", st.name, now - st.last_ok, st.soa_timers()[2])
        await self._publish(st.name, None)

    async def _refresh(self, st: _ZoneState) -> bool:
        """One refresh: SOA check against each primary in turn, transfer if newer.  True when
        the zone is known current afterwards (RFC 1034 §4.3.5)."""
        errors = []
        for primary in st.conf.primaries:
            try:
                their = await self._soa_check(st, primary)
            except Exception as exc:
                errors.append(f"{primary}: SOA check: {type(exc).__name__}: {exc}")
                _count(self.stats, "soa.failed", "pop53_xfr_soa_checks_total", "SOA checks",
                       zone=st.name, result="failed")
                continue
            _count(self.stats, "soa.ok", "pop53_xfr_soa_checks_total", "SOA checks",
                   zone=st.name, result="ok")
            ours = st.latest_serial
            if ours is not None and not jr.serial_gt(their, ours) and not st.force_axfr:
                await self._mark_ok(st)
                return True
            try:
                ok = await self._transfer(st, primary)
            except UpdateRejected as exc:
                errors.append(f"{primary}: {exc}")
                st.last_error = str(exc)
                return False  # the primary's data is bad: another primary has the same serial
            except (dns.exception.DNSException, OSError, EOFError, jr.DiffError) as exc:
                errors.append(f"{primary}: transfer: {type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # a bug, not the peer: keep the traceback
                log.exception("zone %s: transfer from %s: unexpected error", st.name, primary)
                errors.append(f"{primary}: transfer: {type(exc).__name__}: {exc}")
                continue
            if ok:
                st.force_axfr = False
                await self._mark_ok(st)
                return True
        st.last_error = "; ".join(errors) or "no primary answered"
        log.warning("zone %s: refresh failed: %s", st.name, st.last_error)
        return False

    async def _mark_ok(self, st: _ZoneState) -> None:
        st.last_ok = time.time()
        st.last_error = None
        if st.expired and st.zone is not None:
            st.expired = False
            log.info("zone %s: refreshed after expiry; serving again", st.name)
            await self._publish(st.name, self._version(st, st.zone, st.data, st.records))
        if st.store is not None:
            try:
                await asyncio.to_thread(st.store.save_meta, {"last_ok": st.last_ok, "serial": st.serial})
            except OSError as exc:
                log.error("zone %s: cannot save state: %s", st.name, exc)

    def _sign(self, msg: dns.message.Message, st: _ZoneState) -> None:
        if st.conf.key is not None:
            msg.use_tsig(st.conf.key.tsig_key(), fudge=TSIG_FUDGE)

    async def _soa_check(self, st: _ZoneState, primary: Peer) -> int:
        q = dns.message.make_query(st.conf.name, SOA)
        q.flags &= ~dns.flags.RD
        self._sign(q, st)
        # UDP first, TCP when truncated (RFC 1035 §4.2); dnspython verifies the response's TSIG
        # against our key and request MAC and raises on a missing or bad one.
        r, _ = await dns.asyncquery.udp_with_fallback(q, primary.host, timeout=self.config.timeout,
                                                      port=primary.port)
        if r.rcode() != dns.rcode.NOERROR:
            raise dns.exception.FormError(f"rcode {dns.rcode.to_text(r.rcode())}")
        if st.conf.key is not None and not r.had_tsig:
            raise dns.exception.FormError("unsigned response")
        for rrset in r.answer:
            if rrset.rdtype == SOA and rrset.name == st.conf.name and len(rrset) == 1:
                return rrset[0].serial
        raise dns.exception.FormError("no SOA in the answer")

    async def _transfer(self, st: _ZoneState, primary: Peer) -> bool:
        base = st.latest
        use_ixfr = base is not None and not st.force_axfr
        self.timings.setdefault(st.name, {})["xfr_start"] = time.monotonic()
        try:
            result = await self._xfr(st, primary, base, use_ixfr)
        except dns.xfr.TransferError as exc:
            # RFC 1995 §4 / RFC 5936: a primary may refuse IXFR or have no journal: use AXFR.
            if not use_ixfr:
                raise
            log.info("zone %s: IXFR from %s refused (%s); trying AXFR", st.name, primary, exc)
            _count(self.stats, "ixfr.fallback", "pop53_xfr_ixfr_fallbacks_total",
                   "IXFR answered with an error, AXFR used", zone=st.name)
            use_ixfr = False
            result = await self._xfr(st, primary, base, False)
        kind = "IXFR" if use_ixfr else "AXFR"
        try:
            return await self._ingest(st, base, result, f"{kind} from {primary}")
        except jr.DiffError:
            # A diff that does not fit our version: our journal and theirs disagree.  Repair
            # with a full transfer instead of guessing (RFC 1995 §4 allows AXFR-style).
            result = await self._xfr(st, primary, base, False)
            return await self._ingest(st, base, result, f"AXFR from {primary}")

    async def _ingest(self, st: _ZoneState, base: dns.zone.Zone | None, result, source: str) -> bool:
        """Turn what a transfer delivered into a new version and accept it (validate, then
        publish or queue).  Raises DiffError (diff does not fit `base`) or UpdateRejected; in
        both cases nothing that is served has changed."""
        if result is None:
            return True  # already current
        tm = self.timings.setdefault(st.name, {})
        tm["xfr_done"] = time.monotonic()
        kind, payload = result
        if kind == "steps":
            if base is None:
                raise jr.DiffError("incremental transfer without a base version")
            try:
                new, changed, delta = await asyncio.to_thread(jr.apply_steps, base, payload)
            except jr.BadData as exc:
                self._reject(st, f"{source}: {exc}", "validation")
                raise UpdateRejected(str(exc)) from None
            except jr.DiffError as exc:
                self._reject(st, f"{source}: {exc}", "diff")
                raise
            tm["applied"] = time.monotonic()
            rec = jr.Record(tuple(payload), time.time())
            await self._accept(st, new, rec, st.latest_records + delta, frozenset(changed), source)
            return True
        # A full transfer.  Against our previous version it becomes one diff, so that the
        # journal, a restart and our own IXFR service cover it like any other change.
        new = payload
        steps = None
        if base is not None:
            try:
                steps = (await asyncio.to_thread(jr.diff_zones, base, new),)
            except jr.DiffError as exc:
                self._reject(st, f"{source}: {exc}", "validation")
                raise UpdateRejected(str(exc)) from None
        records = await asyncio.to_thread(jr.count_records, new)
        tm["applied"] = time.monotonic()
        rec = jr.Record(steps, time.time(), full=True) if steps else None
        await self._accept(st, new, rec, records, None, source)
        return True

    async def _xfr(self, st: _ZoneState, primary: Peer, base, incremental: bool):
        coll = _Collector(st.conf.name, base, self.config.max_records, self.config.max_diff)
        serial = jr.serial_of(base) if (incremental and base is not None) else None
        key = st.conf.key
        query, serial = dns.xfr.make_query(
            coll, serial=serial,
            keyring=key.tsig_key() if key else None,
            keyname=key.name if key else None,
            keyalgorithm=key.algorithm if key else dns.tsig.default_algorithm)
        kind = "ixfr" if serial is not None else "axfr"
        try:
            await asyncio.to_thread(inbound_transfer, primary, coll, query, serial,
                                    self.config.timeout, self.config.transfer_lifetime,
                                    self.config.max_transfer_bytes)
        except UpdateRejected as exc:
            self._reject(st, f"{kind.upper()} from {primary}: {exc}", "size")
            raise
        except dns.xfr.TransferError:
            _count(self.stats, f"xfr_in.{kind}.error", "pop53_xfr_in_total", "transfers received",
                   zone=st.name, kind=kind, result="error")
            raise
        except (dns.exception.DNSException, EOFError, ConnectionError, ValueError, KeyError,
                AttributeError, TypeError) as exc:
            # Malformed or cut-short transfer (bad TSIG, wrong SOA, junk, EOF): nothing applied.
            _count(self.stats, f"xfr_in.{kind}.malformed", "pop53_xfr_in_total", "transfers received",
                   zone=st.name, kind=kind, result="malformed")
            log.warning("zone %s: %s from %s failed: %s: %s", st.name, kind.upper(), primary,
                        type(exc).__name__, exc)
            raise
        if coll.result is None:
            return None
        got = "ixfr" if coll.result[0] == "steps" else "axfr"
        _count(self.stats, f"xfr_in.{got}.ok", "pop53_xfr_in_total", "transfers received",
               zone=st.name, kind=got, result="ok")
        return coll.result

    def _reject(self, st: _ZoneState, why: str, reason: str) -> None:
        st.last_error = why
        _count(self.stats, f"update.rejected.{reason}", "pop53_xfr_updates_rejected_total",
               "updates rejected (previous version kept)", zone=st.name, reason=reason)
        log.error("zone %s: update rejected, serving serial %s still: %s", st.name, st.serial, why)

    # ---------------------------------------------------------------- accept / publish
    def _version(self, st, zone, data, records, steps=None, changed=None) -> ZoneVersion:
        return ZoneVersion(st.name, jr.serial_of(zone), zone, data, records, steps, changed)

    async def _accept(self, st: _ZoneState, new: dns.zone.Zone, rec: jr.Record | None, records: int,
                      changed: frozenset | None, source: str) -> None:
        """Validate; then publish now, or queue for later in the input-delayed role."""
        try:
            # an IXFR diff on a validated version: only the changed names need checking
            data = await asyncio.to_thread(validate_version, new, f"{source} serial {jr.serial_of(new)}",
                                           records, self.config.max_records,
                                           changed if rec is not None and st.latest is not None else None)
        except UpdateRejected as exc:
            self._reject(st, str(exc), "validation")
            raise
        except Exception as exc:  # a validator bug must not take the engine down
            self._reject(st, f"{type(exc).__name__}: {exc}", "validation")
            raise UpdateRejected(str(exc)) from None
        self.timings.setdefault(st.name, {})["validated"] = time.monotonic()
        if rec is None:  # first version of this zone
            rec_for_pending = jr.Record((), time.time(), full=True)
        else:
            rec_for_pending = rec
        if self.config.delay and st.zone is not None:
            p = _Pending(rec_for_pending.received + self.config.delay, new, data, rec_for_pending,
                         records, changed)
            st.pending.append(p)
            st.latest, st.latest_records = new, records
            if rec is not None and st.store is not None:
                async with self._store_lock(st):
                    await asyncio.to_thread(self._journal_append, st, rec)
                st.records_since_snapshot += 1
            _count(self.stats, "update.pending", "pop53_xfr_updates_pending_total",
                   "updates queued by the input-delayed role", zone=st.name)
            log.info("zone %s: serial %d queued, applies in %.0f s (input-delayed role)",
                     st.name, jr.serial_of(new), self.config.delay)
            return
        await self._apply(st, new, data, rec, records, changed, journaled=False)

    async def _apply_due(self, st: _ZoneState, now: float) -> None:
        while st.pending and st.pending[0].due <= now:
            p = st.pending[0]
            try:
                await self._apply(st, p.zone, p.data, p.record if p.record.steps else None,
                                  p.records, p.changed, journaled=True)
            except UpdateRejected:
                # Everything queued after it was built on it: drop it all, fetch again later.
                st.pending.clear()
                st.latest, st.latest_records = st.zone, st.records
                if st.store is not None:
                    async with self._store_lock(st):
                        await asyncio.to_thread(self._journal_rewrite, st, list(st.history))
                return
            st.pending.popleft()

    async def _apply(self, st, new, data, rec, records, changed, journaled: bool) -> None:
        version = self._version(st, new, data, records, rec.steps if rec else None, changed)
        try:
            await self._publish(st.name, version)
        except Pop53Error as exc:
            self._reject(st, str(exc), "publish")
            raise UpdateRejected(str(exc)) from None
        self.timings.setdefault(st.name, {})["published"] = time.monotonic()
        first = st.zone is None
        st.zone, st.data, st.records = new, data, records
        # In the input-delayed role `latest` already points at the newest queued version.
        if not self.config.delay or st.latest is None:
            st.latest, st.latest_records = new, records
        if rec is not None:
            st.history.append(rec)
            if len(st.history) > self.config.journal_keep:
                del st.history[: len(st.history) - self.config.journal_keep]
        _count(self.stats, "update.applied", "pop53_xfr_updates_applied_total",
               "updates published", zone=st.name)
        log.info("zone %s: serving serial %d (%d records)", st.name, version.serial, records)
        await self._persist(st, rec, journaled, full=first or rec is None or rec.full)
        self._send_notifies(st)

    async def _publish(self, name: str, version: ZoneVersion | None) -> None:
        async with self._publish_lock:
            await asyncio.to_thread(self._call_publish, name, version)

    def _call_publish(self, name: str, version: ZoneVersion | None) -> None:
        if self.publish_cb is not None:
            self.publish_cb(name, version)

    @staticmethod
    def _journal_append(st: _ZoneState, rec) -> None:
        """Append unless a journal rewrite already wrote this record (call with the store lock)."""
        if id(rec) in st.journaled:
            return
        st.store.append(rec)
        st.journaled.add(id(rec))

    @staticmethod
    def _journal_rewrite(st: _ZoneState, recs: list) -> None:
        """Rewrite the journal with exactly `recs` (call with the store lock)."""
        st.store.rewrite_journal(recs)
        st.journaled = {id(r) for r in recs}

    def _store_lock(self, st: _ZoneState) -> asyncio.Lock:
        if st.store_lock is None:
            st.store_lock = asyncio.Lock()
        return st.store_lock

    async def _persist(self, st: _ZoneState, rec: jr.Record | None, journaled: bool, full: bool) -> None:
        """Runs after publish, so disk speed never delays what is served."""
        if st.store is None:
            return
        lock = self._store_lock(st)
        try:
            if rec is not None and not journaled:
                async with lock:
                    await asyncio.to_thread(self._journal_append, st, rec)
                st.records_since_snapshot += 1
        except OSError as exc:
            self._persist_failed(st, exc)
            return
        # A snapshot after a full transfer and when the journal grows past its keep limit (the
        # journal is then cut to what IXFR-out still needs plus what is pending).  Written in
        # the background: a million-name zone takes tens of seconds to write, and zone versions
        # are immutable, so it needs no lock while journal appends for newer versions go on (a
        # lock held for the whole write stalled the next update by as long).  Snapshots are
        # serialized among themselves; the journal rewrite at the end takes the store lock and
        # keeps every record known by then.
        if full or st.records_since_snapshot > max(1, self.config.journal_keep):
            st.records_since_snapshot = 0
            zone = st.zone
            if st.snapshot_lock is None:
                st.snapshot_lock = asyncio.Lock()
            snap_lock = st.snapshot_lock

            async def write():
                try:
                    async with snap_lock:
                        await asyncio.to_thread(st.store.save_snapshot_isolated, zone)
                        async with lock:
                            recs = list(st.history) + [p.record for p in st.pending if p.record.steps]
                            await asyncio.to_thread(self._journal_rewrite, st, recs)
                except OSError as exc:
                    self._persist_failed(st, exc)
            t = asyncio.ensure_future(write())
            self._writes.add(t)
            t.add_done_callback(self._writes.discard)

    def _persist_failed(self, st: _ZoneState, exc: Exception) -> None:
        # Serving goes on; after a restart the primary fills the gap.
        log.error("zone %s: cannot save state: %s", st.name, exc)
        _count(self.stats, "persist.failed", "pop53_xfr_persist_failures_total",
               "state writes that failed", zone=st.name)

    # ---------------------------------------------------------------- NOTIFY out
    def _send_notifies(self, st: _ZoneState) -> None:
        if self.loop is None or not st.conf.notify:
            return

        def go():
            for peer in st.conf.notify:
                # A newer version supersedes a NOTIFY still being retried for an older one.
                old = self._notify_by_peer.get((st.name, peer))
                if old is not None and not old.done():
                    old.cancel()
                t = asyncio.ensure_future(self._notify_one(st, peer))
                self._notify_by_peer[(st.name, peer)] = t
                self._notify_tasks.add(t)
                t.add_done_callback(self._notify_tasks.discard)
        try:
            if asyncio.get_running_loop() is self.loop:
                go()
                return
        except RuntimeError:
            pass
        self.loop.call_soon_threadsafe(go)

    async def _notify_one(self, st: _ZoneState, peer: Peer) -> None:
        """RFC 1996 §3.6: retry (here with a doubling timeout) until a reply or retries run out."""
        zone = st.zone
        if zone is None:
            return
        timeout = 1.0
        for attempt in range(self.config.notify_retries + 1):
            q = dns.message.make_query(st.conf.name, SOA)
            q.flags = dns.flags.AA  # before set_opcode: the opcode lives in the flags word
            q.set_opcode(dns.opcode.NOTIFY)
            name, ttl, rd = jr.soa_of(zone)
            q.find_rrset(q.answer, name, IN, SOA, create=True).add(rd, ttl)
            self._sign(q, st)
            try:
                r = await dns.asyncquery.udp(q, peer.host, timeout=timeout, port=peer.port)
                if r.rcode() == dns.rcode.NOERROR:
                    _count(self.stats, "notify.sent", "pop53_xfr_notify_sent_total",
                           "NOTIFY acknowledged by secondaries", zone=st.name)
                    return
                log.warning("zone %s: NOTIFY to %s answered %s", st.name, peer, dns.rcode.to_text(r.rcode()))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("zone %s: NOTIFY to %s attempt %d: %s: %s", st.name, peer, attempt,
                          type(exc).__name__, exc)
                if attempt == self.config.notify_retries:
                    log.warning("zone %s: NOTIFY to %s failed: %s", st.name, peer, exc)
                    _count(self.stats, "notify.failed", "pop53_xfr_notify_failed_total",
                           "NOTIFY never acknowledged", zone=st.name)
                timeout = min(timeout * 2, 8.0)

    # ---------------------------------------------------------------- status / staleness
    def status(self) -> dict:
        """Per-zone freshness and the machine's stale flag (see pop53.anycast.staleness)."""
        zones = {}
        for st in self.zones.values():
            if not st.conf.secondary:
                continue
            zones[st.name] = {
                "serial": st.serial,
                "latest_serial": st.latest_serial,
                "last_ok": st.last_ok,
                "expired": st.expired,
                "pending": len(st.pending),
                "pending_serials": [jr.serial_of(p.zone) for p in st.pending],
                "last_error": st.last_error,
            }
        return staleness.machine_status(zones, role=self.config.role, stale_after=self.config.stale_after,
                                        delay=self.config.delay)

    @property
    def state_file(self) -> Path | None:
        return self.config.state / staleness.STATE_FILE if self.config.state else None

    async def _housekeeping(self) -> None:
        while True:
            try:
                s = self.status()
                g = _metric("Gauge", "pop53_xfr_stale", "1 when this machine's data is stale (§4.2.2)", ())
                if g is not None:
                    g.set(1 if s["stale"] else 0)
                for name, z in s["zones"].items():
                    g = _metric("Gauge", "pop53_xfr_zone_age_seconds",
                                "seconds since the zone was last known current", ("zone",))
                    if g is not None and z["age"] is not None:
                        g.labels(zone=name).set(z["age"])
                    g = _metric("Gauge", "pop53_xfr_zone_serial", "serial served", ("zone",))
                    if g is not None and z["serial"] is not None:
                        g.labels(zone=name).set(z["serial"])
                    g = _metric("Gauge", "pop53_xfr_zone_is_expired", "1 when the zone expired", ("zone",))
                    if g is not None:
                        g.labels(zone=name).set(1 if z["expired"] else 0)
                if self.state_file is not None:
                    self.config.state.mkdir(parents=True, exist_ok=True)
                    await asyncio.to_thread(staleness.write_state, self.state_file, s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("xfr status: %s", exc)
            await asyncio.sleep(self.config.status_interval)

    # ---------------------------------------------------------------- listeners
    async def serve(self, host: str, port: int, answer: Callable[[bytes, tuple], bytes | None] | None = None):
        """A small TCP + UDP listener for NOTIFY, SOA and XFR (RFC 7766 framing on TCP).  The
        server's own sockets will call the handle_* functions instead; `answer` lets it route
        ordinary queries to the data plane here meanwhile.  Must run on the engine's loop."""
        svc = self
        loop = asyncio.get_running_loop()

        def dispatch(wire: bytes, peer, tcp: bool) -> list[bytes]:
            try:
                r = svc.handle_notify(wire, peer)
                if r is not None:
                    return [r]
                if tcp:
                    rs = svc.handle_tcp_query(wire, peer)
                    if rs is not None:
                        return rs
                elif len(wire) >= 12:
                    try:
                        qm = dns.message.from_wire(wire, keyring=False, question_only=True)
                        if qm.question and qm.question[0].rdtype in (AXFR, IXFR):
                            # RFC 1995 §2: over UDP, answer with our SOA only (client uses TCP).
                            st = svc._served(qm.question[0].name)
                            if st is not None and qm.question[0].rdtype == IXFR:
                                r = dns.message.make_response(qm)
                                n, ttl, rd = jr.soa_of(st.zone)
                                r.find_rrset(r.answer, n, IN, SOA, create=True).add(rd, ttl)
                                return [r.to_wire()]
                            return [x for x in [_simple_reply(wire, dns.rcode.REFUSED)] if x]
                    except Exception:
                        pass
                r = svc.handle_query(wire, peer)
                if r is not None:
                    return [r]
                if answer is not None:
                    r = answer(wire, peer)
                    return [r] if r is not None else []
                r = _simple_reply(wire, dns.rcode.REFUSED)
                return [r] if r is not None else []
            except Exception as exc:  # never let one message kill the listener
                log.exception("xfr listener: %s", exc)
                return []

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                for r in dispatch(data, addr, False):
                    self.transport.sendto(r, addr)

        async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            peer = writer.get_extra_info("peername")
            try:
                for _ in range(1000):  # bounded messages per connection
                    try:
                        hdr = await asyncio.wait_for(reader.readexactly(2), 30)
                        (n,) = struct.unpack("!H", hdr)
                        wire = await asyncio.wait_for(reader.readexactly(n), 30)
                    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                        break
                    replies = await loop.run_in_executor(None, dispatch, wire, peer, True)
                    for r in replies:
                        writer.write(struct.pack("!H", len(r)) + r)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_tcp, host, port, reuse_address=True)
        transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
        self._servers.extend([server, transport])
        return server, transport

    def start_listener(self, host: str, port: int, answer=None) -> None:
        """`serve` on the engine's thread (after start())."""
        self.call(self.serve(host, port, answer))


def _simple_reply_msg(msg: dns.message.Message, rcode: int) -> bytes:
    """A reply to a parsed request; signed with the request's key when it was signed."""
    r = dns.message.make_response(msg)
    r.set_rcode(rcode)
    return r.to_wire()
