# Query processing: the one decision table for bad input (core_answer), then the answer stages
# of RFC 1034 §4.3.2 with RFC 2181, 4592 (wildcards), 6672 (DNAME), 6604 (CNAME rcodes) and
# 8482 (ANY).  Everything here runs without the GIL and allocates nothing.

cdef struct lname_t:
    # a lowercased wire name with its label offsets and suffix hashes (a chain target)
    uint8_t name[256]
    uint32_t len
    uint32_t labels
    uint8_t loff[128]
    uint32_t sh[129]

cdef struct ctx_t:
    const image_t* img
    const rcfg_t* cfg
    query_t* q
    wbuf_t w
    uint32_t qsh[129]
    uint8_t rcode
    bint aa
    bint tcp
    uint32_t depth
    const node_t* visited[8]
    lname_t tgt[2]
    bint pending              # a chain target waits in tgt[depth & 1]
    bint nsid                 # this reply carries the NSID option
    bint cookie               # this reply carries a COOKIE option (client cookie + srv_cookie)
    uint8_t srv_cookie[16]
    uint32_t pending_owner
    bint dnssec               # DO=1 (RFC 3225): signatures and proofs (dnssec.pxi)
    dproof_t proof            # denial proofs owed, written by dnssec_flush
    const map_snap_t* maps    # mapped answers (mapping.pxi); NULL = none
    const uint8_t* client     # the query's source address (4 or 16 bytes), for mapping
    uint32_t client_len
    uint8_t ecs_scope         # the SCOPE PREFIX-LENGTH echoed with ECS (RFC 7871 §7.2.1)
    uint8_t mapkey            # 1 + the stats_t.mapped index of the last mapped lookup; 0: none

# CHAOS names (RFC 4892): lowercased wire form
cdef const uint8_t* CH_ID_SERVER = b"\x02id\x06server\x00"
cdef const uint8_t* CH_HOSTNAME_BIND = b"\x08hostname\x04bind\x00"
cdef const uint8_t* CH_VERSION_BIND = b"\x07version\x04bind\x00"
cdef const uint8_t* CH_VERSION_SERVER = b"\x07version\x06server\x00"


cdef inline bint name_eq(const uint8_t* a, uint32_t alen, const uint8_t* b) noexcept nogil:
    return alen == rdata_name_len(b) and memcmp(a, b, alen) == 0


cdef void lname_set(lname_t* t, const uint8_t* src, uint32_t seed) noexcept nogil:
    """Lowercase a trusted uncompressed name (from the image or our own synthesis)."""
    cdef uint32_t p = 0, i, c
    t.labels = 0
    while src[p] != 0:
        c = src[p]
        t.loff[t.labels] = <uint8_t>p
        t.labels += 1
        t.name[p] = <uint8_t>c
        for i in range(1, c + 1):
            t.name[p + i] = LOWER[src[p + i]]
        p += c + 1
    t.name[p] = 0
    t.loff[t.labels] = <uint8_t>p
    t.len = p + 1
    name_suffix_hashes(t.name, t.len, t.loff, t.labels, seed, t.sh)


cdef uint32_t suffix_ptr(const uint8_t* pkt, uint32_t name_ptr, uint32_t k) noexcept nogil:
    """Where label k of the name written at name_ptr starts, following our own compression
    pointers (a chain target's name may be partly a pointer).  0 = write the name instead."""
    cdef uint32_t off = name_ptr, i = 0, hops = 0
    cdef uint8_t c
    if not name_ptr:
        return 0
    while True:
        c = pkt[off]
        if (c & 0xC0) == 0xC0:
            off = ((<uint32_t>(c & 0x3F)) << 8) | pkt[off + 1]
            hops += 1
            if hops > MAX_LABELS:
                return 0
            continue
        if i == k:
            return off if off < 0x3FFF else 0
        if c == 0:
            return 0
        off += c + 1
        i += 1


cdef void add_soa(ctx_t* c, const zone_t* z) noexcept nogil:
    """Negative answers carry the zone's SOA in authority, TTL min(SOA TTL, MINIMUM) (RFC 2308)."""
    cdef const rrset_t* soa = <const rrset_t*>(c.img.base + z.soa_off)
    if w_signed(c, img_node(c.img, z.apex_off), 1, 0, c.img.base + z.name_off, soa, z.neg_ttl, NULL) != 0:
        c.w.tc = True


cdef void add_additional(ctx_t* c, const rrset_t* rs, uint32_t cut_off) noexcept nogil:
    """A/AAAA of in-image targets (precomputed by the compiler).  Glue below the delegation
    being answered is required: if it does not fit, TC (RFC 9471); anything else is optional."""
    cdef const uint32_t* adds
    cdef const node_t* t
    cdef const rrset_t* ars
    cdef uint32_t i, j
    if c.proof.n:
        dnssec_flush(c)     # the authority section ends here
    if rs.add_count == 0:
        return
    adds = <const uint32_t*>(c.img.base + rs.add_off)
    for i in range(rs.add_count):
        t = img_node(c.img, adds[i])
        ars = node_rrsets(c.img, t)
        for j in range(t.n_rrsets):
            if ars[j].type == T_A or ars[j].type == T_AAAA:
                if w_signed(c, t, 2, 0, node_name(c.img, t), &ars[j], ars[j].ttl, NULL) != 0:
                    if cut_off and t.cut_off == cut_off:
                        c.w.tc = True
                    return


cdef void referral(ctx_t* c, const node_t* cut, uint32_t owner_ptr) noexcept nogil:
    """RFC 1034 §4.3.2 step 3b: NS of the cut in authority, glue in additional, AA clear
    (unless a CNAME chain already made the answer authoritative)."""
    cdef const rrset_t* ns = node_find_rrset(c.img, cut, T_NS)
    if c.depth == 0:
        c.aa = False
    if ns == NULL:
        return
    if w_rrset(&c.w, 1, owner_ptr, node_name(c.img, cut), c.img.base, ns, ns.ttl, NULL) != 0:
        c.w.tc = True
        return
    if c.dnssec:
        dnssec_referral(c, cut)
    add_additional(c, ns, <uint32_t>(<const uint8_t*>cut - c.img.base))


cdef void follow(ctx_t* c, const node_t* node, const uint8_t* target_rdata, uint32_t target_pos) noexcept nogil:
    """Queue the target of a CNAME (or DNAME-synthesized CNAME) for the chain loop in
    core_answer; loop-safe and bounded (CHAIN_MAX)."""
    cdef lname_t* t
    cdef uint32_t i, ptr
    if c.w.tc:
        return
    for i in range(c.depth):
        if c.visited[i] == node:
            return
    if c.depth + 1 >= CHAIN_MAX:
        return
    c.visited[c.depth] = node
    c.depth += 1
    t = &c.tgt[c.depth & 1]
    lname_set(t, target_rdata, c.img.seed)
    # owner of the next records: the target as written in the CNAME's RDATA
    ptr = target_pos
    if (c.w.buf[ptr] & 0xC0) == 0xC0:
        ptr = ((<uint32_t>(c.w.buf[ptr] & 0x3F)) << 8) | c.w.buf[ptr + 1]
    c.pending = True
    c.pending_owner = ptr if ptr < 0x3FFF else 0


cdef void answer_node(ctx_t* c, const zone_t* z, const node_t* node, uint32_t owner_ptr,
                      const uint8_t* owner_name) noexcept nogil:
    """The data at a matching (or wildcard-synthesized) node."""
    cdef const rrset_t* rs
    cdef const rrset_t* all_rs
    cdef uint32_t i, pos = 0
    cdef uint16_t qtype = c.q.qtype
    # RFC 1034 §4.3.2 step 3a: restart only when QTYPE does not match the CNAME (ANY does).
    # RRSIG and NSEC may live beside a CNAME (RFC 2181 §10.1, RFC 4035 §2.5), so they are
    # answered at the owner too, as Knot does; NSEC3 as well (it lives at hashed owner names,
    # RFC 5155 §3, so NODATA there, as NSD answers) rather than another name's data (issue 9).
    rs = node_find_rrset(c.img, node, T_CNAME) if (node.flags & N_CNAME) and qtype != T_CNAME and \
        qtype != T_ANY and qtype != T_RRSIG and qtype != T_NSEC and qtype != T_NSEC3 else NULL
    if rs != NULL:
        if w_signed(c, node, 0, owner_ptr, owner_name, rs, rs.ttl, &pos) != 0:
            c.w.tc = True
            return
        follow(c, node, c.img.base + rs.rdata_off + 2, pos)
        return
    if qtype == T_ANY:
        # RFC 8482 §4.1: over UDP one RRset is enough; TCP gets them all.  RRSIGs go with
        # their RRsets (DO=1); NSEC is proof, not data, as Knot has it.
        all_rs = node_rrsets(c.img, node)
        for i in range(node.n_rrsets):
            if all_rs[i].type == T_RRSIG or all_rs[i].type == T_NSEC:
                continue
            if w_signed(c, node, 0, owner_ptr, owner_name, &all_rs[i], all_rs[i].ttl, NULL) != 0:
                c.w.tc = True
                return
            if not c.tcp:
                return
        if c.w.an == 0:
            add_soa(c, z)
            dnssec_nodata(c, z, node)
        return
    rs = node_find_rrset(c.img, node, qtype)
    if rs != NULL:
        if w_signed(c, node, 0, owner_ptr, owner_name, rs, rs.ttl, NULL) != 0:
            c.w.tc = True
            return
        if rs.add_count:
            add_additional(c, rs, 0)
        return
    add_soa(c, z)       # NODATA (RFC 2308 §2.2)
    dnssec_nodata(c, z, node)


cdef void dname_synth(ctx_t* c, const zone_t* z, const node_t* dnode, const uint8_t* name,
                      const uint8_t* loff, uint32_t k, uint32_t owner_ptr) noexcept nogil:
    """RFC 6672 §3.1: the DNAME, a synthesized CNAME (same TTL) from the query name to the
    substituted name, then the chain continues there."""
    cdef const rrset_t* rs = node_find_rrset(c.img, dnode, T_DNAME)
    cdef const uint8_t* target = c.img.base + rs.rdata_off + 2
    cdef uint32_t tlen = rdata_name_len(target)
    cdef uint32_t prefix = loff[k]
    cdef uint32_t pos = 0
    cdef uint8_t synth[256]
    cdef wmark_t m
    if w_signed(c, dnode, 0, suffix_ptr(c.w.buf, owner_ptr, k), node_name(c.img, dnode), rs,
                rs.ttl, NULL) != 0:
        c.w.tc = True
        return
    if prefix + tlen > MAX_NAME:
        c.rcode = RC_YXDOMAIN
        return
    memcpy(synth, name, prefix)
    memcpy(synth + prefix, target, tlen)
    m = w_mark(&c.w)
    if w_rr(&c.w, owner_ptr, name, T_CNAME, C_IN, rs.ttl, synth, prefix + tlen, &pos) != 0:
        w_rollback(&c.w, m)
        c.w.tc = True
        return
    c.w.an += 1
    if c.q.qtype != T_CNAME and c.q.qtype != T_ANY:     # the synthesized CNAME matches those
        follow(c, dnode, synth, pos)


cdef void resolve(ctx_t* c, const uint8_t* name, uint32_t nlen, const uint8_t* loff,
                  uint32_t labels, const uint32_t* sh, uint32_t owner_ptr) noexcept nogil:
    """RFC 1034 §4.3.2 for one name: find the zone, the node or its closest encloser, then
    answer, refer, synthesize or deny."""
    cdef const zone_t* z = NULL
    cdef const zone_t* pz
    cdef const node_t* node
    cdef const node_t* ce = NULL
    cdef uint32_t k, h, wk
    cdef uint32_t qtype = c.q.qtype
    cdef uint8_t wname[256]
    # find the zone: the longest served suffix.  A DS query at a zone apex is answered by the
    # parent side when we serve it (RFC 4035 §3.1.4.1).
    z = image_find_zone(c.img, name, nlen, loff, labels, sh, 0)
    if qtype == T_DS and z != NULL and z.name_len == nlen and labels > 0:
        # only when the parent really delegates here; else the child answers
        pz = image_find_zone(c.img, name, nlen, loff, labels, sh, 1)
        if pz != NULL:
            node = zone_find(c.img, pz, name, nlen, sh[0])
            if node != NULL and (node.flags & N_CUT):
                z = pz
    if z == NULL:
        if c.depth == 0:
            c.rcode = RC_REFUSED
            c.aa = False
        return              # a chain that leaves our zones ends here (RFC 1034 §4.3.2 step 3a)
    if c.depth == 0:
        c.q.zone = <uint32_t>(z - c.img.zones)      # per-zone counters (zstats.pxi)
    if z.flags & Z_EXPIRED:
        # a secondary whose data expired must not answer from it (RFC 1035 §3.3.13, RFC 1996)
        c.rcode = RC_SERVFAIL
        if c.depth == 0:
            c.aa = False
        return
    if c.depth == 0:
        c.aa = True
    if c.maps != NULL and map_resolve(c, z, name, nlen, loff, labels, sh, owner_ptr):
        return
    node = zone_find(c.img, z, name, nlen, sh[0])
    if node != NULL:
        if node.cut_off and not ((node.flags & N_CUT) and qtype == T_DS):
            if node.flags & N_CUT:
                referral(c, node, owner_ptr)
            else:
                k = labels - img_node(c.img, node.cut_off).labels
                referral(c, img_node(c.img, node.cut_off), suffix_ptr(c.w.buf, owner_ptr, k))
            return
        answer_node(c, z, node, owner_ptr, name)
        return
    # closest encloser: the longest existing ancestor (empty non-terminals are nodes too)
    for k in range(1, labels - z.labels + 1):
        ce = zone_find(c.img, z, name + loff[k], nlen - loff[k], sh[k])
        if ce != NULL:
            break
    if ce == NULL:
        return              # cannot happen: the apex exists
    if ce.cut_off:
        if ce.flags & N_CUT:
            referral(c, ce, suffix_ptr(c.w.buf, owner_ptr, k))
        else:
            wk = labels - img_node(c.img, ce.cut_off).labels
            referral(c, img_node(c.img, ce.cut_off), suffix_ptr(c.w.buf, owner_ptr, wk))
        return
    if (ce.flags & N_DNAME) and node_find_rrset(c.img, ce, T_DNAME) != NULL:
        dname_synth(c, z, ce, name, loff, k, owner_ptr)
        return
    if ce.flags & N_WILDCARD_CHILD:
        # RFC 4592 §3.3.1: the source of synthesis is "*." + closest encloser
        h = name_hash_step(name_hash_step(sh[k], ord('*')), 1)
        wname[0] = 1
        wname[1] = ord('*')
        memcpy(wname + 2, name + loff[k], nlen - loff[k])
        node = zone_find(c.img, z, wname, nlen - loff[k] + 2, h)
        if node != NULL:
            if c.dnssec:
                dnssec_wildcard(c, z, ce, node, name, nlen, loff, labels, k)
            answer_node(c, z, node, owner_ptr, name)
            return
    c.rcode = RC_NXDOMAIN   # RFC 6604 §3: the rcode of the last name in the chain
    add_soa(c, z)
    dnssec_nxdomain(c, z, ce, name, nlen, loff, labels, k)


cdef void chaos_answer(ctx_t* c) noexcept nogil:
    """CHAOS TXT id.server / hostname.bind (identity) and version.bind / version.server."""
    cdef const query_t* q = c.q
    cdef const uint8_t* text = NULL
    cdef uint32_t tlen = 0
    cdef uint8_t rdata[256]
    if not c.cfg.chaos:
        c.rcode = RC_REFUSED
        return
    if name_eq(q.qname, q.qname_len, CH_ID_SERVER) or name_eq(q.qname, q.qname_len, CH_HOSTNAME_BIND):
        text = c.cfg.identity
        tlen = c.cfg.identity_len
    elif name_eq(q.qname, q.qname_len, CH_VERSION_BIND) or name_eq(q.qname, q.qname_len, CH_VERSION_SERVER):
        text = c.cfg.version
        tlen = c.cfg.version_len
    if tlen == 0 or (q.qtype != T_TXT and q.qtype != T_ANY):
        # the convention is TXT (RFC 4892 §2) and no CHAOS zone gives a SOA for a negative
        # answer: another type is refused, as Knot and NSD do (issue 9)
        c.rcode = RC_REFUSED
        return
    c.aa = True
    rdata[0] = <uint8_t>tlen
    memcpy(rdata + 1, text, tlen)
    if w_rr(&c.w, 12, NULL, T_TXT, C_CH, 0, rdata, tlen + 1, NULL) != 0:
        c.w.tc = True
        return
    c.w.an += 1


cdef uint32_t finish(ctx_t* c, uint8_t rcode) noexcept nogil:
    """Header flags and counts, then the OPT record in the space reserved for it."""
    cdef wbuf_t* w = &c.w
    cdef const query_t* q = c.q
    cdef uint8_t* b = w.buf
    cdef uint32_t optlen_pos
    cdef bint nsid = c.nsid
    cdef uint32_t ecs_len = (q.ecs_source + 7) // 8 if q.ecs else 0
    b[0] = q.id >> 8
    b[1] = q.id & 0xFF
    # QR, opcode as asked, AA, TC, RD copied; RA, AD clear; CD clear: "a security-aware name
    # server SHOULD clear the CD bit when composing an authoritative response" (RFC 4035 §3.1.6)
    b[2] = 0x80 | (q.opcode << 3) | (0x04 if c.aa else 0) | (0x02 if w.tc else 0) | ((q.flags >> 8) & 0x01)
    b[3] = rcode & 0x0F
    b[4] = 0
    b[5] = 1 if q.qend else 0
    b[6] = w.an >> 8
    b[7] = w.an & 0xFF
    b[8] = w.ns >> 8
    b[9] = w.ns & 0xFF
    if q.edns:
        # RFC 6891 §6.1.3: extended rcode high bits in the OPT TTL; our payload size.
        w.ar += 1
        b[w.pos] = 0
        w.pos += 1
        w_put16(w, T_OPT)
        w_put16(w, c.cfg.edns_max)
        w_put32(w, ((<uint32_t>(rcode >> 4)) << 24) | (0x8000 if q.do_bit else 0))
        optlen_pos = w.pos
        w_put16(w, ((4 + c.cfg.identity_len) if nsid else 0) + (28 if c.cookie else 0) +
                (8 + ecs_len if q.ecs else 0))
        if q.ecs:
            # RFC 7871 §7.2.1: FAMILY, SOURCE PREFIX-LENGTH and ADDRESS as asked, our SCOPE
            # (0 unless a mapped answer depends on the client's network)
            w_put16(w, OPT_ECS)
            w_put16(w, 4 + ecs_len)
            w_put16(w, q.ecs_family)
            b[w.pos] = q.ecs_source
            b[w.pos + 1] = c.ecs_scope
            memcpy(b + w.pos + 2, q.ecs_addr, ecs_len)
            w.pos += 2 + ecs_len
        if nsid:
            w_put16(w, OPT_NSID)
            w_put16(w, c.cfg.identity_len)
            memcpy(b + w.pos, c.cfg.identity, c.cfg.identity_len)
            w.pos += c.cfg.identity_len
        if c.cookie:
            # RFC 7873 §5.2.3: our cookie is the client's eight bytes and our sixteen
            w_put16(w, OPT_COOKIE)
            w_put16(w, 24)
            memcpy(b + w.pos, q.cookie, 8)
            memcpy(b + w.pos + 8, c.srv_cookie, 16)
            w.pos += 24
    b[10] = w.ar >> 8
    b[11] = w.ar & 0xFF
    return w.pos


cdef inline uint32_t response_limit(const query_t* q, const rcfg_t* cfg, bint tcp) noexcept nogil:
    cdef uint32_t lim
    if tcp:
        return 65535
    if not q.edns:
        return 512
    lim = q.udp_size if q.udp_size < cfg.edns_max else cfg.edns_max
    return lim if lim >= 512 else 512


cdef inline int admit(const query_t* q, stats_t* st) noexcept nogil:
    """The admission stage: every well-formed query passes here before any lookup.  Query
    scoring and rate limiting (the attack-resiliency work) plug in here and may drop; today
    every query is admitted."""
    return ACT_REPLY


cdef void ctx_begin(ctx_t* c, const uint8_t* pkt, uint8_t* out, uint32_t outcap, bint tcp) noexcept nogil:
    """Header space, the question echoed as sent (0x20 case kept), OPT space reserved."""
    cdef const query_t* q = c.q
    cdef uint32_t lim = response_limit(q, c.cfg, tcp)
    cdef uint32_t reserve = 0, k
    if lim > outcap:
        lim = outcap
    c.nsid = q.edns and q.nsid and c.cfg.nsid and c.cfg.identity_len > 0
    if q.edns:
        reserve = 11
        if q.ecs:
            reserve += 8 + (q.ecs_source + 7) // 8      # the ECS echo (at most 24 bytes)
        if c.nsid:
            if lim >= reserve + 4 + c.cfg.identity_len + (q.qend if q.qend else 12):
                reserve += 4 + c.cfg.identity_len
            else:
                c.nsid = False      # RFC 5001 §2.3: the server may leave the NSID out
        if c.cookie:
            if lim >= reserve + 28 + (q.qend if q.qend else 12):
                reserve += 28
            else:
                c.cookie = False
    c.w.buf = out
    c.w.cap = lim - reserve
    c.w.pos = 12
    c.w.ncmp = 0
    c.w.an = 0
    c.w.ns = 0
    c.w.ar = 0
    c.w.tc = False
    c.rcode = RC_NOERROR
    c.aa = False
    c.tcp = tcp
    c.depth = 0
    c.dnssec = q.edns and q.do_bit
    c.proof.n = 0
    c.ecs_scope = 0
    c.mapkey = 0
    if q.qend:
        memcpy(out + 12, pkt + 12, q.qend - 12)
        c.w.pos = q.qend
        for k in range(q.labels):
            w_cmp_add(&c.w, 12 + q.loff[k])


cdef int core_answer(const image_t* img, const rcfg_t* cfg, const uint8_t* pkt, uint32_t len,
                     uint8_t* out, uint32_t outcap, bint tcp, uint32_t* outlen, query_t* q,
                     stats_t* st, const uint8_t* client, uint32_t client_len,
                     const map_snap_t* maps) noexcept nogil:
    """Answer one query.  The decision table for bad input (ARCHITECTURE.md point 4):
        shorter than a header, or QR=1            -> drop
        opcode not QUERY/NOTIFY                   -> NOTIMP
        QDCOUNT != 1, bad question/OPT/records    -> FORMERR (but QDCOUNT 0 with a COOKIE,
                                                     cookies on: NOERROR + our cookie, RFC 7873 §5.4)
        EDNS version > 0                          -> BADVERS
        NOTIFY, AXFR/IXFR, TSIG-signed            -> control plane (a fallback reply is written)
        class not IN/CH/ANY, name in no zone      -> REFUSED (QCLASS ANY: the IN answer, AA clear)
    Error replies carry at most the header, the question and OPT.
    \\brief returns ACT_DROP, ACT_REPLY or ACT_CONTROL; *outlen = reply length (outcap >= 512).
    img may be NULL (no zones loaded yet): every IN query is then REFUSED.  client: the
    client's address (4 or 16 bytes; client_len 0 when unknown), for server cookies and
    mapping.  maps: the mapping snapshot (NULL: no mapped names)."""
    cdef ctx_t c
    cdef lname_t* t
    cdef int status
    cdef uint8_t rcode = RC_NOERROR
    cdef int act = ACT_REPLY
    cdef uint32_t now
    outlen[0] = 0
    st.queries += 1
    st.bytes_in += len
    if len < 12 or (pkt[2] & 0x80):
        st.dropped += 1
        return ACT_DROP
    q.id = rd16(pkt)
    q.flags = rd16(pkt + 2)
    q.opcode = (pkt[2] >> 3) & 0x0F
    q.qend = 0
    q.edns = False
    q.nsid = False
    q.ecs = False
    q.tsig = False
    q.cookie_len = 0
    q.ctl = 0
    q.qtype = 0
    q.cookie_ok = False
    q.zone = ZONE_NONE
    c.cookie = False
    c.img = img
    c.cfg = cfg
    c.q = q
    c.maps = maps
    c.client = client
    c.client_len = client_len
    status = wire_parse_query(pkt, len, q, cfg.lenient_trailing)
    if cfg.cookies and (status == PARSE_OK or status == PARSE_NOQUESTION) and q.edns and \
            q.cookie_len >= 8 and \
            (client_len == 4 or client_len == 16):
        now = wall_seconds()
        if q.cookie_len > 8 and cookie_valid(cfg, q.cookie, q.cookie_len, client, client_len, now):
            q.cookie_ok = True
            st.cookies_valid += 1
        else:
            st.cookies_new += 1
        cookie_make(cfg.cookie_secret, q.cookie, client, client_len, now, c.srv_cookie)
        c.cookie = True
    if q.opcode != OP_QUERY and q.opcode != OP_NOTIFY:
        rcode = RC_NOTIMP
    elif status == PARSE_FORMERR:
        rcode = RC_FORMERR
    elif status == PARSE_BADVERS:
        rcode = RC_BADVERS
    elif status == PARSE_NOQUESTION and not (c.cookie and q.opcode == OP_QUERY):
        rcode = RC_FORMERR      # no question: only a cookie query may do that (RFC 7873 §5.4)
    elif q.opcode == OP_NOTIFY:
        q.ctl = CTL_NOTIFY
    elif q.tsig:
        q.ctl = CTL_TSIG
    elif q.qtype == T_AXFR or q.qtype == T_IXFR:
        q.ctl = CTL_XFR
    elif q.qtype == T_OPT:
        rcode = RC_FORMERR      # OPT is a pseudo-type, not a question
    elif q.qtype == T_MAILA or q.qtype == T_MAILB or q.qtype == T_TKEY or q.qtype == T_TSIG:
        rcode = RC_NOTIMP
    ctx_begin(&c, pkt, out, outcap, tcp)
    if rcode != RC_NOERROR:
        c.rcode = rcode
    elif status == PARSE_NOQUESTION and not q.ctl:
        pass                    # the cookie query: header and OPT with our cookie, NOERROR
    elif q.ctl:
        # the fallback when no control plane takes it: refuse politely
        act = ACT_CONTROL
        # (REFUSED for a transfer we do not give, as NSD and BIND; AXFR over UDP is not
        # defined, RFC 5936 §4.2: NOTIMP, as Knot and NSD)
        c.rcode = RC_NOTIMP if (q.ctl == CTL_XFR and q.qtype == T_AXFR and not tcp) else RC_REFUSED
        st.control += 1
    elif admit(q, st) != ACT_REPLY:
        st.dropped += 1
        return ACT_DROP
    elif q.qclass == C_IN or q.qclass == C_ANY:
        if img == NULL:
            c.rcode = RC_REFUSED
        else:
            name_suffix_hashes(q.qname, q.qname_len, q.loff, q.labels, img.seed, c.qsh)
            c.pending = False
            resolve(&c, q.qname, q.qname_len, q.loff, q.labels, c.qsh, 12)
            while c.pending:
                c.pending = False
                t = &c.tgt[c.depth & 1]
                resolve(&c, t.name, t.len, t.loff, t.labels, t.sh, c.pending_owner)
            if q.qclass == C_ANY:
                # QCLASS * gets the IN data, never authoritative: a server cannot know it has
                # every class (RFC 1034 §3.7.1); NSD clears AA too, Knot sets it.
                c.aa = False
            if c.proof.n:
                dnssec_flush(&c)
    elif q.qclass == C_CH:
        chaos_answer(&c)
    else:
        c.rcode = RC_REFUSED
    outlen[0] = finish(&c, c.rcode)
    P53_ASSERT(outlen[0] <= outcap and outlen[0] <= response_limit(q, cfg, tcp))
    P53_ASSERT(c.w.pos <= c.w.cap + 11 + 4 + 255)
    st.replies += 1
    st.rcode[c.rcode if c.rcode < 24 else 23] += 1
    st.qtype[q.qtype if q.qtype < 256 else 256] += 1
    st.bytes_out += outlen[0]
    if st.zs != NULL and q.zone != ZONE_NONE:
        zs_count(st, img, q.zone, c.rcode, q.qtype)
    if c.w.tc:
        st.truncated += 1
    if c.mapkey:
        st.mapped[c.mapkey - 1] += 1
    return act
