# Zone splicing (issue 14 point 2): a zone compiled alone, with the served image's hash seed, is
# copied to the end of a copy of the served image and its offsets moved there; pop53.zone.splice
# writes the new zone table.  Three C passes the control plane would spend seconds on in Python
# for a million names: relocate a copied zone, count a zone's records, and find the additional-
# section references that cross into or out of the zones being replaced (which the splice cannot
# rewrite: the caller compiles in full then).

from libc.stdlib cimport realloc


cdef inline uint32_t _rel(uint32_t v, int64_t delta) noexcept nogil:
    return <uint32_t>(<int64_t>v + delta) if v else 0


def splice_relocate(uint8_t[::1] buf not None, uint32_t ntab_off, uint32_t ntab_mask,
                    int64_t delta, uint32_t zone_idx, uint32_t adds_end):
    """Move every offset of a zone copied `delta` bytes further into `buf` (its node table is
    already at ntab_off, its additional-target lists just before `adds_end`, both in `buf`'s
    coordinates) and give its nodes `zone_idx`.  Offsets held are those of the source image:
    every node_t's name/cut/rrsets, every rrset_t's RDATA and target list, every list entry.
    Returns (nodes, rrsets, records)."""
    cdef uint8_t* base = &buf[0]
    cdef uint64_t size = buf.shape[0]
    cdef uint32_t* tab
    cdef node_t* node
    cdef rrset_t* rs
    cdef uint32_t s, i, off
    cdef uint64_t nn = 0, nr = 0, nrec = 0
    cdef uint64_t adds_lo = adds_end
    cdef int bad = 0
    if not in_bounds(size, ntab_off, (<uint64_t>ntab_mask + 1) * 4) or adds_end > size:
        raise ValueError("splice_relocate: table out of bounds")
    tab = <uint32_t*>(base + ntab_off)
    with nogil:
        for s in range(ntab_mask + 1):
            if tab[s] == 0:
                continue
            off = _rel(tab[s], delta)
            tab[s] = off
            if not in_bounds(size, off, sizeof(node_t)):
                bad = 1
                break
            node = <node_t*>(base + off)
            node.name_off = _rel(node.name_off, delta)
            node.cut_off = _rel(node.cut_off, delta)
            node.rrsets_off = _rel(node.rrsets_off, delta)
            node.zone_idx = <uint16_t>zone_idx
            if not in_bounds(size, node.rrsets_off, <uint64_t>node.n_rrsets * sizeof(rrset_t)):
                bad = 1
                break
            rs = <rrset_t*>(base + node.rrsets_off)
            nn += 1
            nr += node.n_rrsets
            for i in range(node.n_rrsets):
                nrec += rs[i].count
                rs[i].rdata_off = _rel(rs[i].rdata_off, delta)
                if rs[i].add_count:
                    rs[i].add_off = _rel(rs[i].add_off, delta)
                    if rs[i].add_off < adds_lo:
                        adds_lo = rs[i].add_off
        if not bad:
            # the target lists sit together between the last node and the node table
            # (compiler._compile; zonebuild.pxi writes the same layout): one pass over them
            off = <uint32_t>adds_lo
            while off + 4 <= adds_end:
                (<uint32_t*>(base + off))[0] = _rel((<uint32_t*>(base + off))[0], delta)
                off += 4
    if bad:
        raise ValueError("splice_relocate: node out of bounds")
    return nn, nr, nrec


def zone_counts(const uint8_t[::1] buf not None, uint32_t ntab_off, uint32_t ntab_mask):
    """(nodes, rrsets, records) reachable from a zone's node table (a validated image)."""
    cdef const uint8_t* base = &buf[0]
    cdef const uint32_t* tab = <const uint32_t*>(base + ntab_off)
    cdef const node_t* node
    cdef const rrset_t* rs
    cdef uint32_t s, i
    cdef uint64_t nn = 0, nr = 0, nrec = 0
    with nogil:
        for s in range(ntab_mask + 1):
            if tab[s] == 0:
                continue
            node = <const node_t*>(base + tab[s])
            rs = <const rrset_t*>(base + node.rrsets_off)
            nn += 1
            nr += node.n_rrsets
            for i in range(node.n_rrsets):
                nrec += rs[i].count
    return nn, nr, nrec


def zone_ref_rrsets(const uint8_t[::1] buf not None, uint32_t ntab_off, uint32_t ntab_mask):
    """The rrset_t offsets (uint32, as bytes) of a zone's NS/MX/SRV RRsets: what
    splice_cross_refs checks.  pop53.zone.splice keeps them per zone and image (an unchanged
    zone's stay where they were), so a splice never walks a million names for them again."""
    cdef const uint8_t* base = &buf[0]
    cdef const uint32_t* tab = <const uint32_t*>(base + ntab_off)
    cdef const node_t* node
    cdef const rrset_t* rs
    cdef uint32_t s, i
    cdef uint32_t* out = NULL
    cdef uint32_t* grown
    cdef size_t n = 0, cap = 0
    cdef int oom = 0
    with nogil:
        for s in range(ntab_mask + 1):
            if tab[s] == 0:
                continue
            node = <const node_t*>(base + tab[s])
            rs = <const rrset_t*>(base + node.rrsets_off)
            for i in range(node.n_rrsets):
                if rs[i].type != T_NS and rs[i].type != T_MX and rs[i].type != T_SRV:
                    continue
                if n == cap:
                    cap = cap * 2 if cap else 64
                    grown = <uint32_t*>realloc(out, cap * 4)
                    if grown == NULL:
                        oom = 1
                        break
                    out = grown
                out[n] = <uint32_t>(<const uint8_t*>&rs[i] - base)
                n += 1
            if oom:
                break
    try:
        if oom:
            raise MemoryError()
        return PyBytes_FromStringAndSize(<char*>out, n * 4) if n else b""
    finally:
        free(out)


def splice_cross_refs(const uint8_t[::1] buf not None, const uint32_t[::1] rrsets not None,
                      const uint32_t[::1] zone_of not None, const uint8_t[::1] marked not None):
    """How many of the given NS/MX/SRV RRsets (rrset_t offsets; zone_of: the index of the zone
    holding each) of a validated image name a target, with an A or AAAA, in another zone than
    their own, when one of the two zones is marked (marked[zone index] != 0).  A full compile
    lists such a target in the record's additional section (compiler._compile: find_node across
    zones); a splice of a marked zone would leave the list stale, so the caller compiles in full
    when this is not 0."""
    cdef const uint8_t* base = &buf[0]
    cdef image_t img
    cdef const img_header_t* h = <const img_header_t*>base
    cdef const zone_t* z
    cdef const zone_t* tz
    cdef const node_t* tn
    cdef const rrset_t* rs
    cdef Py_ssize_t r
    cdef uint32_t zi, j, p, q, k, rl2, labels, tzi
    cdef uint8_t lname[256]
    cdef uint8_t loff[130]
    cdef uint32_t sh[130]
    cdef uint64_t hits = 0
    if <uint64_t>marked.shape[0] < h.n_zones or zone_of.shape[0] != rrsets.shape[0]:
        raise ValueError("splice_cross_refs: array sizes differ")
    img.base = base
    img.size = buf.shape[0]
    img.hdr = h
    img.zones = <const zone_t*>(base + h.zones_off)
    img.ztab = <const uint32_t*>(base + h.ztab_off)
    img.ztab_mask = h.ztab_mask
    img.seed = h.seed
    img.n_zones = h.n_zones
    img.zslot = NULL
    with nogil:
        for r in range(rrsets.shape[0]):
            zi = zone_of[r]
            if zi >= h.n_zones:
                continue
            z = img.zones + zi
            rs = <const rrset_t*>(base + rrsets[r])
            p = rs.rdata_off
            for j in range(rs.count):
                q = p + 2 + _patch_target_pos(rs.type)
                k = 0
                labels = 0
                while base[q + k] != 0 and k < 255 and labels < 128:
                    loff[labels] = <uint8_t>k
                    labels += 1
                    lname[k] = base[q + k]
                    for rl2 in range(1, base[q + k] + 1):
                        lname[k + rl2] = LOWER[base[q + k + rl2]]
                    k += base[q + k] + 1
                lname[k] = 0
                loff[labels] = <uint8_t>k
                p += 2 + rd16(base + p)
                name_suffix_hashes(lname, k + 1, loff, labels, img.seed, sh)
                tz = image_find_zone(&img, lname, k + 1, loff, labels, sh, 0)
                if tz == NULL or tz == z:
                    continue
                tzi = <uint32_t>(tz - img.zones)
                if not marked[zi] and not marked[tzi]:
                    continue
                tn = zone_find(&img, tz, lname, k + 1, sh[0])
                if tn != NULL and (node_find_rrset(&img, tn, T_A) != NULL or
                                   node_find_rrset(&img, tn, T_AAAA) != NULL):
                    hits += 1
    return hits
