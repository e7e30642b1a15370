# Zone splicing (issue 14 point 2): a zone compiled alone, with the served image's hash seed, is
# copied to the end of a copy of the served image and its offsets moved there; pop53.zone.splice
# writes the new zone table.  The C passes the control plane would spend seconds on in Python
# for a million names: relocate a copied zone (its DNSSEC block and NSEC3 owners included),
# count a zone's records, list a zone's NS/MX/SRV RRsets, and rewrite the additional-target
# lists that a full compile would resolve across zones (targets in another zone, zones nested
# in others), so no change needs the full compile for them.

from libc.stdlib cimport realloc, qsort


cdef inline uint32_t _rel(uint32_t v, int64_t delta) noexcept nogil:
    return <uint32_t>(<int64_t>v + delta) if v else 0


cdef int _cmp_u32(const void* a, const void* b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t*>a)[0], y = (<const uint32_t*>b)[0]
    return -1 if x < y else (1 if x > y else 0)


cdef int _reloc_node(uint8_t* base, uint64_t size, uint32_t off, int64_t delta,
                     uint32_t zone_idx, uint64_t* counts, uint64_t* adds_lo) noexcept nogil:
    """Move one node record's offsets by delta and give it zone_idx.  \\brief 0 or -1."""
    cdef node_t* node
    cdef rrset_t* rs
    cdef uint32_t i
    if not in_bounds(size, off, sizeof(node_t)):
        return -1
    node = <node_t*>(base + off)
    node.name_off = _rel(node.name_off, delta)
    node.cut_off = _rel(node.cut_off, delta)
    node.rrsets_off = _rel(node.rrsets_off, delta)
    node.zone_idx = <uint16_t>zone_idx
    if not in_bounds(size, node.rrsets_off, <uint64_t>node.n_rrsets * sizeof(rrset_t)):
        return -1
    rs = <rrset_t*>(base + node.rrsets_off)
    counts[0] += 1
    counts[1] += node.n_rrsets
    for i in range(node.n_rrsets):
        counts[2] += rs[i].count
        rs[i].rdata_off = _rel(rs[i].rdata_off, delta)
        if rs[i].add_count:
            rs[i].add_off = _rel(rs[i].add_off, delta)
            if rs[i].add_off < adds_lo[0]:
                adds_lo[0] = rs[i].add_off
    return 0


cdef uint32_t* _nsec3_nodes(const uint8_t* base, const dsec_t* d, uint32_t* n) noexcept nogil:
    """The distinct node offsets of an NSEC3 chain, sorted (malloc'd; n = 0 and NULL when
    empty or out of memory: the caller tells these apart by d.n_chain).  Its owners are not in
    the zone's table (RFC 5155 §7.1), so the chain is how a splice reaches them."""
    cdef const n3ent_t* chain = <const n3ent_t*>(base + d.chain_off)
    cdef uint32_t* out
    cdef uint32_t i, k = 0
    n[0] = 0
    if d.mode != DS_NSEC3 or d.n_chain == 0:
        return NULL
    out = <uint32_t*>malloc(4 * <size_t>d.n_chain)
    if out == NULL:
        return NULL
    for i in range(d.n_chain):
        out[i] = chain[i].node_off
    qsort(out, d.n_chain, 4, _cmp_u32)
    for i in range(d.n_chain):
        if k == 0 or out[i] != out[k - 1]:
            out[k] = out[i]
            k += 1
    n[0] = k
    return out


cdef int _reloc_dsec(uint8_t* base, uint64_t size, uint64_t off, int64_t delta, uint32_t zone_idx,
                     uint64_t* counts, uint64_t* adds_lo) noexcept nogil:
    """A signed zone's DNSSEC block (pop53/dnssec/index.py; it follows the node table) moved by
    delta: its array offsets, every node offset of the chain and of the per-name proofs (a
    constant shift keeps both arrays in their order), and the NSEC3 owners' node records.
    \\brief 0 or -1."""
    cdef dsec_t* d
    cdef uint32_t* chain32
    cdef n3ent_t* chain3
    cdef dinfo_t* info
    cdef uint32_t* owners
    cdef uint32_t i, n = 0
    cdef int bad = 0
    if not in_bounds(size, off, sizeof(dsec_t)):
        return -1
    d = <dsec_t*>(base + off)
    if d.mode != DS_NSEC and d.mode != DS_NSEC3:
        return -1
    d.chain_off = _rel(d.chain_off, delta)
    d.info_off = _rel(d.info_off, delta)
    if not in_bounds(size, d.chain_off,
                     <uint64_t>d.n_chain * (4 if d.mode == DS_NSEC else sizeof(n3ent_t))) \
            or not in_bounds(size, d.info_off, <uint64_t>d.n_info * sizeof(dinfo_t)):
        return -1
    if d.mode == DS_NSEC:
        chain32 = <uint32_t*>(base + d.chain_off)
        for i in range(d.n_chain):
            chain32[i] = _rel(chain32[i], delta)
    else:
        chain3 = <n3ent_t*>(base + d.chain_off)
        for i in range(d.n_chain):
            chain3[i].node_off = _rel(chain3[i].node_off, delta)
        owners = _nsec3_nodes(base, d, &n)
        if owners == NULL and d.n_chain:
            return -1
        for i in range(n):
            if _reloc_node(base, size, owners[i], delta, zone_idx,
                           counts, adds_lo) != 0:
                bad = 1
                break
        free(owners)
        if bad:
            return -1
    info = <dinfo_t*>(base + d.info_off)
    for i in range(d.n_info):
        info[i].node_off = _rel(info[i].node_off, delta)
        info[i].match = _rel(info[i].match, delta)
        info[i].wild = _rel(info[i].wild, delta)
        info[i].nc = _rel(info[i].nc, delta)
    return 0


def splice_relocate(uint8_t[::1] buf not None, uint32_t ntab_off, uint32_t ntab_mask,
                    int64_t delta, uint32_t zone_idx, uint32_t adds_end, bint is_signed=False):
    """Move every offset of a zone copied `delta` bytes further into `buf` (its node table is
    already at ntab_off, its additional-target lists just before `adds_end`, both in `buf`'s
    coordinates) and give its nodes `zone_idx`.  Offsets held are those of the source image:
    every node_t's name/cut/rrsets, every rrset_t's RDATA and target list, every list entry,
    and for a `is_signed` zone its DNSSEC block and NSEC3 owners.  Returns (nodes, rrsets,
    records) reached."""
    cdef uint8_t* base = &buf[0]
    cdef uint64_t size = buf.shape[0]
    cdef uint32_t* tab
    cdef uint32_t s, off
    cdef uint64_t counts[3]
    cdef uint64_t adds_lo = adds_end
    cdef uint64_t dsec_off = <uint64_t>ntab_off + 4 * (<uint64_t>ntab_mask + 1)
    cdef int bad = 0
    counts[0] = counts[1] = counts[2] = 0
    if not in_bounds(size, ntab_off, (<uint64_t>ntab_mask + 1) * 4) or adds_end > size:
        raise ValueError("splice_relocate: table out of bounds")
    tab = <uint32_t*>(base + ntab_off)
    with nogil:
        for s in range(ntab_mask + 1):
            if tab[s] == 0:
                continue
            tab[s] = _rel(tab[s], delta)
            if _reloc_node(base, size, tab[s], delta, zone_idx, counts, &adds_lo) != 0:
                bad = 1
                break
        if not bad and is_signed:
            bad = _reloc_dsec(base, size, dsec_off, delta, zone_idx, counts, &adds_lo) != 0
        if not bad:
            # the target lists sit together between the last node and the node table
            # (compiler._compile; zonebuild.pxi writes the same layout): one pass over them
            off = <uint32_t>adds_lo
            while off + 4 <= adds_end:
                (<uint32_t*>(base + off))[0] = _rel((<uint32_t*>(base + off))[0], delta)
                off += 4
    if bad:
        raise ValueError("splice_relocate: node out of bounds")
    return counts[0], counts[1], counts[2]


def zone_counts(const uint8_t[::1] buf not None, uint32_t ntab_off, uint32_t ntab_mask,
                bint is_signed=False):
    """(nodes, rrsets, records) reachable from a zone's node table and, signed, its NSEC3
    chain (a validated image)."""
    cdef const uint8_t* base = &buf[0]
    cdef const uint32_t* tab = <const uint32_t*>(base + ntab_off)
    cdef const dsec_t* d = <const dsec_t*>(base + ntab_off + 4 * (<uint64_t>ntab_mask + 1))
    cdef const node_t* node
    cdef const rrset_t* rs
    cdef uint32_t s, i, n = 0
    cdef uint32_t* owners = NULL
    cdef uint64_t nn = 0, nr = 0, nrec = 0
    with nogil:
        if is_signed:
            owners = _nsec3_nodes(base, d, &n)
        for s in range(ntab_mask + 1 + n):
            if s <= ntab_mask:
                if tab[s] == 0:
                    continue
                node = <const node_t*>(base + tab[s])
            else:
                node = <const node_t*>(base + owners[s - ntab_mask - 1])
            rs = <const rrset_t*>(base + node.rrsets_off)
            nn += 1
            nr += node.n_rrsets
            for i in range(node.n_rrsets):
                nrec += rs[i].count
        free(owners)
    if is_signed and n == 0 and d.mode == DS_NSEC3 and d.n_chain:
        raise MemoryError()
    return nn, nr, nrec


cdef int _target(const uint8_t* base, const rrset_t* rs, uint32_t p, uint8_t* lname,
                 uint8_t* loff, uint32_t* labels) noexcept nogil:
    """The lowercased target name of the record at p (u16 length, RDATA) of an NS/MX/SRV
    RRset, with its label offsets.  \\brief its length, or 0 when the RDATA holds none."""
    cdef uint32_t rdlen = rd16(base + p), q = _patch_target_pos(rs.type), k = 0, j
    cdef const uint8_t* rd = base + p + 2
    labels[0] = 0
    while q + k < rdlen and rd[q + k] != 0 and labels[0] < 127:
        if q + k + 1 + rd[q + k] > rdlen or k + 1 + rd[q + k] > 254:
            return 0
        loff[labels[0]] = <uint8_t>k
        labels[0] += 1
        lname[k] = rd[q + k]
        for j in range(1, rd[q + k] + 1):
            lname[k + j] = LOWER[rd[q + k + j]]
        k += rd[q + k] + 1
    if q + k >= rdlen:
        return 0
    lname[k] = 0
    loff[labels[0]] = <uint8_t>k
    return k + 1


cdef inline int _push(uint32_t** arr, size_t* n, size_t* cap, uint32_t v) noexcept nogil:
    """Append v to a growable malloc'd array.  \\brief 0, or -1 when out of memory."""
    cdef uint32_t* grown
    if n[0] == cap[0]:
        cap[0] = cap[0] * 2 if cap[0] else 64
        grown = <uint32_t*>realloc(arr[0], cap[0] * 4)
        if grown == NULL:
            return -1
        arr[0] = grown
    arr[0][n[0]] = v
    n[0] += 1
    return 0


def zone_ref_rrsets(const uint8_t[::1] buf not None, uint32_t ntab_off, uint32_t ntab_mask,
                    bytes origin not None, uint32_t seed):
    """A zone's NS/MX/SRV RRsets (rrset_t offsets, uint32 as bytes): (all of them, those with a
    target outside the zone's name space, records of all, records of those, the image hashes of
    every suffix of those outside targets).  pop53.zone.splice keeps them per zone and image (an
    unchanged zone's stay where they were): only the foreign ones can resolve into another zone
    unless a zone is nested in this one, and only when a changed zone's origin is one of those
    suffixes."""
    cdef const uint8_t* base = &buf[0]
    cdef const uint32_t* tab = <const uint32_t*>(base + ntab_off)
    cdef const uint8_t* org = origin
    cdef uint32_t olen = len(origin)
    cdef const node_t* node
    cdef const rrset_t* rs
    cdef uint32_t s, i, j, p, tlen, labels, l
    cdef uint8_t lname[256]
    cdef uint8_t loff[130]
    cdef uint32_t sh[130]
    cdef uint32_t* out[3]
    cdef size_t n[3]
    cdef size_t cap[3]
    cdef uint64_t recs[2]
    cdef uint32_t off
    cdef int oom = 0, foreign, inside
    for l in range(3):
        out[l] = NULL
        n[l] = cap[l] = 0
    recs[0] = recs[1] = 0
    with nogil:
        for s in range(ntab_mask + 1):
            if tab[s] == 0:
                continue
            node = <const node_t*>(base + tab[s])
            rs = <const rrset_t*>(base + node.rrsets_off)
            for i in range(node.n_rrsets):
                if rs[i].type != T_NS and rs[i].type != T_MX and rs[i].type != T_SRV:
                    continue
                foreign = 0
                p = rs[i].rdata_off
                for j in range(rs[i].count):
                    tlen = _target(base, &rs[i], p, lname, loff, &labels)
                    p += 2 + rd16(base + p)
                    if tlen == 0:
                        continue
                    inside = 0
                    for l in range(labels + 1):
                        if tlen - loff[l] == olen:
                            inside = memcmp(lname + loff[l], org, olen) == 0
                            break
                    if inside:
                        continue
                    foreign = 1
                    name_suffix_hashes(lname, tlen, loff, labels, seed, sh)
                    for l in range(labels + 1):
                        if _push(&out[2], &n[2], &cap[2], sh[l]) != 0:
                            oom = 1
                off = <uint32_t>(<const uint8_t*>&rs[i] - base)
                if _push(&out[0], &n[0], &cap[0], off) != 0:
                    oom = 1
                recs[0] += rs[i].count
                if foreign:
                    if _push(&out[1], &n[1], &cap[1], off) != 0:
                        oom = 1
                    recs[1] += rs[i].count
                if oom:
                    break
            if oom:
                break
    try:
        if oom:
            raise MemoryError()
        return (PyBytes_FromStringAndSize(<char*>out[0], n[0] * 4) if n[0] else b"",
                PyBytes_FromStringAndSize(<char*>out[1], n[1] * 4) if n[1] else b"",
                recs[0], recs[1],
                PyBytes_FromStringAndSize(<char*>out[2], n[2] * 4) if n[2] else b"")
    finally:
        for l in range(3):
            free(out[l])


cdef inline bint _in_sorted(const uint32_t[::1] a, uint32_t v) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = a.shape[0], mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < a.shape[0] and a[lo] == v


def splice_fix_adds(uint8_t[::1] buf not None, const uint32_t[::1] rrsets not None,
                    Py_ssize_t n_always, const uint32_t[::1] changed not None,
                    uint64_t area_off):
    """Give each listed NS/MX/SRV RRset (rrset_t offsets) of a spliced image the additional-
    target list a full compile of its zone set writes (compiler._compile, zonebuild.pxi
    _targets): per record in RDATA order, the target's node in the longest zone holding it, if
    that node has an A or AAAA, each node once.  A list that differs is written at area_off
    onward (the old one becomes garbage).  The first n_always RRsets are always looked at (a
    zone compiled alone); the others (unchanged zones) only when a target has a suffix whose
    image hash is in `changed` (sorted: the changed zones' origins; else no target can have
    moved).  The image's header, zones and zone table must be final.  Returns (bytes written
    after area_off, lists rewritten)."""
    cdef uint8_t* base = &buf[0]
    cdef uint64_t size = buf.shape[0]
    cdef image_t img
    cdef const img_header_t* h = <const img_header_t*>base
    cdef const zone_t* tz
    cdef const node_t* tn
    cdef rrset_t* rs
    cdef Py_ssize_t r
    cdef uint32_t j, p, k, labels, nh, m, toff
    cdef uint8_t lname[256]
    cdef uint8_t loff[130]
    cdef uint32_t sh[130]
    cdef uint32_t* hits = <uint32_t*>malloc(4 * 65536)
    cdef uint64_t cur = area_off, rewritten = 0
    cdef int bad = 0, hit
    img.base = base
    img.size = size
    img.hdr = h
    img.zones = <const zone_t*>(base + h.zones_off)
    img.ztab = <const uint32_t*>(base + h.ztab_off)
    img.ztab_mask = h.ztab_mask
    img.seed = h.seed
    img.n_zones = h.n_zones
    img.zslot = NULL
    if hits == NULL:
        raise MemoryError()
    with nogil:
        for r in range(rrsets.shape[0]):
            if not in_bounds(size, rrsets[r], sizeof(rrset_t)):
                bad = 1
                break
            rs = <rrset_t*>(base + rrsets[r])
            if r >= n_always:
                p = rs.rdata_off
                hit = 0
                for j in range(rs.count):
                    k = _target(base, rs, p, lname, loff, &labels)
                    p += 2 + rd16(base + p)
                    if k == 0:
                        continue
                    name_suffix_hashes(lname, k, loff, labels, img.seed, sh)
                    for m in range(labels + 1):
                        if _in_sorted(changed, sh[m]):
                            hit = 1
                            break
                    if hit:
                        break
                if not hit:
                    continue
            p = rs.rdata_off
            nh = 0
            for j in range(rs.count):
                k = _target(base, rs, p, lname, loff, &labels)
                p += 2 + rd16(base + p)
                if k == 0:
                    continue
                name_suffix_hashes(lname, k, loff, labels, img.seed, sh)
                tz = image_find_zone(&img, lname, k, loff, labels, sh, 0)
                if tz == NULL:
                    continue
                tn = zone_find(&img, tz, lname, k, sh[0])
                if tn == NULL or (node_find_rrset(&img, tn, T_A) == NULL and
                                  node_find_rrset(&img, tn, T_AAAA) == NULL):
                    continue
                toff = <uint32_t>(<const uint8_t*>tn - base)
                for m in range(nh):
                    if hits[m] == toff:
                        break
                else:
                    hits[nh] = toff
                    nh += 1
            if nh == rs.add_count and (nh == 0 or memcmp(base + rs.add_off, hits, 4 * nh) == 0):
                continue
            rewritten += 1
            if nh == 0:
                rs.add_off = 0
                rs.add_count = 0
                continue
            if cur + 4 * nh > size:
                bad = 2
                break
            memcpy(base + cur, hits, 4 * nh)
            rs.add_off = <uint32_t>cur
            rs.add_count = <uint16_t>nh
            cur += 4 * nh
    free(hits)
    if bad == 1:
        raise ValueError("splice_fix_adds: RRset out of bounds")
    if bad == 2:
        raise ValueError("splice_fix_adds: no room for the lists")
    return cur - area_off, rewritten
