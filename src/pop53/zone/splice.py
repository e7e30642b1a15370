"""Splice whole zones into a compiled image: replace, add or remove a zone without compiling the
others (issue 14 point 2).

The IXFR patcher (zone/incremental.py) rewrites the names that changed; it needs the old and new
names as Python objects, which for a million-name zone costs gigabytes and minutes.  A splice
works on compiled bytes instead: the zone is compiled alone (in a child process when it is big)
with the served image's hash seed, its region (origin name, nodes, additional-target lists, node
table) is copied to the end of a copy of the served image, and one C pass moves its offsets
(`_core.splice_relocate`).  A new zone table and zone hash table are written after it; the old
ones, and the replaced zone's records, stay as unreachable garbage until the next full compile.

The zone table's order does not matter to answers (zones are found by the zone hash table); a
removed zone's slot is filled by the last zone, whose nodes get their new zone index.  What a
splice leaves to a full compile (returns None, `splice.last_reason` says why): a signed zone
among those replaced, removed or moved, a zone nested in another (or holding one), and an NS/MX/SRV target with an address that crosses
between a spliced zone and another zone (the full compile lists it in the additional section
across zones; `_core.splice_cross_refs` counts them before and after).
"""
from __future__ import annotations

import weakref

import numpy as np

from pop53 import _core
from pop53.zone.compiler import (HEADER, ZONE, _MAX_IMAGE, _align4,
                                 _fill_zone_table, _pow2_at_least)
from pop53.zone.arena import Draft
from pop53.zone.images import Image
from pop53.zone.patchkit import _is_below

_SIGNED = _core.ZONE_FLAGS["SIGNED"]

# image -> {zone key: uint32 rrset_t offsets of its NS/MX/SRV RRsets}: found once per zone by a
# walk of its node table (~0.2 s for a million names), then carried from each splice to its
# result (an unchanged zone's records stay at the same offsets)
_REFS: "weakref.WeakKeyDictionary[Image, dict]" = weakref.WeakKeyDictionary()


def _refs(image: Image, zones) -> dict[bytes, np.ndarray]:
    have = _REFS.get(image)
    if have is None:
        have = _REFS[image] = {}
    src = _u8(image._data)
    for key, z in zones:
        if key not in have:
            have[key] = np.frombuffer(_core.zone_ref_rrsets(src, z[5], z[6]), np.uint32)
    return have


def _cross(src, refs: dict, keys: list[bytes], marked: np.ndarray) -> int:
    """splice_cross_refs over the RRsets of the zones `keys` (in zone-table order)."""
    arrays = [refs[k] for k in keys]
    rr = np.concatenate(arrays) if arrays else np.empty(0, np.uint32)
    zi = np.repeat(np.arange(len(keys), dtype=np.uint32), [len(a) for a in arrays])
    return _core.splice_cross_refs(_u8(src), rr, zi, marked)


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
    change needs a full compile (see the module doc)."""
    try:
        out = _splice(old, put, set(remove))
    except _Fallback as exc:
        splice.last_reason = str(exc)
        return None
    splice.last_reason = None
    return out


splice.last_reason = None


def _splice(old: Image, put: dict[bytes, Image], remove: set) -> Image:
    src = old._data
    h = HEADER.unpack_from(src, 0)
    seed = h[8]
    zones = _zones(src)
    index = {k: i for i, (k, _z) in enumerate(zones)}
    remove = {k for k in remove if k in index}
    for key, img in put.items():
        h2 = HEADER.unpack_from(img._data, 0)
        if h2[4] != 1 or h2[8] != seed:
            raise _Fallback("a spliced zone must be compiled alone with the image's seed")
        z = ZONE.unpack_from(img._data, h2[5])
        if bytes(img._data[z[0]:z[0] + z[1]]) != key:
            raise _Fallback("a spliced zone's origin differs from its key")
        if z[3] & _SIGNED:
            raise _Fallback("signed zone")
    # A zone nested in another (or holding one): which zone a name or a target falls in moves
    # with it, for names spliced or not; the full compile sorts that out.
    changing = set(put) | remove
    for k in changing:
        for other in index:
            if other != k and (_is_below(k, other) or _is_below(other, k)):
                raise _Fallback("a zone nested in another")
    # The additional section crossing zones: records in other zones naming the old version's
    # names, or the old version's records naming names in other zones.
    marked = np.zeros(max(1, len(zones)), np.uint8)
    for k in list(put) + list(remove):
        if k in index:
            marked[index[k]] = 1
            if zones[index[k]][1][3] & _SIGNED:
                raise _Fallback("signed zone")
    old_refs = _refs(old, zones)
    if marked.any() and _cross(src, old_refs, [k for k, _z in zones], marked):
        raise _Fallback("an additional-section target crosses zones")

    # New zone indices: a removed zone's slot takes the last zone (only its nodes move).
    order = list(range(len(zones)))
    for r in sorted((index[k] for k in remove), reverse=True):
        last = order.pop()
        if last != r:
            order[order.index(r)] = last
    moved = {old_i: new_i for new_i, old_i in enumerate(order) if old_i != new_i}
    for old_i in moved:
        if zones[old_i][1][3] & _SIGNED:
            raise _Fallback("a signed zone would move in the zone table")
    added = [k for k in put if k not in index]
    n_new = len(order) + len(added)
    if n_new == 0 or n_new > 0xFFFF:
        raise _Fallback("zone count out of range")

    # Sizes: the old image, each spliced region, the zone table and its hash table.
    base = _align4(h[3])
    off = base
    regions = []            # (key, image, region start in it, where it goes)
    for key, img in put.items():
        zoff = HEADER.unpack_from(img._data, 0)[5]
        r0 = ZONE.unpack_from(img._data, zoff)[0]        # the origin name opens the region
        regions.append((key, img, r0, off))
        off = _align4(off + len(img) - r0)
    zones_off = off
    off += ZONE.size * n_new
    ztab_size = _pow2_at_least(2 * n_new + 1)
    ztab_off = off
    total = off + 4 * ztab_size
    if total > _MAX_IMAGE:
        raise _Fallback("image would exceed the format's 4 GiB limit")

    # old's bytes are not copied: a copy-on-write mapping of the memory file they are in
    # (zone/arena.py; fastsplice14), so a splice costs its own zones, not the image
    draft = Draft(old, total)
    arr = draft.arr
    buf = memoryview(arr)
    d_nodes = d_rrsets = d_records = 0
    records = {i: zones[i][1] for i in order}
    for k in list(put) + list(remove):
        i = index.get(k)
        if i is not None:
            n, r, c = _core.zone_counts(_u8(src), zones[i][1][5], zones[i][1][6])
            d_nodes, d_rrsets, d_records = d_nodes - n, d_rrsets - r, d_records - c
    new_refs = {k: old_refs[k] for k, _z in zones if k not in put and k not in remove}
    new_index = {zones[old_i][0]: new_i for new_i, old_i in enumerate(order)}
    for j, k in enumerate(added):
        new_index[k] = len(order) + j
    for key, img, r0, at in regions:
        data = img._data
        arr[at:at + len(img) - r0] = np.frombuffer(data, np.uint8, count=len(img) - r0, offset=r0)
        z = ZONE.unpack_from(data, HEADER.unpack_from(data, 0)[5])
        delta = at - r0
        zi = new_index[key]
        n, r, c = _core.splice_relocate(arr, z[5] + delta, z[6], delta, zi, z[5] + delta)
        d_nodes, d_rrsets, d_records = d_nodes + n, d_rrsets + r, d_records + c
        z_refs = _refs(img, [(key, z)])[key]
        new_refs[key] = (z_refs.astype(np.int64) + delta).astype(np.uint32)
        rec = (z[0] + delta, z[1], z[2], z[3], z[4] + delta, z[5] + delta, z[6], z[7], z[8],
               z[9] + delta)
        if key in index:
            records[index[key]] = rec
        else:
            records[("add", key)] = rec
    # zones that changed index: their nodes carry it (ext/dnssec.pxi reads it)
    for old_i, new_i in moved.items():
        z = records[old_i]
        _core.splice_relocate(arr, z[5], z[6], 0, new_i, 0)
    keys = []
    for j, old_i in enumerate(order):
        ZONE.pack_into(buf, zones_off + ZONE.size * j, *records[old_i])
        keys.append(zones[old_i][0])
    for j, k in enumerate(added):
        ZONE.pack_into(buf, zones_off + ZONE.size * (len(order) + j), *records[("add", k)])
        keys.append(k)
    _fill_zone_table(buf, keys, ztab_off, ztab_size, seed)
    HEADER.pack_into(buf, 0, b"POP53IMG", _core.IMAGE_VERSION, HEADER.size, total, n_new,
                     zones_off, ztab_off, ztab_size - 1, seed, h[9], h[10] + d_nodes,
                     h[11] + d_rrsets, h[12] + d_records, 0)
    # below the old size only the header was written, unless a zone moved in the zone table
    new = draft.finish(None if moved else [(0, HEADER.size)])
    # the spliced zones must not name targets in other zones either (checked on the result)
    marked = np.zeros(n_new, np.uint8)
    for k in put:
        marked[new_index[k]] = 1
    if _cross(arr, new_refs, keys, marked):
        raise _Fallback("an additional-section target crosses zones")
    _REFS[new] = new_refs
    return new


def _u8(src):
    return src if isinstance(src, np.ndarray) else np.frombuffer(src, np.uint8)
