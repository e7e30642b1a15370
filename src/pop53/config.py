"""The TOML configuration: parsing and checks.  Every error names the file and the key path.

    [server]
    listen = ["127.0.0.1:5353", "[::1]:5353"]
    workers = 2              # default: one per core
    identity = "pop1-m1"     # NSID and id.server
    user = "pop53"
    metrics = "127.0.0.1:9153"
    [[zone]]
    name = "example.com."
    file = "zones/example.com.zone"

Other tables ([[key]], the secondary-zone keys of [[zone]], [agent], ...) belong to the
modules that use them; they read the same document.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib

import dns.name

from pop53 import schema
from pop53.errors import ConfigError
from pop53.scoring.settings import parse_settings as parse_scoring

# every table and key is declared in pop53.schema (names, types, defaults, meanings)
SERVER_KEYS = frozenset(schema.SCHEMA.tables["server"].keys)
ZONE_KEYS = frozenset(schema.SCHEMA.tables["zone"].keys)


@dataclasses.dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass
class ZoneConfig:
    name: str
    file: str | None
    raw: dict


@dataclasses.dataclass
class Config:
    listen: list[Listen]
    workers: int
    identity: str
    version: str
    user: str | None
    metrics: Listen | None
    state: str | None
    edns_max: int = 1232
    chaos: bool = True
    nsid: bool = True
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1024
    tcp_max_queries: int = 1000
    tcp_workers: int = 1                # TCP loop threads (docs/tcp.md)
    tcp_max_per_ip: int = 256           # connections per client address (IPv6: per /64); 0: off
    tcp_message_timeout: float = 2.0    # an incomplete message, from its first byte
    tcp_busy_timeout: float = 0.2       # the same when over half the connection slots are taken
    tcp_write_timeout: float = 5.0      # a peer that does not read its answers
    tcp_max_control_connections: int = 64  # handed to the control plane (NOTIFY/XFR/TSIG)
    reuseport_bpf: bool = False
    receive_timestamps: bool = True     # SO_TIMESTAMPNS: latency with the kernel queue (dnstap.md)
    receive_timestamp_every: int = 16   # ... during one second in N (ext/kstamp.pxi)
    udp_coalesce_us: int = 0            # a UDP worker's pause after a small batch (ext/io.pxi)
    xdp: list[str] = dataclasses.field(default_factory=list)   # AF_XDP interfaces (serve/xdp.py)
    max_image_bytes: int = 0
    control: str | None = None
    rrl: dict | None = None             # [rrl]: response rate limiting (RateLimiter's arguments)
    scoring: dict | None = None         # [scoring]: query scoring (pop53.scoring.settings)
    cookie_secret: bytes | None = None  # DNS COOKIEs on: the RFC 9018 server secret
    cookie_secret_previous: bytes | None = None
    serial_check: str = "warn"          # pop53.serve.loads.POLICIES
    # relative zone files and $INCLUDE names resolve here: [server] zone_dir, else the config
    # file's directory (None: the working directory, for zones given on the command line)
    zone_dir: str | None = None
    log_format: str = "text"            # [log] format / level (pop53.logs)
    log_level: str = "info"
    zones: list[ZoneConfig] = dataclasses.field(default_factory=list)
    mapping: object = None              # [[map]]/[[target]]/[[mapped]]: pop53.mapping.config
    source: str | None = None
    doc: dict = dataclasses.field(default_factory=dict)


def _tcp(server: dict, file) -> dict:
    """The TCP loop's keys beyond the three original ones (docs/tcp.md)."""
    out = {"tcp_workers": _typed(server, "tcp_workers", int, 1, "server", file),
           "tcp_max_per_ip": _typed(server, "tcp_max_per_ip", int, 256, "server", file),
           "tcp_max_control_connections": _typed(server, "tcp_max_control_connections", int, 64,
                                                 "server", file)}
    if out["tcp_max_control_connections"] < 1:
        raise ConfigError("must be >= 1", file=file, key="server.tcp_max_control_connections")
    if not 1 <= out["tcp_workers"] <= 64:
        raise ConfigError(f"must be within 1..64, got {out['tcp_workers']}", file=file,
                          key="server.tcp_workers")
    for name in ("tcp_max_connections", "tcp_max_queries"):
        if name in server and _typed(server, name, int, 1, "server", file) < 1:
            raise ConfigError("must be >= 1", file=file, key=f"server.{name}")
    if out["tcp_max_per_ip"] < 0:
        raise ConfigError("must be >= 0 (0: no limit)", file=file, key="server.tcp_max_per_ip")
    for name, default in (("tcp_message_timeout", 2.0), ("tcp_busy_timeout", 0.2),
                          ("tcp_write_timeout", 5.0)):
        out[name] = _typed(server, name, float, default, "server", file)
        if not 0 < out[name] <= 3600:
            raise ConfigError(f"must be within (0, 3600] seconds, got {out[name]}", file=file,
                              key=f"server.{name}")
    return out


def parse_listen(text, key: str, file: str | None, default_port: int = 53) -> Listen:
    if not isinstance(text, str):
        raise ConfigError(f"expected \"ADDRESS:PORT\", got {text!r}", file=file, key=key)
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"unclosed '[' in {text!r}", file=file, key=key)
        host = text[1:end]
        rest = text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"expected ':PORT' after ']' in {text!r}", file=file, key=key)
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{host!r} is not an IP address", file=file, key=key) from None
    try:
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"bad port in {text!r}", file=file, key=key) from None
    return Listen(host, port)


def _server_int(server: dict, key: str, default: int, lo: int, hi: int, file) -> int:
    """An integer [server] key within lo..hi."""
    n = _typed(server, key, int, default, "server", file)
    if not lo <= n <= hi:
        raise ConfigError(f"must be within {lo}..{hi}, got {n}", file=file, key=f"server.{key}")
    return n


def _typed(doc: dict, name: str, kind, default, key: str, file):
    if name not in doc:
        return default
    v = doc[name]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError(f"expected {kind.__name__}, got {type(v).__name__} {v!r}", file=file,
                          key=f"{key}.{name}")
    return v


def _xdp(server: dict, file) -> list[str]:
    """[server] xdp: interface names to serve UDP on over AF_XDP (pop53.serve.xdp)."""
    names = server.get("xdp", [])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) < 16 for n in names):
        raise ConfigError("expected a list of interface names", file=file, key="server.xdp")
    if len(set(names)) != len(names):
        raise ConfigError("an interface is listed twice", file=file, key="server.xdp")
    return names


# [rrl] key -> (default, minimum, maximum)
RRL_KEYS = {"rate": (0, 0, 1_000_000), "slip": (2, 0, 100), "ipv4_prefix": (24, 0, 32),
            "ipv6_prefix": (56, 0, 128), "table_size": (65536, 1024, 1 << 26)}


def _rrl(raw, file) -> dict | None:
    """[rrl]: responses per second per (client prefix, response kind, name); 0 or absent: off."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", file=file, key="rrl")
    out = {}
    for k, (default, lo, hi) in RRL_KEYS.items():
        v = _typed(raw, k, int, default, "rrl", file)
        if not lo <= v <= hi:
            raise ConfigError(f"must be within {lo}..{hi}, got {v}", file=file, key=f"rrl.{k}")
        out[k] = v
    if out["table_size"] & (out["table_size"] - 1):
        raise ConfigError(f"must be a power of two, got {out['table_size']}", file=file,
                          key="rrl.table_size")
    # never limited: by default loopback, where the monitoring agent's probes come from
    exempt = raw.get("exempt", ["127.0.0.0/8", "::1/128"])
    if not isinstance(exempt, list) or len(exempt) > 32:
        raise ConfigError("expected a list of at most 32 prefixes", file=file, key="rrl.exempt")
    for i, e in enumerate(exempt):
        try:
            ipaddress.ip_network(e, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f"not an address prefix: {e!r}", file=file,
                              key=f"rrl.exempt[{i}]") from None
    out["exempt"] = tuple(exempt)
    return out if out["rate"] else None


def _cookies(server: dict, file) -> dict:
    """[server] cookies / cookie_secret / cookie_secret_previous: DNS COOKIEs (RFC 7873) with
    RFC 9018 server cookies.  Machines behind one anycast address must share the secret (32 hex
    digits); `cookies = true` without one makes a random secret per process."""
    cookies = _typed(server, "cookies", bool, "cookie_secret" in server, "server", file)
    out = {"cookie_secret": None, "cookie_secret_previous": None}
    for k in ("cookie_secret", "cookie_secret_previous"):
        v = _typed(server, k, str, None, "server", file)
        if v is None:
            continue
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raw = b""
        if len(raw) != 16:
            raise ConfigError("expected 32 hexadecimal digits (16 bytes)", file=file, key=f"server.{k}")
        out[k] = raw
    if out["cookie_secret_previous"] is not None and out["cookie_secret"] is None:
        raise ConfigError("a previous secret needs a current cookie_secret", file=file,
                          key="server.cookie_secret_previous")
    if not cookies:
        if out["cookie_secret"] is not None:
            raise ConfigError("cookies = false with a cookie_secret: keep one", file=file,
                              key="server.cookies")
        return out
    if out["cookie_secret"] is None:
        out["cookie_secret"] = os.urandom(16)
    return out


def _one_of(doc: dict, name: str, allowed: tuple, file, table: str = "server",
            default=None) -> str:
    v = _typed(doc, name, str, default or allowed[0], table, file)
    if v not in allowed:
        raise ConfigError(f"expected one of {', '.join(allowed)}, got {v!r}", file=file,
                          key=f"{table}.{name}")
    return v


def _log(raw: dict, file) -> dict:
    from pop53.logs import FORMATS, LEVELS
    return {"log_format": _one_of(raw, "format", FORMATS, file, "log"),
            "log_level": _one_of(raw, "level", tuple(LEVELS), file, "log", default="info")}


def from_dict(doc: dict, file: str | None = None, base_dir: str | None = None) -> Config:
    """Check a parsed TOML document.  Relative zone paths are relative to [server] zone_dir,
    itself relative to base_dir (the config file's directory)."""
    schema.validate(doc, file)     # unknown tables and keys, with a hint (the same for check)
    server = doc.get("server", {})
    zone_dir = _typed(server, "zone_dir", str, None, "server", file)
    if zone_dir is not None and base_dir and not os.path.isabs(zone_dir):
        zone_dir = os.path.join(base_dir, zone_dir)
    base_dir = zone_dir or base_dir
    listen_raw = server.get("listen", ["127.0.0.1:53"])
    if isinstance(listen_raw, str):
        listen_raw = [listen_raw]
    if not isinstance(listen_raw, list) or not listen_raw:
        raise ConfigError("expected a non-empty list of \"ADDRESS:PORT\"", file=file, key="server.listen")
    listen = [parse_listen(v, f"server.listen[{i}]", file) for i, v in enumerate(listen_raw)]
    if len(set(listen)) != len(listen):
        raise ConfigError("an address is listed twice", file=file, key="server.listen")
    workers = _typed(server, "workers", int, os.cpu_count() or 1, "server", file)
    if not 1 <= workers <= 256:
        raise ConfigError(f"must be within 1..256, got {workers}", file=file, key="server.workers")
    identity = _typed(server, "identity", str, socket.gethostname(), "server", file)
    version = _typed(server, "version", str, "pop53", "server", file)
    for k, v in (("identity", identity), ("version", version)):
        if len(v.encode()) > 255:
            raise ConfigError("at most 255 bytes", file=file, key=f"server.{k}")
    metrics = server.get("metrics")
    if metrics is not None:
        metrics = parse_listen(metrics, "server.metrics", file, default_port=9153)
    edns_max = _typed(server, "edns_max", int, 1232, "server", file)
    if not 512 <= edns_max <= 4096:
        raise ConfigError(f"must be within 512..4096, got {edns_max}", file=file, key="server.edns_max")
    cfg = Config(
        listen=listen, workers=workers, identity=identity, version=version,
        user=_typed(server, "user", str, None, "server", file),
        metrics=metrics,
        state=_typed(server, "state", str, None, "server", file),
        edns_max=edns_max,
        chaos=_typed(server, "chaos", bool, True, "server", file),
        nsid=_typed(server, "nsid", bool, True, "server", file),
        tcp_idle_timeout=_typed(server, "tcp_idle_timeout", float, 10.0, "server", file),
        tcp_max_connections=_typed(server, "tcp_max_connections", int, 1024, "server", file),
        tcp_max_queries=_typed(server, "tcp_max_queries", int, 1000, "server", file),
        **_tcp(server, file),
        reuseport_bpf=_typed(server, "reuseport_bpf", bool, False, "server", file),
        receive_timestamps=_typed(server, "receive_timestamps", bool, True, "server", file),
        receive_timestamp_every=_server_int(server, "receive_timestamp_every", 16, 1, 65536,
                                            file),
        udp_coalesce_us=_server_int(server, "udp_coalesce_us", 0, 0, 1000, file),
        xdp=_xdp(server, file),
        max_image_bytes=_typed(server, "max_image_bytes", int, 0, "server", file),
        control=_typed(server, "control", str, None, "server", file),
        serial_check=_one_of(server, "serial_check", ("warn", "refuse", "off"), file),
        zone_dir=base_dir,
        rrl=_rrl(doc.get("rrl"), file),
        scoring=parse_scoring(doc.get("scoring"), file, base_dir),
        **_cookies(server, file),
        **_log(doc.get("log", {}), file),
        source=file, doc=doc,
    )
    zones = doc.get("zone", [])
    if not isinstance(zones, list):
        raise ConfigError("use [[zone]] tables", file=file, key="zone")
    seen = set()
    for i, z in enumerate(zones):
        key = f"zone[{i}]"
        if not isinstance(z, dict):
            raise ConfigError("must be a table", file=file, key=key)
        name = z.get("name")
        if not isinstance(name, str):
            raise ConfigError("missing or not a string", file=file, key=f"{key}.name")
        try:
            origin = dns.name.from_text(name)
        except Exception as exc:  # dnspython raises several types for bad names
            raise ConfigError(f"bad zone name {name!r}: {exc}", file=file, key=f"{key}.name") from None
        if origin in seen:
            raise ConfigError(f"zone {origin} is configured twice", file=file, key=f"{key}.name")
        seen.add(origin)
        zfile = z.get("file")
        if zfile is not None:
            if not isinstance(zfile, str):
                raise ConfigError("must be a string", file=file, key=f"{key}.file")
            if base_dir and not os.path.isabs(zfile):
                zfile = os.path.join(base_dir, zfile)
        elif "primaries" not in z and z.get("catalog") is not True:   # (a generated catalog)
            raise ConfigError("a zone needs a file or primaries", file=file, key=key)
        cfg.zones.append(ZoneConfig(name=origin.to_text(), file=zfile, raw=z))
    from pop53.mapping import config as mapping_config
    cfg.mapping = mapping_config.parse(doc, file, base_dir, zones=[z.name for z in cfg.zones])
    return cfg


def read_toml(path: str | os.PathLike) -> dict:
    """A TOML file as a dict; ConfigError naming the file when it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=os.fspath(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=os.fspath(path)) from None


def load(path: str | os.PathLike) -> Config:
    path = os.fspath(path)
    doc = read_toml(path)
    return from_dict(doc, file=path, base_dir=os.path.dirname(os.path.abspath(path)))
