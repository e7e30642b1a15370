"""Splice whole zones into a compiled image: replace, add or remove a zone without compiling the
others (issue 14 point 2).

The IXFR patcher (zone/incremental.py) rewrites the names that changed; it needs the old and new
names as Python objects, which for a million-name zone costs gigabytes and minutes.  A splice
works on compiled bytes instead: the zone is compiled alone (in a child process when it is big)
with the served image's hash seed, its region (origin name, nodes, NSEC3 owners, additional-
target lists, node table, DNSSEC block) is copied to the end of a copy of the served image, and
one C pass moves its offsets (`_core.splice_relocate`: a signed zone's NSEC/NSEC3 chain and
per-name proofs are node offsets, moved by the same constant, so their order holds).  A new zone
table and zone hash table are written after it; the old ones, and the replaced zone's records,
stay as unreachable garbage until the next full compile.

The zone table's order does not matter to answers (zones are found by the zone hash table); a
removed zone's slot is filled by the last zone, whose nodes (NSEC3 owners included) get their
new zone index.

The one thing a full compile resolves across zones is the additional section: an NS/MX/SRV
target's node is looked up in the longest zone holding it (compiler._compile), so a zone
compiled alone misses targets in other zones, and the lists of unchanged zones may point at a
replaced zone's old nodes, or (zones nested in one another) at a name another zone now owns.
`_core.splice_fix_adds` rewrites exactly those lists on the result: every RRset of a changed
zone and of an unchanged zone whose target lies outside its own name space, and all of a
zone's RRsets when a changed zone is nested in it.  What still returns None
(`splice.last_reason` says why): a spliced image compiled with another seed or holding more
than one zone, a zone count out of range, and an image past the format's 4 GiB.
"""
from __future__ import annotations

import weakref

import numpy as np

from pop53 import _core
from pop53.zone.compiler import (HEADER, ZONE, _MAX_IMAGE, _align4,
                                 _fill_zone_table, _pow2_at_least)
from pop53.zone.arena import Draft
from pop53.zone.images import Image

_SIGNED = _core.ZONE_FLAGS["SIGNED"]
_EMPTY = np.empty(0, np.uint32)


class _Refs:
    """One zone's NS/MX/SRV RRsets in one image (rrset_t offsets), the image hashes of every
    suffix of their targets outside the zone (sorted), and the zone's record counts."""
    __slots__ = ("all", "foreign", "n_all", "n_foreign", "hashes", "counts")

    def __init__(self, refs: tuple, counts=None):
        self.all = np.frombuffer(refs[0], np.uint32)
        self.foreign = np.frombuffer(refs[1], np.uint32)
        self.n_all, self.n_foreign = refs[2], refs[3]
        self.hashes = np.unique(np.frombuffer(refs[4], np.uint32))
        self.counts = counts        # (nodes, rrsets, records), found when first needed

    def moved(self, delta: int, counts) -> "_Refs":
        out = _Refs((b"", b"", self.n_all, self.n_foreign, b""), counts)
        out.all = (self.all.astype(np.int64) + delta).astype(np.uint32)
        out.foreign = (self.foreign.astype(np.int64) + delta).astype(np.uint32)
        out.hashes = self.hashes
        return out

    def touches(self, hashes: np.ndarray) -> bool:
        """Whether a changed zone's origin (its hash in `hashes`) is a suffix of a target
        outside this zone: else none of those targets can resolve differently."""
        if not len(self.hashes) or not len(hashes):
            return False
        i = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        return bool((self.hashes[i] == hashes).any())


# image -> {zone key: _Refs}: found once per zone by a walk of its node table (~0.2 s for a
# million names), then carried from each splice to its result (an unchanged zone's records stay
# at the same offsets)
_REFS: "weakref.WeakKeyDictionary[Image, dict]" = weakref.WeakKeyDictionary()


def _refs(image: Image, zones) -> dict[bytes, _Refs]:
    have = _REFS.get(image)
    if have is None:
        have = _REFS[image] = {}
    src = _u8(image._data)
    for key, z in zones:
        if key not in have:
            have[key] = _Refs(_core.zone_ref_rrsets(src, z[5], z[6], key, image.view.seed))
    return have


def _counts(image: Image, key: bytes, z) -> tuple:
    r = _refs(image, [(key, z)])[key]
    if r.counts is None:
        r.counts = _core.zone_counts(_u8(image._data), z[5], z[6], bool(z[3] & _SIGNED))
    return r.counts


def _holders(keys, among: set) -> set:
    """The zones of `among` that hold one of `keys` strictly below their origin."""
    out = set()
    for k in keys:
        while len(k) > 1:
            k = k[k[0] + 1:]
            if k in among:
                out.add(k)
    return out


class _Fallback(Exception):
    pass


def _zones(src) -> list[tuple[bytes, tuple]]:
    h = HEADER.unpack_from(src, 0)
    out = []
    for i in range(h[4]):
        z = ZONE.unpack_from(src, h[5] + ZONE.size * i)
        out.append((bytes(src[z[0]:z[0] + z[1]]), z))
    return out


def splice(old: Image, put: dict[bytes, Image], remove=()) -> Image | None:
    """An image answering as a full compile of `old`'s zones with each zone of `put` (lowercased
    wire origin -> an image holding that zone alone, compiled with `old`'s seed) replacing or
    joining the zone of that origin, and the zones named in `remove` left out.  None when the
    change needs a full compile (see the module doc).  `splice.last_stats`: what it did."""
    try:
        out = _splice(old, put, set(remove))
    except _Fallback as exc:
        splice.last_reason = str(exc)
        return None
    splice.last_reason = None
    return out


splice.last_reason = None
splice.last_stats = {}


def _splice(old: Image, put: dict[bytes, Image], remove: set) -> Image:
    src = old._data
    h = HEADER.unpack_from(src, 0)
    seed = h[8]
    zones = _zones(src)
    index = {k: i for i, (k, _z) in enumerate(zones)}
    remove = {k for k in remove if k in index}
    put_zone = {}
    for key, img in put.items():
        h2 = HEADER.unpack_from(img._data, 0)
        if h2[4] != 1 or h2[8] != seed:
            raise _Fallback("a spliced zone must be compiled alone with the image's seed")
        z = ZONE.unpack_from(img._data, h2[5])
        if bytes(img._data[z[0]:z[0] + z[1]]) != key:
            raise _Fallback("a spliced zone's origin differs from its key")
        put_zone[key] = (z, h2)

    # New zone indices: a removed zone's slot takes the last zone (only its nodes move).
    order = list(range(len(zones)))
    for r in sorted((index[k] for k in remove), reverse=True):
        last = order.pop()
        if last != r:
            order[order.index(r)] = last
    moved = {old_i: new_i for new_i, old_i in enumerate(order) if old_i != new_i}
    added = [k for k in put if k not in index]
    n_new = len(order) + len(added)
    if n_new == 0 or n_new > 0xFFFF:
        raise _Fallback("zone count out of range")

    # Which additional-target lists may differ from a full compile's (see the module doc).
    old_refs = _refs(old, zones)
    keys = [zones[i][0] for i in order] + added
    changed = set(put) | remove
    nest_old = _holders(changed, set(index) - changed)      # unchanged zones holding a changed one
    nest_new = _holders(keys, set(put))                     # spliced zones holding another
    new_refs = {k: old_refs[k] for k, _z in zones if k not in changed}
    hashes = np.unique(np.array([_core.hash_name(k, seed) for k in changed], np.uint32))
    keep, reserve = [], 0   # unchanged zones' RRsets that may resolve differently
    for k, r in new_refs.items():
        if k in nest_old:
            keep.append(r.all)
            reserve += r.n_all
        elif r.touches(hashes):
            keep.append(r.foreign)
            reserve += r.n_foreign
    fix = []                # the spliced zones' RRsets: always looked at, before `keep`

    # Sizes: the old image, each spliced region, the zone table and its hash table, then room
    # for the rewritten target lists.
    base = _align4(h[3])
    off = base
    regions = []            # (key, image, region start in it, where it goes)
    for key, img in put.items():
        r0 = put_zone[key][0][0]            # the origin name opens the region
        regions.append((key, img, r0, off))
        off = _align4(off + len(img) - r0)
        pr = _refs(img, [(key, put_zone[key][0])])[key]
        reserve += pr.n_all if key in nest_new else pr.n_foreign
    zones_off = off
    off += ZONE.size * n_new
    ztab_size = _pow2_at_least(2 * n_new + 1)
    ztab_off = off
    area = off + 4 * ztab_size
    if area + 4 * reserve > _MAX_IMAGE:
        raise _Fallback("image would exceed the format's 4 GiB limit")

    # old's bytes are not copied: a copy-on-write mapping of the memory file they are in
    # (zone/arena.py; fastsplice14), so a splice costs its own zones, not the image
    draft = Draft(old, area + 4 * reserve)
    arr = draft.arr
    buf = memoryview(arr)
    d_nodes = d_rrsets = d_records = 0
    records = {i: zones[i][1] for i in order}
    for k in changed:
        i = index.get(k)
        if i is not None:
            n, r, c = _counts(old, k, zones[i][1])
            d_nodes, d_rrsets, d_records = d_nodes - n, d_rrsets - r, d_records - c
    new_index = {k: j for j, k in enumerate(keys)}
    for key, img, r0, at in regions:
        data = img._data
        arr[at:at + len(img) - r0] = np.frombuffer(data, np.uint8, count=len(img) - r0, offset=r0)
        z, h2 = put_zone[key]
        delta = at - r0
        _core.splice_relocate(arr, z[5] + delta, z[6], delta, new_index[key], z[5] + delta,
                              bool(z[3] & _SIGNED))
        d_nodes, d_rrsets, d_records = d_nodes + h2[10], d_rrsets + h2[11], d_records + h2[12]
        new_refs[key] = _refs(img, [(key, z)])[key].moved(delta, (h2[10], h2[11], h2[12]))
        fix.append(new_refs[key].all if key in nest_new else new_refs[key].foreign)
        rec = (z[0] + delta, z[1], z[2], z[3], z[4] + delta, z[5] + delta, z[6], z[7], z[8],
               z[9] + delta)
        if key in index:
            records[index[key]] = rec
        else:
            records[("add", key)] = rec
    # zones that changed index: their nodes carry it (ext/dnssec.pxi reads it)
    for old_i, new_i in moved.items():
        z = records[old_i]
        _core.splice_relocate(arr, z[5], z[6], 0, new_i, 0, bool(z[3] & _SIGNED))
    for j, old_i in enumerate(order):
        ZONE.pack_into(buf, zones_off + ZONE.size * j, *records[old_i])
    for j, k in enumerate(added):
        ZONE.pack_into(buf, zones_off + ZONE.size * (len(order) + j), *records[("add", k)])
    _fill_zone_table(buf, keys, ztab_off, ztab_size, seed)
    header = [b"POP53IMG", _core.IMAGE_VERSION, HEADER.size, area, n_new, zones_off, ztab_off,
              ztab_size - 1, seed, h[9], h[10] + d_nodes, h[11] + d_rrsets, h[12] + d_records, 0]
    HEADER.pack_into(buf, 0, *header)
    # the additional section as a full compile resolves it, across zones; an unchanged zone's
    # RRset only when a target lies at or below a changed zone's origin
    keep_cands = np.concatenate(keep) if keep else _EMPTY
    cands = np.concatenate(fix + [keep_cands]) if fix else keep_cands
    used, rewritten = _core.splice_fix_adds(arr, cands, len(cands) - len(keep_cands), hashes,
                                            area)
    total = area + used
    header[3] = total
    HEADER.pack_into(buf, 0, *header)
    buf.release()
    draft.arr = arr[:total]        # the room not used for target lists is not the image's
    # below the old size: the header, a moved zone's nodes, unchanged zones' rewritten RRsets
    # (rrset_t, 24 bytes); the arena reads the pages from /proc/self/pagemap when it can
    written = None if moved or len(keep_cands) > 4096 else \
        [(0, HEADER.size)] + [(o, o + 24) for o in keep_cands.tolist()]
    new = draft.finish(written)
    _REFS[new] = new_refs
    splice.last_stats = {"zones": len(put), "removed": len(remove), "signed":
                         sum(1 for z, _h in put_zone.values() if z[3] & _SIGNED),
                         "targets_checked": len(cands), "lists_rewritten": rewritten}
    return new


def _u8(src):
    return src if isinstance(src, np.ndarray) else np.frombuffer(src, np.uint8)
