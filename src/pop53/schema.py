"""The configuration schema: every table and key of the server's TOML, declared once.

`pop53 check` and `pop53 serve` both run `validate(doc, file)` before any value is parsed, so a
typo (`[[zones]]`, `[rlr]`, `fiel = ...`) is rejected the same way by both, with the key path and
a "did you mean" hint (issue 14 point 7).  The values themselves are checked where they are used
(config.py for [server], [[zone]], [rrl]; pop53.xfr for [xfr], [[key]] and the transfer keys of
[[zone]]); the schema only knows names, shapes, types, defaults and meanings.  `docs/config.md`
is generated from it (`python3 -m pop53.schema > docs/config.md`), so the reference cannot drift.

A new table registers itself with a few lines at the end of this file (declarations live here,
beside the others, so that validation and the reference see them without importing the module
that parses the values):

    t = SCHEMA.table("map", array=True, doc="A mapping: ...")
    t.key("name", "string", None, "the map's name, used by [[target]] map = ...")
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Any

from pop53.errors import ConfigError

REQUIRED = object()   # a key without a default


class Computed(str):
    """A default computed at start (\"one per core\"): the reference prints it as prose."""


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    type: str          # for the reader: "string", "integer", "number", "boolean", "list of ..."
    default: Any       # REQUIRED, None (unset: the feature is off) or the value used
    doc: str


@dataclasses.dataclass
class Table:
    name: str
    doc: str
    array: bool = False             # [[name]] (an array of tables) or [name]
    keys: dict[str, Key] = dataclasses.field(default_factory=dict)
    tables: dict[str, "Table"] = dataclasses.field(default_factory=dict)

    def key(self, name: str, type: str, default: Any, doc: str) -> "Table":
        if name in self.keys or name in self.tables:
            raise ValueError(f"{self.name}.{name} declared twice")
        self.keys[name] = Key(name, type, default, doc)
        return self

    def table(self, name: str, *, doc: str, array: bool = False) -> "Table":
        """Declare a sub-table ([parent.name] / [[parent.name]]); returns it for its keys."""
        if name in self.keys or name in self.tables:
            raise ValueError(f"{self.name}.{name} declared twice")
        t = self.tables[name] = Table(name, doc, array)
        return t

    @property
    def names(self) -> list[str]:
        return list(self.keys) + list(self.tables)


class Schema(Table):
    """The document: its tables are the top-level tables."""

    def __init__(self):
        super().__init__("", "")


SCHEMA = Schema()


def _kind(v: Any) -> str:
    return {dict: "a table", list: "an array"}.get(type(v), type(v).__name__)


def _hint(name: str, table: Table, path: str, shown) -> str:
    """ "; did you mean X?" from the names of this table, else the table that knows the key."""
    close = difflib.get_close_matches(name, table.names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {shown(close[0])}?"
    elsewhere = [t for t in SCHEMA.tables.values() if name in t.keys and t is not table]
    if elsewhere:
        return f"; it belongs in {_brackets(elsewhere[0])}"
    if table.names:
        return f" (known: {', '.join(sorted(table.names))})"
    return ""


def _brackets(t: Table, prefix: str = "") -> str:
    name = prefix + t.name
    return f"[[{name}]]" if t.array else f"[{name}]"


def _check_table(doc: dict, table: Table, path: str, file: str | None) -> None:
    for k, v in doc.items():
        where = f"{path}.{k}" if path else k
        sub = table.tables.get(k)
        if sub is not None:
            _check_value(v, sub, where, file)
        elif k not in table.keys:
            if not path:
                what = f"[[{k}]]" if isinstance(v, list) and v and all(
                    isinstance(x, dict) for x in v) else f"[{k}]" if isinstance(v, dict) else k
                raise ConfigError(f"unknown table {what}"
                                  + _hint(k, table, path, lambda n: _brackets(SCHEMA.tables[n])),
                                  file=file, key=k)
            raise ConfigError("unknown key" + _hint(k, table, path, lambda n: f'"{n}"'),
                              file=file, key=where)


def _check_value(v: Any, table: Table, where: str, file: str | None) -> None:
    if table.array:
        if isinstance(v, dict):
            raise ConfigError(f"use [[{where}]] (an array of tables), not [{where}]",
                              file=file, key=where)
        if not isinstance(v, list):
            raise ConfigError(f"expected an array of tables ([[{where}]]), got {_kind(v)}",
                              file=file, key=where)
        for i, item in enumerate(v):
            if not isinstance(item, dict):
                raise ConfigError(f"expected a table, got {_kind(item)}", file=file,
                                  key=f"{where}[{i}]")
            _check_table(item, table, f"{where}[{i}]", file)
    else:
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            raise ConfigError(f"use [{where}] (one table), not [[{where}]]", file=file, key=where)
        if not isinstance(v, dict):
            raise ConfigError(f"expected a table, got {_kind(v)}", file=file, key=where)
        _check_table(v, table, where, file)


def validate(doc: Any, file: str | None = None) -> None:
    """Reject unknown tables and keys and misshapen tables.  Raises ConfigError naming the
    file and the key path, with a hint when a known name is close."""
    if not isinstance(doc, dict):
        raise ConfigError("the configuration must be a table", file=file)
    _check_table(doc, SCHEMA, "", file)


# -- the reference ------------------------------------------------------------------------------
def _default_text(k: Key) -> str:
    if k.default is REQUIRED:
        return "required"
    if k.default is None:
        return "unset"
    if isinstance(k.default, Computed):
        return f"*{k.default}*"
    if isinstance(k.default, bool):
        return "`true`" if k.default else "`false`"
    if isinstance(k.default, str):
        return f'`"{k.default}"`'
    if isinstance(k.default, list):
        return "`[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x)
                                for x in k.default) + "]`"
    return f"`{k.default}`"


def markdown() -> str:
    """docs/config.md: every table and key with its type, default and meaning."""
    out = ["# Configuration reference", "",
           "<!-- Generated by `python3 -m pop53.schema > docs/config.md` from src/pop53/schema.py;",
           "     do not edit by hand (tests/cli/test_schema.py checks that it is current). -->", "",
           "`pop53 serve -c FILE` and `pop53 check -c FILE` read one TOML file.  Unknown tables "
           "and keys are rejected with the key path and a hint; relative paths are relative to "
           "the file's directory.", ""]

    def emit(t: Table, prefix: str) -> None:
        out.extend([f"## `{_brackets(t, prefix)}`", "", t.doc, ""])
        if t.keys:
            out.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
            for k in t.keys.values():
                doc = k.doc.replace("|", "\\|")
                out.append(f"| `{k.name}` | {k.type} | {_default_text(k)} | {doc} |")
            out.append("")
        for sub in t.tables.values():
            emit(sub, f"{prefix}{t.name}.")

    for t in SCHEMA.tables.values():
        emit(t, "")
    return "\n".join(out)


# -- the declarations ---------------------------------------------------------------------------
_server = SCHEMA.table("server", doc="The server process: where it listens, how many workers, "
                                     "its identity, state and control socket.")
(_server
 .key("listen", "string or list of strings", ["127.0.0.1:53"],
      '"ADDRESS:PORT" or "[V6]:PORT" to answer on, UDP and TCP (port 0: the kernel picks one)')
 .key("workers", "integer 1..256", Computed("one per core"), "UDP worker threads per listen address")
 .key("identity", "string", Computed("the host name"), "NSID (RFC 5001) and `id.server`/`hostname.bind` answer")
 .key("version", "string", "pop53", "the `version.bind`/`version.server` answer")
 .key("user", "string", None, "drop privileges to this user after binding (when started as root)")
 .key("metrics", "string", None, '"ADDRESS:PORT" of the Prometheus endpoint (default port 9153)')
 .key("state", "string", None, "state directory: the saved image (a restart maps it instead of "
      "parsing), transfer snapshots, journals, the status file, the learned resolvers")
 .key("zone_dir", "string", Computed("the config file's directory"), "relative zone `file` "
      "paths and `$INCLUDE` names resolve here (itself relative to the config file's directory)")
 .key("control", "string", None, "path of the control socket for `pop53 ctl` (mode 0600)")
 .key("edns_max", "integer 512..4096", 1232, "largest UDP answer advertised and sent (EDNS, RFC 6891)")
 .key("chaos", "boolean", True, "answer CHAOS TXT id.server, hostname.bind, version.bind")
 .key("nsid", "boolean", True, "answer the NSID option (RFC 5001) with `identity`")
 .key("tcp_idle_timeout", "number (seconds)", 10.0, "a TCP connection idle this long is closed (RFC 7766 §6.2.3)")
 .key("tcp_max_connections", "integer", 1024, "TCP connections held at once")
 .key("tcp_max_queries", "integer", 1000, "queries answered on one TCP connection; then every query "
      "already read is answered and the connection closed (docs/tcp.md)")
 .key("tcp_workers", "integer 1..64", 1, "TCP loop threads of the data plane (docs/tcp.md)")
 .key("tcp_max_per_ip", "integer", 256, "TCP connections per client address (IPv6: per /64); 0: no limit")
 .key("tcp_message_timeout", "number (seconds)", 2.0, "an incomplete TCP message is dropped this "
      "long after its first byte (slowloris)")
 .key("tcp_busy_timeout", "number (seconds)", 0.2, "the same when over half the TCP connection slots "
      "are taken")
 .key("tcp_write_timeout", "number (seconds)", 5.0, "a TCP peer that takes none of its answers for "
      "this long is reset")
 .key("tcp_max_control_connections", "integer", 64, "TCP connections handed to the control plane "
      "(NOTIFY, AXFR/IXFR, TSIG) held at once; a handoff past it is closed (docs/tcp.md)")
 .key("reuseport_bpf", "boolean", False, "steer UDP queries to workers with a classic BPF program (see docs/ecmp)")
 .key("receive_timestamps", "boolean", True, "the kernel's receive time of UDP queries (SO_TIMESTAMPNS) "
      "for pop53_answer_latency_total_seconds, the latency with the socket's queue (docs/dnstap.md; "
      "about 0.12-0.17 us of kernel CPU per stamped datagram, bench.micro.kstamp; [scoring] kernel_stamps asks for it regardless)")
 .key("receive_timestamp_every", "integer 1..65536", 16, "stamp the UDP queries read during one "
      "second in N (the histogram is a sample; outside those seconds the kernel stamps nothing, "
      "SO_TIMESTAMPING off); 1: every query, SO_TIMESTAMPNS for good; with [scoring] kernel_stamps "
      "every batch is stamped")
 .key("udp_coalesce_us", "integer 0..1000", 0, "opt-in: after a UDP receive batch of fewer than "
      "16 queries a worker sleeps this long before reading again, so replies and wake-ups come in "
      "larger batches: 8-13% less CPU per query at moderate load on loopback, but the sleep's real "
      "length is the kernel's (20 asked: about 100 us median, ms tails on a busy machine) and a "
      "query arriving meanwhile waits for it (docs/udp_cost.md); 0: no pause; off with [scoring]")
 .key("xdp", "string or list of strings", [], "interfaces whose UDP queries to the listen addresses "
      "are answered over AF_XDP, one socket and worker per queue (docs/xdp.md); without XDP "
      "support: a warning and the socket path")
 .key("max_image_bytes", "integer", 0, "reject a load whose compiled image is larger (0: no limit)")
 .key("cookies", "boolean", Computed("true when cookie_secret is set"), "DNS COOKIEs (RFC 7873)")
 .key("cookie_secret", "string (32 hex digits)", None, "RFC 9018 server-cookie secret, shared by "
      "every machine behind one anycast address (cookies = true without it: a random one per process)")
 .key("cookie_secret_previous", "string (32 hex digits)", None, "the previous secret, still accepted while rolling over")
 .key("serial_check", "string", "warn", 'a zone file that changed without a higher serial '
      '(secondaries would never transfer it): "warn", "refuse" (the previous version keeps '
      'serving) or "off"')
 .key("delay", "number (seconds)", 0.0, "same as [xfr] delay (set it in one place only)")
 .key("stale_after", "number (seconds)", 3600.0, "same as [xfr] stale_after (set it in one place only)"))

_zone = SCHEMA.table("zone", array=True, doc="One zone: loaded from a file (a primary) or "
                                              "transferred from primaries (a secondary).")
(_zone
 .key("name", "string", REQUIRED, "the zone's origin, e.g. \"example.com.\"")
 .key("file", "string", None, "zone file (RFC 1035 master format); a zone has a file or primaries")
 .key("primaries", "list of strings", [], '"ADDRESS[:PORT]" to transfer the zone from (a secondary)')
 .key("key", "string", None, "name of the [[key]] that signs transfers and NOTIFYs of this zone (TSIG)")
 .key("catalog", "boolean", False, "a catalog zone (RFC 9432, schema version 2).  With primaries "
      "(a consumer): transferred, and its member zones become secondary zones of the same "
      "primaries and key, added and removed as the catalog changes.  Without primaries or file "
      "(a producer): generated here, listing every file zone of this server")
 .key("notify", "list of strings", [], '"ADDRESS[:PORT]" of secondaries sent a NOTIFY on each change (RFC 1996)')
 .key("allow_transfer", "list of strings", Computed("the notify addresses"),
      "addresses or prefixes allowed to transfer the zone (AXFR/IXFR)")
 .key("dnssec_keys", "string", None, "directory of BIND key files (K<zone>+<alg>+<id>.key/.private) "
      "or a Knot key store (PKCS#8 *.pem), RSASHA256, RSASHA512, ECDSAP256SHA256 or ED25519: the "
      "keys of it that the zone publishes and that sign its SOA sign this zone's mapped answers "
      "online (the zone itself arrives signed; docs/dnssec-online.md); read again on reload; "
      "relative to the config file")
 .key("dnssec_validity", "integer (seconds)", 1209600, "validity of online signatures (inception "
      "one hour back)")
 .key("dnssec_refresh", "integer (seconds)", Computed("half of dnssec_validity"),
      "an online signature is renewed when less than this is left"))

_rrl = SCHEMA.table("rrl", doc="Response rate limiting on UDP (TCP is never limited): responses "
                               "per second per client prefix, response kind and name.")
(_rrl
 .key("rate", "integer 0..1000000", 0, "responses per second; 0: off")
 .key("slip", "integer 0..100", 2, "every Nth limited response is sent truncated (TC=1) instead of dropped; 0: never")
 .key("ipv4_prefix", "integer 0..32", 24, "IPv4 clients are counted per prefix of this length")
 .key("ipv6_prefix", "integer 0..128", 56, "IPv6 clients are counted per prefix of this length")
 .key("table_size", "integer (power of two)", 65536, "buckets in the limiter's table")
 .key("exempt", "list of strings", ["127.0.0.0/8", "::1/128"], "prefixes never limited (at most 32)"))

_scoring = SCHEMA.table("scoring", doc="Query scoring and prioritized processing on UDP (docs/scoring.md): "
                                       "every query is classed before any lookup (known resolver or valid "
                                       "cookie, normal, odd header, flooding source); under overload the "
                                       "worst classes are dropped first.  Off unless this table is present.")
(_scoring
 .key("enabled", "boolean", True, "false turns scoring off with the table present")
 .key("known_resolvers", "string", None, "file of known resolvers: one IPv4/IPv6 address or prefix a line "
      "(# comments), known by /24 and /56; re-read on reload")
 .key("source_rate", "integer", 2000, "queries per second per source /24 or /56, per worker, above which "
      "an unknown source is flooding")
 .key("known_rate", "integer", 20000, "the same for a known resolver's prefix (above it: normal class, "
      "except its trusted addresses)")
 .key("known_addr_rate", "integer", 20000, "queries per second per address of a known prefix, per worker, "
      "as a steady rate: the count keeps half of each past window, so a new address is over only at "
      "twice the rate in its first window (above it: normal class and no longer trusted)")
 .key("trust_after_ms", "integer (ms)", 1000, "an address of a known prefix becomes trusted when seen again "
      "this long after its first sighting with no overload in between (spoofed sources come with the "
      "attack); a trusted address stays top, and steered, when its prefix goes over known_rate")
 .key("trust_ttl", "number (seconds) 1..2592000", 86400, "a trusted address (of a known prefix, or "
      "proven by a cookie) not seen for this long loses its trust (its history starts again); so does "
      "an address demoted by a flood of its own, which would get its trust back once the flood stops "
      "(docs/scoring.md)")
 .key("strict_calm", "number (seconds) 1..2592000", 600, "strict known prefixes (only trusted addresses "
      "steered and top over known_rate) relax after this long without overload; one whose trusted "
      "address still asks is strict again at its next query")
 .key("known_nx_percent", "integer 1..100", 50, "a known address whose answers in the window are more than "
      "this share NXDOMAIN (water torture it relays; at least 32) is relaying: a trusted one has only its "
      "queries for a zone over `nx_rate` whose name is no node of the zone demoted to normal before the lookup (its other names stay top, "
      "in the priority socket) until the known resolvers are at risk with every other class cut; an "
      "untrusted one is demoted to normal as a whole and leaves the priority socket (docs/scoring.md)")
 .key("window_ms", "integer 10..60000", 1000, "the source sketch's window")
 .key("tick_ms", "integer 1..1000", 10, "the overload controller's period")
 .key("full_run", "integer 1..1000", 4, "consecutive full receive batches of the normal socket in a tick "
      "that mean overload (as do its kernel receive-queue drops): flood and odd are cut; normal only while "
      "the known resolvers are at risk (docs/scoring.md)")
 .key("recover", "integer 1..1024", 32, "admission share (of 1024) a cut class regains per calm tick")
 .key("yield_when_cut", "boolean", True, "with steer, while known resolvers are asking and a class is cut or "
      "the normal socket has a backlog, the UDP workers enter the scheduler (sched_yield) after each normal batch: under a CPU quota "
      "(containers' CPU limits) the kernel then stops a worker near its quota instead of at its next tick and "
      "throttling it for several periods (bench/attack/stalls.py, docs/scoring.md)")
 .key("rd_odd", "boolean", True, "a query with RD=1 counts as odd (resolvers send RD=0 to authorities)")
 .key("steer", "boolean", False, "kernel stage: a priority socket per worker, known resolvers steered "
      "to it by the reuseport program (eBPF: every known /24 and /56; classic BPF where the kernel refuses "
      "eBPF: at most 1,800 IPv4 /24s; replaces [server] reuseport_bpf)")
 .key("steer_cookies", "boolean", True, "with steer, [server] cookies and the eBPF program: an address "
      "that sent a valid server cookie of ours (RFC 7873/9018) is steered to the priority socket only, "
      "and always, with a valid one, whether its prefix is known or not (the program checks the cookie; "
      "datagrams spoofing the address without it stay in the normal queue); for trust_ttl after its "
      "last valid cookie (docs/scoring.md)")
 .key("steer_idle", "boolean", True, "with steer and the eBPF program: the program counts each worker's "
      "priority datagrams in a word the worker reads, so a worker reads its priority socket only when "
      "something is there, and while its normal queue is empty it waits in the normal socket's receive "
      "as a worker without scoring does, the program sending it its known resolvers there (they wait "
      "behind nothing), except while a flood is on; false: the worker polls both sockets, one system call "
      "more at each wake-up (docs/scoring.md, bench/results/attack-bound-s15)")
 .key("steer_names", "boolean", True, "with steer and the eBPF program: a trusted address the workers "
      "found relaying water torture (its answers mostly NXDOMAIN, its random names in a zone under "
      "NXDOMAIN pressure) is steered to the priority socket only with a question name that is a node of "
      "a served zone (a Bloom filter of the image's names, 4 MiB, refilled in a thread of its own after "
      "each image is published); its other names go to the normal socket, cut there under overload, not queued ahead "
      "of the known resolvers' queries (docs/scoring.md, \"The relay check in the steering program\")")
 .key("kernel_stamps", "boolean", False, "the controller's queue delay from kernel receive stamps (a "
      "stamp per batch: SO_TIMESTAMPNS on the priority sockets, SIOCGSTAMPNS on the normal ones); the "
      "kernel then stamps every packet the machine receives, about 3% of a reply at full speed on "
      "loopback.  false: from the worker's clock, a bound (every datagram in a queue arrived after the "
      "worker last found it empty; an idle worker's wake-up not counted), and the latency histograms "
      "stamped as [server] receive_timestamps says (docs/scoring.md)")
 .key("queue_bytes", "integer (bytes)", 0, "receive buffer of the normal UDP sockets (the kernel doubles it); "
      "0: sized from queue_ms.  Priority sockets: 8 ms of work, or 4 MiB")
 .key("queue_ms", "number (ms) 0..1000", 32, "with steer: size the normal sockets' receive buffers to this "
      "much of the worker's measured work per query (at most what the server's own sockets hold: 4 MiB "
      "asked, 8 MiB as the kernel counts it), enough to ride out its and its "
      "clients' scheduling stalls without dropping answers at capacity; under a flood, how stale an "
      "unknown client's answer may be (re-sized each second; 0: keep the server's 4 MiB)")
 .key("delay_target_us", "integer (us)", 2000, "queue delay (see kernel_stamps) that "
      "means overload when even the least delayed batch of a tick waited longer; of the priority socket's "
      "batches: the known resolvers are at risk (then the normal class is cut too)")
 .key("nx_rate", "integer", 1000, "NXDOMAINs per second per zone, per worker, above which the zone is "
      "under pressure: under overload its NXDOMAIN answers are dropped after the answer, worst class first")
 .key("learn_window", "number (seconds)", 0, "learning: the window (e.g. 86400); 0: off.  A source /24 or /56 "
      "answered in learn_min of the last learn_windows windows becomes known; frozen under overload")
 .key("learn_windows", "integer 1..1000", 7, "learning: windows remembered")
 .key("learn_min", "integer", 3, "learning: windows a prefix must be seen in"))

_xfr = SCHEMA.table("xfr", doc="Zone transfers (AXFR/IXFR, NOTIFY) and the secondary's freshness.")
(_xfr
 .key("role", "string", "normal", '"normal" or "delayed" (apply every update `delay` seconds later)')
 .key("delay", "number (seconds)", 0.0, "the delayed role's lag")
 .key("stale_after", "number (seconds)", 3600.0, "a zone not refreshed for this long makes the machine stale")
 .key("max_records", "integer", 5_000_000, "an update making a zone larger is rejected")
 .key("max_diff", "integer", 1_000_000, "an IXFR with more records than this is rejected")
 .key("max_transfer_bytes", "integer", 1 << 30, "a transfer stream larger than this is cut off")
 .key("journal_keep", "integer", 100, "journal entries kept per zone (IXFR is served from them)")
 .key("timeout", "number (seconds)", 10.0, "per message: SOA checks and transfers")
 .key("transfer_lifetime", "number (seconds)", 300.0, "a whole transfer")
 .key("min_refresh", "number (seconds)", 1.0, "floor under the SOA refresh and retry")
 .key("notify_retries", "integer", 5, "NOTIFY retransmissions (RFC 1996 §3.6)")
 .key("status_interval", "number (seconds)", 1.0, "how often the status file is rewritten")
 .key("compact_growth", "number", 1.25, "a patched image is recompiled past this times its last compiled size"))

_key = SCHEMA.table("key", array=True, doc="A TSIG key (RFC 8945) for transfers and NOTIFY.")
(_key
 .key("name", "string", REQUIRED, "the key's name, e.g. \"xfr-key.\"")
 .key("algorithm", "string", REQUIRED, "hmac-sha256, hmac-sha384, hmac-sha512, ...")
 .key("secret", "string (base64)", REQUIRED, "the shared secret, at least 16 octets"))

_log = SCHEMA.table("log", doc="Logging, on stderr (journald takes it from there under systemd).")
(_log
 .key("format", "string", "text", '"text" (TIME LOGGER LEVEL MESSAGE) or "json" (one object per line, '
      "with fields such as zone, serial, records)")
 .key("level", "string", "info", '"debug", "info", "warning" or "error"'))

_map = SCHEMA.table("map", array=True, doc="A map: client networks to regions (pop53.mapping; "
                                            "format in docs/mapping.md).")
(_map
 .key("name", "string", REQUIRED, "the map's name, used by [[mapped]] map = ...")
 .key("file", "string", REQUIRED, 'one "PREFIX REGION" per line, IPv4 and IPv6, any lengths, '
      "overlaps allowed (longest prefix wins), '#' comments")
 .key("default", "string", REQUIRED, "region for addresses no prefix covers")
 .key("key", "string", "ecs_then_source", '"ecs_then_source", "source_only" or "ecs_only": '
      "what address picks the region")
 .key("ecs_trust", "list of strings", [], "resolver prefixes whose ECS is used (empty: every "
      "resolver's)")
 .key("ecs_max_v4", "integer 0..32", 24, "longer IPv4 ECS source prefixes are cut to this")
 .key("ecs_max_v6", "integer 0..64", 56, "longer IPv6 ECS source prefixes are cut to this")
 .key("regions", "list of strings", None, "the regions the file may name (unset: any)"))

_target = SCHEMA.table("target", array=True, doc="An answer target with its liveness.")
(_target
 .key("name", "string", REQUIRED, "the target's name (pop53 ctl target NAME up|down)")
 .key("addresses", "list of strings", [], "IPv4/IPv6 addresses: A/AAAA answers use the family asked")
 .key("host", "string", None, "host name for CNAME and NS resources (NS: glue from `addresses`)")
 .key("up", "boolean", True, "the state before any liveness change")
 .key("weight", "integer", 1, "relative share of the clients of a sticky/weighted resource (1..65535)"))

_mapped = SCHEMA.table("mapped", array=True, doc="A name whose answer the client's network picks.")
(_mapped
 .key("name", "string", REQUIRED, "the mapped name, inside a served zone")
 .key("map", "string", REQUIRED, "the [[map]] that picks the region")
 .key("ttl", "integer", 20, "TTL of the mapped answer")
 .key("regions", "table of lists", REQUIRED, 'region -> target names, e.g. { eu = ["eu1"] }')
 .key("type", "string", None, '"A", "AAAA", "CNAME" or "NS" (a mapped referral); unset: A and AAAA')
 .key("fallback", "list of strings", [], "regions tried, in order, when a region's targets are all down")
 .key("select", "integer", 0, "at most this many targets per answer (0: every target up; "
      "sticky/weighted: default 1)")
 .key("all_down", "string", "configured", '"configured" (answer the configured set anyway), '
      '"servfail" or "nodata"')
 .key("selection", "string", "ordered", '"ordered" (the first `select` targets up, configured order), '
      '"sticky" (a stable per-client-block choice, rendezvous hashing) or "weighted" (sticky, '
      'in proportion to the targets\' weight)')
 .key("sticky_v4", "integer", 24, "sticky/weighted: the IPv4 client block a choice is stable on "
      "(answers claim an ECS scope of at least this)")
 .key("sticky_v6", "integer", 48, "sticky/weighted: the IPv6 client block (at most 64)"))

_feed = SCHEMA.table("feed", doc="The metadata feed: maps and target liveness over NATS JetStream "
                                 "(pop53.feed; docs/feed.md).")
(_feed
 .key("servers", "list of strings", REQUIRED, 'NATS servers, e.g. ["nats://127.0.0.1:4222"]')
 .key("trusted_keys", "list of strings", REQUIRED, "Ed25519 public keys (PEM) whose messages are applied")
 .key("revoked_keys", "list of strings", [], "key ids (16 hex digits) or public key files never accepted")
 .key("resolver_keys", "list of strings", [], "Ed25519 public keys (PEM) of other servers, trusted for "
      "`resolvers` messages only (their learned resolvers; never maps or liveness)")
 .key("publish_key", "string", None, "this server's Ed25519 private key (PEM): with [scoring] learn_window, "
      "its learned resolvers are published as a `resolvers` message named [feed] name whenever they change")
 .key("name", "string", "the host name", "this server's name in the feed (letters, digits, '-', '_')")
 .key("stream", "string", "pop53", "the stream name every message must carry")
 .key("prefix", "string", "pop53", "NATS subject prefix (PREFIX.map.NAME, PREFIX.target.NAME, PREFIX.heartbeat)")
 .key("nats_stream", "string", "POP53", "the JetStream stream followed")
 .key("delay", "number (seconds)", 0.0, "input-delayed role: apply every message this much later; never stale")
 .key("stale_after", "number (seconds)", 30.0, "no heartbeat for this long: the machine is stale")
 .key("consumer_heartbeat", "number 0.1..30 (seconds)", 0.5, "the NATS consumer's idle heartbeat: a "
      "consumer lost with its node (killed, partitioned) is recreated 2-4 heartbeats later; a big "
      "fleet may raise it to spread the recreations after a node failure"))

_dnstap = SCHEMA.table("dnstap", doc="dnstap (docs/dnstap.md): sampled queries and responses as "
                                     "AUTH_QUERY / AUTH_RESPONSE messages over Frame Streams, to a "
                                     "unix socket or a file.  Off unless this table is present.")
(_dnstap
 .key("socket", "string", None, "path of a Frame Streams reader's unix socket (bidirectional "
      "handshake; reconnects every `reconnect` seconds); set this or `file`")
 .key("file", "string", None, "a Frame Streams file, truncated at start (`dnstap-read FILE`)")
 .key("sample", "integer", 1, "log 1 in N queries (per worker, a countdown: exactly every Nth)")
 .key("queries", "boolean", True, "log the queries (AUTH_QUERY)")
 .key("responses", "boolean", True, "log the responses (AUTH_RESPONSE)")
 .key("identity", "string", Computed("[server] identity"), "the dnstap identity field")
 .key("version", "string", Computed("\"pop53 VERSION\""), "the dnstap version field")
 .key("ring_size", "integer (bytes)", 1 << 20, "each worker's ring; when the writer falls behind "
      "(or the output is down) further messages are dropped and counted, never waited for")
 .key("reconnect", "number (seconds)", 1.0, "how often a closed or missing socket is retried"))


if __name__ == "__main__":
    sys.stdout.write(markdown())
