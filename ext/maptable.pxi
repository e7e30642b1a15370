# The layout of a large IPv4 map view (issue 10), chosen from a profile of the server under
# dnsperf at 1M prefixes: the indexed binary search (index slot -> range starts -> answer
# array) cost three dependent cache and TLB misses per query once the kernel's network path
# had run between queries (+0.7 us per query, the whole gap to 1k prefixes).  Here a lookup
# touches one word of a direct index over the key's top B bits (16..20) and, unless that
# block lies inside one range, one short run of cells; both sit in one 2 MiB-aligned arena
# advised for transparent huge pages, so neither step walks the page tables.
#
# dir[s] (uint32), for the block of keys whose top B bits are s:
#   DIR_DIRECT | scope << 16 | answer   the block lies inside one range: its answer, and its
#                                       scope, which is the same for every key of the block
#                                       (the range's neighbours lie outside it)
#   else an offset into cells:          cells[off] = count | (L + 1) << 18 | (R + 1) << 23,
#                                       then count cells (low bits of the start << 16 | answer)
#                                       for the ranges meeting the block, the first at 0.
#                                       L (R): the common prefix length of any key of the block
#                                       with the end of the range before the block (the start
#                                       of the one after), 0 when there is none.
# The scope of key k in cell a: 1 + the longest common prefix of k with the neighbours just
# outside its range (as map_scope4), the ones outside the block taken from the header.

cdef extern from *:
    int __builtin_clz(unsigned int x) nogil
    int __builtin_clzll(unsigned long long x) nogil

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef enum:
    DIR_DIRECT = 0x80000000
    DIR_BITS_MIN = 16         # the cells' 16-bit starts need at most 16 low bits
    DIR_BITS_MAX = 22
    HUGE_PAGE = 2 * 1024 * 1024


cdef inline uint32_t map_dir4(const map_view_t* v, uint32_t k, uint32_t* scope) noexcept nogil:
    """\\brief the answer for IPv4 key k in a direct-indexed view; *scope its ECS scope."""
    cdef uint32_t w = v.dir4[k >> v.dshift4]
    cdef const uint32_t* c
    cdef uint32_t h, n, cnt, a = 0, half, kl, low, hi, s, x
    if w & DIR_DIRECT:
        scope[0] = (w >> 16) & 0xFF
        return w & 0xFFFF
    c = v.cell4 + w
    h = c[0]
    c += 1
    cnt = h & 0x3FFFF
    n = cnt
    low = (<uint32_t>1 << v.dshift4) - 1
    kl = ((k & low) << 16) | 0xFFFF
    while n > 1:
        half = n >> 1
        if c[a + half] <= kl:
            a += half
        n -= half
    hi = k & ~low
    if a > 0:
        s = <uint32_t>__builtin_clz(k ^ ((hi | (c[a] >> 16)) - 1)) + 1
    else:
        s = (h >> 18) & 31
    if a + 1 < cnt:
        x = <uint32_t>__builtin_clz(k ^ (hi | (c[a + 1] >> 16))) + 1
    else:
        x = (h >> 23) & 31
    scope[0] = s if s > x else x
    return c[a] & 0xFFFF


cdef inline uint32_t dir_edges(uint32_t base, const uint32_t* lo, Py_ssize_t n, Py_ssize_t i,
                               Py_ssize_t j) noexcept nogil:
    """(L + 1) | (R + 1) << 5 for the block at base holding ranges i..j-1 (0: no neighbour)."""
    cdef uint32_t left = 0, right = 0
    if lo[i] > 0:
        left = <uint32_t>__builtin_clz(base ^ (lo[i] - 1)) + 1
    if j < n:
        right = <uint32_t>__builtin_clz(base ^ lo[j]) + 1
    return left | (right << 5)


cdef class MapDir4:
    """A large IPv4 view's direct index and cells (see above), built in C from the merged
    ranges (lo: sorted starts, lo[0] = 0; val: answer per range) with `bits` index bits.
    Immutable; owns its arena.  pop53.mapping.snapshot builds one per (map, answers) and
    MapSnapshot points its view at it."""
    cdef uint32_t* arena
    cdef readonly uint32_t bits
    cdef readonly uint64_t nbytes
    cdef readonly uint32_t max_val
    cdef readonly uint32_t n_ranges
    cdef readonly uint64_t n_cells
    cdef readonly bint huge

    def __cinit__(self, const uint32_t[::1] lo not None, const uint16_t[::1] val not None,
                  uint32_t bits):
        cdef Py_ssize_t n = lo.shape[0], i, j, r
        cdef uint32_t shift, s, base, low, e, w
        cdef uint64_t nslots, ncell = 0, size, off
        cdef uint32_t* cells
        cdef void* p = NULL
        self.arena = NULL
        if n < 1 or val.shape[0] != n or lo[0] != 0:
            raise ValueError("ranges must start at 0 with one value each")
        if not DIR_BITS_MIN <= bits <= DIR_BITS_MAX:
            raise ValueError(f"index bits {bits} not in {DIR_BITS_MIN}..{DIR_BITS_MAX}")
        for i in range(1, n):
            if lo[i] <= lo[i - 1]:
                raise ValueError("IPv4 ranges unsorted")
        shift = 32 - bits
        low = (<uint32_t>1 << shift) - 1
        nslots = <uint64_t>1 << bits
        with nogil:
            # pass 1: how many cells (a block meeting one range needs none)
            i = 0
            for s in range(<uint32_t>nslots):
                base = s << shift
                while i + 1 < n and lo[i + 1] <= base:
                    i += 1
                j = i + 1
                while j < n and lo[j] <= (base | low):
                    j += 1
                if j - i > 1:
                    ncell += 1 + (j - i)
        size = 4 * (nslots + ncell)
        if ncell >= DIR_DIRECT:
            raise ValueError("IPv4 table too large")
        if size >= HUGE_PAGE:
            # huge pages: the tables are read at random, one lookup per query, so with 4 KiB
            # pages every step would also miss the TLB (THP "madvise" mode is the default)
            if posix_memalign(&p, HUGE_PAGE, (size + HUGE_PAGE - 1) & ~(<uint64_t>HUGE_PAGE - 1)) != 0:
                p = NULL
            elif madvise(p, (size + HUGE_PAGE - 1) & ~(<uint64_t>HUGE_PAGE - 1), MADV_HUGEPAGE) == 0:
                self.huge = True
        else:
            p = malloc(size)
        if p == NULL:
            raise MemoryError()
        self.arena = <uint32_t*>p
        cells = self.arena + nslots
        with nogil:
            i = 0
            off = 0
            for s in range(<uint32_t>nslots):
                base = s << shift
                while i + 1 < n and lo[i + 1] <= base:
                    i += 1
                j = i + 1
                while j < n and lo[j] <= (base | low):
                    j += 1
                e = dir_edges(base, &lo[0], n, i, j)
                if j - i == 1:
                    w = (e & 31) if (e & 31) > (e >> 5) else (e >> 5)
                    self.arena[s] = DIR_DIRECT | (w << 16) | val[i]
                    continue
                self.arena[s] = <uint32_t>off
                cells[off] = <uint32_t>(j - i) | (e << 18)
                off += 1
                for r in range(i, j):
                    cells[off] = (((lo[r] & low) if r > i else 0) << 16) | val[r]
                    off += 1
            w = 0
            for r in range(n):
                if val[r] > w:
                    w = val[r]
        self.max_val = w
        self.bits = bits
        self.nbytes = size
        self.n_ranges = <uint32_t>n
        self.n_cells = ncell

    def __dealloc__(self):
        free(self.arena)

    cdef void attach(self, map_view_t* v) noexcept:
        v.dir4 = self.arena
        v.cell4 = self.arena + (<uint64_t>1 << self.bits)
        v.dshift4 = 32 - self.bits


cdef extern from *:
    """#define p53_map_prefetch(p) __builtin_prefetch((p), 0, 3)"""
    void p53_map_prefetch(const void* p) nogil


cdef inline const map_view_t* mpf_view(const map_snap_t* m, const uint8_t* p, uint32_t len,
                                       uint64_t* key) noexcept nogil:
    """The indexed IPv4 view a query names exactly (its qname a mapped A/AAAA/CNAME
    resource), and the key of its ECS option (IPv4, source > 0); else NULL, and *key = 1 << 32
    with a view when the query has no such option (the source address then keys it)."""
    cdef uint32_t i = 12, h = <uint32_t>FNV_BASIS ^ m.seed, e, qtype, src, rd, code, olen
    cdef int64_t j
    cdef uint8_t ch
    cdef const map_res_t* r
    cdef int32_t vi
    cdef uint8_t a[4]
    if len < 17 or p[4] != 0 or p[5] != 1:
        return NULL
    while i < len and p[i] != 0:
        if p[i] >= 64:
            return NULL
        i += 1 + p[i]
    if i + 5 > len or i - 11 > 255:
        return NULL
    e = i + 1                   # the wire name is p[12:e]
    j = <int64_t>e - 1
    while j >= 12:
        ch = p[j]
        if 65 <= ch <= 90:
            ch += 32
        h = name_hash_step(h, ch)
        j -= 1
    qtype = (<uint32_t>p[e] << 8) | p[e + 1]
    i = h & m.rtab_mask
    while True:
        vi = <int32_t>m.rtab[i]
        if vi == 0:
            return NULL
        r = &m.res[vi - 1]
        if r.hash == h and r.name_len == e - 12:
            break
        i = (i + 1) & m.rtab_mask
    if r.kind == MAP_ADDR and qtype == T_AAAA:
        vi = r.view_aaaa
    elif r.kind == MAP_CNAME or (r.kind == MAP_ADDR and qtype == T_A):
        vi = r.view_a
    else:
        return NULL
    if vi < 0 or (m.views[vi].dir4 == NULL and m.views[vi].idx4 == NULL):
        return NULL
    key[0] = <uint64_t>1 << 32
    i = e + 4
    # OPT as the only additional record (RFC 6891 §6.1.2), then its options (RFC 7871 §6)
    if p[6] | p[7] | p[8] | p[9] or i + 11 > len or p[i] != 0 or p[i + 1] != 0 or p[i + 2] != 41:
        return &m.views[vi]
    rd = (<uint32_t>p[i + 9] << 8) | p[i + 10]
    i += 11
    if i + rd < len:
        len = i + rd
    while i + 4 <= len:
        code = (<uint32_t>p[i] << 8) | p[i + 1]
        olen = (<uint32_t>p[i + 2] << 8) | p[i + 3]
        i += 4
        if code == 8 and 4 <= olen <= 8 and i + olen <= len and p[i] == 0 and p[i + 1] == 1:
            src = p[i + 2]
            if src == 0 or src > 32:
                return &m.views[vi]
            memset(a, 0, 4)
            memcpy(a, p + i + 4, olen - 4)
            key[0] = be32(a) & mask32(src if src <= m.keys[r.keycfg].max4 else m.keys[r.keycfg].max4)
            return &m.views[vi]
        i += olen
    return &m.views[vi]


cdef void map_prefetch(const map_snap_t* m, const uint8_t* buf, size_t stride,
                       const unsigned int* lens, size_t lstride, const uint8_t* sa,
                       size_t sastride, int n) noexcept nogil:
    """Ask for the index words, then the cells (or range starts and answers), of a whole
    batch's mapped queries before answering the first: with a 1M-prefix map each is a cache
    miss (the index alone is 4 MiB); issued together the misses overlap instead of stalling
    one query after another.  Only views of 1 MiB and more count (m.n_pf, mapsnap.pxi): at 1k
    prefixes this pass cost more than the L2 hits it saved.  A hint only: a query it misjudges
    is answered the same, just without the head start."""
    cdef const map_view_t* vs[64]
    cdef const map_view_t* v
    cdef uint32_t ks[64]
    cdef uint64_t key
    cdef uint32_t w, alen
    cdef const uint8_t* a
    cdef int i, k = 0
    if m == NULL or m.n_pf == 0:
        return
    for i in range(n if n <= 64 else 64):
        vs[k] = mpf_view(m, buf + i * stride, (<const unsigned int*>(<const uint8_t*>lens + i * lstride))[0], &key)
        if vs[k] == NULL:
            continue
        if key >> 32:
            a = client_addr(sa + i * sastride, &alen)
            if alen != 4:
                continue
            key = be32(a)
        ks[k] = <uint32_t>key
        v = vs[k]
        if v.dir4 != NULL:
            p53_map_prefetch(v.dir4 + (ks[k] >> v.dshift4))
        else:
            p53_map_prefetch(v.idx4 + (ks[k] >> v.shift4))
        k += 1
    for i in range(k):
        v = vs[i]
        if v.dir4 != NULL:
            w = v.dir4[ks[i] >> v.dshift4]
            if not (w & DIR_DIRECT):
                p53_map_prefetch(v.cell4 + w)
                p53_map_prefetch(v.cell4 + w + 15)
        else:
            w = v.idx4[ks[i] >> v.shift4]      # map_find4 searches from the range before
            p53_map_prefetch(v.lo4 + (w - 1 if w > 0 else 0))
            p53_map_prefetch(v.lo4 + w + 8)
            p53_map_prefetch(v.val4 + (w - 1 if w > 0 else 0))
