"""The pieces an image patch is made of (pop53.zone.incremental): the image's patch index, the
spare copy buffer, node encoding, and the hash-table and name helpers."""
from __future__ import annotations

import struct
import threading
import weakref
from socket import AF_INET, AF_INET6, inet_pton

import dns.name
import dns.rdataclass
import dns.rdatatype
import numpy as np

from pop53 import _core
from pop53.zone.compiler import HEADER, _labels, _target_key
from pop53.zone.images import Image
from pop53.zone.zonefile import ZoneData


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


