# Query scoring and prioritized processing (issue 13): the admission stage BEFORE the lookup.
# Response rate limiting (rrl.pxi) acts after the answer is made, so under a flood the worker
# still spends its whole budget receiving and answering attack queries, and known resolvers'
# queries wait in (or fall off) the socket queue.  Here each received query is put in a class
# from a few small filters, with no lookup and no parse:
#
#   SC_TOP     the source's /24 (IPv4) or /56 (IPv6) is a known resolver (the known table),
#              unless the address is demoted or, in a prefix over `known_rate` (spoofed known
#              sources), not trusted (per address: scoring_trust.pxi); or, when
#              the query is about to be dropped, it carries a valid server cookie of ours
#              (RFC 7873/9018: the address is proven, so it cannot be spoofed)
#   SC_FLOOD   the source prefix is over `source_rate` in this window (a count-min sketch)
#   SC_ODD     header oddities a resolver talking to an authority does not produce: QR, TC or
#              Z set, opcode other than QUERY/NOTIFY, QDCOUNT != 1, answers in a query, more
#              than 2 additional records, and RD=1 (resolvers send RD=0 to authorities)
#   SC_NORMAL  anything else
#
# The overload controller that sets the classes' shares: scoring_ctl.pxi.
#
# Everything here is per worker (the sketch and controller live in the worker, its counters too)
# except the known table, which the control plane publishes like an image: one atomic pointer,
# loaded once per batch, the old table freed after every worker passed a batch boundary.  With
# SO_REUSEPORT a source's queries spread over the workers, so a per-worker sketch sees about
# 1/workers of a source's rate: `source_rate` is per worker.

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "p53_score.h" nogil:
    int p53_sock_drops(int fd, uint32_t* out)
    int p53_sock_fill(int fd, uint32_t* drops, uint32_t* queued, uint32_t* room)
    uint64_t p53_rx_stamp_ns(const void* m)
    uint64_t p53_sock_stamp_ns(int fd)
    uint64_t p53_real_ns()
    uint64_t p53_mono_ns()

cdef enum:
    SC_NONE_YET = 0xFFFFFFFF  # qd_min's "no delay seen in this tick" (compared as uint64)


cdef extern from *:
    """
    #define p53_prefetch(p) __builtin_prefetch((p), 0, 0)
    static inline uint64_t p53_be56(const uint8_t* p) {
        uint64_t v; __builtin_memcpy(&v, p, 8); return __builtin_bswap64(v) >> 8;
    }
    #define SC_V6_MUL 0x9E3779B97F4A7C15ULL
    """
    void p53_prefetch(const void* p) nogil
    uint64_t p53_be56(const uint8_t* p) nogil
    const uint64_t SC_V6_MUL


cdef void sc_prefetch(const known_t* kn, const uint8_t* sa, size_t stride, int n) noexcept nogil:
    """Ask for the known-table lines of a whole batch's sources before scoring the first (a
    flood's sources are scattered over the 2 MiB bitmap: a cache (and TLB) miss each, which
    overlap when issued together)."""
    cdef const uint8_t* a
    cdef uint32_t alen
    cdef int i
    if kn == NULL:
        return
    for i in range(n):
        a = client_addr(sa + i * stride, &alen)
        if alen == 4 and kn.v4 != NULL:
            p53_prefetch(kn.v4 + (((<uint32_t>a[0] << 16) | (<uint32_t>a[1] << 8) | a[2]) >> 3))
        elif alen == 16 and kn.v6f != NULL:
            p53_prefetch(kn.v6f + ((sc_v6_key(a) * SC_V6_MUL) >> kn.v6f_shift))


cdef inline uint64_t sc_now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint64_t sc_v6_key(const uint8_t* a) noexcept nogil:
    """The /56 of an IPv6 address as an integer (its first 7 bytes, big-endian): one 8-byte load
    and a byte swap (the address has 16 bytes)."""
    return p53_be56(a)


cdef inline bint sc_v6_filter(const known_t* kn, uint64_t key) noexcept nogil:
    """Whether a /56 key passes the filter: a blocked Bloom filter of two bits in one 64-bit word
    (one cache line read, which the batch prefetched), from one multiply (Fibonacci hashing): the
    word from the product's top bits, the bits from bits 32..37 and 38..43 (each product bit
    depends on every key bit below it).  At 128 bits a key, about 0.1% of unknown /56s pass
    (a single bit: 0.8%; each costs an exact-table probe the batch did not prefetch); known /56s
    always pass."""
    cdef uint64_t h = key * SC_V6_MUL
    cdef uint64_t w = kn.v6f[h >> kn.v6f_shift]
    return (w >> ((h >> 32) & 63)) & (w >> ((h >> 38) & 63)) & 1


cdef inline bint sc_known(const known_t* kn, const uint8_t* a, uint32_t alen) noexcept nogil:
    """Whether the client's /24 or /56 is in the known table: one bit of a 2 MiB bitmap for
    IPv4; for IPv6 one word of the filter (the batch prefetched it), and only when it passes
    (every known /56, and about 0.1% of the others) one or two probes of the exact table."""
    cdef uint64_t key, i, slot
    cdef uint32_t idx
    if kn == NULL:
        return False
    if alen == 4:
        idx = (<uint32_t>a[0] << 16) | (<uint32_t>a[1] << 8) | a[2]
        return kn.v4 != NULL and (kn.v4[idx >> 3] >> (idx & 7)) & 1
    if alen != 16 or kn.v6f == NULL:
        return False
    key = sc_v6_key(a)
    if not sc_v6_filter(kn, key):
        return False
    key |= SC_V6_TAG
    i = mix64(key) & kn.v6_mask
    while True:
        slot = kn.v6[i]
        if slot == key:
            return True
        if slot == 0:
            return False
        i = (i + 1) & kn.v6_mask


def known_v6_slot(uint64_t key, uint64_t mask):
    """The first slot of a /56 key (an integer < 2**56) in a known table of mask + 1 slots, and
    the value stored for it (for pop53.scoring.known, which builds the table)."""
    cdef uint64_t k = (key & ((<uint64_t>1 << 56) - 1)) | SC_V6_TAG
    return mix64(k) & mask, k


cdef inline uint64_t sc_prefix_hash(const uint8_t* a, uint32_t alen) noexcept nogil:
    """The sketch key of the client's /24 or /56 (before mix64)."""
    if alen == 4:
        return (<uint64_t>4 << 56) | (<uint64_t>a[0] << 16) | (<uint64_t>a[1] << 8) | a[2]
    if alen == 16:
        return (<uint64_t>6 << 56) | sc_v6_key(a)
    return 0


cdef uint32_t sc_count(sc_state_t* s, const uint8_t* a, uint32_t alen) noexcept nogil:
    """Count one query for the client's prefix in the count-min sketch; returns the estimate
    (the smaller of the two rows, saturating at 65535)."""
    cdef uint64_t h = mix64(sc_prefix_hash(a, alen))
    cdef uint32_t i0, i1, c0, c1
    i0 = <uint32_t>(h & (SC_COLS - 1))
    i1 = <uint32_t>((h >> 32) & (SC_COLS - 1))
    c0 = s.sketch[0][i0]
    c1 = s.sketch[1][i1]
    if c0 < 65535:
        c0 += 1
        s.sketch[0][i0] = <uint16_t>c0
    if c1 < 65535:
        c1 += 1
        s.sketch[1][i1] = <uint16_t>c1
    return c0 if c0 < c1 else c1


cdef bint sc_odd(const sc_cfg_t* cfg, const uint8_t* p, uint32_t n) noexcept nogil:
    """Header oddities (see the top of this file); a packet shorter than a header is odd."""
    cdef uint8_t opcode
    if n < 12:
        return True
    opcode = (p[2] >> 3) & 0x0F
    if p[2] & 0x82 or p[3] & 0x40:              # QR, TC; Z
        return True
    if opcode != OP_QUERY and opcode != OP_NOTIFY:
        return True
    if cfg.rd_odd and p[2] & 0x01:
        return True
    return (p[4] != 0 or p[5] != 1 or (opcode == OP_QUERY and (p[6] | p[7]) != 0)
            or p[10] != 0 or p[11] > 2)


cdef int sc_score(const sc_cfg_t* cfg, const known_t* kn, sc_state_t* s, const uint8_t* p,
                  uint32_t n, const uint8_t* a, uint32_t alen) noexcept nogil:
    """The query's class (SC_*), counting it in the sketch."""
    cdef uint32_t count = sc_count(s, a, alen)
    s.last_known = False
    s.last_fresh = False
    if sc_known(kn, a, alen):
        return sc_known_class(cfg, s, count, a, alen, p, n)
    if count > cfg.source_rate:
        return SC_FLOOD
    if sc_odd(cfg, p, n):
        return SC_ODD
    return SC_NORMAL


cdef bint sc_cookie_lifts(const rcfg_t* rcfg, const uint8_t* p, uint32_t n, const uint8_t* a,
                          uint32_t alen) noexcept nogil:
    """A valid server cookie of ours in the query (parsed only here, on the way to a drop, and
    only when the header announces an additional record)."""
    cdef query_t q
    if not rcfg.cookies or n < 12 or (p[10] == 0 and p[11] == 0) or alen == 0:
        return False
    q.qend = 0
    q.edns = q.nsid = q.ecs = q.tsig = q.cookie_ok = False
    q.cookie_len = 0
    q.ctl = 0
    q.qtype = 0
    if wire_parse_query(p, n, &q, rcfg.lenient_trailing) != PARSE_OK or q.cookie_len != 24:
        return False
    return cookie_valid(rcfg, q.cookie, q.cookie_len, a, alen, wall_seconds())


cdef extern from *:
    """#define p53_or_u8(p, v) __atomic_fetch_or((p), (v), __ATOMIC_RELAXED)"""
    void p53_or_u8(uint8_t* p, uint8_t v) nogil


cdef void sc_mark_seen(seen_t* sn, const uint8_t* a, uint32_t alen) noexcept nogil:
    """Remember the source's /24 or /56 in this window's seen set (shared by the workers: an
    atomic OR, only when the bit is not set yet; a full IPv6 neighbourhood forgets the key)."""
    cdef uint32_t idx
    cdef uint64_t key, i, slot
    cdef int probes
    if alen == 4:
        idx = (<uint32_t>a[0] << 16) | (<uint32_t>a[1] << 8) | a[2]
        if not sn.v4[idx >> 3] & (1 << (idx & 7)):
            p53_or_u8(&sn.v4[idx >> 3], <uint8_t>(1 << (idx & 7)))
        return
    if alen != 16:
        return
    key = sc_v6_key(a) | SC_V6_TAG
    i = mix64(key) & (SC_SEEN6 - 1)
    for probes in range(8):
        slot = p53_load_u64(&sn.v6[i])
        if slot == key:
            return
        if slot == 0:
            p53_store_u64(&sn.v6[i], key)    # a racing worker may overwrite: one lost mark
            return
        i = (i + 1) & (SC_SEEN6 - 1)


cdef int sc_admit(const sc_cfg_t* cfg, const known_t* kn, sc_state_t* s, const rcfg_t* rcfg,
                  const uint8_t* p, uint32_t n, const uint8_t* a, uint32_t alen) noexcept nogil:
    """Score one query and decide: its class (SC_*) = go on to the answer, -1 = drop it
    unanswered."""
    cdef int c = sc_score(cfg, kn, s, p, n, a, alen)
    cdef uint32_t share = s.allow[c]
    if s.purge and c != SC_TOP:
        # from the priority socket after it overflowed or filled with never-seen relays:
        # queued there before the kernel stage stopped steering untrusted addresses to it
        # (sc_prio_full, sc_prio_fresh), not answered ahead of the known resolvers' queries
        share = 0
    if share < SC_ONE:
        s.acc[c] += share
        if s.acc[c] >= SC_ONE:
            s.acc[c] -= SC_ONE
        elif sc_cookie_lifts(rcfg, p, n, a, alen):
            s.lifted += 1
            sc_trust_proven(cfg, s, a, alen)
            c = SC_TOP
        else:
            s.dropped[c] += 1
            if s.purge:
                s.purged += 1
            return -1
    s.admitted[c] += 1
    # learning: a source answered while nothing is cut (frozen under overload), not flooding
    if s.seen != NULL and c <= SC_NORMAL and s.allow[SC_FLOOD] == SC_ONE:
        sc_mark_seen(s.seen, a, alen)
    return c


cdef uint32_t sc_zone_nx(sc_state_t* s, const query_t* q, const uint8_t* r, uint32_t rlen,
                         uint64_t* zh, uint32_t* zlen) noexcept nogil:
    """Count an NXDOMAIN answer for its zone; returns the zone's count in this window (0 when
    the reply is not a plain NXDOMAIN), its apex hash in *zh and the apex's wire length in
    *zlen (0 for an owner that is not a suffix of the question).  The zone is the owner of the
    authority section's SOA (RFC 2308 §2.1), which our writer compresses to a pointer into the
    question: the apex is that suffix of the (lowercased) query name.  No lookup, a few byte
    reads."""
    cdef uint32_t pos = q.qend, off, i
    cdef uint64_t h
    cdef uint32_t slot, cnt
    zlen[0] = 0
    if rlen < 12 or (r[3] & 0x0F) != RC_NXDOMAIN or r[6] != 0 or r[7] != 0 or \
            (r[8] == 0 and r[9] == 0) or pos < 12 or pos + 2 > rlen:
        return 0
    if r[pos] & 0xC0 == 0xC0:
        off = ((<uint32_t>(r[pos] & 0x3F) << 8) | r[pos + 1]) - 12
        if off >= q.qname_len:
            return 0
        h = sc_name_hash(q.qname + off, q.qname_len - off, False)   # lowercased already
        zlen[0] = q.qname_len - off
    else:
        # an uncompressed owner (the root zone): hash the reply's bytes up to its end
        i = pos
        while i < rlen and i < pos + 255 and r[i] != 0:
            i += 1
        h = sc_name_hash(r + pos, i - pos, True)
    zh[0] = h
    slot = <uint32_t>(mix64(h) & (SC_NX_SLOTS - 1))
    cnt = s.nx[slot]
    if cnt < 65535:
        cnt += 1
        s.nx[slot] = <uint16_t>cnt
    return cnt


cdef inline uint64_t sc_name_hash(const uint8_t* name, uint32_t n, bint fold) noexcept nogil:
    """FNV-1a over a wire name's bytes, lowercased when `fold` (label lengths are < 64, below
    'A'); a name parsed into query_t.qname is lowercase already."""
    cdef uint64_t h = 14695981039346656037u
    cdef uint32_t i
    cdef uint8_t b
    for i in range(n):
        b = name[i]
        if fold and 65 <= b <= 90:
            b += 32
        h = (h ^ b) * 1099511628211u
    return h


cdef void sc_nx_zone_add(sc_state_t* s, uint64_t h, uint32_t zlen) noexcept nogil:
    """A zone went over nx_rate in this window: list it for sc_nx_zone_hit until the end of the
    next window (SC_NXZ zones at most; one listed in the last window only makes room)."""
    cdef uint32_t j
    if zlen == 0 or zlen > 255:
        return
    for j in range(s.nxz_n):
        if s.nxz_hash[j] == h and s.nxz_len[j] == zlen:
            s.nxz_now[j] = 1
            return
    for j in range(SC_NXZ):
        if j == s.nxz_n or not s.nxz_now[j]:
            s.nxz_hash[j] = h
            s.nxz_len[j] = <uint16_t>zlen
            s.nxz_now[j] = 1
            if j == s.nxz_n:
                s.nxz_n += 1
            return


cdef void sc_nx_zone_roll(sc_state_t* s) noexcept nogil:
    """A new window: keep the zones that went over nx_rate in the last one (an attack goes on
    listed, not answered top again for nx_rate NXDOMAINs a window), drop the others."""
    cdef uint32_t j, k = 0
    for j in range(s.nxz_n):
        if s.nxz_now[j]:
            s.nxz_hash[k] = s.nxz_hash[j]
            s.nxz_len[k] = s.nxz_len[j]
            s.nxz_now[k] = 0
            k += 1
    s.nxz_n = k


cdef uint32_t sc_qname_end(const uint8_t* p, uint32_t n) noexcept nogil:
    """The end of the question's name (past its root label) when it is a plain name within the
    packet and 255 bytes (no pointers in a question), else 0."""
    cdef uint32_t pos = 12
    while True:
        if pos >= n or pos - 12 >= 255:
            return 0
        if p[pos] == 0:
            return pos + 1
        if p[pos] > 63:
            return 0
        pos += 1 + p[pos]


cdef int sc_nx_zone_hit(const sc_state_t* s, const uint8_t* p, uint32_t n) noexcept nogil:
    """Before the lookup: the listed zone under NXDOMAIN pressure the query's name is in (one
    of its suffixes hashes to a listed apex of the same length), or -1.  Walks the question's
    labels once; only hashes the suffixes whose length matches a listed zone.  A name that does
    not parse is no hit (the lookup answers it as for anyone)."""
    cdef uint32_t pos = 12, end, j, L
    if s.nxz_n == 0:
        return -1
    end = sc_qname_end(p, n)
    if end == 0:
        return -1
    while pos < end:
        L = end - pos
        for j in range(s.nxz_n):
            if s.nxz_len[j] == L and s.nxz_hash[j] == sc_name_hash(p + pos, L, True):
                return <int>j
        pos += 1 + p[pos]
    return -1


cdef bint sc_nx_drop(const sc_cfg_t* cfg, sc_state_t* s, int c, const query_t* q,
                     const uint8_t* a, uint32_t alen, const uint8_t* r,
                     uint32_t rlen) noexcept nogil:
    """The second check, after the answer: drop an NXDOMAIN for a zone under pressure (over
    `nx_rate` NXDOMAINs in this window: random subdomains) while the controller cuts the
    query's class (or, for a known resolver, its NXDOMAIN share: water torture they relay).
    Saves the send; the class's worst queries were already cut before the lookup."""
    cdef uint64_t zh = 0
    cdef uint32_t share, zlen, zn = sc_zone_nx(s, q, r, rlen, &zh, &zlen)
    if zn and s.last_known:
        # a known source's NXDOMAINs, read before its next query's lookup (sc_known_class)
        sc_addr_count(s.nxsrc, sc_addr_key(a, alen), True)
        if s.last_fresh:
            sc_prio_fresh(s)        # relayed through never-seen addresses? (scoring_ctl.pxi)
    if zn <= cfg.nx_rate:
        return False
    if zn == cfg.nx_rate + 1:
        sc_nx_zone_add(s, zh, zlen)
    share = s.nx_allow if c == SC_TOP else s.allow[c]
    if share >= SC_ONE:
        return False
    s.nx_acc += share
    if s.nx_acc >= SC_ONE:
        s.nx_acc -= SC_ONE
        return False
    s.nx_dropped[c] += 1
    return True


# the trust map's layout, which the kernel stage's program must index the same way (scoring/ebpf.py):
# (address words, all words, address shift, prefix shift, golden multiplier, cookie bits' word,
# the overflow deadline's word, the relay bits' word)
TRUST_LAYOUT = (SC_TRUST_WORDS, SC_ALL_WORDS, SC_TRUST_SHIFT, SC_STRICT_SHIFT, 0x9E3779B1,
                SC_COOKIE_BASE, SC_OVERFLOW_WORD, SC_RELAY_BASE)
RISK_RUN_MS = SC_RISK_RUN_MS      # how long the known resolvers stay at risk before relays go
QUEUE_DELAY_BOUNDS_US = tuple(16 << b for b in range(SC_QD_BUCKETS - 1))


cdef dict sc_stats_dict(const sc_state_t* s):
    return {
        "admitted": {SCORE_CLASSES[c]: s.admitted[c] for c in range(SC_CLASSES)},
        "dropped": {SCORE_CLASSES[c]: s.dropped[c] for c in range(SC_CLASSES)},
        "share": {SCORE_CLASSES[c]: s.allow[c] / <double>SC_ONE for c in range(SC_CLASSES)}
                 if s.tick_start else {k: 1.0 for k in SCORE_CLASSES},
        "level": sc_level(s) / <double>SC_ONE if s.tick_start else 0.0,
        "lifted": s.lifted, "kernel_drops": s.kernel_drops,
        "kernel_drops_priority": s.kernel_drops_p, "priority_received": s.prio_rx,
        "overload_ticks": s.overload_ticks, "ticks": s.ticks, "delay_ticks": s.delay_ticks,
        # bucket b counts batches whose stamped datagram waited < 16 us << b (the last: longer)
        "queue_delay": [s.qd_hist[b] for b in range(SC_QD_BUCKETS)],
        "queue_delay_last_us": s.qd_last / 1000.0,
        "priority_wait": [s.pw_hist[b] for b in range(SC_QD_BUCKETS)],
        "priority_latency": [s.pl_hist[b] for b in range(SC_QD_BUCKETS)],
        "cost_ns": s.cost_ps / 1000.0,
        "nx_dropped": {SCORE_CLASSES[c]: s.nx_dropped[c] for c in range(SC_CLASSES)},
        "nx_share": s.nx_allow / <double>SC_ONE if s.tick_start else 1.0,
        "untrusted": s.untrusted, "nx_demoted": s.nx_demoted, "nx_spared": s.nx_spared,
        "trusted_marks": s.trusted_marks, "regained": s.regained,
        "yields": s.yields, "risk_ticks": s.risk_ticks, "redirected": s.redirected,
        "overflow_ticks": s.overflow_ticks, "purged": s.purged,
        "fresh_floods": s.fresh_floods, "overflow_held": s.overflow_held,
        "prio_filled": s.prio_filled,
    }
