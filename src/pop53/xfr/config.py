"""The transfer part of the server's TOML: [xfr] options, [[key]] TSIG keys, and the transfer keys
of [[zone]] (primaries, key, notify, allow_transfer).  Parsed once at load; every error names
the file and the key path (pop53.errors.ConfigError)."""
from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import dns.tsig

from pop53.config import parse_listen
from pop53.errors import ConfigError

log = logging.getLogger("pop53.xfr")

# RFC 8945 §6: HMAC-MD5 is deprecated and SHA-1 discouraged; we accept SHA-1 for old peers but
# never MD5.
ALGORITHMS = {
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


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


def _name(text: str, what: str, file: str | None, key: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ConfigError(f"bad {what} name: {exc}", file=file, key=key) from None


def _tables(doc: dict, name: str, file: str | None):
    """The [[name]] array of tables: (key path, table) pairs."""
    raw = doc.get(name, [])
    if not isinstance(raw, list):
        raise ConfigError(f"expected an array of tables ([[{name}]])", file=file, key=name)
    for i, table in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(table, dict):
            raise ConfigError("expected a table", file=file, key=where)
        yield where, table


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
    for where, k in _tables(doc, "key", file):
        for field in ("name", "algorithm", "secret"):
            if not isinstance(k.get(field), str) or not k.get(field):
                raise ConfigError("missing or not a string", file=file, key=f"{where}.{field}")
        name = _name(k["name"], "key", file, f"{where}.name")
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
    seen = set()
    for where, z in _tables(doc, "zone", file):
        if not isinstance(z.get("name"), str):
            raise ConfigError("missing or not a string", file=file, key=f"{where}.name")
        for k in z:
            if k not in ZONE_KEYS | _server_zone_keys():
                raise ConfigError(f"unknown key (known: {', '.join(sorted(ZONE_KEYS | _server_zone_keys()))})",
                                  file=file, key=f"{where}.{k}")
        name = _name(z["name"], "zone", file, f"{where}.name")
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


