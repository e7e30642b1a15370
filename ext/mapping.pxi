# Mapped answers: the client's network picks the answer (issue 10).  The client key is the ECS
# address masked to its SOURCE PREFIX-LENGTH (RFC 7871 §6, capped at the map's limits), else the
# query's source address; a binary search (indexed by the top 16 bits) over disjoint ranges
# gives the answer, and the range's bounds give the ECS SCOPE PREFIX-LENGTH: the shortest L
# whose aligned /L block around the key lies inside the run of ranges with this one final
# answer (the compiler merged adjacent ranges with equal answers, so that run is the range).
# Everything here runs without the GIL and allocates nothing; the snapshot is immutable.

cdef extern from *:
    int __builtin_clz(unsigned int x) nogil
    int __builtin_clzll(unsigned long long x) nogil


cdef inline uint32_t map_find4(const map_view_t* v, uint32_t k) noexcept nogil:
    """\\brief the index of the range holding IPv4 key k (the largest i with lo4[i] <= k)."""
    cdef uint32_t a = 0, n = v.n4, half, h
    if v.idx4 != NULL:
        h = k >> v.shift4
        a = v.idx4[h]
        n = v.idx4[h + 1] - a + 1
        if a > 0:
            a -= 1              # the range holding k may start in an earlier /16
        else:
            n -= 1
    while n > 1:
        half = n >> 1
        if v.lo4[a + half] <= k:
            a += half
        n -= half
    return a


cdef inline uint32_t map_find6(const map_view_t* v, uint64_t k) noexcept nogil:
    cdef uint32_t a = 0, n = v.n6, half, h
    if v.idx6 != NULL:
        h = <uint32_t>(k >> v.shift6)
        a = v.idx6[h]
        n = v.idx6[h + 1] - a + 1
        if a > 0:
            a -= 1
        else:
            n -= 1
    while n > 1:
        half = n >> 1
        if v.lo6[a + half] <= k:
            a += half
        n -= half
    return a


cdef inline uint32_t map_scope4(const map_view_t* v, uint32_t i, uint32_t k) noexcept nogil:
    """The shortest L whose aligned /L block around k stays inside range i:
    1 + the longest common prefix of k with the neighbours just outside; 0 for the whole space."""
    cdef uint32_t lo = v.lo4[i], m = 0, c
    cdef bint edge = False
    if lo > 0:
        m = <uint32_t>__builtin_clz(k ^ (lo - 1))
        edge = True
    if i + 1 < v.n4:
        c = <uint32_t>__builtin_clz(k ^ v.lo4[i + 1])
        if c > m:
            m = c
        edge = True
    return m + 1 if edge else 0


cdef inline uint32_t map_scope6(const map_view_t* v, uint32_t i, uint64_t k) noexcept nogil:
    cdef uint64_t lo = v.lo6[i]
    cdef uint32_t m = 0, c
    cdef bint edge = False
    if lo > 0:
        m = <uint32_t>__builtin_clzll(k ^ (lo - 1))
        edge = True
    if i + 1 < v.n6:
        c = <uint32_t>__builtin_clzll(k ^ v.lo6[i + 1])
        if c > m:
            m = c
        edge = True
    return m + 1 if edge else 0


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t be64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>be32(p) << 32) | be32(p + 4)


cdef inline uint32_t mask32(uint32_t bits) noexcept nogil:
    return 0 if bits == 0 else <uint32_t>((<uint64_t>0xFFFFFFFF) << (32 - bits))


cdef inline uint64_t mask64(uint32_t bits) noexcept nogil:
    return 0 if bits == 0 else (<uint64_t>0xFFFFFFFFFFFFFFFFULL) << (64 - bits)


cdef bint map_trusted(const map_keycfg_t* kc, const uint8_t* client, uint32_t client_len) noexcept nogil:
    """Is the resolver (the query's source) one whose ECS this map uses?  No list: every one."""
    cdef uint32_t i, nb, rb
    cdef const uint8_t* net
    if kc.n_trust == 0:
        return True
    for i in range(kc.n_trust):
        if kc.trust_fam[i] != client_len:
            continue
        net = kc.trust_addr + 16 * i
        nb = kc.trust_len[i] // 8
        rb = kc.trust_len[i] % 8
        if memcmp(net, client, nb) != 0:
            continue
        if rb and ((net[nb] ^ client[nb]) & (0xFF << (8 - rb)) & 0xFF):
            continue
        return True
    return False


cdef int map_client_key(const ctx_t* c, const map_keycfg_t* kc, uint64_t* key, uint32_t* cap,
                        bint* ecs_used) noexcept nogil:
    """The client key of a query for one map.  \\brief returns 4 or 6 (the key's family), or 0
    (no client address: the map's default region answers).  *cap: the longest scope that may be
    claimed (the source length when it was cut to the map's limit, else 255)."""
    cdef const query_t* q = c.q
    cdef uint32_t bits
    ecs_used[0] = False
    cap[0] = 255
    # RFC 7871 §7.1.2: SOURCE PREFIX-LENGTH 0 asks that no client address be used; the answer
    # then goes by the resolver's own address and says scope 0.
    if q.ecs and q.ecs_source > 0 and kc.mode != KEY_SOURCE_ONLY and \
            map_trusted(kc, c.client, c.client_len):
        ecs_used[0] = True
        if q.ecs_family == 1:
            bits = q.ecs_source if q.ecs_source <= kc.max4 else kc.max4
            if q.ecs_source > kc.max4:
                cap[0] = kc.max4
            key[0] = be32(q.ecs_addr) & mask32(bits)
            return 4
        bits = q.ecs_source if q.ecs_source <= kc.max6 else kc.max6
        if q.ecs_source > kc.max6:
            cap[0] = kc.max6
        key[0] = be64(q.ecs_addr) & mask64(bits if bits <= 64 else 64)
        return 6
    if kc.mode == KEY_ECS_ONLY:
        return 0
    if c.client_len == 4:
        key[0] = be32(c.client)
        return 4
    if c.client_len == 16:
        key[0] = be64(c.client)
        return 6
    return 0


cdef const map_ans_t* map_pick(ctx_t* c, const map_res_t* r, int32_t vi) noexcept nogil:
    """The final answer of view vi for this query's client; raises the reply's ECS scope."""
    cdef const map_snap_t* m = c.maps
    cdef const map_view_t* v = &m.views[vi]
    cdef uint64_t key = 0
    cdef uint32_t cap, i, a, scope = 0
    cdef bint ecs_used
    cdef int fam = map_client_key(c, &m.keys[r.keycfg], &key, &cap, &ecs_used)
    if fam == 4:
        i = map_find4(v, <uint32_t>key)
        a = v.val4[i]
        scope = map_scope4(v, i, <uint32_t>key)
    elif fam == 6:
        i = map_find6(v, key)
        a = v.val6[i]
        scope = map_scope6(v, i, key)
    else:
        a = v.dflt
    if ecs_used:
        if scope > cap:
            scope = cap
        # a reply holding several mapped answers (a CNAME chain) is as specific as the most
        # specific of them
        if scope > c.ecs_scope:
            c.ecs_scope = <uint8_t>scope
    return &v.ans[a]


cdef const map_res_t* map_find_res(const ctx_t* c, const uint8_t* name, uint32_t nlen,
                                   uint32_t h) noexcept nogil:
    cdef const map_snap_t* m = c.maps
    cdef uint32_t slot = h & m.rtab_mask, e
    cdef const map_res_t* r
    while True:
        e = m.rtab[slot]
        if e == 0:
            return NULL
        r = &m.res[e - 1]
        if r.hash == h and r.name_len == nlen and memcmp(m.base + r.name_off, name, nlen) == 0:
            return r
        slot = (slot + 1) & m.rtab_mask


cdef void map_referral(ctx_t* c, const map_ans_t* a, uint32_t owner_ptr,
                       const uint8_t* owner_name) noexcept nogil:
    """A mapped delegation (the toplevel role): the NS set and glue chosen for this client, in
    authority and additional, AA clear (RFC 1034 §4.3.2 step 3b)."""
    cdef const uint8_t* base = c.maps.base
    cdef const rrset_t* rs
    cdef const map_glue_t* g
    cdef uint32_t i, j, off
    if c.depth == 0:
        c.aa = False
    rs = <const rrset_t*>(base + a.rs_off)
    if w_rrset(&c.w, 1, owner_ptr, owner_name, base, rs, rs.ttl, NULL) != 0:
        c.w.tc = True
        return
    g = <const map_glue_t*>(base + a.glue_off)
    for i in range(a.glue_count):
        for j in range(2):
            off = g[i].a_off if j == 0 else g[i].aaaa_off
            if off == 0:
                continue
            rs = <const rrset_t*>(base + off)
            if w_rrset(&c.w, 2, 0, base + g[i].name_off, base, rs, rs.ttl, NULL) != 0:
                if g[i].flags & GLUE_REQUIRED:
                    c.w.tc = True     # glue below the cut that does not fit (RFC 9471)
                return


cdef int map_resolve(ctx_t* c, const zone_t* z, const uint8_t* name, uint32_t nlen,
                     const uint8_t* loff, uint32_t labels, const uint32_t* sh,
                     uint32_t owner_ptr) noexcept nogil:
    """The mapping hook of resolve(), once the zone is known: a mapped resource at the name
    (any kind) or a mapped referral (NS) at an ancestor below the apex answers here.
    \\brief returns 1 when the query was answered, 0 to continue with the zone's data."""
    cdef const map_snap_t* m = c.maps
    cdef const map_res_t* r = NULL
    cdef const map_ans_t* a
    cdef const rrset_t* rs
    cdef uint32_t k, top, h, pos = 0
    cdef int32_t vi
    cdef uint16_t qtype = c.q.qtype
    if m == NULL or m.n_res == 0:
        return 0
    top = labels - z.labels
    for k in range(top + 1):
        if labels - k >= 64 or not ((m.label_mask >> (labels - k)) & 1):
            continue
        h = sh[k] if m.seed == c.img.seed else name_hash(name + loff[k], nlen - loff[k], m.seed)
        r = map_find_res(c, name + loff[k], nlen - loff[k], h)
        if r != NULL and (k == 0 or r.kind == MAP_NS) and not (r.kind == MAP_NS and k == top):
            break
        r = NULL
    if r == NULL:
        return 0
    if r.kind == MAP_NS:
        if k == 0 and qtype == T_DS:
            add_soa(c, z)       # the parent side of an unsigned delegation: NODATA
            return 1
        a = map_pick(c, r, r.view_a)
        if a.flags & ANS_SERVFAIL or a.rs_off == 0:
            c.rcode = RC_SERVFAIL
            return 1
        map_referral(c, a, suffix_ptr(c.w.buf, owner_ptr, k), m.base + r.name_off)
        return 1
    if r.kind == MAP_CNAME:
        vi = r.view_a
    elif qtype == T_A and (r.flags & MAPF_A):
        vi = r.view_a
    elif qtype == T_AAAA and (r.flags & MAPF_AAAA):
        vi = r.view_aaaa
    elif qtype == T_ANY:
        vi = r.view_a if (r.flags & MAPF_A) else r.view_aaaa
    else:
        # another type at a mapped name: the zone's static data if it has the name, else
        # NODATA (the name exists: it is mapped)
        if zone_find(c.img, z, name, nlen, sh[0]) != NULL:
            return 0
        add_soa(c, z)
        return 1
    a = map_pick(c, r, vi)
    if a.flags & ANS_SERVFAIL:
        c.rcode = RC_SERVFAIL
        return 1
    if a.rs_off == 0:
        add_soa(c, z)           # no target of the family asked: NODATA
        return 1
    rs = <const rrset_t*>(m.base + a.rs_off)
    if w_rrset(&c.w, 0, owner_ptr, name, m.base, rs, rs.ttl, &pos) != 0:
        c.w.tc = True
        return 1
    if r.kind == MAP_CNAME and qtype != T_CNAME and qtype != T_ANY:
        # RFC 1034 §4.3.2 step 3a; the resource stands in for a node in the loop check
        follow(c, <const node_t*>r, m.base + rs.rdata_off + 2, pos)
    return 1


# ---------------------------------------------------------------------------------------------
# The Python side: the snapshot object, the sweep of the compiler, tools for tests and bench/.
# ---------------------------------------------------------------------------------------------
MAP_SIZEOF = {"res": sizeof(map_res_t), "ans": sizeof(map_ans_t), "glue": sizeof(map_glue_t),
              "keycfg": sizeof(map_keycfg_t)}
MAP_KIND = {"ADDR": MAP_ADDR, "CNAME": MAP_CNAME, "NS": MAP_NS}


cdef uint32_t _index_bits(const uint32_t[::1] idx, uint32_t n, uint32_t width) except? 0:
    """B of an index of 2**B + 1 entries, after checking it cannot send a search out of the
    table: non-decreasing, starting at 0, ending at n."""
    cdef Py_ssize_t m = idx.shape[0] - 1, i
    cdef uint32_t b = 0
    while b < 20 and (<Py_ssize_t>1 << b) < m:
        b += 1
    if m < 2 or (<Py_ssize_t>1 << b) != m or b > width or idx[0] != 0 or idx[m] != n:
        raise ValueError("bad range index")
    for i in range(m):
        if idx[i] > idx[i + 1]:
            raise ValueError("bad range index")
    return b


cdef class MapSnapshot:
    """An immutable mapping snapshot (resources, views, answers) built by
    pop53.mapping.snapshot; published with Shared.publish_maps.  Holds its buffers."""
    cdef map_snap_t s
    cdef map_view_t* views
    cdef readonly object refs
    cdef readonly uint32_t seed

    def __cinit__(self, bytes blob not None, bytes res not None, bytes rtab not None,
                  uint32_t seed, uint64_t label_mask, bytes keys not None, list views not None):
        """views: (lo4 u32, val4 u16, idx4 u32 or None, lo6 u64, val6 u16, idx6 u32 or None,
        ans_off, n_ans, dflt) per view; an index has 2**B + 1 entries (B <= 20).  Every
        offset and index is checked here, so a worker can trust the snapshot."""
        cdef Py_ssize_t nv = len(views), i, j
        cdef const uint32_t[::1] lo4
        cdef const uint16_t[::1] val4
        cdef const uint32_t[::1] idx4
        cdef const uint64_t[::1] lo6
        cdef const uint16_t[::1] val6
        cdef const uint32_t[::1] idx6
        cdef map_view_t* v
        cdef const map_res_t* r
        cdef const map_keycfg_t* kc
        cdef uint32_t n_rtab = len(rtab) // 4
        memset(&self.s, 0, sizeof(map_snap_t))
        self.views = NULL
        if len(blob) < 8 or len(res) % sizeof(map_res_t) or len(keys) % sizeof(map_keycfg_t):
            raise ValueError("malformed mapping snapshot")
        if n_rtab == 0 or n_rtab & (n_rtab - 1) or n_rtab <= len(res) // sizeof(map_res_t):
            raise ValueError("the resource table must be a power of two above the resources")
        self.refs = [blob, res, rtab, keys, views]
        self.seed = seed
        self.views = <map_view_t*>calloc(nv if nv else 1, sizeof(map_view_t))
        if self.views == NULL:
            raise MemoryError()
        self.s.base = <const uint8_t*>(<char*>blob)
        self.s.size = len(blob)
        self.s.res = <const map_res_t*>(<char*>res)
        self.s.n_res = len(res) // sizeof(map_res_t)
        self.s.rtab = <const uint32_t*>(<char*>rtab)
        self.s.rtab_mask = n_rtab - 1
        self.s.seed = seed
        self.s.label_mask = label_mask
        self.s.keys = <const map_keycfg_t*>(<char*>keys)
        self.s.n_keys = len(keys) // sizeof(map_keycfg_t)
        self.s.views = self.views
        self.s.n_views = nv
        for i in range(nv):
            t = views[i]
            v = &self.views[i]
            lo4, val4, lo6, val6 = t[0], t[1], t[3], t[4]
            if lo4.shape[0] < 1 or lo4.shape[0] != val4.shape[0] or lo4[0] != 0 or \
                    lo6.shape[0] < 1 or lo6.shape[0] != val6.shape[0] or lo6[0] != 0:
                raise ValueError(f"view {i}: ranges must start at 0 with one value each")
            v.lo4, v.val4, v.n4 = &lo4[0], &val4[0], lo4.shape[0]
            v.lo6, v.val6, v.n6 = &lo6[0], &val6[0], lo6.shape[0]
            if t[2] is not None:
                idx4 = t[2]
                v.shift4 = 32 - _index_bits(idx4, v.n4, 32)
                v.idx4 = &idx4[0]
            if t[5] is not None:
                idx6 = t[5]
                v.shift6 = 64 - _index_bits(idx6, v.n6, 64)
                v.idx6 = &idx6[0]
            ans_off, n_ans, dflt = t[6], t[7], t[8]
            if n_ans < 1 or ans_off < 8 or ans_off + n_ans * sizeof(map_ans_t) > len(blob) or dflt >= n_ans:
                raise ValueError(f"view {i}: answers out of bounds")
            v.ans = <const map_ans_t*>(self.s.base + <uint32_t>ans_off)
            v.n_ans = n_ans
            v.dflt = dflt
            for j in range(v.n4):
                if v.val4[j] >= n_ans or (j and v.lo4[j] <= v.lo4[j - 1]):
                    raise ValueError(f"view {i}: IPv4 ranges unsorted or values out of bounds")
            for j in range(v.n6):
                if v.val6[j] >= n_ans or (j and v.lo6[j] <= v.lo6[j - 1]):
                    raise ValueError(f"view {i}: IPv6 ranges unsorted or values out of bounds")
            for j in range(n_ans):
                self._check_answer(&v.ans[j])
        for i in range(self.s.n_res):
            r = &self.s.res[i]
            if r.name_off + r.name_len > self.s.size or r.keycfg >= self.s.n_keys or \
                    r.view_a >= nv or r.view_aaaa >= nv or (r.view_a < 0 and r.view_aaaa < 0) or \
                    ((r.kind != MAP_ADDR or r.flags & MAPF_A) and r.view_a < 0) or \
                    (r.kind == MAP_ADDR and r.flags & MAPF_AAAA and r.view_aaaa < 0):
                raise ValueError(f"resource {i}: out of bounds")
        j = 0
        for i in range(n_rtab):
            if (<const uint32_t*>self.s.rtab)[i] > self.s.n_res:
                raise ValueError("resource table out of bounds")
            j += (<const uint32_t*>self.s.rtab)[i] != 0
        if j > self.s.n_res:
            raise ValueError("resource table has more entries than resources")
        for i in range(self.s.n_keys):
            kc = &self.s.keys[i]
            if kc.mode > KEY_ECS_ONLY or kc.max4 > 32 or kc.max6 > 128 or kc.n_trust > MAP_TRUST_MAX:
                raise ValueError(f"key configuration {i} out of range")
            for j in range(kc.n_trust):
                if kc.trust_fam[j] not in (4, 16) or kc.trust_len[j] > 8 * kc.trust_fam[j]:
                    raise ValueError(f"key configuration {i}: bad trusted prefix {j}")

    cdef void _check_answer(self, const map_ans_t* a) except *:
        cdef uint32_t i, off
        cdef const map_glue_t* g
        self._check_rrset(a.rs_off)
        if a.glue_count:
            if a.glue_off < 8 or a.glue_off + a.glue_count * sizeof(map_glue_t) > self.s.size:
                raise ValueError("glue out of bounds")
            g = <const map_glue_t*>(self.s.base + a.glue_off)
            for i in range(a.glue_count):
                if g[i].name_off < 8 or g[i].name_off >= self.s.size:
                    raise ValueError("glue name out of bounds")
                self._check_rrset(g[i].a_off)
                self._check_rrset(g[i].aaaa_off)

    cdef void _check_rrset(self, uint32_t off) except *:
        cdef const rrset_t* rs
        if off == 0:
            return
        if off < 8 or off + sizeof(rrset_t) > self.s.size:
            raise ValueError("rrset out of bounds")
        rs = <const rrset_t*>(self.s.base + off)
        if rs.count == 0 or rs.rdata_off < 8 or <uint64_t>rs.rdata_off + rs.rdata_len > self.s.size:
            raise ValueError("rrset data out of bounds")

    def __dealloc__(self):
        free(self.views)

    cdef const map_snap_t* ptr(self):
        return &self.s

    @property
    def n_resources(self):
        return self.s.n_res

    def lookup(self, int view, bytes key not None):
        """(answer index, scope) of a view for a 4-byte IPv4 or 16-byte IPv6 key (tests)."""
        cdef map_view_t* v
        cdef uint32_t i
        cdef uint64_t k
        if not 0 <= view < <int>self.s.n_views:
            raise IndexError(view)
        v = &self.views[view]
        if len(key) == 4:
            k = be32(<const uint8_t*>(<char*>key))
            i = map_find4(v, <uint32_t>k)
            return v.val4[i], map_scope4(v, i, <uint32_t>k)
        if len(key) == 16:
            k = be64(<const uint8_t*>(<char*>key))
            i = map_find6(v, k)
            return v.val6[i], map_scope6(v, i, k)
        raise ValueError("a 4- or 16-byte key")


def map_bench_lookup(MapSnapshot snap not None, int view, const uint32_t[::1] keys4 not None,
                     int repeat=10):
    """Nanoseconds per IPv4 lookup (find + scope) over `keys4`, in C.  For bench/ only."""
    cdef const map_view_t* v
    cdef Py_ssize_t i, n = keys4.shape[0]
    cdef int r
    cdef uint64_t acc = 0
    cdef uint32_t j
    cdef timespec t0, t1
    if not 0 <= view < <int>snap.s.n_views or n == 0:
        raise ValueError("bad view or no keys")
    v = &snap.s.views[view]
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for r in range(repeat):
            for i in range(n):
                j = map_find4(v, keys4[i])
                acc += v.val4[j] + map_scope4(v, j, keys4[i])
        clock_gettime(CLOCK_MONOTONIC, &t1)
    return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (<double>n * repeat), acc


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


cdef int mp_line(const uint8_t* p, Py_ssize_t n, uint64_t* start, uint8_t* plen, bint* v6,
                 Py_ssize_t* r0, Py_ssize_t* r1) noexcept nogil:
    """One map line (without its newline).  \\brief 0 = blank/comment, 1 = a prefix (start:
    IPv4 address or the top 64 bits of IPv6; the region token at [r0, r1)), -1 = anything else
    (the caller re-reads the line in Python for the exact message)."""
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
        if length > 64:
            return -1
        hi = be64(a)
        lo = be64(a + 8)
        if lo != 0 or (length < 64 and (hi & ~mask64(length))):
            return -1                            # host bits set
        start[0] = hi
    else:
        hi = be32(a)
        if (<uint32_t>hi) & (~mask32(length)):
            return -1
        start[0] = hi
    plen[0] = <uint8_t>length
    return 1


def map_parse(const uint8_t[::1] data not None):
    """Parse a whole map file in C.  Returns (v4, v6, regions, first_line) where v4/v6 are
    (start u64, length u8, region u16, line u32) as bytes, regions the region tokens (bytes) in
    order of first appearance and first_line their first line; or (line, None, None, None) for
    the first line the fast path does not accept (the caller re-reads it for the message)."""
    cdef Py_ssize_t n = data.shape[0], i = 0, e, nl = 1, n4 = 0, n6 = 0, cap, r0 = 0, r1 = 0
    cdef uint32_t line = 0, h, slot, j, nreg = 0, tmask = (1 << 17) - 1, bad = 0
    cdef const uint8_t* p = &data[0] if n else <const uint8_t*>b""
    cdef uint64_t start = 0
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
    cdef uint32_t* tab = <uint32_t*>calloc(tmask + 1, 4)          # region index + 1
    cdef Py_ssize_t* roff = <Py_ssize_t*>malloc(65536 * sizeof(Py_ssize_t))
    cdef uint32_t* rlen = <uint32_t*>malloc(65536 * 4)
    cdef uint32_t* rline = <uint32_t*>malloc(65536 * 4)
    try:
        if not (s4 and l4 and g4 and n4a and s6 and l6 and g6 and n6a and tab and roff and rlen and rline):
            raise MemoryError()
        with nogil:
            i = 0
            while i < n:
                e = i
                while e < n and p[e] != 10:
                    e += 1
                line += 1
                rc = mp_line(p + i, e - i, &start, &plen, &v6, &r0, &r1)
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
                 PyBytes_FromStringAndSize(<char*>g6, n6 * 2), PyBytes_FromStringAndSize(<char*>n6a, n6 * 4)),
                [PyBytes_FromStringAndSize(<const char*>(p + roff[j]), rlen[j]) for j in range(nreg)],
                [rline[j] for j in range(nreg)])
    finally:
        free(s4); free(l4); free(g4); free(n4a); free(s6); free(l6); free(g6); free(n6a)
        free(tab); free(roff); free(rlen); free(rline)
