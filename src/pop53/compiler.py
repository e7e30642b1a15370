"""Compile validated zones into one immutable, position-independent byte image.

The compiler does all the thinking once: lowercased lookup keys, pre-encoded RDATA, zone-cut,
glue, empty-non-terminal and wildcard flags, and additional-section targets.  The data plane
(ext/image.pxi) only reads.  The layout is declared in ext/_core.pxd; the struct formats below
must match it (the image's version number guards against a mismatch).

Layout: header | zone table | zone hash table | per zone: nodes (each node_t followed by its name,
its rrset_t array and its RDATA, so one lookup touches one or two cache lines) | additional
target lists | node hash table.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import dns.name
import dns.rdatatype
import numpy as np

from . import _core
from .errors import ZoneError
from .images import Image
from .zonefile import ZoneData, load_zone_file

HEADER = struct.Struct("<8sIIQIIIIIIIII4s")
ZONE = struct.Struct("<IBBHIIIIII")
NODE = struct.Struct("<IBBHIIHHI")
RRSET = struct.Struct("<HHIIIIHH")
assert HEADER.size == _core.HEADER_SIZE == _core.SIZEOF["header"]
assert ZONE.size == _core.SIZEOF["zone"] and NODE.size == _core.SIZEOF["node"]
assert RRSET.size == _core.SIZEOF["rrset"]

F = _core.FLAGS
_ADDITIONAL_TYPES = (dns.rdatatype.NS, dns.rdatatype.MX, dns.rdatatype.SRV)
_MAX_IMAGE = 0xFFFF_FFF0  # offsets are 32-bit


def _pow2_at_least(n: int) -> int:
    size = 4
    while size < n:
        size <<= 1
    return size


def _align4(n: int) -> int:
    return (n + 3) & ~3


@dataclass
class _Node:
    name: dns.name.Name
    key: bytes                      # lowercased wire name
    flags: int = 0
    rrsets: list = field(default_factory=list)   # [(type, ttl, [rdata wire], add_keys)]
    cut: "_Node | None" = None
    off: int = 0
    size: int = 0


def _target(rd) -> dns.name.Name | None:
    t = rd.rdtype
    if t == dns.rdatatype.NS:
        return rd.target
    if t == dns.rdatatype.MX:
        return rd.exchange
    if t == dns.rdatatype.SRV:
        return rd.target
    return None


class _ZoneBuild:
    def __init__(self, index: int, data: ZoneData):
        self.index = index
        self.data = data
        self.origin = data.origin
        self.key = data.origin.canonicalize().to_wire()
        self.nodes: dict[bytes, _Node] = {}
        self.soa_ttl = 0
        self.neg_ttl = 0
        self.apex: _Node | None = None

    def build(self) -> None:
        origin = self.origin
        nodes = self.nodes
        for name, node in self.data.zone.nodes.items():
            key = name.canonicalize().to_wire()
            n = nodes.get(key)
            if n is None:
                n = nodes[key] = _Node(name, key)
            for rds in sorted(node.rdatasets, key=lambda r: (r.rdtype, r.covers)):
                if rds.rdclass != 1:
                    continue
                wires = [rd.to_wire() for rd in rds]
                if any(len(w) > 65535 for w in wires):
                    raise ZoneError("RDATA longer than 65535 octets", owner=name.to_text(),
                                    zone=origin.to_text(), file=self.data.source)
                targets = []
                if rds.rdtype in _ADDITIONAL_TYPES:
                    targets = [_target(rd) for rd in rds]
                n.rrsets.append((int(rds.rdtype), int(rds.ttl), wires, targets, int(rds.covers)))
                if rds.rdtype == dns.rdatatype.CNAME:
                    n.flags |= F["CNAME"]
                elif rds.rdtype == dns.rdatatype.DNAME:
                    n.flags |= F["DNAME"]
                elif rds.rdtype == dns.rdatatype.NS and name != origin:
                    n.flags |= F["CUT"]
                elif rds.rdtype == dns.rdatatype.SOA and name == origin:
                    self.soa_ttl = int(rds.ttl)
                    self.neg_ttl = min(int(rds.ttl), int(rds[0].minimum))
        # Empty non-terminals: every ancestor between a name and the apex exists (RFC 4592 §2.2.2).
        for n in list(nodes.values()):
            parent = n.name
            while parent != origin:
                parent = parent.parent()
                pkey = parent.canonicalize().to_wire()
                if pkey in nodes:
                    break
                nodes[pkey] = _Node(parent, pkey)
        for key, n in nodes.items():
            if not n.rrsets:
                n.flags |= F["ENT"]
            if n.name == origin:
                n.flags |= F["APEX"]
                self.apex = n
            if key[:2] == b"\x01*":
                n.flags |= F["WILDCARD"]
                nodes[key[2:]].flags |= F["WILDCARD_CHILD"]
        # Zone cuts: a node at a cut points at itself; below a cut, at the cut.
        for n in nodes.values():
            if n.flags & F["APEX"]:
                continue
            name = n.name
            while name != origin:
                a = nodes.get(name.canonicalize().to_wire())
                if a is not None and a.flags & F["CUT"]:
                    n.cut = a
                    # the highest cut wins; keep walking up
                name = name.parent()
            if n.cut is not None and n.cut is not n:
                n.flags |= F["BELOW_CUT"]


def compile_zone_data(zones: list[ZoneData], seed: int | None = None) -> Image:
    """Compile validated zones into one Image.  The longest matching zone answers a name."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    origins = {}
    for z in zones:
        if z.origin in origins:
            raise ZoneError(f"zone {z.origin} is given twice ({origins[z.origin]} and {z.source})",
                            zone=z.origin.to_text())
        origins[z.origin] = z.source
    builds = [_ZoneBuild(i, z) for i, z in enumerate(sorted(zones, key=lambda z: z.origin))]
    for b in builds:
        b.build()

    def find_node(name: dns.name.Name) -> _Node | None:
        best = None
        for b in builds:
            if name.is_subdomain(b.origin) and (best is None or len(b.origin) > len(best.origin)):
                best = b
        return None if best is None else best.nodes.get(name.canonicalize().to_wire())

    # Additional-section targets, resolved across every zone of the image.
    add_lists: dict[int, list[_Node]] = {}
    for b in builds:
        for n in b.nodes.values():
            for i, rr in enumerate(n.rrsets):
                if not rr[3]:
                    continue
                seen, hits = set(), []
                for t in rr[3]:
                    tn = find_node(t)
                    if tn is None or id(tn) in seen:
                        continue
                    if any(r[0] in (1, 28) for r in tn.rrsets):
                        seen.add(id(tn))
                        hits.append(tn)
                if hits:
                    add_lists[(id(n), i)] = hits

    n_zones = len(builds)
    ztab_size = _pow2_at_least(2 * n_zones + 1)
    off = HEADER.size
    zones_off = off
    off += ZONE.size * n_zones
    ztab_off = off
    off += 4 * ztab_size
    n_nodes = n_rrsets = n_records = 0
    # pass 1: sizes and offsets
    for b in builds:
        b.name_off = off
        off = _align4(off + len(b.key))
        for n in b.nodes.values():
            n.off = off
            size = NODE.size + len(n.key)
            size = _align4(size) + RRSET.size * len(n.rrsets)
            for rr in n.rrsets:
                size += sum(2 + len(w) for w in rr[2])
                n_records += len(rr[2])
            n.size = _align4(size)
            off += n.size
            n_nodes += 1
            n_rrsets += len(n.rrsets)
    adds_off = off
    add_offsets = {}
    for k, hits in add_lists.items():
        add_offsets[k] = off
        off += 4 * len(hits)
    for b in builds:
        b.ntab_size = _pow2_at_least(2 * len(b.nodes) + 1)
        b.ntab_off = off
        off += 4 * b.ntab_size
    total = off
    if total > _MAX_IMAGE:
        raise ZoneError(f"image would be {total} bytes; the format's limit is 4 GiB")

    buf = bytearray(total)
    HEADER.pack_into(buf, 0, b"POP53IMG", _core.IMAGE_VERSION, HEADER.size, total, n_zones,
                     zones_off, ztab_off, ztab_size - 1, seed, 0, n_nodes, n_rrsets, n_records, b"")
    node_pack = NODE.pack_into
    rrset_pack = RRSET.pack_into
    for b in builds:
        buf[b.name_off:b.name_off + len(b.key)] = b.key
        soa_off = 0
        for n in b.nodes.values():
            p = n.off
            name_off = p + NODE.size
            rrsets_off = _align4(name_off + len(n.key))
            cut_off = n.cut.off if n.cut is not None else 0
            node_pack(buf, p, name_off, len(n.key), len(n.name) - 1, n.flags, cut_off, rrsets_off,
                      len(n.rrsets), b.index, _core.hash_name(n.key, seed))
            buf[name_off:name_off + len(n.key)] = n.key
            data = rrsets_off + RRSET.size * len(n.rrsets)
            for i, (rtype, ttl, wires, _t, covers) in enumerate(n.rrsets):
                rdata_off = data
                for w in wires:
                    buf[data:data + 2] = len(w).to_bytes(2, "big")
                    buf[data + 2:data + 2 + len(w)] = w
                    data += 2 + len(w)
                hits = add_lists.get((id(n), i))
                a_off = add_offsets.get((id(n), i), 0)
                if hits:
                    struct.pack_into(f"<{len(hits)}I", buf, a_off, *(h.off for h in hits))
                rrset_pack(buf, rrsets_off + RRSET.size * i, rtype, len(wires), ttl, rdata_off,
                           data - rdata_off, a_off, len(hits) if hits else 0,
                           covers if rtype == dns.rdatatype.RRSIG else 0)
                if rtype == dns.rdatatype.SOA and n is b.apex:
                    soa_off = rrsets_off + RRSET.size * i
        ZONE.pack_into(buf, zones_off + ZONE.size * b.index, b.name_off, len(b.key),
                       len(b.origin) - 1, 0, b.apex.off, b.ntab_off, b.ntab_size - 1,
                       len(b.nodes), b.neg_ttl, soa_off)
        _core.fill_table(buf, b.ntab_off, b.ntab_size - 1,
                         np.fromiter((n.off for n in b.nodes.values()), dtype=np.uint32,
                                     count=len(b.nodes)))
    # zone table: slot -> zone index + 1
    for b in builds:
        slot = _core.hash_name(b.key, seed) & (ztab_size - 1)
        while struct.unpack_from("<I", buf, ztab_off + 4 * slot)[0]:
            slot = (slot + 1) & (ztab_size - 1)
        struct.pack_into("<I", buf, ztab_off + 4 * slot, b.index + 1)
    return Image(bytes(buf))


def compile_zones(paths, seed: int | None = None) -> Image:
    """Compile zone files (origin from each file's $ORIGIN or SOA) into one Image.
    Entries may be paths or (path, origin) pairs."""
    datas = []
    for p in paths:
        if isinstance(p, tuple):
            datas.append(load_zone_file(p[0], p[1]))
        else:
            datas.append(load_zone_file(p))
    return compile_zone_data(datas, seed=seed)
