# The compiled image: a read-only view and the lookups.  The compiler did the thinking (flags,
# cut pointers, additional targets); here we only read.  Every offset was validated once when the
# image was opened (image_validate), so lookups need no bounds checks of their own.

cdef enum:
    FNV_BASIS = 2166136261
    FNV_PRIME = 16777619


cdef inline uint32_t name_hash_step(uint32_t h, uint8_t c) noexcept nogil:
    return (h ^ c) * <uint32_t>FNV_PRIME


cdef inline uint32_t name_hash(const uint8_t* name, uint32_t n, uint32_t seed) noexcept nogil:
    """FNV-1a over the lowercased wire name, *backwards*: the hash of every suffix of a name falls
    out of one pass (see name_suffix_hashes), which is what closest-encloser search needs."""
    cdef uint32_t h = <uint32_t>FNV_BASIS ^ seed
    cdef int64_t i = <int64_t>n - 1
    while i >= 0:
        h = name_hash_step(h, name[i])
        i -= 1
    return h


cdef inline void name_suffix_hashes(const uint8_t* name, uint32_t n, const uint8_t* loff,
                                    uint32_t labels, uint32_t seed, uint32_t* out) noexcept nogil:
    """out[k] = hash of the suffix starting at label k (k = labels is the root).  Label by
    label (loff strictly decreasing with k, loff[0] = 0): one tight byte loop per label rather
    than a label check after every byte (issue 10: ~half of core_answer in a perf profile)."""
    cdef uint32_t h = <uint32_t>FNV_BASIS ^ seed
    cdef int64_t i = <int64_t>n - 1
    cdef int64_t k = labels
    cdef int64_t stop
    while k >= 0:
        stop = loff[k]
        while i >= stop:
            h = name_hash_step(h, name[i])
            i -= 1
        out[k] = h
        k -= 1


cdef inline const zone_t* img_zone(const image_t* img, uint32_t idx) noexcept nogil:
    return &img.zones[idx]


cdef inline const node_t* img_node(const image_t* img, uint32_t off) noexcept nogil:
    return <const node_t*>(img.base + off)


cdef inline const rrset_t* node_rrsets(const image_t* img, const node_t* node) noexcept nogil:
    return <const rrset_t*>(img.base + node.rrsets_off)


cdef inline const uint8_t* node_name(const image_t* img, const node_t* node) noexcept nogil:
    return img.base + node.name_off


cdef const zone_t* image_find_zone(const image_t* img, const uint8_t* name, uint32_t nlen,
                                   const uint8_t* loff, uint32_t labels, const uint32_t* sh,
                                   uint32_t skip) noexcept nogil:
    """The longest served zone that contains the name (suffix hashes sh).  `skip` suffixes are
    passed over first (a DS query looks for the parent side of a cut: RFC 4035 §3.1.4.1)."""
    cdef uint32_t k, slot, idx
    cdef const zone_t* z
    cdef const uint8_t* suffix
    cdef uint32_t slen
    for k in range(skip, labels + 1):
        suffix = name + loff[k]
        slen = nlen - loff[k]
        slot = sh[k] & img.ztab_mask
        while True:
            idx = img.ztab[slot]
            if idx == 0:
                break
            z = &img.zones[idx - 1]
            if z.name_len == slen and memcmp(img.base + z.name_off, suffix, slen) == 0:
                return z
            slot = (slot + 1) & img.ztab_mask
    return NULL


cdef const node_t* zone_find(const image_t* img, const zone_t* z, const uint8_t* name,
                             uint32_t n, uint32_t h) noexcept nogil:
    """Exact lookup of a lowercased wire name in one zone.  \\brief NULL when absent."""
    cdef const uint32_t* tab = <const uint32_t*>(img.base + z.ntab_off)
    cdef uint32_t slot = h & z.ntab_mask
    cdef uint32_t off
    cdef const node_t* node
    while True:
        off = tab[slot]
        if off == 0:
            return NULL
        node = <const node_t*>(img.base + off)
        if node.hash == h and node.name_len == n and memcmp(img.base + node.name_off, name, n) == 0:
            return node
        slot = (slot + 1) & z.ntab_mask


cdef const rrset_t* node_find_rrset(const image_t* img, const node_t* node, uint16_t rtype) noexcept nogil:
    cdef const rrset_t* rs = node_rrsets(img, node)
    cdef uint32_t i
    for i in range(node.n_rrsets):
        if rs[i].type == rtype:
            return &rs[i]
    return NULL


# ---------------------------------------------------------------------------------------------
# Validation: an image file from disk is checked once, completely, so the data path can trust
# every offset.  O(size); runs without the GIL.
# ---------------------------------------------------------------------------------------------
cdef inline bint in_bounds(uint64_t size, uint64_t off, uint64_t n) noexcept nogil:
    return off <= size and n <= size - off


cdef int image_check_name(const uint8_t* base, uint64_t size, uint32_t off, uint32_t n,
                          int labels) noexcept nogil:
    """An uncompressed wire name occupying exactly n bytes at off, with `labels` labels (-1: any)."""
    cdef uint32_t p = 0
    cdef int count = 0
    if n == 0 or n > MAX_NAME or not in_bounds(size, off, n):
        return -1
    while p < n:
        if base[off + p] == 0:
            return 0 if p + 1 == n and (labels < 0 or labels == count) else -1
        if base[off + p] > 63:
            return -1
        p += base[off + p] + 1
        count += 1
    return -1


cdef int image_check_rdata_name(const uint8_t* r, uint32_t n, uint32_t* p) noexcept nogil:
    """An uncompressed name inside rdata at *p (advanced past it)."""
    cdef uint32_t total = 0
    while True:
        if p[0] >= n:
            return -1
        if r[p[0]] == 0:
            p[0] += 1
            return 0
        if r[p[0]] > 63:
            return -1
        total += r[p[0]] + 1
        if total + 1 > MAX_NAME:
            return -1
        p[0] += r[p[0]] + 1


cdef int rdata_names_check(uint16_t rtype, const uint8_t* r, uint32_t n) noexcept nogil:
    """The rdata of a type whose names the writer touches must hold well-formed names where the
    writer expects them."""
    cdef uint32_t p = 0
    if rtype == T_NS or rtype == T_CNAME or rtype == T_PTR or rtype == T_DNAME:
        if image_check_rdata_name(r, n, &p) != 0:
            return -1
    elif rtype == T_MX:
        p = 2
        if n < 3 or image_check_rdata_name(r, n, &p) != 0:
            return -1
    elif rtype == T_SRV:
        p = 6
        if n < 7 or image_check_rdata_name(r, n, &p) != 0:
            return -1
    elif rtype == T_SOA:
        if image_check_rdata_name(r, n, &p) != 0 or image_check_rdata_name(r, n, &p) != 0:
            return -1
        if n - p != 20:
            return -1
        return 0
    else:
        return 0
    return 0 if p == n else -1


cdef int image_check_rrset(const uint8_t* base, uint64_t size, const rrset_t* rs,
                           bint targets) noexcept nogil:
    """One RRset's RDATA; with `targets`, also the A/AAAA RRsets of its additional targets
    (the only part of a target the writer reads)."""
    cdef uint32_t j, p = 0, rl, a, i
    cdef const uint32_t* adds
    cdef const node_t* t
    cdef const rrset_t* trs
    if not in_bounds(size, rs.rdata_off, rs.rdata_len):
        return -1
    for j in range(rs.count):
        if rs.rdata_len - p < 2:
            return -1
        rl = rd16(base + rs.rdata_off + p)
        if rs.rdata_len - p - 2 < rl:
            return -1
        if rdata_names_check(rs.type, base + rs.rdata_off + p + 2, rl) != 0:
            return -1
        p += 2 + rl
    if p != rs.rdata_len or (rs.type == T_CNAME or rs.type == T_DNAME or rs.type == T_SOA) and rs.count == 0:
        return -1
    if rs.add_count and targets:
        if not in_bounds(size, rs.add_off, <uint64_t>rs.add_count * 4):
            return -1
        adds = <const uint32_t*>(base + rs.add_off)
        for a in range(rs.add_count):
            if adds[a] == 0 or not in_bounds(size, adds[a], sizeof(node_t)):
                return -1
            # the writer follows a target's name and its A/AAAA RRsets: check them here (a
            # target is also checked as a node of its own zone; this keeps the walk local)
            t = <const node_t*>(base + adds[a])
            if image_check_name(base, size, t.name_off, t.name_len, -1) != 0:
                return -1
            if not in_bounds(size, t.rrsets_off, <uint64_t>t.n_rrsets * sizeof(rrset_t)):
                return -1
            trs = <const rrset_t*>(base + t.rrsets_off)
            for i in range(t.n_rrsets):
                if (trs[i].type == T_A or trs[i].type == T_AAAA) and \
                        image_check_rrset(base, size, &trs[i], False) != 0:
                    return -1
    return 0


cdef int image_check_node(const uint8_t* base, uint64_t size, uint32_t off, uint32_t n_zones) noexcept nogil:
    cdef const node_t* node
    cdef const rrset_t* rs
    cdef uint32_t i
    if off == 0 or not in_bounds(size, off, sizeof(node_t)):
        return -1
    node = <const node_t*>(base + off)
    if image_check_name(base, size, node.name_off, node.name_len, node.labels) != 0:
        return -1
    if node.zone_idx >= n_zones:
        return -1
    if node.cut_off and not in_bounds(size, node.cut_off, sizeof(node_t)):
        return -1
    if not in_bounds(size, node.rrsets_off, <uint64_t>node.n_rrsets * sizeof(rrset_t)):
        return -1
    rs = <const rrset_t*>(base + node.rrsets_off)
    for i in range(node.n_rrsets):
        if image_check_rrset(base, size, &rs[i], True) != 0:
            return -1
    return 0


cdef struct ck_state:
    uint64_t h0, h1, h2, h3


cdef inline void ck_init(ck_state* s) noexcept nogil:
    s.h0, s.h1 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F
    s.h2, s.h3 = 0x165667B19E3779F9, 0x27D4EB2F165667C5


cdef void ck_blocks(ck_state* s, const uint8_t* p, uint64_t pos, uint64_t n) noexcept nogil:
    """image_checksum's lanes over n bytes (a multiple of 32) that sit at offset pos of the image
    (pos a multiple of 32): the whole image at once, or streamed (ext/zonestream.pxi)."""
    cdef uint64_t w0, w1, w2, w3, i = 0
    cdef uint64_t K = 0xFF51AFD7ED558CCD
    while i < n:
        memcpy(&w0, p + i, 8)
        memcpy(&w1, p + i + 8, 8)
        memcpy(&w2, p + i + 16, 8)
        memcpy(&w3, p + i + 24, 8)
        if pos + i == 32:
            # the checksum field is bytes 60..63 of the header (compiler.CHECKSUM_OFFSET): the
            # high half of lane 3's word in this block (little-endian); count it as zero
            w3 = w3 & <uint64_t>0xFFFFFFFF
        s.h0 = (s.h0 ^ w0) * K
        s.h1 = (s.h1 ^ w1) * K
        s.h2 = (s.h2 ^ w2) * K
        s.h3 = (s.h3 ^ w3) * K
        s.h0 ^= s.h0 >> 29
        s.h1 ^= s.h1 >> 29
        s.h2 ^= s.h2 >> 29
        s.h3 ^= s.h3 >> 29
        i += 32


cdef uint32_t ck_final(ck_state* s, const uint8_t* tail, uint64_t n, uint64_t size) noexcept nogil:
    """The checksum, given the image's last size % 32 bytes (n of them) and its size."""
    cdef uint64_t t = 0, i, h
    cdef uint64_t K = 0xFF51AFD7ED558CCD
    for i in range(n):
        t = (t << 8) | tail[i]
    h = (s.h0 ^ s.h1 * 31 ^ s.h2 * 131 ^ s.h3 * 1031 ^ t ^ size) * K
    h ^= h >> 32
    return <uint32_t>h


cdef uint32_t image_checksum(const uint8_t* base, uint64_t size) noexcept nogil:
    """A fast 4-lane multiply-xor hash of the whole image, the checksum field counted as zero.
    Detects corruption of a saved image (not forgery: images come from our own compiler)."""
    cdef ck_state s
    cdef uint64_t n = size & ~(<uint64_t>31)
    ck_init(&s)
    ck_blocks(&s, base, 0, n)
    return ck_final(&s, base + n, size - n, size)


cdef int image_open(image_t* img, const uint8_t* base, uint64_t size, int level) noexcept nogil:
    """Validate an image and fill the view.  level 1 (full): every node, name and RDATA is
    checked (O(records)); level 0: the header, the tables (every slot points inside the image)
    and the checksum (for saved images: fast, and corruption changes the checksum); level 2: the
    header and the zone table only, for an image spliced in this process from parts checked when
    they were compiled (pop53.zone.arena: no pass over ~100 MB on the reload's path; its
    checksum is written when it is saved).
    \brief 0, or a negative step number telling which check failed."""
    cdef bint full = level == 1
    cdef const img_header_t* h
    cdef const zone_t* z
    cdef const uint32_t* tab
    cdef uint32_t i, s, off, count
    if size < IMG_HEADER_SIZE:
        return -1
    h = <const img_header_t*>base
    if memcmp(h.magic, b"POP53IMG", 8) != 0:
        return -2
    if h.version != IMG_VERSION or h.header_size != IMG_HEADER_SIZE:
        return -3
    if h.size != size:
        return -4
    if not in_bounds(size, h.zones_off, <uint64_t>h.n_zones * sizeof(zone_t)):
        return -5
    if not in_bounds(size, h.ztab_off, (<uint64_t>h.ztab_mask + 1) * 4):
        return -6
    if (h.ztab_mask + 1) & h.ztab_mask or h.n_zones > h.ztab_mask:
        return -6       # a power of two with at least one empty slot: probing terminates
    if level == 0 and image_checksum(base, size) != h.checksum:
        return -15
    tab = <const uint32_t*>(base + h.ztab_off)
    for s in range(h.ztab_mask + 1):
        if tab[s] > h.n_zones:
            return -7
    for i in range(h.n_zones):
        z = <const zone_t*>(base + h.zones_off) + i
        if image_check_name(base, size, z.name_off, z.name_len, z.labels) != 0:
            return -8
        if (z.ntab_mask + 1) & z.ntab_mask or z.n_nodes > z.ntab_mask:
            return -9
        if not in_bounds(size, z.ntab_off, (<uint64_t>z.ntab_mask + 1) * 4):
            return -9
        if image_check_node(base, size, z.apex_off, h.n_zones) != 0:
            return -10
        if not in_bounds(size, z.soa_off, sizeof(rrset_t)):
            return -11
        if (<const rrset_t*>(base + z.soa_off)).type != T_SOA or \
                image_check_rrset(base, size, <const rrset_t*>(base + z.soa_off), False) != 0:
            return -11
        if z.flags & Z_SIGNED and dnssec_check(base, size, z, h.n_zones, full) != 0:
            return -16
        if level == 2:
            continue
        tab = <const uint32_t*>(base + z.ntab_off)
        count = 0
        for s in range(z.ntab_mask + 1):
            off = tab[s]
            if off == 0:
                continue
            count += 1
            if not full:
                if not in_bounds(size, off, sizeof(node_t)):
                    return -12
                continue
            if image_check_node(base, size, off, h.n_zones) != 0:
                return -12
            if (<const node_t*>(base + off)).cut_off and image_check_node(
                    base, size, (<const node_t*>(base + off)).cut_off, h.n_zones) != 0:
                return -13
        if count != z.n_nodes:
            return -14
    img.base = base
    img.size = size
    img.hdr = h
    img.zones = <const zone_t*>(base + h.zones_off)
    img.ztab = <const uint32_t*>(base + h.ztab_off)
    img.ztab_mask = h.ztab_mask
    img.seed = h.seed
    img.n_zones = h.n_zones
    return 0
