"""Writing a patched image (pop53.zone.incremental): the new records appended to a copy of the
old image, the node table, cut pointers and additional targets repointed, and the patch index
of the result carried over from the old one.  `p` is the patch being written (`_Patch`)."""
from __future__ import annotations

import struct

import numpy as np

from pop53 import _core
from pop53.zone import patch_dnssec
from pop53.zone.compiler import (CHECKSUM_OFFSET, HEADER, NODE, RRSET, ZONE, _MAX_IMAGE, _align4,
                                 _pow2_at_least, write_node)
from pop53.zone.patchkit import (MAX_LOAD, _BELOW, _CUT, _Fallback, _New, _REFS, _SPARE,
                                 _TARGET_POS, _T_A, _T_AAAA, _delete_slot, _lower_name)


def layout(p, zi, zrec, new, removed, inplace, ent_inplace, neg_ttl, n_nodes,
           r_rrsets, r_hashes, keys, cut_fix) -> memoryview:
    base = _align4(p.img.size)
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
        tz = p.img.zone_of(tkey)
        if tz is None:
            return None
        if tz == zi:
            n = new.get(tkey)
            if n is not None:
                return n.off, any(rr[0] in (_T_A, _T_AAAA) for rr in n.rrsets)
            if tkey in removed:
                return None
        o = p.img.lookup_old(tz, tkey)
        if not o:
            return None
        if o in ent_inplace:
            return o, False
        return o, p.img.old_has_addr(o)

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
        on = p.img.node(o)
        dead.append((on[5], on[5] + RRSET.size * on[6]))
    for k in removed:
        o = p.img.lookup_old(zi, k)
        on = p.img.node(o)
        dead.append((on[5], on[5] + RRSET.size * on[6]))
    hashes = np.array([_core.hash_name(k, p.img.seed) for k in keys], dtype=np.uint32)
    refs = np.unique(r_rrsets[np.isin(r_hashes, hashes)]).tolist() if len(keys) else []
    ref_updates = []   # (rrset offset, [node offsets])
    for ro in refs:
        if any(a <= ro < b for a, b in dead):
            continue
        rs = RRSET.unpack_from(p.img.src, ro)
        pos, targets = rs[3], []
        for _j in range(rs[1]):
            rl = int.from_bytes(p.img.src[pos:pos + 2], "big")
            targets.append(_lower_name(p.img.src, pos + 2 + _TARGET_POS[rs[0]]))
            pos += 2 + rl
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
    if regrow or p.signed:
        # a signed zone's DNSSEC block follows its node table: both are written anew
        new_mask = _pow2_at_least(2 * n_nodes + 1) - 1 if regrow else mask
        regrow = True
        new_tab_off = off
        off += 4 * (new_mask + 1)
        if p.signed:
            dsec_off = off
            off += patch_dnssec.block_size(p, zrec)
    total = off
    if total > _MAX_IMAGE:
        raise _Fallback("image would exceed the format's 4 GiB limit")

    # the copy, into the spare buffer when one is ready (see _Spare), else into fresh memory
    arr = _SPARE.take(total)
    if arr is None:
        arr = np.empty(total, np.uint8)
    arr[:p.img.size] = np.frombuffer(p.img.src, np.uint8, count=p.img.size)
    arr[p.img.size:] = 0
    buf = memoryview(arr)
    node_pack, rrset_pack = NODE.pack_into, RRSET.pack_into
    d_nodes = d_rrsets = d_records = 0
    for o in moved:
        a, b = p.img.old_counts(o)
        d_rrsets -= a
        d_records -= b
    for o in ent_inplace:
        a, b = p.img.old_counts(o)
        d_rrsets -= a
        d_records -= b
    for k in removed:
        a, b = p.img.old_counts(p.img.lookup_old(zi, k))
        d_rrsets -= a
        d_records -= b
        d_nodes -= 1

    def key_off(k: bytes) -> int:
        """The new image's record of a name of this zone."""
        n = new.get(k)
        return n.off if n is not None else p.img.lookup_old(zi, k)

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
                             p.img.seed, adds) or soa_off
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
        n = p.img.node(o)
        nrr = 0 if o in ent_inplace else n[6]
        node_pack(buf, o, n[0], n[1], n[2], fl, n[4], n[5], nrr, n[7], n[8])
    # cut pointers at a replaced delegation point (RFC 1034 §4.2.1: referrals use its NS)
    cut_moves = [o for o in moved if p.img.node(o)[3] & _CUT]
    if cut_moves:
        for o in cut_moves:
            for no in p.img.s_nodes[p.img.s_cuts == o].tolist():
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
            gone = np.array([p.img.lookup_old(zi, k) for k in removed], dtype=np.uint32)
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
        if p.signed:
            patch_dnssec.write_block(p, zrec, buf, dsec_off, moved)
        ntab_off, mask = new_tab_off, new_mask
        tab = None
    for o, no in (moved.items() if tab is not None else ()):
        h = p.img.node(o)[8]
        slot = h & mask
        while int(tab[slot]) != o:
            if tab[slot] == 0:
                raise _Fallback("node missing from its table")
            slot = (slot + 1) & mask
        tab[slot] = no
    for k in (removed if tab is not None else ()):
        o = p.img.lookup_old(zi, k)
        h = p.img.node(o)[8]
        slot = h & mask
        while int(tab[slot]) != o:
            slot = (slot + 1) & mask
        _delete_slot(buf, tab, slot, mask)
    for n in (new.values() if tab is not None else ()):
        if n.old_off:
            continue
        slot = _core.hash_name(n.key, p.img.seed) & mask
        while tab[slot]:
            slot = (slot + 1) & mask
        tab[slot] = n.off
    del tab
    if soa_off == 0:
        soa_off = zrec[9]
    ZONE.pack_into(buf, p.img.zones_off + ZONE.size * zi, zrec[0], zrec[1], zrec[2], zrec[3],
                   apex_off, ntab_off, mask, n_nodes, neg_ttl, soa_off)
    HEADER.pack_into(buf, 0, b"POP53IMG", _core.IMAGE_VERSION, HEADER.size, total,
                     p.img.n_zones, p.img.zones_off, p.img.ztab_off, p.img.ztab_mask, p.img.seed,
                     HEADER.unpack_from(p.img.src, 0)[9], p.img.h_nodes + d_nodes,
                     p.img.h_rrsets + d_rrsets, p.img.h_records + d_records, 0)
    struct.pack_into("<I", buf, CHECKSUM_OFFSET, _core.checksum(buf))
    p.next_index = carry_index(p, buf, zi, new, removed, moved, dead, cut_moves, cut_fix,
                                       key_off, r_rrsets, r_hashes)
    return buf

def carry_index(p, buf, zi, new, removed, moved, dead, cut_moves, cut_fix, key_off,
                r_rrsets, r_hashes) -> tuple:
    """The patched image's patch index, from ours: the records replaced or removed leave
    it, the appended ones join it, and the cut pointers rewritten in place change (what a
    fresh `scan_image` of the result gives; the property test compares the two)."""
    nodes, cuts, parents = p.img.s_nodes, p.img.s_cuts, p.img.s_parents
    dropped = list(moved) + [p.img.lookup_old(zi, k) for k in removed]
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
    add = [n for n in new.values() if not n.flags & patch_dnssec.N3_OWNER]   # not in a table
    n_offs = np.array([n.off for n in add], dtype=np.uint32)
    n_cuts = np.array([n.cut_off for n in add], dtype=np.uint32)
    n_par = np.array([_core.hash_name(n.key[n.key[0] + 1:], p.img.seed) if len(n.key) > 1 else 0
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
                    rh.append(_core.hash_name(t, p.img.seed))
    if ro:
        r_rrsets = np.concatenate([r_rrsets, np.array(ro, dtype=np.uint32)])
        r_hashes = np.concatenate([r_hashes, np.array(rh, dtype=np.uint32)])
    return nodes, cuts, parents, r_rrsets, r_hashes

