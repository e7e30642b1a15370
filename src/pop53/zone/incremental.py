"""The IXFR fast path: patch a compiled image instead of recompiling it, and validate only what
an update touched.

A full compile of a million-name zone takes ~20 s and a full validation ~9 s; an IXFR usually
changes a handful of names (RFC 1995 sends only the difference).  `patch_image` copies the old
image and appends rewritten node records for the changed names at its end, then repoints what
referred to the old records: the zone's node hash table (linear probing; deletion by backward
shift), the cut pointers of names below a rewritten delegation point, and the additional-target
lists of every NS/MX/SRV RRset whose target is a changed name (found by one C pass over the
image, `_core.patch_scan`).  The result is a full, self-contained image (the server swaps it
with one atomic store, so no query sees a mix of versions) that answers exactly like
`compile_zone_data` of the new zone set.  The old records stay in the image as unreachable
garbage until the next full compile (the caller compacts: see `xfr.ImagePublisher`).

A zone cut that appears or disappears at a name is patched too: the names below it are found
through the parent hashes `patch_scan` collects, and their flags and cut pointers are rewritten
in place in the copy (the highest cut at or above a name wins, as in the compiler).

A CNAME or DNAME that appears or goes at a name with descendants only rewrites that name's
record.  When the zone's node table would pass MAX_LOAD, the patch gives the zone a new table
twice the size (filled in C; the old one becomes garbage).  What `patch_image` still leaves to a
full compile (it returns None): the apex deleted, a name at or below another zone of the image,
a zone absent or expired in the old image, an RRset or image over the format's limits.
"""
from __future__ import annotations

import heapq
import struct
import threading
import weakref
from socket import AF_INET, AF_INET6, inet_pton

import dns.name
import dns.rdataclass
import dns.rdatatype
import numpy as np

from pop53 import _core
from pop53.zone.compiler import (CHECKSUM_OFFSET, HEADER, NODE, RRSET, ZONE, _MAX_IMAGE, _align4, write_node,
                       _labels, _parent, _pow2_at_least, _target_key)
from pop53.zone.images import Image
from pop53.zone import zonefile
from pop53.zone.zonefile import _AT_CUT_OK, _GLUE, ZoneData, validate

F = _core.FLAGS
_APEX, _CUT, _BELOW, _ENT = F["APEX"], F["CUT"], F["BELOW_CUT"], F["ENT"]
_WCC, _WC, _CNAME_F, _DNAME_F = F["WILDCARD_CHILD"], F["WILDCARD"], F["CNAME"], F["DNAME"]
_EXPIRED = _core.ZONE_FLAGS["EXPIRED"]
_SIGNED = _core.ZONE_FLAGS["SIGNED"]

_T_A, _T_NS, _T_CNAME, _T_SOA, _T_MX, _T_AAAA, _T_SRV, _T_DNAME, _T_RRSIG = \
    1, 2, 5, 6, 15, 28, 33, 39, 46
_REFS = (_T_NS, _T_MX, _T_SRV)
_TARGET_POS = {_T_NS: 0, _T_MX: 2, _T_SRV: 6}

MAX_LOAD = 0.6          # node table load above which the zone gets a new, larger table
_U32 = struct.Struct("<I")


# The patch index of an image: (node offsets, their cut_off, their parent-name hashes) over every
# node of every zone table, and (rrset_t offset, target hash) per NS/MX/SRV record.  One C pass
# (`_core.patch_scan`) builds it for a compiled image; each patch derives its result's index from
# its source's (the records it dropped and added are known), so an update never walks the image.
_INDEX: "weakref.WeakKeyDictionary[Image, tuple]" = weakref.WeakKeyDictionary()


def scan_image(src) -> tuple:
    """The patch index of image bytes, by one C pass over every node (tens to hundreds of ms
    for a million names)."""
    h = HEADER.unpack_from(src, 0)
    n_cap, r_cap = max(1, h[10]), max(1, h[12])
    nodes, cuts, parents = (np.empty(n_cap, np.uint32) for _ in range(3))
    r_rrsets, r_hashes = np.empty(r_cap, np.uint32), np.empty(r_cap, np.uint32)
    nn, nr = _core.patch_scan(src, nodes, cuts, parents, r_rrsets, r_hashes)
    return nodes[:nn], cuts[:nn], parents[:nn], r_rrsets[:nr], r_hashes[:nr]


def patch_index(image: Image) -> tuple:
    """The patch index of `image`: carried forward from the patch that made it, or scanned now
    (and kept while the image lives).  The publisher calls this right after a full compile, so
    the first update after it does not pay for the scan."""
    idx = _INDEX.get(image)
    if idx is None:
        src = image._data
        idx = _INDEX[image] = scan_image(src if isinstance(src, (bytes, bytearray)) else memoryview(src))
        _SPARE.refill(_next_size(len(image)))
    return idx


class _Spare:
    """One image-sized buffer, faulted in ahead of the next patch.  A patch copies the whole
    image; into fresh memory that costs the page faults and zeroing of ~90 MB (measured ~250 ms
    at a million names, against ~30 ms into memory already mapped).  After each patch a thread
    prepares the next buffer (numpy's fill runs without the GIL), so the update path only copies."""

    def __init__(self):
        self.lock = threading.Lock()
        self.arr = None
        self.busy = False

    def take(self, n: int):
        with self.lock:
            a = self.arr
            if a is None or not n <= len(a) <= n + n // 8 + (1 << 20):
                return None
            self.arr = None
        return a[:n]

    def refill(self, n: int) -> None:
        """Prepare a buffer of n bytes, unless one of at least that size is ready or coming."""
        with self.lock:
            if self.busy or (self.arr is not None and len(self.arr) >= n):
                return
            self.busy = True
        threading.Thread(target=self._fill, args=(n,), name="pop53-spare", daemon=True).start()

    def _fill(self, n: int) -> None:
        try:
            a = np.empty(n, np.uint8)
            a.fill(0)           # fault every page in now
        finally:
            with self.lock:
                self.busy = False
        with self.lock:
            self.arr = a


_SPARE = _Spare()


def _next_size(size: int) -> int:
    """The spare buffer for an image of `size` bytes: room for a typical next patch."""
    return size + max(size // 32, 1 << 16)


class _Fallback(Exception):
    """The change is structural: compile in full (the reason is for logs and tests)."""


def _lower_name(wire: bytes, p: int) -> bytes:
    """The lowercased uncompressed name starting at wire[p] (image RDATA is uncompressed)."""
    q = p
    while wire[q]:
        q += wire[q] + 1
    return bytes(wire[p:q + 1]).lower()


def _encode_node(name: dns.name.Name, node, okey: bytes, zone: ZoneData):
    """A node's RRsets exactly as the compiler encodes them (same order, same bytes):
    [(type, ttl, [rdata wire], [target keys], covers)], plus its data flags and the SOA's
    negative TTL when this is the apex."""
    rrsets, flags, neg_ttl = [], 0, None
    rdsets = node.rdatasets
    if len(rdsets) > 1:
        rdsets = sorted(rdsets, key=lambda r: (r.rdtype, r.covers))
    key = name.to_wire().lower()
    for rds in rdsets:
        if rds.rdclass != dns.rdataclass.IN:
            continue
        rtype = int(rds.rdtype)
        if rtype == _T_A:
            wires = [inet_pton(AF_INET, rd.address) for rd in rds]
        elif rtype == _T_AAAA:
            wires = [inet_pton(AF_INET6, rd.address) for rd in rds]
        else:
            wires = [rd.to_wire() for rd in rds]
        if len(wires) > 65535 or any(len(w) > 65535 for w in wires):
            raise _Fallback("RRset too large (the compiler reports it)")
        targets = [_target_key(rd) for rd in rds] if rtype in _REFS else ()
        rrsets.append((rtype, int(rds.ttl), wires, targets, int(rds.covers)))
        if rtype == _T_CNAME:
            flags |= _CNAME_F
        elif rtype == _T_DNAME:
            flags |= _DNAME_F
        elif rtype == _T_NS and key != okey:
            flags |= _CUT
        elif rtype == _T_SOA and key == okey:
            neg_ttl = min(int(rds.ttl), int(rds[0].minimum))
    return rrsets, flags, neg_ttl


class _New:
    """A node record to append: from zone data (`rrsets`) or an empty non-terminal."""
    __slots__ = ("key", "labels", "flags", "rrsets", "cut_key", "off", "size", "old_off", "adds",
                 "cut_off")

    def __init__(self, key, rrsets, flags, old_off=0):
        self.key = key
        self.labels = _labels(key)
        self.flags = flags
        self.rrsets = rrsets
        self.cut_key = None     # key of the node our cut_off points at (resolved after layout)
        self.off = 0
        self.size = 0
        self.old_off = old_off
        self.adds = {}
        self.cut_off = 0


class _Patch:
    def __init__(self, old: Image, origin: dns.name.Name, data: ZoneData, changed):
        self.old = old
        self.next_index = None
        self.src = memoryview(old._data) if not isinstance(old._data, (bytes, bytearray)) else old._data
        h = HEADER.unpack_from(self.src, 0)
        (_m, _v, _hs, self.size, self.n_zones, self.zones_off, self.ztab_off, self.ztab_mask,
         self.seed, _fl, self.h_nodes, self.h_rrsets, self.h_records, _ck) = h
        self.origin = origin
        self.okey = origin.to_wire().lower()
        self.data = data
        self.changed = changed
        self.zones = []          # (key, zone record tuple)
        self.zidx = None
        for i in range(self.n_zones):
            z = ZONE.unpack_from(self.src, self.zones_off + ZONE.size * i)
            key = bytes(self.src[z[0]:z[0] + z[1]])
            self.zones.append((key, z))
            if key == self.okey:
                self.zidx = i
        self.zone_keys = {k: i for i, (k, _z) in enumerate(self.zones)}

    # ------------------------------------------------------------------ reads of the old image
    def node(self, off: int):
        return NODE.unpack_from(self.src, off)

    def lookup_old(self, zi: int, key: bytes) -> int:
        """Offset of `key`'s node in zone zi of the *old* image, 0 when absent."""
        z = self.zones[zi][1]
        ntab_off, mask = z[5], z[6]
        h = _core.hash_name(key, self.seed)
        slot = h & mask
        src = self.src
        while True:
            off = _U32.unpack_from(src, ntab_off + 4 * slot)[0]
            if off == 0:
                return 0
            n = NODE.unpack_from(src, off)
            if n[8] == h and n[1] == len(key) and bytes(src[n[0]:n[0] + n[1]]) == key:
                return off
            slot = (slot + 1) & mask

    def zone_of(self, key: bytes) -> int | None:
        """The longest zone of the image holding `key` (as the compiler's find_node)."""
        k = key
        while True:
            zi = self.zone_keys.get(k)
            if zi is not None:
                return zi
            if not k or k == b"\x00":
                return None
            k = _parent(k)

    def old_has_addr(self, off: int) -> bool:
        n = self.node(off)
        for i in range(n[6]):
            t = RRSET.unpack_from(self.src, n[5] + RRSET.size * i)[0]
            if t in (_T_A, _T_AAAA):
                return True
        return False

    def old_counts(self, off: int) -> tuple[int, int]:
        n = self.node(off)
        recs = sum(RRSET.unpack_from(self.src, n[5] + RRSET.size * i)[1] for i in range(n[6]))
        return n[6], recs

    # ------------------------------------------------------------------ the patch
    def run(self) -> bytearray:
        if self.zidx is None:
            raise _Fallback("zone not in the image")
        zi = self.zidx
        zrec = self.zones[zi][1]
        if zrec[3] & _EXPIRED:
            raise _Fallback("zone was expired")
        if zrec[3] & _SIGNED or _is_signed(self.data):
            # the DNSSEC block (pop53/dnssec/index.py) indexes every node: compile in full
            raise _Fallback("signed zone")
        okey = self.okey
        olabels = _labels(okey)
        inner = [k for k in self.zone_keys if k != okey and k.endswith(okey)
                 and _labels(k) > olabels]
        nodes = self.data.zone.nodes
        keys = {}
        for name in self.changed:
            if not name.is_subdomain(self.origin):
                raise _Fallback(f"{name} is outside the zone")
            key = name.to_wire().lower()
            for ik in inner:
                if _is_below(key, ik):
                    raise _Fallback(f"{name} is at or below another zone of the image")
            keys[key] = name

        # The patch index (node offsets, cut pointers, parent hashes, NS/MX/SRV refs).
        self.s_nodes, self.s_cuts, self.s_parents, r_rrsets, r_hashes = patch_index(self.old)

        new: dict[bytes, _New] = {}      # records to append (changed names, new ENTs)
        removed: set[bytes] = set()      # names leaving the table
        inplace: dict[int, int] = {}     # old offset -> new flags (flag-only edits)
        ent_inplace: set[int] = set()    # old offsets becoming empty non-terminals in place
        neg_ttl = zrec[8]
        toggled: set[bytes] = set()      # names where a zone cut appears or disappears

        def exists_new(key: bytes) -> bool:
            if key in new:
                return True
            if key in removed:
                return False
            return self.lookup_old(zi, key) != 0

        # 1. changed names that have data in the new version: rewritten records
        for key, name in keys.items():
            node = nodes.get(name)
            if node is None:
                continue
            old_off = self.lookup_old(zi, key)
            rrsets, flags, nt = _encode_node(name, node, okey, self.data)
            if nt is not None:
                neg_ttl = nt
            old_flags = self.node(old_off)[3] if old_off else 0
            if key == okey:
                flags |= _APEX
            if (flags & _CUT) != (old_flags & _CUT):
                toggled.add(key)        # a zone cut appears here: pointers below are redone
            # A CNAME or DNAME appearing or going at a name with descendants is node-local too:
            # the flags live on this record only, and nothing below refers to them (the resolver
            # checks CNAME at the node it found and DNAME at the closest encloser).
            if not rrsets:
                flags |= _ENT
            flags |= old_flags & (_WCC | _BELOW)
            if key[:2] == b"\x01*":
                flags |= _WC
            n = new[key] = _New(key, rrsets, flags, old_off)
            if old_off:
                on = self.node(old_off)
                n.cut_key = ("off", on[4]) if on[4] else None
        # 2. new names need their ancestors (empty non-terminals, RFC 4592 §2.2.2)
        for key in list(new):
            n = new[key]
            if n.old_off:
                continue
            k, labels = key, n.labels
            while labels > olabels:
                k = _parent(k)
                labels -= 1
                if k in new or self.lookup_old(zi, k):
                    break
                new[k] = _New(k, [], _ENT)
        # 3. changed names without data: gone, or kept as an empty non-terminal when they still
        #    have descendants.  Deepest first, so a parent sees its children's fate.
        heap = [(-_labels(k), k) for k, nm in keys.items() if nodes.get(nm) is None]
        heapq.heapify(heap)
        seen = set()
        while heap:
            _neg, key = heapq.heappop(heap)
            if key in seen:
                continue
            seen.add(key)
            old_off = self.lookup_old(zi, key)
            if not old_off:
                continue
            if key == okey:
                raise _Fallback("apex deleted")
            on = self.node(old_off)
            if self.has_children_new(key, old_off, new, removed):
                ent_inplace.add(old_off)
                inplace[old_off] = (on[3] | _ENT) & ~(_CNAME_F | _DNAME_F | _CUT)
                if on[3] & _CUT:
                    toggled.add(key)    # the delegation goes; its descendants stay
                continue
            removed.add(key)
            parent = _parent(key)
            poff = self.lookup_old(zi, parent)
            if poff and parent not in new and parent != okey:
                pn = self.node(poff)
                pname = dns.name.from_wire(parent, 0)[0]
                if pn[3] & _ENT and nodes.get(pname) is None:
                    # the parent ENT disappears too unless it has other children
                    heapq.heappush(heap, (-_labels(parent), parent))
        # 4. wildcard-child flags of the parents of added/removed "*" names
        for key in list(new) + list(removed):
            if key[:2] != b"\x01*":
                continue
            parent = key[2:]
            want = exists_new(key)
            if parent in new:
                if want:
                    new[parent].flags |= _WCC
                else:
                    new[parent].flags &= ~_WCC
            else:
                poff = self.lookup_old(zi, parent)
                if not poff:
                    continue
                fl = inplace.get(poff, self.node(poff)[3])
                inplace[poff] = (fl | _WCC) if want else (fl & ~_WCC)
        # 5. cut pointers of new names (below an existing delegation: glue or occluded)
        for key, n in new.items():
            if n.old_off:
                continue
            k = _parent(key)
            while True:
                if k in new and new[k].old_off == 0:
                    k = _parent(k)
                    continue
                off = self.lookup_old(zi, k) if k not in new else new[k].old_off
                if off:
                    c = self.node(off)[4]
                    if c:
                        n.cut_key = ("off", c)
                        n.flags |= _BELOW
                break
        # 5b. zone cuts that appear or disappear: every name below gets the cut pointer and
        #     BELOW_CUT flag a full compile gives it (the highest cut at or above it wins)
        cut_fix = self.recut(zi, olabels, toggled, new, removed, inplace)
        # 6. the node count (past MAX_LOAD of its table, layout() gives the zone a new table,
        #    sized as the compiler sizes it and filled in C; the old one becomes garbage)
        n_nodes = zrec[7] + sum(1 for n in new.values() if not n.old_off) - len(removed)
        return self.layout(zi, zrec, new, removed, inplace, ent_inplace, neg_ttl, n_nodes,
                           r_rrsets, r_hashes, keys, cut_fix)

    def recut(self, zi, olabels, toggled, new, removed, inplace) -> dict:
        """Cut pointers below names where a delegation appears or disappears (RFC 1034 §4.2.1:
        everything below a cut belongs to the child zone; the compiler points each node at
        the highest cut at or above it).  Sets them on `new` records; returns
        {old offset: (cut key or None, below flag)} for the records rewritten in place."""
        fix = {}
        if not toggled:
            return fix
        tops = [k for k in toggled
                if not any(t != k and _is_below(k, t) for t in toggled)]
        added_kids: dict[bytes, list[bytes]] = {}
        for k, n in new.items():
            if not n.old_off:
                added_kids.setdefault(_parent(k), []).append(k)

        def flags_of(k: bytes) -> int:
            n = new.get(k)
            if n is not None:
                return n.flags
            o = self.lookup_old(zi, k)
            return inplace.get(o, self.node(o)[3])

        for x in tops:
            if x in removed:
                continue        # gone with no descendants (else it would be kept as an ENT)
            # the highest cut strictly above x: no ancestor toggled (x is a top), so the first
            # existing old ancestor's cut pointer still holds (new ENTs are never cuts)
            above = 0
            k = x
            while _labels(k) > olabels:
                k = _parent(k)
                n = new.get(k)
                o = n.old_off if n is not None else self.lookup_old(zi, k)
                if o:
                    above = self.node(o)[4]
                    break
            if above:
                continue        # occluded below a higher cut: only x's own record changes
            stack = [(x, None)]
            while stack:
                k, cur = stack.pop()
                cut = k if cur is None and flags_of(k) & _CUT else cur
                below = _BELOW if cut is not None and cut != k else 0
                n = new.get(k)
                if n is not None:
                    n.cut_key = ("key", cut) if cut is not None else None
                    n.flags = (n.flags & ~_BELOW) | below
                else:
                    fix[self.lookup_old(zi, k)] = (cut, below)
                for o in self.children_fast(k).tolist():
                    nd = self.node(o)
                    ck = bytes(self.src[nd[0]:nd[0] + nd[1]])
                    if ck not in removed:
                        stack.append((ck, cut))
                for ck in added_kids.get(k, ()):
                    stack.append((ck, cut))
        return fix

    def children_fast(self, key: bytes) -> np.ndarray:
        """children(), through an index of the parent hashes sorted once (a subtree walk
        below a new cut asks for many names' children)."""
        if getattr(self, "_p_order", None) is None:
            self._p_order = np.argsort(self.s_parents, kind="stable")
            self._p_sorted = self.s_parents[self._p_order]
        h = _core.hash_name(key, self.seed)
        lo = np.searchsorted(self._p_sorted, h, "left")
        hi = np.searchsorted(self._p_sorted, h, "right")
        out = []
        for off in self.s_nodes[self._p_order[lo:hi]].tolist():
            n = self.node(off)
            nm = bytes(self.src[n[0]:n[0] + n[1]])
            if nm[nm[0] + 1:] == key:
                out.append(off)
        return np.array(out, dtype=np.uint32)

    def children(self, key: bytes) -> np.ndarray:
        """Old-image node offsets whose parent is `key` (hash match, then name check)."""
        h = _core.hash_name(key, self.seed)
        cand = self.s_nodes[self.s_parents == h]
        out = []
        for off in cand.tolist():
            n = self.node(off)
            nm = bytes(self.src[n[0]:n[0] + n[1]])
            if nm[nm[0] + 1:] == key:
                out.append(off)
        return np.array(out, dtype=np.uint32)

    def has_children_new(self, key, old_off, new, removed) -> bool:
        for off in self.children(key).tolist():
            n = self.node(off)
            ck = bytes(self.src[n[0]:n[0] + n[1]])
            if ck not in removed:
                return True
        return any(_parent(k) == key for k, n in new.items() if not n.old_off)

    # ------------------------------------------------------------------ writing
    def layout(self, zi, zrec, new, removed, inplace, ent_inplace, neg_ttl, n_nodes,
               r_rrsets, r_hashes, keys, cut_fix) -> memoryview:
        base = _align4(self.size)
        off = base
        for n in new.values():
            n.off = off
            size = _align4(NODE.size + len(n.key)) + RRSET.size * len(n.rrsets)
            for rr in n.rrsets:
                size += sum(2 + len(w) for w in rr[2])
            n.size = _align4(size)
            off += n.size
        moved = {n.old_off: n.off for n in new.values() if n.old_off}   # old -> new offset

        # Lookups in the new version (for additional targets): this zone's changes override.
        def lookup_new(tkey: bytes):
            """(offset, has A/AAAA) of a target in the new image, or None."""
            tz = self.zone_of(tkey)
            if tz is None:
                return None
            if tz == zi:
                n = new.get(tkey)
                if n is not None:
                    return n.off, any(rr[0] in (_T_A, _T_AAAA) for rr in n.rrsets)
                if tkey in removed:
                    return None
            o = self.lookup_old(tz, tkey)
            if not o:
                return None
            if o in ent_inplace:
                return o, False
            return o, self.old_has_addr(o)

        def add_list(targets) -> list[int]:
            seen, hits = set(), []
            for t in targets:
                r = lookup_new(t)
                if r is None or r[0] in seen or not r[1]:
                    continue
                seen.add(r[0])
                hits.append(r[0])
            return hits

        for n in new.values():
            for i, rr in enumerate(n.rrsets):
                if rr[3]:
                    hits = add_list(rr[3])
                    if hits:
                        n.adds[i] = hits
        # Existing NS/MX/SRV RRsets that name a changed name: their lists are recomputed.
        dead = []   # rrset_t ranges of records that are replaced or emptied
        for o in list(moved) + list(ent_inplace):
            on = self.node(o)
            dead.append((on[5], on[5] + RRSET.size * on[6]))
        for k in removed:
            o = self.lookup_old(zi, k)
            on = self.node(o)
            dead.append((on[5], on[5] + RRSET.size * on[6]))
        hashes = np.array([_core.hash_name(k, self.seed) for k in keys], dtype=np.uint32)
        refs = np.unique(r_rrsets[np.isin(r_hashes, hashes)]).tolist() if len(keys) else []
        ref_updates = []   # (rrset offset, [node offsets])
        for ro in refs:
            if any(a <= ro < b for a, b in dead):
                continue
            rs = RRSET.unpack_from(self.src, ro)
            p, targets = rs[3], []
            for _j in range(rs[1]):
                rl = int.from_bytes(self.src[p:p + 2], "big")
                targets.append(_lower_name(self.src, p + 2 + _TARGET_POS[rs[0]]))
                p += 2 + rl
            ref_updates.append((ro, rs, add_list(targets)))

        adds_off = off
        for n in new.values():
            for hits in n.adds.values():
                off += 4 * len(hits)
        for ro, rs, hits in ref_updates:
            if len(hits) > rs[6]:
                off += 4 * len(hits)
        adds_end = off
        ntab_off, mask = zrec[5], zrec[6]
        regrow = n_nodes > MAX_LOAD * (mask + 1)
        if regrow:
            new_mask = _pow2_at_least(2 * n_nodes + 1) - 1
            new_tab_off = off
            off += 4 * (new_mask + 1)
        total = off
        if total > _MAX_IMAGE:
            raise _Fallback("image would exceed the format's 4 GiB limit")

        # the copy, into the spare buffer when one is ready (see _Spare), else into fresh memory
        arr = _SPARE.take(total)
        if arr is None:
            arr = np.empty(total, np.uint8)
        arr[:self.size] = np.frombuffer(self.src, np.uint8, count=self.size)
        arr[self.size:] = 0
        buf = memoryview(arr)
        node_pack, rrset_pack = NODE.pack_into, RRSET.pack_into
        d_nodes = d_rrsets = d_records = 0
        for o in moved:
            a, b = self.old_counts(o)
            d_rrsets -= a
            d_records -= b
        for o in ent_inplace:
            a, b = self.old_counts(o)
            d_rrsets -= a
            d_records -= b
        for k in removed:
            a, b = self.old_counts(self.lookup_old(zi, k))
            d_rrsets -= a
            d_records -= b
            d_nodes -= 1

        def key_off(k: bytes) -> int:
            """The new image's record of a name of this zone."""
            n = new.get(k)
            return n.off if n is not None else self.lookup_old(zi, k)

        def resolve_cut(n: _New) -> int:
            if n.cut_key is None:
                return 0
            c = n.cut_key[1]
            if n.cut_key[0] == "key":
                return key_off(c)
            if c == n.old_off and n.old_off:
                return n.off
            return moved.get(c, c)

        a_off = adds_off
        soa_off = 0
        apex_off = moved.get(zrec[4], zrec[4])
        for n in new.values():
            if not n.old_off:
                d_nodes += 1

            def adds(i, n=n):
                nonlocal a_off
                hits = n.adds.get(i)
                if not hits:
                    return 0, 0
                this_add = a_off
                struct.pack_into(f"<{len(hits)}I", buf, a_off, *hits)
                a_off += 4 * len(hits)
                return this_add, len(hits)

            n.cut_off = resolve_cut(n)
            soa_off = write_node(buf, n.off, n.key, n.labels, n.flags, n.cut_off, n.rrsets, zi,
                                 self.seed, adds) or soa_off
            d_rrsets += len(n.rrsets)
            d_records += sum(len(rr[2]) for rr in n.rrsets)
        for ro, rs, hits in ref_updates:
            if len(hits) > rs[6]:
                lo = a_off
                a_off += 4 * len(hits)
            else:
                lo = rs[5] if hits else 0
            if hits:
                struct.pack_into(f"<{len(hits)}I", buf, lo, *hits)
            rrset_pack(buf, ro, rs[0], rs[1], rs[2], rs[3], rs[4], lo, len(hits), rs[7])
        assert a_off == adds_end
        # flag-only edits (parents of wildcards; names kept as empty non-terminals)
        for o, fl in inplace.items():
            if o in moved:
                continue
            n = self.node(o)
            nrr = 0 if o in ent_inplace else n[6]
            node_pack(buf, o, n[0], n[1], n[2], fl, n[4], n[5], nrr, n[7], n[8])
        # cut pointers at a replaced delegation point (RFC 1034 §4.2.1: referrals use its NS)
        cut_moves = [o for o in moved if self.node(o)[3] & _CUT]
        if cut_moves:
            for o in cut_moves:
                for no in self.s_nodes[self.s_cuts == o].tolist():
                    if no not in moved:
                        struct.pack_into("<I", buf, no + 8, moved[o])
        # names below a cut that appeared or disappeared, rewritten in place (the copy is ours):
        # node_t.flags at +6 (u16), node_t.cut_off at +8 (u32)
        for o, (ck, below) in cut_fix.items():
            fl = (struct.unpack_from("<H", buf, o + 6)[0] & ~_BELOW) | below
            struct.pack_into("<HI", buf, o + 6, fl, key_off(ck) if ck is not None else 0)
        # the node table
        tab = np.frombuffer(buf, dtype=np.uint32, count=mask + 1, offset=ntab_off)
        if regrow:
            live = tab[tab != 0]
            if removed:
                gone = np.array([self.lookup_old(zi, k) for k in removed], dtype=np.uint32)
                live = live[~np.isin(live, gone)]
            if moved:
                mo = np.array(list(moved), dtype=np.uint32)
                mn = np.array(list(moved.values()), dtype=np.uint32)
                order = np.argsort(mo)
                mo, mn = mo[order], mn[order]
                idx = np.searchsorted(mo, live)
                hit = (idx < len(mo)) & (mo[np.minimum(idx, len(mo) - 1)] == live)
                live = np.where(hit, mn[np.minimum(idx, len(mo) - 1)], live)
            added = np.array([n.off for n in new.values() if not n.old_off], dtype=np.uint32)
            live = np.ascontiguousarray(np.concatenate([live, added]), dtype=np.uint32)
            del tab
            if len(live) != n_nodes:
                raise _Fallback("node count mismatch while regrowing the table")
            _core.fill_table(buf, new_tab_off, new_mask, live)
            ntab_off, mask = new_tab_off, new_mask
            tab = None
        for o, no in (moved.items() if tab is not None else ()):
            h = self.node(o)[8]
            slot = h & mask
            while int(tab[slot]) != o:
                if tab[slot] == 0:
                    raise _Fallback("node missing from its table")
                slot = (slot + 1) & mask
            tab[slot] = no
        for k in (removed if tab is not None else ()):
            o = self.lookup_old(zi, k)
            h = self.node(o)[8]
            slot = h & mask
            while int(tab[slot]) != o:
                slot = (slot + 1) & mask
            _delete_slot(buf, tab, slot, mask)
        for n in (new.values() if tab is not None else ()):
            if n.old_off:
                continue
            slot = _core.hash_name(n.key, self.seed) & mask
            while tab[slot]:
                slot = (slot + 1) & mask
            tab[slot] = n.off
        del tab
        if soa_off == 0:
            soa_off = zrec[9]
        ZONE.pack_into(buf, self.zones_off + ZONE.size * zi, zrec[0], zrec[1], zrec[2], zrec[3],
                       apex_off, ntab_off, mask, n_nodes, neg_ttl, soa_off)
        HEADER.pack_into(buf, 0, b"POP53IMG", _core.IMAGE_VERSION, HEADER.size, total,
                         self.n_zones, self.zones_off, self.ztab_off, self.ztab_mask, self.seed,
                         HEADER.unpack_from(self.src, 0)[9], self.h_nodes + d_nodes,
                         self.h_rrsets + d_rrsets, self.h_records + d_records, 0)
        struct.pack_into("<I", buf, CHECKSUM_OFFSET, _core.checksum(buf))
        self.next_index = self.carry_index(buf, zi, new, removed, moved, dead, cut_moves, cut_fix,
                                           key_off, r_rrsets, r_hashes)
        return buf

    def carry_index(self, buf, zi, new, removed, moved, dead, cut_moves, cut_fix, key_off,
                    r_rrsets, r_hashes) -> tuple:
        """The patched image's patch index, from ours: the records replaced or removed leave
        it, the appended ones join it, and the cut pointers rewritten in place change (what a
        fresh `scan_image` of the result gives; the property test compares the two)."""
        nodes, cuts, parents = self.s_nodes, self.s_cuts, self.s_parents
        dropped = list(moved) + [self.lookup_old(zi, k) for k in removed]
        if dropped:
            keep = ~np.isin(nodes, np.array(dropped, dtype=np.uint32))
            nodes, cuts, parents = nodes[keep], cuts[keep], parents[keep]
        cuts = cuts.copy()
        for o in cut_moves:
            cuts[cuts == o] = moved[o]
        if cut_fix:
            fix = {o: (key_off(ck) if ck is not None else 0) for o, (ck, _b) in cut_fix.items()}
            where = np.flatnonzero(np.isin(nodes, np.array(list(fix), dtype=np.uint32)))
            for i in where.tolist():
                cuts[i] = fix[int(nodes[i])]
        add = list(new.values())
        n_offs = np.array([n.off for n in add], dtype=np.uint32)
        n_cuts = np.array([n.cut_off for n in add], dtype=np.uint32)
        n_par = np.array([_core.hash_name(n.key[n.key[0] + 1:], self.seed) if len(n.key) > 1 else 0
                          for n in add], dtype=np.uint32)
        nodes = np.concatenate([nodes, n_offs])
        cuts = np.concatenate([cuts, n_cuts])
        parents = np.concatenate([parents, n_par])
        # references: those inside dead rrset_t arrays go, the new records' join
        if dead and len(r_rrsets):
            d = sorted(dead)
            starts = np.array([a for a, _b in d], dtype=np.int64)
            ends = np.array([b for _a, b in d], dtype=np.int64)
            pos = np.searchsorted(starts, r_rrsets, "right") - 1
            inside = (pos >= 0) & (r_rrsets < ends[np.maximum(pos, 0)])
            r_rrsets, r_hashes = r_rrsets[~inside], r_hashes[~inside]
        ro, rh = [], []
        for n in add:
            if not any(rr[3] for rr in n.rrsets):
                continue
            base = NODE.unpack_from(buf, n.off)[5]
            for i, rr in enumerate(n.rrsets):
                if rr[0] in _REFS:
                    for t in rr[3]:
                        ro.append(base + RRSET.size * i)
                        rh.append(_core.hash_name(t, self.seed))
        if ro:
            r_rrsets = np.concatenate([r_rrsets, np.array(ro, dtype=np.uint32)])
            r_hashes = np.concatenate([r_hashes, np.array(rh, dtype=np.uint32)])
        return nodes, cuts, parents, r_rrsets, r_hashes


def _is_signed(data: ZoneData) -> bool:
    """An NSEC or NSEC3 chain at the apex (what makes the compiler write a DNSSEC block)."""
    apex = data.zone.get_node(data.origin)
    return apex is not None and any(r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3PARAM)
                                    for r in apex.rdatasets)


def _is_below(key: bytes, anc: bytes) -> bool:
    """key is anc or a descendant of it (label-aligned suffix)."""
    k = key
    while len(k) > len(anc):
        k = k[k[0] + 1:]
    return k == anc


def _delete_slot(buf, tab, slot: int, mask: int) -> None:
    """Linear-probing deletion by backward shift (Knuth 6.4 Algorithm R): later entries of the
    cluster move up when their home slot is not between the hole and themselves."""
    tab[slot] = 0
    hole = slot
    j = slot
    while True:
        j = (j + 1) & mask
        o = int(tab[j])
        if o == 0:
            return
        home = _U32.unpack_from(buf, o + 20)[0] & mask   # node_t.hash
        # move o into the hole unless its home lies cyclically in (hole, j]
        if (hole < j and (home <= hole or home > j)) or (hole > j and home <= hole and home > j):
            tab[hole] = o
            tab[j] = 0
            hole = j


def patch_image(old: Image, zone_origin, new_data: ZoneData, changed_names) -> Image | None:
    """An image equal in answers to a full compile of the old image's zones with `zone_origin`
    replaced by `new_data`, made by patching `old`; None when the change must be compiled in
    full (structural changes; see the module doc).  `changed_names`: every owner name whose
    RRsets differ between the old image's version of the zone and `new_data` (IXFR's diff)."""
    if isinstance(zone_origin, str):
        zone_origin = dns.name.from_text(zone_origin)
    if new_data.origin != zone_origin or not changed_names:
        return None
    p = _Patch(old, zone_origin, new_data, list(changed_names))
    try:
        buf = p.run()
    except _Fallback as exc:
        patch_image.last_reason = str(exc)
        return None
    patch_image.last_reason = None
    image = Image(buf, full_check=False)
    _INDEX[image] = p.next_index
    _SPARE.refill(_next_size(len(image)))
    return image


patch_image.last_reason = None


# =============================================================================================
# Incremental validation
# =============================================================================================

def validate_changes(data: ZoneData, changed_names) -> None:
    """zonefile.validate()'s rules applied to the changed names (and, for the rules that look
    up or down the tree, their ancestors), given that the previous version passed them.  Falls
    back to the full validate() where the check would need the descendants of a name (a DNAME
    at a changed name).  A delegation at a changed name needs no more than the local and
    ancestor checks: below a cut, data is only occluded (a warning in validate(), not an
    error), and that warning for the descendants of a new cut is not repeated here.  Raises
    ZoneError like validate()."""
    zone, origin = data.zone, data.origin
    nodes = zone.nodes

    fail = zonefile.failer(data)

    # A DNAME makes a rule depend on descendants (RFC 6672 §2.4: no data below it): the full
    # check.  (A DNAME at a cut is occluded, but the full check sorts that out too.)
    for name in changed_names:
        node = nodes.get(name)
        if node is None:
            continue
        for rds in node.rdatasets:
            if rds.rdtype == dns.rdatatype.DNAME:
                validate(data)
                return
    zonefile.check_apex(data, fail)
    for name in sorted(changed_names):
        node = nodes.get(name)
        if node is None:
            continue
        types = zonefile.check_node(data, name, node, fail)
        if name == origin:
            continue
        # the ancestors: data below a DNAME (RFC 6672 §2.4), occlusion below a cut (warning)
        parent = name.parent()
        while parent != origin and len(parent) >= len(origin):
            pnode = nodes.get(parent)
            if pnode is not None:
                ptypes = {rds.rdtype for rds in pnode.rdatasets}
                is_cut = dns.rdatatype.NS in ptypes
                if dns.rdatatype.DNAME in ptypes and not is_cut:
                    fail(f"data below the DNAME at {parent} (RFC 6672 §2.4)", name)
                if is_cut:
                    bad = types - _GLUE
                    if bad:
                        data.warnings.append(
                            f"{data.source}:{data.where(name) or '?'}: owner {name}: "
                            f"{', '.join(sorted(dns.rdatatype.to_text(t) for t in bad))} below the "
                            f"delegation at {parent} is occluded and will not be served")
            parent = parent.parent()
        if dns.rdatatype.NS in types:
            bad = types - _AT_CUT_OK
            if bad:
                data.warnings.append(
                    f"{data.source}:{data.where(name) or '?'}: owner {name}: "
                    f"{', '.join(sorted(dns.rdatatype.to_text(t) for t in bad))} at a delegation "
                    "point is occluded by the NS records and will not be served")
