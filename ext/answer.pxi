# The response writer: a caller-owned buffer, name compression, and transactions.
# mark() / rollback(mark) undo a partly written RRset, counts and compression entries included,
# so a response is never left holding a partial RRset (RFC 2181 §9); the caller then sets TC.

cdef inline wmark_t w_mark(const wbuf_t* w) noexcept nogil:
    cdef wmark_t m
    m.pos = w.pos
    m.ncmp = w.ncmp
    m.an = w.an
    m.ns = w.ns
    m.ar = w.ar
    return m


cdef inline void w_rollback(wbuf_t* w, wmark_t m) noexcept nogil:
    P53_ASSERT(m.pos <= w.pos and m.ncmp <= w.ncmp)
    w.pos = m.pos
    w.ncmp = m.ncmp
    w.an = m.an
    w.ns = m.ns
    w.ar = m.ar


cdef inline bint w_room(const wbuf_t* w, uint32_t n) noexcept nogil:
    return w.pos <= w.cap and w.cap - w.pos >= n


cdef inline void w_put16(wbuf_t* w, uint16_t v) noexcept nogil:
    P53_ASSERT(w.pos + 2 <= 65535)
    w.buf[w.pos] = v >> 8
    w.buf[w.pos + 1] = v & 0xFF
    w.pos += 2


cdef inline void w_put32(wbuf_t* w, uint32_t v) noexcept nogil:
    w.buf[w.pos] = v >> 24
    w.buf[w.pos + 1] = (v >> 16) & 0xFF
    w.buf[w.pos + 2] = (v >> 8) & 0xFF
    w.buf[w.pos + 3] = v & 0xFF
    w.pos += 4


cdef inline void w_cmp_add(wbuf_t* w, uint32_t off) noexcept nogil:
    if w.ncmp < CMP_MAX and off < 0x3FFF:
        w.cmp[w.ncmp] = <uint16_t>off
        w.ncmp += 1


cdef bint pkt_name_eq(const uint8_t* pkt, uint32_t off, const uint8_t* name) noexcept nogil:
    """Does the name written at pkt[off] (our own bytes, possibly with pointers) equal the
    uncompressed wire name `name`, ignoring ASCII case?"""
    cdef uint32_t p = 0, i, hops = 0
    cdef uint8_t c
    while True:
        c = pkt[off]
        if (c & 0xC0) == 0xC0:
            off = ((<uint32_t>(c & 0x3F)) << 8) | pkt[off + 1]
            hops += 1
            if hops > MAX_LABELS:
                return False
            continue
        if c != name[p]:
            return False
        if c == 0:
            return True
        for i in range(1, c + 1):
            if LOWER[pkt[off + i]] != LOWER[name[p + i]]:
                return False
        off += c + 1
        p += c + 1


cdef int w_name(wbuf_t* w, const uint8_t* name, bint compress) noexcept nogil:
    """Write an uncompressed wire name, compressed against what the packet holds.
    \\brief 0, or -1 when it does not fit (nothing written)."""
    cdef uint32_t s = 0, e, hit = 0, lit, k
    cdef bint found = False
    if compress:
        while name[s] != 0:
            for e in range(w.ncmp):
                if pkt_name_eq(w.buf, w.cmp[e], name + s):
                    hit = w.cmp[e]
                    found = True
                    break
            if found:
                break
            s += name[s] + 1
    else:
        while name[s] != 0:
            s += name[s] + 1
    lit = s
    if not w_room(w, lit + (2 if found else 1)):
        return -1
    P53_ASSERT(not found or hit < w.pos)      # compression pointers only point backwards
    k = 0
    while k < lit:
        w_cmp_add(w, w.pos + k)
        k += name[k] + 1
    memcpy(w.buf + w.pos, name, lit)
    w.pos += lit
    if found:
        w_put16(w, 0xC000 | hit)
    else:
        w.buf[w.pos] = 0
        w.pos += 1
    return 0


cdef inline uint32_t rdata_name_len(const uint8_t* r) noexcept nogil:
    cdef uint32_t p = 0
    while r[p] != 0:
        p += r[p] + 1
    return p + 1


cdef int w_rdata(wbuf_t* w, uint16_t rtype, const uint8_t* r, uint32_t n) noexcept nogil:
    """RDATA with the names of RFC 1035's types compressed (RFC 3597 §4: only those); other
    types are copied as they are.  DNAME targets are never compressed (RFC 6672 §2.5) but are
    remembered as targets for the synthesized CNAME that follows."""
    cdef uint32_t p, l1
    if rtype == T_NS or rtype == T_CNAME or rtype == T_PTR:
        return w_name(w, r, True)
    if rtype == T_MX:
        if not w_room(w, 2):
            return -1
        memcpy(w.buf + w.pos, r, 2)
        w.pos += 2
        return w_name(w, r + 2, True)
    if rtype == T_SOA:
        l1 = rdata_name_len(r)
        if w_name(w, r, True) != 0 or w_name(w, r + l1, True) != 0:
            return -1
        p = l1 + rdata_name_len(r + l1)
        if not w_room(w, n - p):
            return -1
        memcpy(w.buf + w.pos, r + p, n - p)
        w.pos += n - p
        return 0
    if rtype == T_DNAME:
        return w_name(w, r, False)
    if not w_room(w, n):
        return -1
    memcpy(w.buf + w.pos, r, n)
    w.pos += n
    return 0


cdef int w_owner(wbuf_t* w, uint32_t owner_ptr, const uint8_t* owner_name) noexcept nogil:
    """An owner is either a pointer to a name already in the packet or a name to write."""
    if owner_ptr:
        if not w_room(w, 2):
            return -1
        w_put16(w, 0xC000 | owner_ptr)
        return 0
    return w_name(w, owner_name, True)


cdef int w_rr(wbuf_t* w, uint32_t owner_ptr, const uint8_t* owner_name, uint16_t rtype,
              uint16_t rclass, uint32_t ttl, const uint8_t* rdata, uint32_t rdlen,
              uint32_t* rdata_pos) noexcept nogil:
    """One resource record.  rdata_pos (optional) receives where the RDATA starts."""
    cdef uint32_t lenpos
    if w_owner(w, owner_ptr, owner_name) != 0:
        return -1
    if not w_room(w, 10):
        return -1
    w_put16(w, rtype)
    w_put16(w, rclass)
    w_put32(w, ttl)
    lenpos = w.pos
    w.pos += 2
    if rdata_pos != NULL:
        rdata_pos[0] = w.pos
    if w_rdata(w, rtype, rdata, rdlen) != 0:
        return -1
    w.buf[lenpos] = (w.pos - lenpos - 2) >> 8
    w.buf[lenpos + 1] = (w.pos - lenpos - 2) & 0xFF
    return 0


cdef int w_rrset(wbuf_t* w, int section, uint32_t owner_ptr, const uint8_t* owner_name,
                 const uint8_t* base, const rrset_t* rs, uint32_t ttl, uint32_t* first_rdata) noexcept nogil:
    """A whole RRset or nothing.  section: 0 answer, 1 authority, 2 additional.  The owner is
    written once; the other records point at it.  \\brief 0, or -1 (rolled back)."""
    cdef wmark_t m = w_mark(w)
    cdef uint32_t i, p = 0, rl, own = owner_ptr, start
    cdef const uint8_t* rd = base + rs.rdata_off
    for i in range(rs.count):
        rl = rd16(rd + p)
        start = w.pos
        if w_rr(w, own, owner_name, rs.type, C_IN, ttl, rd + p + 2, rl,
                first_rdata if i == 0 else NULL) != 0:
            w_rollback(w, m)
            return -1
        if own == 0:
            # point later owners at this one (resolving a pointer to its target)
            if (w.buf[start] & 0xC0) == 0xC0:
                own = ((<uint32_t>(w.buf[start] & 0x3F)) << 8) | w.buf[start + 1]
            elif start < 0x3FFF:
                own = start
        p += 2 + rl
    if section == 0:
        w.an += rs.count
    elif section == 1:
        w.ns += rs.count
    else:
        w.ar += rs.count
    return 0
