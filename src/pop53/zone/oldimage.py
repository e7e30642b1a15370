"""Reads of a compiled image for the IXFR patcher (pop53.zone.incremental): its header, zone
table, node lookups by hash (as the compiler lays them out) and the patch index (node offsets,
cut pointers, parent hashes) that finds a name's children without walking the image."""
from __future__ import annotations

import numpy as np

from pop53 import _core
from pop53.zone.compiler import HEADER, NODE, RRSET, ZONE, _parent
from pop53.zone.images import Image
from pop53.zone.patchkit import _T_A, _T_AAAA, _U32, patch_index


class OldImage:
    """The image a patch starts from; never written (the patch writes a copy)."""

    def __init__(self, old: Image):
        self.old = old
        self.src = memoryview(old._data) if not isinstance(old._data, (bytes, bytearray)) else old._data
        h = HEADER.unpack_from(self.src, 0)
        (_m, _v, _hs, self.size, self.n_zones, self.zones_off, self.ztab_off, self.ztab_mask,
         self.seed, _fl, self.h_nodes, self.h_rrsets, self.h_records, _ck) = h
        self.zones = []          # (key, zone record tuple)
        for i in range(self.n_zones):
            z = ZONE.unpack_from(self.src, self.zones_off + ZONE.size * i)
            key = bytes(self.src[z[0]:z[0] + z[1]])
            self.zones.append((key, z))
        self.zone_keys = {k: i for i, (k, _z) in enumerate(self.zones)}

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

    def load_index(self) -> tuple:
        """Load the patch index (scanned once per image, carried over by each patch); returns
        its NS/MX/SRV reference arrays (RRset offsets, target hashes) for the layout."""
        self.s_nodes, self.s_cuts, self.s_parents, r_rrsets, r_hashes = patch_index(self.old)
        return r_rrsets, r_hashes

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
