"""Mapping peers on 127.0.0.1, each built from one :class:`~tests.support.mapping_data.MappingSpec`
(the shape of pop53's issue-10 config), started and stopped like the servers of
``tests/support/refservers.py`` (same process handling: own process group, free port, stop by
PID, work directory removed):

- :class:`GdnsdServer`: gdnsd 3.x, plugin_geoip with a ``nets`` file per map (no GeoIP
  database), a DYNA record per mapped name;
- :class:`KnotGeoipServer`: Knot DNS with mod-geoip in ``mode: subnet`` (one view per prefix)
  and ``edns-client-subnet: on``;
- :class:`PdnsGeoipServer`: the PowerDNS geoip backend, ``geoip-database-files`` empty, a
  service whose netmask keys pick per-region record sets (4.2+ works without a database);
- :class:`PdnsLuaServer`: PowerDNS LUA records (bind backend), one ``view()`` per name and type;
- :class:`Pop53MappingServer`: ``pop53 serve -c config.toml`` with the same data.

``reload_map(name, entries)`` replaces a map's prefixes the way each server expects (gdnsd watches its
nets file; Knot needs ``knotc reload``; PowerDNS ``pdns_control reload``; pop53 a SIGHUP) and
returns right after the trigger: the caller times when the new answer shows.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from pathlib import Path

from tests.support import mapping_data as md
import dns.edns
import dns.message
import dns.rdatatype

from tests.support.refservers import (
    KnotServer, Pop53Server, RefServer, RefServerError, Zone, _q, udp_query,
)

__all__ = ["GdnsdServer", "KnotGeoipServer", "PdnsGeoipServer", "PdnsLuaServer",
           "Pop53MappingServer",
           "MAPPING_PEERS", "Reply", "ask"]


class _MappingMixin:
    """A server whose data comes from a MappingSpec rather than from zone files."""

    spec: md.MappingSpec

    def _init_spec(self, spec: md.MappingSpec) -> list[Zone]:
        self.spec = spec
        # RefServer polls the SOA of its zones until they answer; the file is written at start.
        return [Zone(spec.origin, Path(os.devnull))]

    def _replace_map(self, name: str, entries) -> md.MapSpec:
        """A new spec with the map's entries replaced (the caller's spec is left alone)."""
        m = dataclasses.replace(self.spec.map(name), entries=list(entries))
        self.spec = dataclasses.replace(
            self.spec, maps=[m if x.name == name else x for x in self.spec.maps])
        return m

    def reload_map(self, name: str, entries) -> None:
        """Replace a map's prefixes: write the server's data (``write_map``), then tell it
        (``trigger_reload``).  Returns after the trigger; the caller times the new answer."""
        self.write_map(name, entries)
        self.trigger_reload()


class GdnsdServer(_MappingMixin, RefServer):
    """gdnsd 3.x in the foreground (``gdnsd -c DIR start``)."""

    kind = "gdnsd"
    binary = "gdnsd"

    def __init__(self, spec: md.MappingSpec, *, threads: int = 1, **kw) -> None:
        super().__init__(self._init_spec(spec), **kw)
        self.threads = threads
        self.nets: dict[str, Path] = {}

    def _argv(self) -> list[str]:
        return ["-c", self._path("etc"), "start"]

    def _write_config(self) -> None:
        self.nets = md.write_gdnsd(self.spec, Path(self._path("etc")), port=self.port,
                                   host=self.host, threads=self.threads)

    def write_map(self, name: str, entries) -> None:
        m = self._replace_map(name, entries)
        md.write_atomic(self.nets[name], md.gdnsd_nets_text(m))

    def trigger_reload(self) -> None:
        """Nothing to do: gdnsd watches the nets file (then waits for 5+7 s of quiescence)."""


class KnotGeoipServer(_MappingMixin, KnotServer):
    """knotd with mod-geoip (``knot-module-geoip``), subnet mode: the reference Knot config of
    refservers.KnotServer plus ECS, the module and its response file."""

    kind = "knot-geoip"

    def __init__(self, spec: md.MappingSpec, **kw) -> None:
        ttls = {mp.ttl for mp in spec.mapped}
        if len(ttls) > 1:
            raise ValueError("one mod-geoip instance has one TTL: give every mapped name the same")
        super().__init__(self._init_spec(spec), **kw)

    @classmethod
    def available(cls) -> bool:
        return super().available() and any(
            Path("/usr/lib").glob("*/knot/modules-*/geoip.so"))

    def _write_config(self) -> None:
        zone = Path(self._path("zone"))
        zone.write_text(self.spec.zone_text())
        self.zones = [Zone(self.spec.origin, zone)]
        md.write_atomic(Path(self._path("geo.conf")), md.knot_geo_conf(self.spec))
        super()._write_config()
        ttl = self.spec.mapped[0].ttl if self.spec.mapped else 60
        conf = Path(self._path("knot.conf")).read_text()
        # Off by default: without it mod-geoip never sees the ECS option (RFC 7871).
        conf = conf.replace("    answer-rotation: off\n",
                            "    answer-rotation: off\n    edns-client-subnet: on\n", 1)
        conf = conf.replace("\ntemplate:\n", f"""
mod-geoip:
  - id: map
    config-file: {_q(self._path("geo.conf"))}
    ttl: {ttl}
    mode: subnet

template:
""", 1)
        if not self.spec.static:
            conf = conf.rstrip("\n") + "\n    module: mod-geoip/map\n"
        Path(self._path("knot.conf")).write_text(conf)

    def write_map(self, name: str, entries) -> None:
        self._replace_map(name, entries)
        md.write_atomic(Path(self._path("geo.conf")), md.knot_geo_conf(self.spec))

    def trigger_reload(self) -> None:
        """mod-geoip reads its file only when the module loads: a full ``knotc reload``."""
        _control(["knotc", "-s", self._path("knot.sock"), "reload"])


class _PdnsBase(_MappingMixin, RefServer):
    """pdns_server from a MappingSpec: one receiver thread, caches off (every query carries its
    own ECS address), nothing beyond loopback."""

    binary = "pdns_server"

    def __init__(self, spec: md.MappingSpec, **kw) -> None:
        super().__init__(self._init_spec(spec), **kw)

    def _argv(self) -> list[str]:
        return [f"--config-dir={self._path('')}"]

    def _write_pdns_conf(self, backend: str) -> None:
        Path(self._path("pdns.conf")).write_text(
            backend + "edns-subnet-processing=yes\n"
            f"local-address={self.host}\nlocal-port={self.port}\n"
            f"socket-dir={self._path('')}\nsetuid=\nsetgid=\n"
            "daemon=no\nguardian=no\ndisable-syslog=yes\nloglevel=3\n"
            "webserver=no\napi=no\nprimary=no\nsecondary=no\ndisable-axfr=yes\n"
            "security-poll-suffix=\nreceiver-threads=1\ndistributor-threads=1\n"
            f"udp-truncation-threshold={self.udp_max_payload}\n"
            "cache-ttl=0\nquery-cache-ttl=0\nnegquery-cache-ttl=0\n")

    def _pdns_control(self, *args: str) -> None:
        _control(["pdns_control", f"--config-dir={self._path('')}", *args])


class PdnsGeoipServer(_PdnsBase):
    """The geoip backend alone (``pdns-backend-geoip``), no GeoIP database."""

    kind = "pdns-geoip"

    @classmethod
    def available(cls) -> bool:
        return super().available() and any(
            Path("/usr/lib").glob("*/pdns/libgeoipbackend.so"))

    def _write_config(self) -> None:
        md.write_atomic(Path(self._path("zones.yaml")), md.pdns_geo_yaml(self.spec))
        self._write_pdns_conf("launch=geoip\n"
                              f"geoip-zones-file={self._path('zones.yaml')}\n"
                              "geoip-database-files=\n")

    def write_map(self, name: str, entries) -> None:
        self._replace_map(name, entries)
        md.write_atomic(Path(self._path("zones.yaml")), md.pdns_geo_yaml(self.spec))

    def trigger_reload(self) -> None:
        """The geoip backend re-reads its zones file on ``pdns_control reload``, which waits
        for the reload; pdns_control gives up after its fixed 5 s (no option to raise it) while
        the server goes on: a timeout here is not a failure, the caller polls the answer."""
        try:
            self._pdns_control("reload")
        except RefServerError as exc:
            if "Timeout" not in str(exc):
                raise


class PdnsLuaServer(_PdnsBase):
    """The bind backend with LUA records: one ``view()`` record per mapped name and type."""

    kind = "pdns-lua"

    def _write_config(self) -> None:
        md.write_atomic(Path(self._path("zone")), md.pdns_lua_zone_text(self.spec))
        Path(self._path("named.conf")).write_text(
            f'zone "{self.spec.origin}" {{ type master; file "{self._path("zone")}"; }};\n')
        self._write_pdns_conf(
            f"launch=bind\nbind-config={self._path('named.conf')}\nbind-check-interval=0\n"
            "enable-lua-records=yes\n"
            # view() walks its list in Lua: a real map needs more than the default 1,000
            # instructions per record.
            "lua-records-exec-limit=-1\n")

    def write_map(self, name: str, entries) -> None:
        self._replace_map(name, entries)
        md.write_atomic(Path(self._path("zone")), md.pdns_lua_zone_text(self.spec))

    def trigger_reload(self) -> None:
        self._pdns_control("bind-reload-now", self.spec.origin)


class Pop53MappingServer(_MappingMixin, Pop53Server):
    """``python -m pop53 serve -c config.toml``; the config comes from the same spec."""

    kind = "pop53-mapping"

    def __init__(self, spec: md.MappingSpec, *, workers: int = 1, extra_toml: str = "",
                 **kw) -> None:
        super().__init__(self._init_spec(spec), **kw)
        self.workers = workers
        self.extra_toml = extra_toml

    def _write_config(self) -> None:
        md.write_pop53(self.spec, Path(self._path("etc")), listen=f"{self.host}:{self.port}",
                       workers=self.workers, identity=self.identity, extra=self.extra_toml)

    def _argv(self) -> list[str]:
        return ["-m", "pop53", "serve", "-c", self._path("etc/config.toml")]

    def write_map(self, name: str, entries) -> None:
        m = self._replace_map(name, entries)
        md.write_atomic(Path(self._path(f"etc/{name}.map")), md.map_file_text(m))

    def trigger_reload(self) -> None:
        """SIGHUP, pop53's reload signal."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


def _control(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RefServerError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()[-300:]}")


MAPPING_PEERS: dict[str, type[RefServer]] = {
    "gdnsd": GdnsdServer, "knot-geoip": KnotGeoipServer, "pdns-geoip": PdnsGeoipServer,
    "pdns-lua": PdnsLuaServer, "pop53": Pop53MappingServer,
}



class Reply(tuple):
    """(rcode, addresses of the answer's A/AAAA records, ECS scope or None if no ECS option)."""

    __slots__ = ()

    def __new__(cls, rcode: int, addresses: frozenset, scope: int | None):
        return super().__new__(cls, (rcode, addresses, scope))

    rcode = property(lambda self: self[0])
    addresses = property(lambda self: self[1])
    scope = property(lambda self: self[2])


def ask(server: RefServer, qname: str, qtype: str, ecs: tuple[str, int] | None,
        timeout: float = 2.0) -> Reply:
    """One UDP query with an ECS option (RFC 7871) if ``ecs`` = (address, source length)."""
    opts = [dns.edns.ECSOption(ecs[0], ecs[1])] if ecs is not None else []
    q = dns.message.make_query(qname, qtype, use_edns=0, options=opts)
    wire = udp_query(server.address, q.to_wire(), timeout)
    if wire is None:
        raise RefServerError(f"{server.kind}: no answer to {qname} {qtype} ecs={ecs}")
    r = dns.message.from_wire(wire)
    rt = dns.rdatatype.from_text(qtype)
    addrs = frozenset(rd.address for rrset in r.answer if rrset.rdtype == rt for rd in rrset)
    scope = next((o.scopelen for o in r.options if isinstance(o, dns.edns.ECSOption)), None)
    return Reply(r.rcode(), addrs, scope)
