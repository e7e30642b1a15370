"""Compile validated zones into one immutable, position-independent byte image.

The compiler does all the thinking once: lowercased lookup keys, pre-encoded RDATA, zone-cut,
glue, empty-non-terminal and wildcard flags, and additional-section targets.  The data plane
(ext/image.pxi) only reads.  The layout is declared in ext/_core.pxd; the struct formats below
must match it (the image's version number guards against a mismatch).

Layout: header | zone table | zone hash table | per zone: nodes (each node_t followed by its name,
its rrset_t array and its RDATA, so one lookup touches one or two cache lines; a signed
zone's NSEC3 owners after its names, outside its node table) | additional target lists | per
zone: node hash table, and for a signed zone its DNSSEC block (pop53/dnssec/index.py).
"""
from __future__ import annotations

import gc
import os
import struct
from socket import AF_INET as _AF_INET, AF_INET6 as _AF_INET6, inet_pton as _inet_pton

import dns.name
import dns.rdatatype
import numpy as np

from pop53 import _core
from pop53.dnssec import index as dnssec_index
from pop53.errors import ZoneError
from pop53.zone.images import Image
from pop53.zone.zonefile import ZoneData, load_zone_file, zone_from_bytes

HEADER = struct.Struct("<8sIIQIIIIIIIIII")
CHECKSUM_OFFSET = 60   # the header's last field
ZONE = struct.Struct("<IBBHIIIIII")
NODE = struct.Struct("<IBBHIIHHI")
RRSET = struct.Struct("<HHIIIIHH")
assert HEADER.size == _core.HEADER_SIZE == _core.SIZEOF["header"] == CHECKSUM_OFFSET + 4
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


class _Node:
    __slots__ = ("key", "labels", "flags", "rrsets", "cut", "off", "size")

    def __init__(self, key: bytes, labels: int):
        self.key = key                  # lowercased wire name
        self.labels = labels
        self.flags = 0
        self.rrsets = []                # [(type, ttl, [rdata wire], [target keys], covers)]
        self.cut = None
        self.off = 0
        self.size = 0


def _labels(key: bytes) -> int:
    n = p = 0
    while key[p]:
        p += key[p] + 1
        n += 1
    return n


def _parent(key: bytes) -> bytes:
    return key[key[0] + 1:]


_T_NS, _T_MX, _T_SRV, _T_CNAME, _T_DNAME, _T_SOA, _T_RRSIG = 2, 15, 33, 5, 39, 6, 46


def _target_key(rd) -> bytes | None:
    t = rd.rdtype
    if t == _T_NS:
        return rd.target.to_wire().lower()
    if t == _T_MX:
        return rd.exchange.to_wire().lower()
    if t == _T_SRV:
        return rd.target.to_wire().lower()
    return None


class _ZoneBuild:
    """One zone's nodes keyed by lowercased wire name (bytes all the way: dns.name.Name
    operations dominate the cost of a million-name compile)."""

    def __init__(self, index: int, data: ZoneData):
        self.index = index
        self.data = data
        self.origin = data.origin
        self.key = data.origin.to_wire().lower()
        self.nodes: dict[bytes, _Node] = {}
        self.neg_ttl = 0
        self.apex: _Node | None = None
        self.nsec3: dict[bytes, _Node] = {}     # NSEC3 owners: written, but not zone names
        self.dsec = None                        # dnssec_index.Plan of a signed zone
        self.with_targets: list | None = None   # nodes with NS/MX/SRV targets, when known

    def all_nodes(self):
        """Every node written to the image: the zone's names, then the NSEC3 owners."""
        yield from self.nodes.values()
        yield from self.nsec3.values()

    def build(self) -> None:
        if self.data.columns is not None:
            self._nodes_from_records()
        else:
            self._nodes_from_dnspython()
        self._structure()

    def _nodes_from_records(self) -> None:
        """Nodes from the scanner's columns (ext/layout.pxi): RRsets are runs of (name, type,
        covers) in one sort; TTL is the RRset's lowest (as dnspython's update_ttl), duplicates
        dropped."""
        r = self.data.columns
        cov = r.covers()
        order = r.order(cov).astype(np.int64)     # layout.pxi takes int64
        try:
            self.neg_ttl, self.with_targets = _core.layout_nodes_from_records(
                self.nodes, r.keys(), order, r.node, r.type, cov, r.ttl, r.rdoff, r.rdlen, r.rdata,
                self.key, _Node, F["CUT"], F["CNAME"], F["DNAME"])
        except OverflowError as exc:
            raise ZoneError("RRset or RDATA too large for the wire format",
                            owner=dns.name.from_wire(exc.args[0], 0)[0].to_text(),
                            zone=self.origin.to_text(), file=self.data.source) from None

    def _nodes_from_dnspython(self) -> None:
        nodes = self.nodes
        okey = self.key
        for name, node in self.data.zone.nodes.items():
            key = name.to_wire().lower()
            n = nodes.get(key)
            if n is None:
                n = nodes[key] = _Node(key, len(name) - 1)
            rdsets = node.rdatasets
            if len(rdsets) > 1:
                rdsets = sorted(rdsets, key=lambda r: (r.rdtype, r.covers))
            for rds in rdsets:
                if rds.rdclass != 1:
                    continue
                rtype = int(rds.rdtype)
                if rtype == 1:          # A and AAAA: the common case, done in C
                    wires = [_inet_pton(_AF_INET, rd.address) for rd in rds]
                elif rtype == 28:
                    wires = [_inet_pton(_AF_INET6, rd.address) for rd in rds]
                else:
                    wires = [rd.to_wire() for rd in rds]
                if len(wires) > 65535 or any(len(w) > 65535 for w in wires):
                    raise ZoneError("RRset or RDATA too large for the wire format", owner=name.to_text(),
                                    zone=self.origin.to_text(), file=self.data.source)
                targets = [_target_key(rd) for rd in rds] if rtype in (_T_NS, _T_MX, _T_SRV) else ()
                n.rrsets.append((rtype, int(rds.ttl), wires, targets, int(rds.covers)))
                if rtype == _T_CNAME:
                    n.flags |= F["CNAME"]
                elif rtype == _T_DNAME:
                    n.flags |= F["DNAME"]
                elif rtype == _T_NS and key != okey:
                    n.flags |= F["CUT"]
                elif rtype == _T_SOA and key == okey:
                    self.neg_ttl = min(int(rds.ttl), int(rds[0].minimum))

    def _structure(self) -> None:
        nodes = self.nodes
        okey = self.key
        olabels = len(self.origin) - 1
        # hashed owner names are written but are not names of the zone (RFC 5155 §7.1)
        self.nsec3 = dnssec_index.split_nsec3_owners(nodes, F["NSEC"])
        # Empty non-terminals: every ancestor between a name and the apex exists (RFC 4592 §2.2.2).
        for key in list(nodes):
            n = nodes[key]
            labels = n.labels
            while labels > olabels + 1:
                key = _parent(key)
                labels -= 1
                if key in nodes:
                    break
                nodes[key] = _Node(key, labels)
        wc = F["WILDCARD"]
        wcc = F["WILDCARD_CHILD"]
        for key, n in nodes.items():
            if not n.rrsets:
                n.flags |= F["ENT"]
            if key[:2] == b"\x01*":
                n.flags |= wc
                nodes[key[2:]].flags |= wcc
        apex = self.apex = nodes[okey]
        apex.flags |= F["APEX"]
        # Zone cuts: a node at a cut points at itself; below a cut, at the (highest) cut.
        cut_flag, below = F["CUT"], F["BELOW_CUT"]
        cuts = [n for n in nodes.values() if n.flags & cut_flag]
        if cuts:
            for key, n in nodes.items():
                labels = n.labels
                k = key
                while labels > olabels:
                    a = nodes.get(k)
                    if a is not None and a.flags & cut_flag:
                        n.cut = a
                    k = _parent(k)
                    labels -= 1
                if n.cut is not None and n.cut is not n:
                    n.flags |= below


def write_node(buf, off: int, key: bytes, labels: int, flags: int, cut_off: int, rrsets,
               zone_idx: int, seed: int, adds) -> int:
    """Write one node record at `off`: node_t, the lowercased name, the rrset_t array, the
    RDATA (the layout ext/p53.pxd declares; the one writer for compiler and incremental).
    `adds(i)` writes RRset i's additional-target list and returns (its offset, count), or
    (0, 0).  Returns the offset of the SOA's rrset_t, or 0."""
    return _core.layout_node(buf, off, key, labels, flags, cut_off, rrsets, zone_idx, seed, adds)


def compile_zone_data(zones: list[ZoneData], seed: int | None = None, expired=()) -> Image:
    """Compile validated zones into one Image.  The longest matching zone answers a name.
    `expired`: origins (text or dns.name.Name) of secondary zones past their SOA expire; they
    stay in the image (so their names are not REFUSED) but every query in them gets SERVFAIL."""
    # A compile makes millions of small acyclic objects: the cyclic collector would walk the
    # growing heap again and again (a third of a million-name compile) and find nothing.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _compile(zones, seed, expired)
    finally:
        if enabled:
            gc.enable()


def check_origins(zones: list[ZoneData]) -> None:
    """Raises ZoneError when one origin is given twice."""
    origins = {}
    for z in zones:
        if z.origin in origins:
            raise ZoneError(f"zone {z.origin} is given twice ({origins[z.origin]} and {z.source})",
                            zone=z.origin.to_text())
        origins[z.origin] = z.source


def _compile(zones: list[ZoneData], seed: int | None, expired) -> Image:
    expired = {dns.name.from_text(e) if isinstance(e, str) else e for e in expired}
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    check_origins(zones)
    if zones and all(_flat_ok(z) for z in zones):
        return _compile_flat(sorted(zones, key=lambda z: z.origin), seed, expired)
    builds = [_ZoneBuild(i, z) for i, z in enumerate(sorted(zones, key=lambda z: z.origin))]
    for b in builds:
        b.build()

    by_key = {b.key: b for b in builds}

    def find_node(key: bytes) -> _Node | None:
        k = key
        while True:           # the longest zone that holds the name
            b = by_key.get(k)
            if b is not None:
                return b.nodes.get(key)
            if not k or k == b"\x00":
                return None
            k = _parent(k)

    # Additional-section targets, resolved across every zone of the image.
    add_lists: dict[int, list[_Node]] = {}
    for b in builds:
        for n in (b.with_targets if b.with_targets is not None else b.nodes.values()):
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

    has_adds = {k[0] for k in add_lists}
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
        node_size = _core.layout_node_size
        for n in b.all_nodes():
            n.off = off
            n.size, records = node_size(n.key, n.rrsets)
            n_records += records
            off += n.size
            n_nodes += 1
            n_rrsets += len(n.rrsets)
    add_offsets = {}
    for k, hits in add_lists.items():
        add_offsets[k] = off
        off += 4 * len(hits)
    for b in builds:
        b.ntab_size = _pow2_at_least(2 * len(b.nodes) + 1)
        b.ntab_off = off
        off += 4 * b.ntab_size
        # a signed zone's DNSSEC block follows its node table (ext/dnssec.pxi: zone_dsec)
        b.dsec = dnssec_index.plan(b.nodes, b.apex, b.nsec3, F["BELOW_CUT"])
        if b.dsec is not None:
            b.dsec_off = off
            off += b.dsec.size
    total = off
    if total > _MAX_IMAGE:
        raise ZoneError(f"image would be {total} bytes; the format's limit is 4 GiB")

    buf = bytearray(total)
    HEADER.pack_into(buf, 0, b"POP53IMG", _core.IMAGE_VERSION, HEADER.size, total, n_zones,
                     zones_off, ztab_off, ztab_size - 1, seed, 0, n_nodes, n_rrsets, n_records, 0)
    for b in builds:
        buf[b.name_off:b.name_off + len(b.key)] = b.key
        soa_off = 0
        for n in b.all_nodes():
            cut_off = n.cut.off if n.cut is not None else 0

            adds = None
            if id(n) in has_adds:
                def adds(i, n=n):
                    hits = add_lists.get((id(n), i))
                    if not hits:
                        return 0, 0
                    a_off = add_offsets[(id(n), i)]
                    struct.pack_into(f"<{len(hits)}I", buf, a_off, *(h.off for h in hits))
                    return a_off, len(hits)

            soa_off = write_node(buf, n.off, n.key, n.labels, n.flags, cut_off, n.rrsets, b.index,
                                 seed, adds) or soa_off
        zflags = _core.ZONE_FLAGS["EXPIRED"] if b.origin in expired else 0
        if b.dsec is not None:
            b.dsec.write(buf, b.dsec_off)
            zflags |= _core.ZONE_FLAGS["SIGNED"]
        ZONE.pack_into(buf, zones_off + ZONE.size * b.index, b.name_off, len(b.key),
                       len(b.origin) - 1, zflags,
                       b.apex.off, b.ntab_off, b.ntab_size - 1,
                       len(b.nodes), b.neg_ttl, soa_off)
        _core.fill_table(buf, b.ntab_off, b.ntab_size - 1,
                         np.fromiter((n.off for n in b.nodes.values()), dtype=np.uint32,
                                     count=len(b.nodes)))
    _fill_zone_table(buf, [b.key for b in builds], ztab_off, ztab_size, seed)
    struct.pack_into("<I", buf, CHECKSUM_OFFSET, _core.checksum(buf))
    # the buffer itself (no second copy of a 100 MB image at the peak); nothing else holds it
    return Image(buf)


def _flat_ok(z: ZoneData) -> bool:
    """Whether the C compile (ext/zonebuild.pxi) takes this zone: scanner records, signed or not
    (a signed zone's DNSSEC block is ext/zonebuild_dsec.pxi's, pop53.dnssec.index's bytes)."""
    return z.columns is not None


def _flat_zone(z: ZoneData) -> "_core.FlatZone":
    r = z.columns
    cov = r.covers()
    order = r.order(cov)
    key = z.origin.to_wire().lower()
    try:
        return _core.FlatZone(r.names, r.node_off, r.node_len, order, r.node, r.type,
                              cov, r.ttl, r.rdoff, r.rdlen, r.rdata, key, len(z.origin) - 1)
    except OverflowError as exc:
        raise ZoneError("RRset or RDATA too large for the wire format",
                        owner=dns.name.from_wire(exc.args[0], 0)[0].to_text(),
                        zone=z.origin.to_text(), file=z.source) from None


def _compile_flat(zones: list[ZoneData], seed: int, expired: set) -> Image:
    """_compile's image, byte for byte, from scanner records without a Python object per name
    (issue 15): the zones are built by ext/zonebuild.pxi and streamed into a buffer by
    ext/zonestream.pxi, as compile_to_file streams them into a file."""
    from pop53.zone.imagefile import flat_image
    return Image(flat_image(zones, [_flat_zone(z) for z in zones], seed, expired))


def _fill_zone_table(buf, keys: list, ztab_off: int, ztab_size: int, seed: int) -> None:
    """The zone table: slot -> zone index + 1 (linear probing on the image's name hash)."""
    for i, key in enumerate(keys):
        slot = _core.hash_name(key, seed) & (ztab_size - 1)
        while struct.unpack_from("<I", buf, ztab_off + 4 * slot)[0]:
            slot = (slot + 1) & (ztab_size - 1)
        struct.pack_into("<I", buf, ztab_off + 4 * slot, i + 1)


def failed_zone(origin: str | dns.name.Name) -> ZoneData:
    """A stand-in for a zone that failed to load: compiled with the EXPIRED flag (pass its
    origin in `expired`), so its names get SERVFAIL, as Knot answers for a zone it could not
    load, rather than REFUSED (not ours); none of this data is ever answered."""
    origin = dns.name.from_text(origin) if isinstance(origin, str) else origin
    # read by the scanner: an image with a stand-in still takes the C compile (issue 15)
    return zone_from_bytes(b"@ 0 IN SOA invalid. invalid. 0 0 0 0 0\n@ 0 IN NS invalid.\n", origin,
                           source="<failed to load>")


def load_or_fail(zones: list[tuple[str, str]], include_dir: str | None = None
                 ) -> tuple[list[ZoneData], dict[str, str]]:
    """Load (path, origin) zone files one by one: (the ones that loaded, {origin: error} of
    those that did not).  One bad zone does not stop the others (issue 14)."""
    datas, failed = [], {}
    for path, origin in zones:
        try:
            datas.append(load_zone_file(path, origin or None, include_dir))
        except ZoneError as exc:
            if not origin:
                raise          # no name to answer SERVFAIL for
            failed[dns.name.from_text(origin).to_text()] = str(exc)
    return datas, failed


def with_stand_ins(datas: list[ZoneData], failed) -> list[ZoneData]:
    """`datas` plus a SERVFAIL stand-in for each failed origin not among them."""
    have = {d.origin for d in datas}
    return datas + [failed_zone(n) for n in sorted(failed) if dns.name.from_text(n) not in have]


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


class CompilerUnavailable(Exception):
    """The child compiler could not run at all (not a zone problem): the caller compiles
    in-process instead (e.g. after dropping privileges the interpreter may be unreadable)."""


def compile_files_isolated(zones: list[tuple[str, str | None]], out_path: str,
                           timeout: float | None = None, skip_bad: bool = False,
                           include_dir: str | None = None, on_child=None,
                           seed: int | None = None) -> dict:
    """Compile zone files in a fresh child process and write the image to out_path.

    The server uses this so that its own memory never holds the parse (dnspython keeps several
    objects per record: gigabytes for a million names) and a reload does not compete with the
    serving threads for the GIL.  Raises ZoneError with the child's message on a bad zone;
    with skip_bad a zone that fails to load is compiled as a SERVFAIL stand-in instead.
    Returns {"failed": {origin: error}, "loaded": {origin: ZoneData.summary()}}.
    on_child(Popen): told the child as it starts (the server kills it when it stops).
    seed: the name hash seed (a zone spliced into a served image needs that image's).
    """
    import json
    import subprocess
    import sys

    args = [sys.executable, "-m", "pop53.zone.compiler", "--out", out_path]
    if skip_bad:
        args.append("--skip-bad")
    if include_dir:
        args += ["--include-dir", include_dir]
    if seed is not None:
        args += ["--seed", str(seed)]
    for path, origin in zones:
        args += ["--zone", f"{origin or ''}={path}"]
    err = ""
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if on_child is not None:
            on_child(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        result = json.loads(out.strip().splitlines()[-1])
    except (OSError, IndexError, ValueError, subprocess.SubprocessError) as exc:
        detail = err.strip()[-500:] or str(exc)
        raise CompilerUnavailable(f"the zone compiler process failed: {detail}") from None
    if not result.get("ok"):
        e = result.get("error", {})
        raise ZoneError(e.get("message", "compile failed"), file=e.get("file"), line=e.get("line"),
                        owner=e.get("owner"), zone=e.get("zone"))
    for w in result.get("warnings", []):
        import logging
        logging.getLogger("pop53.compiler").warning("%s", w)
    return {"failed": result.get("failed", {}), "loaded": result.get("loaded", {})}


def main(argv=None) -> int:
    """python -m pop53.compiler --out IMAGE --zone [ORIGIN]=FILE ...: the child side of
    compile_files_isolated.  Prints one JSON line."""
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--zone", action="append", default=[])
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--include-dir")
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)
    from pop53.zone.imagefile import fixed_mmap_threshold
    from pop53.zone.zonefile import map_big_files
    fixed_mmap_threshold()     # freed phase arrays go back to the system (issue 15)
    map_big_files()            # a big file is not held whole (a SIGBUS here is a failed child)
    try:
        specs = [(path, origin) for origin, _, path in (s.partition("=") for s in args.zone)]
        if args.skip_bad:
            datas, failed = load_or_fail(specs, args.include_dir)
            datas = with_stand_ins(datas, failed)
        else:
            datas, failed = [load_zone_file(path, origin or None, args.include_dir)
                             for path, origin in specs], {}
        loaded = {d.origin.to_text(): d.summary() for d in datas
                  if d.origin.to_text() not in failed}
        for d in datas:        # checked: the compile needs no file or line (issue 15)
            if d.columns is not None:
                d.columns.drop_locations()
        # straight to the file: the image is never held whole in this process (issue 15)
        from pop53.zone.imagefile import compile_to_file
        # a scratch file the parent maps once this process has exited: no fsync owed to it
        size = compile_to_file(datas, args.out, seed=args.seed, expired=sorted(failed),
                               consume=True, sync=False)
        print(json.dumps({"ok": True, "bytes": size, "failed": failed, "loaded": loaded,
                          "warnings": [w for d in datas for w in d.warnings]}))
        return 0
    except ZoneError as exc:
        print(json.dumps({"ok": False, "error": {"message": exc.message, "file": exc.file,
                                                 "line": exc.line, "owner": exc.owner,
                                                 "zone": exc.zone}}))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
