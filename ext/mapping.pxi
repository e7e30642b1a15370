# Mapped answers: the client's network picks the answer (issue 10).  The client key is the ECS
# address masked to its SOURCE PREFIX-LENGTH (RFC 7871 §6, capped at the map's limits), else the
# query's source address; a binary search (indexed by the top 16 bits) over disjoint ranges
# gives the answer, and the range's bounds give the ECS SCOPE PREFIX-LENGTH: the shortest L
# whose aligned /L block around the key lies inside the run of ranges with this one final
# answer (the compiler merged adjacent ranges with equal answers, so that run is the range).
# Everything here runs without the GIL and allocates nothing; the snapshot is immutable.

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


cdef inline uint32_t map_get4(const map_view_t* v, uint32_t k, uint32_t* scope) noexcept nogil:
    """\\brief the answer for IPv4 key k; *scope its ECS scope."""
    cdef uint32_t i
    if v.dir4 != NULL:
        return map_dir4(v, k, scope)
    i = map_find4(v, k)
    scope[0] = map_scope4(v, i, k)
    return v.val4[i]


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


cdef uint32_t map_sub6(const map_view_t* v, uint32_t j, uint64_t k, uint32_t* scope) noexcept nogil:
    """A /64 that holds longer prefixes: the answer for the low 64 bits k in sub-table j, and
    the scope (64 + the shortest block inside the run; the sub-table is never uniform)."""
    cdef const uint64_t* lo = v.sub_lo + v.sub_off[j]
    cdef uint32_t n = v.sub_off[j + 1] - v.sub_off[j], a = 0, half, m = 0, c, len_ = n
    while n > 1:
        half = n >> 1
        if lo[a + half] <= k:
            a += half
        n -= half
    if lo[a] > 0:
        m = <uint32_t>__builtin_clzll(k ^ (lo[a] - 1))
    if a + 1 < len_:
        c = <uint32_t>__builtin_clzll(k ^ lo[a + 1])
        if c > m:
            m = c
    scope[0] = 64 + m + 1
    return v.sub_val[v.sub_off[j] + a]


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t be64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>be32(p) << 32) | be32(p + 4)


cdef inline uint32_t mask32(uint32_t bits) noexcept nogil:
    return 0 if bits == 0 else <uint32_t>((<uint64_t>0xFFFFFFFF) << (32 - bits))


cdef inline uint64_t mask64(uint32_t bits) noexcept nogil:
    return 0 if bits == 0 else (<uint64_t>0xFFFFFFFFFFFFFFFFULL) << (64 - bits)


cdef const uint8_t* V4MAPPED = b"\0\0\0\0\0\0\0\0\0\0\xff\xff"


cdef inline bint v4mapped(const uint8_t* a) noexcept nogil:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 §2.5.5.2): an IPv4 client seen
    through a dual-stack socket or written so in an ECS option."""
    return memcmp(a, V4MAPPED, 12) == 0


cdef bint map_trusted(const map_keycfg_t* kc, const uint8_t* client, uint32_t client_len) noexcept nogil:
    """Is the resolver (the query's source) one whose ECS this map uses?  No list: every one."""
    cdef uint32_t i, nb, rb
    cdef const uint8_t* net
    if kc.n_trust == 0:
        return True
    if client_len == 16 and v4mapped(client):
        client += 12
        client_len = 4
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


cdef int map_client_key(const ctx_t* c, const map_keycfg_t* kc, uint64_t* key, uint64_t* klo,
                        uint32_t* cap, uint32_t* base, uint8_t* how) noexcept nogil:
    """The client key of a query for one map.  \brief returns 4 or 6 (the key's family), or 0
    (no client address: the map's default region answers).  *cap: the longest scope that may be
    claimed (the source length when it was cut to the map's limit, else 255).  *base: what the
    key's scope adds up to in the option's own family (96 for an IPv4-mapped IPv6 ECS address,
    looked up as IPv4); 255 when no ECS was used.  *how: 1 + the stats_t.mapped index.
    *klo: an IPv6 key's low 64 bits (for the /64s that hold longer prefixes)."""
    cdef const query_t* q = c.q
    cdef uint32_t bits, src
    cap[0] = 255
    base[0] = 0
    # RFC 7871 §7.1.2: SOURCE PREFIX-LENGTH 0 asks that no client address be used; the answer
    # then goes by the resolver's own address and says scope 0.
    if q.ecs and q.ecs_source > 0 and kc.mode != KEY_SOURCE_ONLY:
        if map_trusted(kc, c.client, c.client_len):
            how[0] = 1
            src = q.ecs_source
            if q.ecs_family == 2 and src >= 96 and v4mapped(q.ecs_addr):
                # an IPv4 client written as IPv6: the IPv4 map answers it; scopes stay IPv6
                base[0] = 96
                src -= 96
            if q.ecs_family == 1 or base[0]:
                bits = src if src <= kc.max4 else kc.max4
                if src > kc.max4:
                    cap[0] = kc.max4
                key[0] = be32(q.ecs_addr + base[0] // 8) & mask32(bits)
                return 4
            bits = src if src <= kc.max6 else kc.max6
            if src > kc.max6:
                cap[0] = kc.max6
            key[0] = be64(q.ecs_addr) & mask64(bits if bits <= 64 else 64)
            klo[0] = be64(q.ecs_addr + 8) & mask64(bits - 64 if bits > 64 else 0)
            return 6
        how[0] = 4
    else:
        how[0] = 2
    base[0] = 255
    if kc.mode == KEY_ECS_ONLY:
        how[0] = 3
        return 0
    if c.client_len == 4:
        key[0] = be32(c.client)
        return 4
    if c.client_len == 16:
        if v4mapped(c.client):
            key[0] = be32(c.client + 12)
            return 4
        key[0] = be64(c.client)
        klo[0] = be64(c.client + 8)
        return 6
    how[0] = 3
    return 0


cdef uint32_t map_variant(const map_pick_t* p, int fam, uint64_t key, uint64_t klo,
                          uint32_t* scope) noexcept nogil:
    """The answer a sticky/weighted resource gives this client: the bucket of the client's
    block, that block being the aligned block the range's scope gives, at least /g4 (/g6), so
    every address in the block claimed as the scope gets this same answer (RFC 7871 §7.2.1).
    The buckets' answers were chosen at build time by rendezvous hashing; mix64 (rrl.pxi) is
    fixed, so every machine of the fleet puts a block in the same bucket."""
    cdef const uint16_t* table = <const uint16_t*>(<const uint8_t*>p + sizeof(map_pick_t))
    cdef uint32_t L = scope[0]
    cdef uint64_t kb = 0
    if fam == 4:
        if L < p.g4:
            L = p.g4
        kb = key & mask32(L)
    elif fam == 6:
        if L < p.g6:
            L = p.g6
        kb = key & mask64(L if L <= 64 else 64)
        if L > 64:
            kb ^= mix64(klo & mask64(L - 64))
    else:
        L = 0
    scope[0] = L
    return table[mix64(kb ^ (<uint64_t>(L | (<uint32_t>fam << 8)) << 48) ^ p.salt) &
                 ((<uint64_t>1 << p.bits) - 1)]


cdef const map_ans_t* map_pick(ctx_t* c, const map_res_t* r, int32_t vi) noexcept nogil:
    """The final answer of view vi for this query's client; raises the reply's ECS scope."""
    cdef const map_snap_t* m = c.maps
    cdef const map_view_t* v = &m.views[vi]
    cdef uint64_t key = 0, klo = 0
    cdef uint32_t cap, base, i, a, scope = 0
    cdef int fam = map_client_key(c, &m.keys[r.keycfg], &key, &klo, &cap, &base, &c.mapkey)
    if fam == 4:
        a = map_get4(v, <uint32_t>key, &scope)
    elif fam == 6:
        i = map_find6(v, key)
        a = v.val6[i]
        if a & SUB6:
            a = map_sub6(v, a & ~SUB6, klo, &scope)
        else:
            scope = map_scope6(v, i, key)
    else:
        a = v.dflt
    if v.ans[a].flags & ANS_PICK:
        a = map_variant(<const map_pick_t*>(m.base + v.ans[a].glue_off), fam, key, klo, &scope)
    if base != 255:
        if scope > cap:
            scope = cap
        scope += base
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
                       const uint8_t* owner_name, const node_t* cut) noexcept nogil:
    """A mapped delegation (the toplevel role): the NS set and glue chosen for this client, in
    authority and additional, AA clear (RFC 1034 §4.3.2 step 3b).  cut: the signed zone's own
    node for the delegation (DO=1), whose DS or NSEC/NSEC3 no-DS proof goes with the NS set
    (RFC 4035 §3.1.4)."""
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
    if cut != NULL:
        dnssec_referral(c, cut)
        if c.proof.n:
            dnssec_flush(c)         # the proof in authority now: the glue follows in additional
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


cdef int map_w_answer(ctx_t* c, const zone_t* z, uint32_t owner_ptr, const uint8_t* name,
                      const rrset_t* rs, uint32_t* pos) noexcept nogil:
    """A mapped answer RRset and, with DO=1 in a signed zone, the RRSIG made for it when the
    snapshot was built (pop53.dnssec.online; rrset_t.add_off), both or neither (RFC 4035
    §3.1.1).  Nothing is signed here.  \brief 0, or -1 (rolled back)."""
    cdef const uint8_t* base = c.maps.base
    cdef wmark_t mk = w_mark(&c.w)
    cdef uint32_t own = owner_ptr
    cdef const rrset_t* sig
    if w_rrset(&c.w, 0, owner_ptr, name, base, rs, rs.ttl, pos) != 0:
        return -1
    if not c.dnssec or rs.add_off == 0 or not (z.flags & Z_SIGNED):
        return 0
    sig = <const rrset_t*>(base + rs.add_off)
    if own == 0:
        if (c.w.buf[mk.pos] & 0xC0) == 0xC0:
            own = ((<uint32_t>(c.w.buf[mk.pos] & 0x3F)) << 8) | c.w.buf[mk.pos + 1]
        elif mk.pos < 0x3FFF:
            own = mk.pos
    if w_rrset(&c.w, 0, own, name, base, sig, rs.ttl, NULL) != 0:
        w_rollback(&c.w, mk)
        return -1
    return 0


cdef int map_rrsig(ctx_t* c, const zone_t* z, const map_res_t* r, const uint8_t* name,
                   uint32_t nlen, uint32_t h, uint32_t owner_ptr) noexcept nogil:
    """QTYPE=RRSIG at a mapped name of a zone signed online (docs/dnssec-online.md): the
    signatures of one RRset, as Knot 3.2 and pop53 answer RRSIG at a static name (the first
    RRset's; RFC 8482 §4.1 style), the RRset being the mapped answer this client gets (its A,
    else its AAAA; its CNAME), signed online.  The zone's placeholder RRsets of the mapped types
    are never served, so neither are their signatures; a client with no mapped answer gets the
    signatures of the name's first other static RRset, else NODATA.  \\brief 1: answered,
    0: the zone answers (a zone not signed online)."""
    cdef const map_ans_t* a = NULL
    cdef const rrset_t* rs
    cdef const rrset_t* all_rs
    cdef const node_t* node
    cdef uint32_t i, k
    cdef uint16_t skip[2]
    if not (z.flags & Z_SIGNED):
        return 0
    for k in range(2):
        if r.kind == MAP_CNAME and k == 1:
            break
        if r.kind != MAP_CNAME and not (r.flags & (MAPF_A if k == 0 else MAPF_AAAA)):
            continue
        a = map_pick(c, r, r.view_a if k == 0 else r.view_aaaa)
        if a.flags & ANS_SERVFAIL:
            c.rcode = RC_SERVFAIL
            return 1
        if a.rs_off != 0:
            break
        a = NULL
    if a != NULL:
        rs = <const rrset_t*>(c.maps.base + a.rs_off)
        if rs.add_off == 0:
            return 0            # not signed online (a zone signed without dnssec_keys)
        if w_rrset(&c.w, 0, owner_ptr, name, c.maps.base,
                   <const rrset_t*>(c.maps.base + rs.add_off), rs.ttl, NULL) != 0:
            c.w.tc = True
        return 1
    # no mapped answer for this client: the name's other static RRsets' signatures
    skip[0] = T_CNAME if r.kind == MAP_CNAME else (T_A if r.flags & MAPF_A else 0)
    skip[1] = 0 if r.kind == MAP_CNAME else (T_AAAA if r.flags & MAPF_AAAA else 0)
    node = zone_find(c.img, z, name, nlen, h)
    if node != NULL:
        all_rs = node_rrsets(c.img, node)
        for i in range(node.n_rrsets):
            if all_rs[i].type == T_RRSIG and all_rs[i].aux != skip[0] and all_rs[i].aux != skip[1]:
                if w_rrset(&c.w, 0, owner_ptr, name, c.img.base, &all_rs[i], all_rs[i].ttl,
                           NULL) != 0:
                    c.w.tc = True
                return 1
    add_soa(c, z)
    if node != NULL:
        dnssec_nodata(c, z, node)
    return 1


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
    cdef const node_t* node
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
        # DO=1: the zone's own node for the cut (a signed zone holds the mapped delegation as a
        # static one, docs/dnssec-online.md), whose DS or no-DS proof the referral carries
        node = NULL
        if c.dnssec or (k == 0 and qtype == T_DS):
            node = zone_find(c.img, z, name + loff[k], nlen - loff[k], sh[k])
        if k == 0 and qtype == T_DS:
            if node != NULL:
                return 0        # the zone's own delegation answers: its DS, or NODATA + proof
            add_soa(c, z)       # the parent side of an unsigned delegation: NODATA
            return 1
        a = map_pick(c, r, r.view_a)
        if a.flags & ANS_SERVFAIL or a.rs_off == 0:
            c.rcode = RC_SERVFAIL
            return 1
        map_referral(c, a, suffix_ptr(c.w.buf, owner_ptr, k), m.base + r.name_off, node)
        return 1
    if qtype == T_RRSIG:
        k = map_rrsig(c, z, r, name, nlen, sh[0], owner_ptr)
        if k != 0:
            return 1
        if zone_find(c.img, z, name, nlen, sh[0]) != NULL:
            return 0
        add_soa(c, z)
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
        node = zone_find(c.img, z, name, nlen, sh[0])
        if node != NULL:
            dnssec_nodata(c, z, node)   # the name's NSEC/NSEC3 (a signed zone holding it)
        return 1
    rs = <const rrset_t*>(m.base + a.rs_off)
    if map_w_answer(c, z, owner_ptr, name, rs, &pos) != 0:
        c.w.tc = True
        return 1
    if r.kind == MAP_CNAME and qtype != T_CNAME and qtype != T_ANY:
        # RFC 1034 §4.3.2 step 3a; the resource stands in for a node in the loop check
        follow(c, <const node_t*>r, m.base + rs.rdata_off + 2, pos)
    return 1
