"""The glue between the server and the transfer engine (xfr/service.py): which messages go to the
engine, how its zone versions become images, and how a reload keeps the transferred zones.

    cfg = config.load(path)
    server, service = secondary.build(cfg)   # service is None when no zone needs transfers
    server.start(); service and service.start()
"""
from __future__ import annotations

import logging

from pop53 import _core
from pop53.xfr.catalog import CatalogProducer
from pop53.xfr.config import parse_xfr_config
from pop53.xfr.protocol import answer_signed
from pop53.xfr.publisher import ImagePublisher
from pop53.xfr.restart import TransferImage
from pop53.xfr.service import XfrService
from pop53.config import Config
from pop53.serve.server import Server
from pop53.zone.compiler import compile_zone_data, with_stand_ins
from pop53.zone.zonefile import file_digests

log = logging.getLogger("pop53.secondary")

_OPCODE_NOTIFY = 4


def needs_engine(cfg: Config) -> bool:
    """Transfers are in play when a zone has primaries (a secondary here), secondaries of its
    own (notify / allow_transfer), or keys are configured."""
    return bool(cfg.doc.get("key")) or any(
        k in z.raw for z in cfg.zones for k in ("primaries", "notify", "allow_transfer", "catalog"))


class ControlPlane:
    """The server's handler for what the data plane sets aside (NOTIFY, AXFR/IXFR, TSIG-signed):
    the transfer engine when there is one, then TSIG for every other signed query (RFC 8945
    §5.2: NOTAUTH with BADKEY/BADSIG/BADTIME, or the data plane's answer, signed).  None: the
    data plane's fallback reply goes out.  `service` is None on a server without transfers
    (every key is then unknown)."""

    def __init__(self, service: XfrService | None, server: Server):
        self.service = service
        self.server = server

    def handle_udp(self, msg: bytes, peer) -> bytes | None:
        svc = self.service
        if svc is not None:
            if len(msg) >= 12 and (msg[2] >> 3) & 0xF == _OPCODE_NOTIFY:
                return svc.handle_notify(msg, peer)
            r = svc.outbound.handle_udp_ixfr(msg, peer) or svc.handle_query(msg, peer)
            if r is not None:
                return r
        return self._signed(msg, peer, False)

    def handle_tcp(self, msg: bytes, peer) -> list[bytes] | None:
        svc = self.service
        if svc is not None:
            if len(msg) >= 12 and (msg[2] >> 3) & 0xF == _OPCODE_NOTIFY:
                r = svc.handle_notify(msg, peer)
                return [r] if r else None
            out = svc.handle_tcp_query(msg, peer)
            if out is not None:
                return out
            r = svc.handle_query(msg, peer)
            if r is not None:
                return [r]
        r = self._signed(msg, peer, True)
        return [r] if r else None

    def _signed(self, msg: bytes, peer, tcp: bool) -> bytes | None:
        keyring = self.service.keyring if self.service is not None else {}
        reason, reply = answer_signed(msg, keyring, lambda wire: self._plain(wire, tcp), tcp)
        if reason is not None and self.service is not None:
            self.service.refused("query", reason, peer)
        return reply

    def _plain(self, wire: bytes, tcp: bool) -> bytes | None:
        """The data plane's answer to an (unsigned) query."""
        image = self.server.current_image
        _act, reply = _core.answer(image.view if image is not None else None, wire,
                                   self.server.responder, tcp)
        return reply


def _version(data):
    """What the engine keeps of a file zone: the scanner's columns (the records form, no
    dnspython object per record), else its dnspython zone."""
    return data if data.columns is not None else data.zone


def build(cfg: Config) -> tuple[Server, XfrService | None]:
    """A server for `cfg`; with the metadata engine attached when any zone needs transfers."""
    if not needs_engine(cfg):
        return Server(cfg), None
    xcfg = parse_xfr_config(cfg.doc, cfg.source)
    # the engine (for compile_), whether publishes are held while the saved image serves, the
    # zones waiting for data in the image compiled last
    holder: dict = {"hold": False, "waiting": []}
    server = Server(cfg)
    failed: dict[str, str] = {}
    zset = server.zones     # the server's zone state: loads, failures, waiting zones
    files = zset.load_files(failed)   # a bad file zone answers SERVFAIL, the others serve
    catalogs = CatalogProducer()             # RFC 9432 catalogs of our file zones
    files.update({d.origin.to_text(): d for d in catalogs.build(cfg)})

    def compile_(zones, expired=()):
        # SERVFAIL stand-ins, never REFUSED, for zones that are ours without data: the file
        # zones that never loaded and the secondary zones not transferred (or restored) yet,
        # e.g. during a restart (issue 14 points 1 and 5); the engine's zone set may change
        # while serving (config reload, catalog zones)
        zones = list(zones)
        have = {d.origin.to_text() for d in zones}
        secondaries = [st.name for st in list(holder["service"].zones.values())
                       if st.conf.secondary]
        holder["secondaries"] = set(secondaries)     # the zone set this image was made for
        waiting = holder["waiting"] = [n for n in secondaries if n not in have]
        if not holder["hold"]:
            zset.waiting = waiting
        stand_ins = set(waiting) | set(zset.failed)
        return compile_zone_data(with_stand_ins(zones, stand_ins),
                                 expired=sorted(set(expired) | stand_ins))

    saved = TransferImage(cfg.state, cfg) if cfg.state else None

    def publish(image):
        if holder["hold"]:        # the saved image serves until the restore is complete
            holder["held"] = image
            return
        zset.waiting = holder["waiting"]
        server.slot.publish(image)
        if saved is not None:
            saved.saved(image, saved.meta(zset, server.config))

    publisher = ImagePublisher(publish, static=list(files.values()),
                               compile_zone_data=compile_, check_image=zset.check_size)
    publisher.MAX_GROWTH = xcfg.compact_growth
    service = XfrService(xcfg, publisher)
    holder["service"] = service
    server.control_handler = ControlPlane(service, server)
    for name, data in files.items():
        service.set_local_zone(name, _version(data))
    # the file zones serve at once; transferred ones join on start (SERVFAIL until then)
    zset.note_failed(failed)
    zset.data = dict(files)
    zset.files = {n: d.files for n, d in files.items()}
    restored = saved.load(cfg) if saved is not None else None
    if restored is not None and saved.usable(restored[1], zset):
        # the transferred zones answer at once from the image served before the restart
        # (mapped); the engine's restore of their snapshots replaces it (issue 14 point 5)
        image = restored[0]
        zset.waiting = holder["waiting"] = list(restored[1].get("waiting", []))
        holder["hold"] = True
        restore_publish = service.keeper.initial_publish

        def initial_publish():
            # the engine's restore publishes zone by zone (a catalog's members after it): the
            # saved image keeps serving until the last of them, which is then published
            try:
                restore_publish()
            finally:
                holder["hold"] = False
                if "held" in holder:
                    publish(holder.pop("held"))

        service.keeper.initial_publish = initial_publish
        log.info("serving the saved transfer image %s (%d zone(s)) while the saved zones "
                 "are restored", saved.path, image.n_zones)
    else:
        image = compile_(files.values())
    zset.check_size(image)
    server.slot.publish(image)
    zset.full_size = len(image)

    def reload_files(only: str | None = None) -> dict[str, str]:
        bad: dict[str, str] = {}
        old = {d.origin.to_text(): d for d in publisher.static}
        new: dict = {}
        for z in server.config.zones:
            if z.file is None or only not in (None, z.name):
                continue
            if z.name in old and z.name not in zset.failed and \
                    file_digests(z.file, server.config.zone_dir) == zset.files.get(z.name):
                continue     # unchanged (content hashes of every file it reads): not parsed again
            new.update(zset.load_files(bad, z.name))
        files = {z.name for z in server.config.zones if z.file is not None}
        for name, data in old.items():   # the zones not re-read keep their version
            if name in files and name not in new and name not in bad:
                new[name] = data
        for name in bad:
            if name in old:                   # its previous version keeps serving
                new[name] = old[name]
                log.error("zone %s: reload rejected, serial %d keeps serving: %s", name,
                          old[name].serial, bad[name])
        if only is None:     # the generated catalogs follow the configured zone set
            new.update({d.origin.to_text(): d for d in catalogs.build(server.config)})
        else:
            new.update({n: d for n, d in old.items() if n in catalogs.made})
        for name, data in new.items():
            service.set_local_zone(name, _version(data))   # journals the diff, NOTIFYs secondaries
        failed = {n: e for n, e in bad.items() if n not in new}
        if only is not None:
            failed = {**{n: e for n, e in zset.failed.items() if n in files}, **failed}
        # a patch only when neither the stand-ins nor the engine's zone set changed (a config
        # reload adds or removes zones before it calls this)
        same = set(failed) == set(zset.failed) and holder.get("secondaries") == {
            st.name for st in list(service.zones.values()) if st.conf.secondary}
        zset.note_failed(failed)
        # the changed file zones patched into the image beside the transferred ones, or all
        # compiled again (the next IXFR patch starts from this image)
        publisher.update_static(list(new.values()), same)
        zset.files.update({n: d.files for n, d in new.items()})
        return bad

    zset.reload_hook = reload_files
    return server, service
