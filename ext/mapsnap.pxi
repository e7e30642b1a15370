# The mapping snapshot as the Python side builds it (pop53/mapping/snapshot.py): one immutable
# object holding its buffers, every offset, index and count checked before a worker may read
# it (mapping.pxi trusts it), plus the lookup tools for tests and bench/.
MAP_SIZEOF = {"res": sizeof(map_res_t), "ans": sizeof(map_ans_t), "glue": sizeof(map_glue_t),
              "keycfg": sizeof(map_keycfg_t), "pick": sizeof(map_pick_t)}
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


cdef enum:
    # map_prefetch's pass over a batch costs about 50 ns a query (a profile at 1k prefixes: more
    # than the lookup it helps); it pays only when a view's IPv4 tables are larger than this
    # core's L2 cache (512 KiB on the EPYC measured), where each step would miss to L3 or memory
    PF_MIN_BYTES = 1 << 20


cdef bint _pf_worth(const map_view_t* v, object idx) noexcept:
    """Does map_prefetch help this view (maptable.pxi)?  Only a large indexed IPv4 table."""
    if v.dir4 != NULL:
        return (<MapDir4>idx).nbytes >= PF_MIN_BYTES
    if v.idx4 == NULL:
        return False
    return <uint64_t>v.n4 * 6 + (((<uint64_t>1) << (32 - v.shift4)) + 1) * 4 >= PF_MIN_BYTES


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
        ans_off, n_ans, dflt[, (sub_lo u64, sub_val u16, sub_off u32) or None]) per view; an
        index has 2**B + 1 entries (B <= 20).  Every
        offset and index is checked here, so a worker can trust the snapshot."""
        cdef Py_ssize_t nv = len(views), i, j
        cdef const uint32_t[::1] lo4
        cdef const uint16_t[::1] val4
        cdef const uint32_t[::1] idx4
        cdef const uint64_t[::1] lo6
        cdef const uint16_t[::1] val6
        cdef const uint32_t[::1] idx6
        cdef const uint64_t[::1] sub_lo
        cdef const uint16_t[::1] sub_val
        cdef const uint32_t[::1] sub_off
        cdef uint32_t k, a, b
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
            lo6, val6 = t[3], t[4]
            if isinstance(t[2], MapDir4):
                # a large IPv4 table: the direct index replaces the ranges (maptable.pxi)
                (<MapDir4>t[2]).attach(v)
            else:
                lo4, val4 = t[0], t[1]
                if lo4.shape[0] < 1 or lo4.shape[0] != val4.shape[0] or lo4[0] != 0:
                    raise ValueError(f"view {i}: ranges must start at 0 with one value each")
                v.lo4, v.val4, v.n4 = &lo4[0], &val4[0], lo4.shape[0]
            if lo6.shape[0] < 1 or lo6.shape[0] != val6.shape[0] or lo6[0] != 0:
                raise ValueError(f"view {i}: ranges must start at 0 with one value each")
            v.lo6, v.val6, v.n6 = &lo6[0], &val6[0], lo6.shape[0]
            if t[2] is not None and v.dir4 == NULL:
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
            if _pf_worth(v, t[2]):
                self.s.n_pf += 1
            if v.dir4 != NULL and (<MapDir4>t[2]).max_val >= n_ans:
                raise ValueError(f"view {i}: IPv4 values out of bounds")
            for j in range(v.n4):
                if v.val4[j] >= n_ans or (j and v.lo4[j] <= v.lo4[j - 1]):
                    raise ValueError(f"view {i}: IPv4 ranges unsorted or values out of bounds")
            if len(t) > 9 and t[9] is not None:
                sub_lo, sub_val, sub_off = t[9]
                v.n_sub = sub_off.shape[0] - 1
                if v.n_sub < 1 or v.n_sub >= SUB6 or sub_off[0] != 0 or \
                        sub_off[v.n_sub] != sub_lo.shape[0] or sub_lo.shape[0] != sub_val.shape[0]:
                    raise ValueError(f"view {i}: bad IPv6 sub-tables")
                v.sub_lo, v.sub_val, v.sub_off = &sub_lo[0], &sub_val[0], &sub_off[0]
                for k in range(v.n_sub):
                    a, b = sub_off[k], sub_off[k + 1]
                    if b < a + 2 or b > sub_lo.shape[0] or sub_lo[a] != 0:
                        raise ValueError(f"view {i}: bad IPv6 sub-table {k}")
                    for j in range(a, b):
                        if sub_val[j] >= n_ans or (j > a and sub_lo[j] <= sub_lo[j - 1]):
                            raise ValueError(f"view {i}: IPv6 sub-table {k} unsorted or out of bounds")
            for j in range(v.n6):
                if (v.val6[j] & SUB6 and (v.val6[j] & ~SUB6) >= v.n_sub) or \
                        (not v.val6[j] & SUB6 and v.val6[j] >= n_ans) or \
                        (j and v.lo6[j] <= v.lo6[j - 1]):
                    raise ValueError(f"view {i}: IPv6 ranges unsorted or values out of bounds")
            for j in range(n_ans):
                self._check_answer(&v.ans[j])
                if v.ans[j].flags & ANS_PICK:
                    self._check_pick(v, &v.ans[j])
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

    cdef void _check_pick(self, const map_view_t* v, const map_ans_t* a) except *:
        """A sticky/weighted head: its bucket table in bounds, every bucket naming a plain
        answer of the same view (no chains of picks)."""
        cdef const map_pick_t* p
        cdef const uint16_t* table
        cdef uint32_t i
        if a.rs_off or a.glue_count or a.glue_off < 8 or \
                a.glue_off + sizeof(map_pick_t) > self.s.size:
            raise ValueError("pick out of bounds")
        p = <const map_pick_t*>(self.s.base + a.glue_off)
        if p.bits > PICK_BITS_MAX or p.g4 > 32 or p.g6 > 64 or \
                a.glue_off + sizeof(map_pick_t) + 2 * (<uint64_t>1 << p.bits) > self.s.size:
            raise ValueError("pick table out of bounds")
        table = <const uint16_t*>(self.s.base + a.glue_off + sizeof(map_pick_t))
        for i in range(1u << p.bits):
            if table[i] >= v.n_ans or v.ans[table[i]].flags & ANS_PICK:
                raise ValueError("pick table names a bad answer")

    cdef void _check_rrset(self, uint32_t off, bint sig=False) except *:
        cdef const rrset_t* rs
        if off == 0:
            return
        if off < 8 or off + sizeof(rrset_t) > self.s.size:
            raise ValueError("rrset out of bounds")
        rs = <const rrset_t*>(self.s.base + off)
        if rs.count == 0 or rs.rdata_off < 8 or <uint64_t>rs.rdata_off + rs.rdata_len > self.s.size:
            raise ValueError("rrset data out of bounds")
        if rs.add_count != 0 or (sig and (rs.type != T_RRSIG or rs.add_off != 0)):
            raise ValueError("bad answer signature")
        if rs.add_off:
            # an answer signed online (pop53.dnssec.online): add_off is its RRSIG rrset_t
            if sig:
                raise ValueError("bad answer signature")
            self._check_rrset(rs.add_off, True)

    def __dealloc__(self):
        free(self.views)

    cdef const map_snap_t* ptr(self):
        return &self.s

    @property
    def n_resources(self):
        return self.s.n_res

    @property
    def prefetch_views(self):
        """Views whose IPv4 tables are large enough for the worker's batch prefetch."""
        return self.s.n_pf

    def lookup(self, int view, bytes key not None):
        """(answer index, scope) of a view for a 4-byte IPv4 or 16-byte IPv6 key (tests)."""
        cdef map_view_t* v
        cdef uint32_t i, scope
        cdef uint64_t k
        if not 0 <= view < <int>self.s.n_views:
            raise IndexError(view)
        v = &self.views[view]
        if len(key) == 4:
            i = map_get4(v, be32(<const uint8_t*>(<char*>key)), &scope)
            return i, scope
        if len(key) == 16:
            k = be64(<const uint8_t*>(<char*>key))
            i = map_find6(v, k)
            if v.val6[i] & SUB6:
                scope = 0
                i = map_sub6(v, v.val6[i] & ~SUB6, be64(<const uint8_t*>(<char*>key) + 8), &scope)
                return i, scope
            return v.val6[i], map_scope6(v, i, k)
        raise ValueError("a 4- or 16-byte key")


def map_bench_lookup(MapSnapshot snap not None, int view, const uint32_t[::1] keys4 not None,
                     int repeat=10):
    """Nanoseconds per IPv4 lookup (find + scope) over `keys4`, in C.  For bench/ only."""
    cdef const map_view_t* v
    cdef Py_ssize_t i, n = keys4.shape[0]
    cdef int r
    cdef uint64_t acc = 0
    cdef uint32_t j, scope
    cdef timespec t0, t1
    if not 0 <= view < <int>snap.s.n_views or n == 0:
        raise ValueError("bad view or no keys")
    v = &snap.s.views[view]
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for r in range(repeat):
            for i in range(n):
                j = map_get4(v, keys4[i], &scope)
                acc += j + scope
        clock_gettime(CLOCK_MONOTONIC, &t1)
    return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (<double>n * repeat), acc


def map_prefetch_hint(MapSnapshot snap not None, const uint8_t[::1] wire not None):
    """(view index, key) map_prefetch would take a head start on for this query (key 1 << 32:
    the source address), or None.  For tests: any bytes, never read beyond them."""
    cdef uint64_t key = 0
    cdef const map_view_t* v
    cdef uint8_t* copy = <uint8_t*>malloc(wire.shape[0] if wire.shape[0] else 1)
    if copy == NULL:
        raise MemoryError()
    try:
        if wire.shape[0]:
            memcpy(copy, &wire[0], wire.shape[0])      # exactly sized: a checker sees overreads
        v = mpf_view(&snap.s, copy, <uint32_t>wire.shape[0], &key)
        return None if v == NULL else (<int>(v - snap.s.views), key)
    finally:
        free(copy)
