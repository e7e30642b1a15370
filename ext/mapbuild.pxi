# Map compilation helpers for pop53/mapping/mapfile.py, in C because a million-line map must
# compile in well under a second: the whole-file parser (map_parse) and the sweep of nested
# prefixes into disjoint ranges (map_sweep).  Off the hot path; called with the GIL released
# for the loops.

def map_sweep(const uint64_t[::1] start not None, const uint64_t[::1] end not None,
              const uint16_t[::1] region not None, uint16_t default, uint64_t top):
    """Sweep prefixes (sorted by start, then by length: a parent before its children; no
    duplicates) into disjoint ranges covering [0, top], the longest prefix winning and
    `default` where none covers.  Adjacent ranges with one region are merged.  Returns
    (starts, regions) as bytes of uint64 / uint16 (a range ends where the next starts)."""
    cdef Py_ssize_t n = start.shape[0], i
    cdef uint64_t* olo = <uint64_t*>malloc((2 * n + 2) * sizeof(uint64_t))
    cdef uint16_t* oreg = <uint16_t*>malloc((2 * n + 2) * sizeof(uint16_t))
    cdef uint64_t st_end[130]
    cdef uint16_t st_reg[130]
    cdef int sp = 0
    cdef Py_ssize_t no = 0
    cdef uint64_t pos = 0
    cdef bint done = False, bad = False
    if end.shape[0] != n or region.shape[0] != n:
        raise ValueError("start, end and region differ in length")
    if olo == NULL or oreg == NULL:
        free(olo); free(oreg)
        raise MemoryError()
    with nogil:
        # emit(lo, reg): append unless it continues the previous range's region
        for i in range(n + 1):
            # close every open prefix that ends before this one starts (all of them at the end)
            while sp > 0 and (i == n or st_end[sp - 1] < start[i]):
                sp -= 1
                if not done and pos <= st_end[sp]:
                    if no == 0 or oreg[no - 1] != st_reg[sp]:
                        olo[no] = pos
                        oreg[no] = st_reg[sp]
                        no += 1
                    if st_end[sp] == top:
                        done = True
                    else:
                        pos = st_end[sp] + 1
            if i == n:
                break
            if sp >= 129 or (sp > 0 and end[i] > st_end[sp - 1]) or end[i] < start[i]:
                bad = True      # not nested: the input was not sorted or not prefixes
                break
            if pos < start[i]:
                # the gap before this prefix belongs to the enclosing prefix (or the default)
                if no == 0 or oreg[no - 1] != (st_reg[sp - 1] if sp > 0 else default):
                    olo[no] = pos
                    oreg[no] = st_reg[sp - 1] if sp > 0 else default
                    no += 1
                pos = start[i]
            st_end[sp] = end[i]
            st_reg[sp] = region[i]
            sp += 1
        if not bad and not done and (no == 0 or oreg[no - 1] != default):
            olo[no] = pos
            oreg[no] = default
            no += 1
    try:
        if bad:
            raise ValueError(f"prefixes are not sorted and nested (at {i})")
        return (PyBytes_FromStringAndSize(<const char*>olo, no * sizeof(uint64_t)),
                PyBytes_FromStringAndSize(<const char*>oreg, no * sizeof(uint16_t)))
    finally:
        free(olo)
        free(oreg)


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef enum:
    MP_AF_INET = 2
    MP_AF_INET6 = 10


cdef inline bint mp_blank(uint8_t c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12


cdef int mp_line(const uint8_t* p, Py_ssize_t n, uint64_t* start, uint64_t* low, uint8_t* plen,
                 bint* v6, Py_ssize_t* r0, Py_ssize_t* r1) noexcept nogil:
    """One map line (without its newline).  \\brief 0 = blank/comment, 1 = a prefix (start:
    IPv4 address or the top 64 bits of IPv6, low: its low 64 bits; the region token at
    [r0, r1)), -1 = anything else (the caller re-reads the line in Python for the message)."""
    cdef Py_ssize_t i = 0, t0, t1, s, k
    cdef char buf[64]
    cdef uint8_t a[16]
    cdef uint32_t length = 0, digits = 0, bits
    cdef uint64_t hi = 0, lo = 0
    while i < n and mp_blank(p[i]):
        i += 1
    if i == n or p[i] == 35:                    # '#'
        return 0
    t0 = i
    while i < n and not mp_blank(p[i]) and p[i] != 35:
        if p[i] < 33 or p[i] > 126:
            return -1
        i += 1
    t1 = i
    while i < n and mp_blank(p[i]):
        i += 1
    r0[0] = i
    while i < n and not mp_blank(p[i]) and p[i] != 35:
        if p[i] < 33 or p[i] > 126:
            return -1                            # non-ASCII regions: the Python path decides
        i += 1
    r1[0] = i
    if r1[0] == r0[0]:
        return -1
    while i < n and mp_blank(p[i]):
        i += 1
    if i < n and p[i] != 35:
        return -1                                # a third token
    s = t0
    while s < t1 and p[s] != 47:                 # '/'
        s += 1
    if s - t0 >= 63 or s == t0:
        return -1
    v6[0] = False
    for k in range(t0, s):
        buf[k - t0] = <char>p[k]
        if p[k] == 58:
            v6[0] = True
    buf[s - t0] = 0
    bits = 128 if v6[0] else 32
    if s < t1:
        for k in range(s + 1, t1):
            if p[k] < 48 or p[k] > 57 or digits >= 3:
                return -1
            length = length * 10 + (p[k] - 48)
            digits += 1
        if digits == 0 or length > bits:
            return -1
    else:
        length = bits
    if inet_pton(MP_AF_INET6 if v6[0] else MP_AF_INET, buf, a) != 1:
        return -1
    if v6[0]:
        hi = be64(a)
        lo = be64(a + 8)
        if length <= 64:
            if lo != 0 or (length < 64 and (hi & ~mask64(length))):
                return -1                        # host bits set
        elif length < 128 and (lo & ~mask64(length - 64)):
            return -1
        start[0] = hi
        low[0] = lo
    else:
        hi = be32(a)
        if (<uint32_t>hi) & (~mask32(length)):
            return -1
        start[0] = hi
    plen[0] = <uint8_t>length
    return 1


def map_parse(const uint8_t[::1] data not None):
    """Parse a whole map file in C.  Returns (v4, v6, regions, first_line) where v4 is
    (start u64, length u8, region u16, line u32) as bytes, v6 the same plus the low 64 bits of
    each start (u64; start holds the top 64), regions the region tokens (bytes) in
    order of first appearance and first_line their first line; or (line, None, None, None) for
    the first line the fast path does not accept (the caller re-reads it for the message)."""
    cdef Py_ssize_t n = data.shape[0], i = 0, e, nl = 1, n4 = 0, n6 = 0, cap, r0 = 0, r1 = 0
    cdef uint32_t line = 0, h, slot, j, nreg = 0, tmask = (1 << 17) - 1, bad = 0
    cdef const uint8_t* p = &data[0] if n else <const uint8_t*>b""
    cdef uint64_t start = 0, low = 0
    cdef uint8_t plen = 0
    cdef bint v6 = False
    cdef int rc
    for i in range(n):
        if p[i] == 10:
            nl += 1
    cap = nl
    cdef uint64_t* s4 = <uint64_t*>malloc(cap * 8)
    cdef uint8_t* l4 = <uint8_t*>malloc(cap)
    cdef uint16_t* g4 = <uint16_t*>malloc(cap * 2)
    cdef uint32_t* n4a = <uint32_t*>malloc(cap * 4)
    cdef uint64_t* s6 = <uint64_t*>malloc(cap * 8)
    cdef uint8_t* l6 = <uint8_t*>malloc(cap)
    cdef uint16_t* g6 = <uint16_t*>malloc(cap * 2)
    cdef uint32_t* n6a = <uint32_t*>malloc(cap * 4)
    cdef uint64_t* o6 = <uint64_t*>malloc(cap * 8)
    cdef uint32_t* tab = <uint32_t*>calloc(tmask + 1, 4)          # region index + 1
    cdef Py_ssize_t* roff = <Py_ssize_t*>malloc(65536 * sizeof(Py_ssize_t))
    cdef uint32_t* rlen = <uint32_t*>malloc(65536 * 4)
    cdef uint32_t* rline = <uint32_t*>malloc(65536 * 4)
    try:
        if not (s4 and l4 and g4 and n4a and s6 and l6 and g6 and n6a and o6 and tab and roff and
                rlen and rline):
            raise MemoryError()
        with nogil:
            i = 0
            while i < n:
                e = i
                while e < n and p[e] != 10:
                    e += 1
                line += 1
                rc = mp_line(p + i, e - i, &start, &low, &plen, &v6, &r0, &r1)
                if rc < 0:
                    bad = line
                    break
                if rc > 0:
                    # intern the region token (FNV-1a, linear probing)
                    h = 2166136261
                    for j in range(<uint32_t>(r1 - r0)):
                        h = (h ^ p[i + r0 + j]) * 16777619
                    slot = h & tmask
                    while tab[slot] != 0:
                        j = tab[slot] - 1
                        if rlen[j] == r1 - r0 and memcmp(p + roff[j], p + i + r0, r1 - r0) == 0:
                            break
                        slot = (slot + 1) & tmask
                    if tab[slot] == 0:
                        if nreg >= 65535:
                            bad = line
                            break
                        roff[nreg] = i + r0
                        rlen[nreg] = <uint32_t>(r1 - r0)
                        rline[nreg] = line
                        nreg += 1
                        tab[slot] = nreg
                    j = tab[slot] - 1
                    if v6:
                        s6[n6] = start; l6[n6] = plen; g6[n6] = <uint16_t>j; n6a[n6] = line
                        o6[n6] = low
                        n6 += 1
                    else:
                        s4[n4] = start; l4[n4] = plen; g4[n4] = <uint16_t>j; n4a[n4] = line
                        n4 += 1
                i = e + 1
        if bad:
            return bad, None, None, None
        return ((PyBytes_FromStringAndSize(<char*>s4, n4 * 8), PyBytes_FromStringAndSize(<char*>l4, n4),
                 PyBytes_FromStringAndSize(<char*>g4, n4 * 2), PyBytes_FromStringAndSize(<char*>n4a, n4 * 4)),
                (PyBytes_FromStringAndSize(<char*>s6, n6 * 8), PyBytes_FromStringAndSize(<char*>l6, n6),
                 PyBytes_FromStringAndSize(<char*>g6, n6 * 2), PyBytes_FromStringAndSize(<char*>n6a, n6 * 4),
                 PyBytes_FromStringAndSize(<char*>o6, n6 * 8)),
                [PyBytes_FromStringAndSize(<const char*>(p + roff[j]), rlen[j]) for j in range(nreg)],
                [rline[j] for j in range(nreg)])
    finally:
        free(s4); free(l4); free(g4); free(n4a); free(s6); free(l6); free(g6); free(n6a); free(o6)
        free(tab); free(roff); free(rlen); free(rline)
