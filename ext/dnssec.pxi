# DNSSEC on the answer path (RFC 4033-4035, 5155, 6840, 9077), for queries with DO=1 only
# (RFC 3225 §3: without it nothing changes).  The compiler found every proof that can be known
# at load time (pop53/dnssec/index.py); here we only read it.  The one search per query is a
# binary search over a sorted array: the NSEC covering the query name, or the NSEC3 covering the
# hash of the next closer name (the only hash computed per query, RFC 5155 §7.2.1).
#
# Order in the packet: RRSIGs follow their RRset at once (w_signed writes both or neither);
# denial proofs are queued in ctx.proof and written to the authority section by dnssec_flush
# when the answer section is complete (after a CNAME chain, before any additional data).

cdef extern from "p53_sha1.h" nogil:
    void p53_nsec3_hash(const uint8_t* name, size_t nlen, const uint8_t* salt, size_t slen,
                        unsigned iterations, uint8_t* out)


cdef inline const dsec_t* zone_dsec(const image_t* img, const zone_t* z) noexcept nogil:
    """A signed zone's DNSSEC block (it follows the node table), NULL when unsigned."""
    if not (z.flags & Z_SIGNED):
        return NULL
    return <const dsec_t*>(img.base + z.ntab_off + 4 * (<uint64_t>z.ntab_mask + 1))


cdef const rrset_t* node_find_sig(const image_t* img, const node_t* node, uint16_t covered) noexcept nogil:
    """The RRSIG RRset covering `covered` at a node (rrset_t.aux), NULL when unsigned."""
    cdef const rrset_t* rs = node_rrsets(img, node)
    cdef uint32_t i
    for i in range(node.n_rrsets):
        if rs[i].type == T_RRSIG and rs[i].aux == covered:
            return &rs[i]
    return NULL


cdef int w_signed(ctx_t* c, const node_t* node, int section, uint32_t owner_ptr,
                  const uint8_t* owner_name, const rrset_t* rs, uint32_t ttl,
                  uint32_t* first_rdata) noexcept nogil:
    """An RRset and, with DO=1, the RRSIGs that cover it (RFC 4035 §3.1.1), as one unit: both
    or neither (then TC is the caller's, never a partial proof).  The RRSIG TTL follows the
    RRset's (RFC 4035 §2.2; the negative TTL for the SOA of a denial, RFC 9077).
    \\brief 0, or -1 (rolled back)."""
    cdef wmark_t m = w_mark(&c.w)
    cdef const rrset_t* sig
    cdef uint32_t own = owner_ptr
    if w_rrset(&c.w, section, owner_ptr, owner_name, c.img.base, rs, ttl, first_rdata) != 0:
        return -1
    if not c.dnssec or node == NULL or rs.type == T_RRSIG:
        return 0
    if not (img_zone(c.img, node.zone_idx).flags & Z_SIGNED):
        # an RRSIG in an unsigned zone (no NSEC/NSEC3 chain) is data, not a signature of
        # ours to attach: asked for as RRSIG it is answered, never added (as Knot and NSD)
        return 0
    sig = node_find_sig(c.img, node, rs.type)
    if sig == NULL:
        return 0
    if own == 0:
        # point at the owner just written (or at what it points to)
        if (c.w.buf[m.pos] & 0xC0) == 0xC0:
            own = ((<uint32_t>(c.w.buf[m.pos] & 0x3F)) << 8) | c.w.buf[m.pos + 1]
        elif m.pos < 0x3FFF:
            own = m.pos
    if w_rrset(&c.w, section, own, owner_name, c.img.base, sig, ttl if ttl < sig.ttl else sig.ttl,
               NULL) != 0:
        w_rollback(&c.w, m)
        return -1
    return 0


cdef const dinfo_t* dinfo_find(const image_t* img, const dsec_t* d, const node_t* node) noexcept nogil:
    """The proofs of a name (binary search by node offset)."""
    cdef const dinfo_t* info = <const dinfo_t*>(img.base + d.info_off)
    cdef uint32_t key = <uint32_t>(<const uint8_t*>node - img.base)
    cdef uint32_t lo = 0, hi = d.n_info, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if info[mid].node_off < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < d.n_info and info[lo].node_off == key:
        return &info[lo]
    return NULL


cdef int canon_cmp(const uint8_t* a, const uint8_t* aloff, uint32_t alabels, const uint8_t* b) noexcept nogil:
    """RFC 4034 §6.1 canonical order of two lowercased wire names (a with its label offsets):
    labels compared right to left as octet strings, a shorter label that is a prefix first."""
    cdef uint8_t bloff[128]
    cdef uint32_t blabels = 0, p = 0, i = 0, pa, pb, la, lb
    cdef int r
    while b[p] != 0 and blabels < 128:
        bloff[blabels] = <uint8_t>p
        blabels += 1
        p += b[p] + 1
    while i < alabels and i < blabels:
        pa = aloff[alabels - 1 - i]
        pb = bloff[blabels - 1 - i]
        la = a[pa]
        lb = b[pb]
        r = memcmp(a + pa + 1, b + pb + 1, la if la < lb else lb)
        if r != 0:
            return r
        if la != lb:
            return -1 if la < lb else 1
        i += 1
    if alabels == blabels:
        return 0
    return -1 if alabels < blabels else 1


cdef uint32_t nsec_cover(const image_t* img, const dsec_t* d, const uint8_t* name,
                         const uint8_t* loff, uint32_t labels) noexcept nogil:
    """The NSEC owner that covers `name`: the last one before it in canonical order, or the
    last of the chain (whose next name wraps to the apex).  0 when the chain is empty."""
    cdef const uint32_t* chain = <const uint32_t*>(img.base + d.chain_off)
    cdef uint32_t lo = 0, hi = d.n_chain, mid
    if d.n_chain == 0:
        return 0
    while lo < hi:
        mid = (lo + hi) >> 1
        if canon_cmp(name, loff, labels, node_name(img, img_node(img, chain[mid]))) > 0:
            lo = mid + 1
        else:
            hi = mid
    return chain[lo - 1] if lo > 0 else chain[d.n_chain - 1]


cdef uint32_t nsec3_cover(const image_t* img, const dsec_t* d, const uint8_t* name, uint32_t nlen) noexcept nogil:
    """The NSEC3 owner whose hash interval covers the hash of `name` (RFC 5155 §7.2.1)."""
    cdef const n3ent_t* chain = <const n3ent_t*>(img.base + d.chain_off)
    cdef uint8_t h[20]
    cdef uint32_t lo = 0, hi = d.n_chain, mid
    if d.n_chain == 0:
        return 0
    p53_nsec3_hash(name, nlen, d.salt, d.salt_len, d.iterations, h)
    while lo < hi:
        mid = (lo + hi) >> 1
        if memcmp(chain[mid].hash, h, 20) < 0:
            lo = mid + 1
        else:
            hi = mid
    return chain[lo - 1].node_off if lo > 0 else chain[d.n_chain - 1].node_off


cdef void dnssec_pend(ctx_t* c, const zone_t* z, uint32_t node_off) noexcept nogil:
    """Queue one proof record (once) for dnssec_flush."""
    cdef uint32_t i
    if node_off == 0:
        return
    for i in range(c.proof.n):
        if c.proof.node[i] == node_off:
            return
    if c.proof.n >= 24:
        c.w.tc = True           # cannot happen (CHAIN_MAX steps, three proofs each)
        return
    c.proof.node[c.proof.n] = node_off
    c.proof.ttl[c.proof.n] = z.neg_ttl
    c.proof.n += 1


cdef void dnssec_flush(ctx_t* c) noexcept nogil:
    """Write the queued NSEC/NSEC3 records with their RRSIGs to the authority section: all of
    them or none, with TC (RFC 4035 §3.1.3: a proof that does not fit sets TC; a part of one
    proves nothing and only costs the client bytes before it retries over TCP)."""
    cdef uint32_t i, ttl
    cdef const node_t* node
    cdef const rrset_t* rs
    cdef wmark_t m = w_mark(&c.w)
    for i in range(c.proof.n):
        node = img_node(c.img, c.proof.node[i])
        rs = node_find_rrset(c.img, node, T_NSEC)
        if rs == NULL:
            rs = node_find_rrset(c.img, node, T_NSEC3)
        if rs == NULL:
            continue
        ttl = rs.ttl if rs.ttl < c.proof.ttl[i] else c.proof.ttl[i]
        if w_signed(c, node, 1, 0, node_name(c.img, node), rs, ttl, NULL) != 0:
            w_rollback(&c.w, m)
            c.w.tc = True
            break
    c.proof.n = 0


cdef void dnssec_nodata(ctx_t* c, const zone_t* z, const node_t* node) noexcept nogil:
    """NODATA (RFC 4035 §3.1.3.1, RFC 5155 §7.2.3): the NSEC/NSEC3 of the name, which lists
    its types; at an empty non-terminal the covering NSEC, or its own NSEC3.  A DS NODATA at
    an opt-out delegation without an NSEC3: closest provable encloser and next closer (§7.2.4)."""
    cdef const dsec_t* d
    cdef const dinfo_t* info
    if not c.dnssec:
        return
    d = zone_dsec(c.img, z)
    if d == NULL:
        return
    info = dinfo_find(c.img, d, node)
    if info == NULL:
        return
    dnssec_pend(c, z, info.match)
    dnssec_pend(c, z, info.nc)


cdef void dnssec_nxdomain(ctx_t* c, const zone_t* z, const node_t* ce, const uint8_t* name,
                          uint32_t nlen, const uint8_t* loff, uint32_t labels, uint32_t k) noexcept nogil:
    """Name error (RFC 4035 §3.1.3.2; RFC 5155 §7.2.2).  ce = name + loff[k] is the closest
    encloser.  NSEC: the NSEC covering the name and the one covering "*.<ce>".  NSEC3: the
    closest encloser's NSEC3, the one covering the next closer name, the one covering the
    wildcard."""
    cdef const dsec_t* d
    cdef const dinfo_t* info
    if not c.dnssec:
        return
    d = zone_dsec(c.img, z)
    if d == NULL:
        return
    info = dinfo_find(c.img, d, ce)
    if d.mode == DS_NSEC:
        dnssec_pend(c, z, nsec_cover(c.img, d, name, loff, labels))
    elif info != NULL and info.nc != 0:
        # opt-out left the closest encloser without an NSEC3: the closest provable encloser,
        # the opt-out NSEC3 covering its next closer name (also the query name's), and (below)
        # the NSEC3 covering the wildcard at that encloser, which index.py stored as this
        # name's (RFC 5155 §7.2.1-2, §8.4; the answer is insecure, §9.2, but whole, as Knot's)
        dnssec_pend(c, z, info.match)
        dnssec_pend(c, z, info.nc)
    elif k > 0:
        if info != NULL:
            dnssec_pend(c, z, info.match)
        dnssec_pend(c, z, nsec3_cover(c.img, d, name + loff[k - 1], nlen - loff[k - 1]))
    if info != NULL:
        dnssec_pend(c, z, info.wild)


cdef void dnssec_wildcard(ctx_t* c, const zone_t* z, const node_t* ce, const node_t* wnode,
                          const uint8_t* name, uint32_t nlen, const uint8_t* loff,
                          uint32_t labels, uint32_t k) noexcept nogil:
    """An answer synthesized from "*.<ce>" (RFC 4592) must prove the query name does not exist
    (RFC 4035 §3.1.3.3: the covering NSEC; RFC 5155 §7.2.6: the NSEC3 covering the next closer
    name).  A wildcard NODATA adds the wildcard's own NSEC/NSEC3 and, for NSEC3, the closest
    encloser's (RFC 4035 §3.1.3.4, RFC 5155 §7.2.5).  Called before the answer is written,
    so the proofs are queued before any additional data."""
    cdef const dsec_t* d
    cdef const dinfo_t* info
    cdef uint16_t qtype = c.q.qtype
    cdef bint nodata = qtype != T_ANY and not (wnode.flags & N_CNAME) and \
        node_find_rrset(c.img, wnode, qtype) == NULL
    if not c.dnssec:
        return
    d = zone_dsec(c.img, z)
    if d == NULL:
        return
    if d.mode == DS_NSEC:
        dnssec_pend(c, z, nsec_cover(c.img, d, name, loff, labels))
    elif k > 0:
        if nodata:
            info = dinfo_find(c.img, d, ce)
            if info != NULL:
                dnssec_pend(c, z, info.match)
        dnssec_pend(c, z, nsec3_cover(c.img, d, name + loff[k - 1], nlen - loff[k - 1]))
    if nodata:
        info = dinfo_find(c.img, d, wnode)
        if info != NULL:
            dnssec_pend(c, z, info.match)


cdef void dnssec_referral(ctx_t* c, const node_t* cut) noexcept nogil:
    """A referral's DS RRset with its RRSIG, or the proof that the child has no DS: the cut's
    NSEC (RFC 4035 §3.1.4), its NSEC3, or under opt-out the closest provable encloser's and the
    next closer's (RFC 5155 §7.2.7)."""
    cdef const rrset_t* ds
    cdef const zone_t* z = img_zone(c.img, cut.zone_idx)
    if not c.dnssec or zone_dsec(c.img, z) == NULL:
        return          # an unsigned parent's DS proves nothing (Knot and NSD leave it out)
    ds = node_find_rrset(c.img, cut, T_DS)
    if ds != NULL:
        if w_signed(c, cut, 1, 0, node_name(c.img, cut), ds, ds.ttl, NULL) != 0:
            c.w.tc = True
        return
    dnssec_nodata(c, z, cut)


def nsec3_hash(const uint8_t[::1] name not None, bytes salt not None, unsigned iterations):
    """RFC 5155 §5's hash of a lowercased wire name, by the data plane's SHA-1 (for tests)."""
    cdef uint8_t out[20]
    p53_nsec3_hash(&name[0], name.shape[0], salt, len(salt), iterations, out)
    return PyBytes_FromStringAndSize(<const char*>out, 20)


cdef int dnssec_check(const uint8_t* base, uint64_t size, const zone_t* z, uint32_t n_zones,
                      bint full) noexcept nogil:
    """image_open's check of a signed zone's DNSSEC block: the block and its arrays lie inside
    the image and every node offset they hold is a node (fully checked with `full`).
    \\brief 0 or -1."""
    cdef uint64_t off = <uint64_t>z.ntab_off + 4 * (<uint64_t>z.ntab_mask + 1)
    cdef const dsec_t* d
    cdef const dinfo_t* info
    cdef uint32_t i, j, o
    cdef uint32_t offs[4]
    if not in_bounds(size, off, sizeof(dsec_t)):
        return -1
    d = <const dsec_t*>(base + off)
    if d.mode != DS_NSEC and d.mode != DS_NSEC3:
        return -1
    if not in_bounds(size, d.chain_off, <uint64_t>d.n_chain * (4 if d.mode == DS_NSEC else sizeof(n3ent_t))):
        return -1
    if not in_bounds(size, d.info_off, <uint64_t>d.n_info * sizeof(dinfo_t)):
        return -1
    for i in range(d.n_chain):
        if d.mode == DS_NSEC:
            o = (<const uint32_t*>(base + d.chain_off))[i]
        else:
            o = (<const n3ent_t*>(base + d.chain_off))[i].node_off
        if dnssec_check_node(base, size, o, n_zones, full) != 0:
            return -1
    info = <const dinfo_t*>(base + d.info_off)
    for i in range(d.n_info):
        offs[0] = info[i].node_off
        offs[1] = info[i].match
        offs[2] = info[i].wild
        offs[3] = info[i].nc
        for j in range(4):
            if (offs[j] or j == 0) and dnssec_check_node(base, size, offs[j], n_zones, full) != 0:
                return -1
    return 0


cdef inline int dnssec_check_node(const uint8_t* base, uint64_t size, uint32_t off,
                                  uint32_t n_zones, bint full) noexcept nogil:
    if full:
        return image_check_node(base, size, off, n_zones)
    return 0 if off and in_bounds(size, off, sizeof(node_t)) else -1
