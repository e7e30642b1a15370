# Wire format reading: one bounds-checked cursor; every read of peer bytes goes through it.
# Parsing the query: header, question, additional section (OPT, TSIG).  Status codes, no
# exceptions: nogil code returns PARSE_* and the decision table turns them into actions.

cdef extern from "p53_sys.h" nogil:
    void P53_ASSERT(bint cond)
    int P53_DEBUG_BUILD

cdef enum:
    PARSE_OK = 0
    PARSE_FORMERR = 1
    PARSE_BADVERS = 2
    PARSE_NOQUESTION = 3      # QDCOUNT 0, the rest well formed (RFC 7873 §5.4 cookie query)

cdef struct rbuf_t:
    const uint8_t* data
    uint32_t len
    uint32_t pos

# Lowercase table for names: only ASCII letters fold (RFC 4343).
cdef uint8_t LOWER[256]
cdef int _i
for _i in range(256):
    LOWER[_i] = _i + 32 if 65 <= _i <= 90 else _i


cdef inline bint rb_take(rbuf_t* b, uint32_t n) noexcept nogil:
    """Reserve n bytes at the cursor: true (and advance) only if they exist."""
    if b.len - b.pos < n:
        return False
    b.pos += n
    return True


cdef inline uint16_t rd16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t rd32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef int wire_skip_name(rbuf_t* b) noexcept nogil:
    """Skip a possibly compressed name at the cursor.  Pointers must point backwards, at or
    after the header, and strictly before the segment that holds them (so no loops).
    \\brief returns 0, or -1 on a malformed name (cursor undefined)."""
    cdef uint32_t pos = b.pos, seg = b.pos, total = 0, ptr
    cdef uint8_t c
    cdef bint jumped = False
    while True:
        if pos >= b.len:
            return -1
        c = b.data[pos]
        if c == 0:
            if not jumped:
                b.pos = pos + 1
            return 0
        if (c & 0xC0) == 0xC0:
            if pos + 1 >= b.len:
                return -1
            ptr = ((<uint32_t>(c & 0x3F)) << 8) | b.data[pos + 1]
            if ptr < 12 or ptr >= seg:
                return -1
            if not jumped:
                b.pos = pos + 2
                jumped = True
            pos = ptr
            seg = ptr
            continue
        if c & 0xC0:
            return -1           # extended label types (RFC 6891 §5): not supported
        total += c + 1
        if total + 1 > MAX_NAME or pos + 1 + c > b.len:
            return -1
        pos += 1 + c


cdef int wire_parse_qname(rbuf_t* b, query_t* q) noexcept nogil:
    """Parse the question name into q.qname (lowercased) with label offsets.  The question is
    the first name of the message, so a compression pointer there can only point into the
    header: rejected.  \\brief returns 0 or -1."""
    cdef uint32_t pos = b.pos, n = 0, i
    cdef uint8_t c
    q.labels = 0
    while True:
        if pos >= b.len:
            return -1
        c = b.data[pos]
        if c == 0:
            q.qname[n] = 0
            q.loff[q.labels] = <uint8_t>n
            q.qname_len = n + 1
            b.pos = pos + 1
            return 0
        if c & 0xC0:
            return -1
        if n + c + 2 > MAX_NAME or pos + 1 + c > b.len:
            return -1
        q.loff[q.labels] = <uint8_t>n
        q.labels += 1
        q.qname[n] = c
        for i in range(c):
            q.qname[n + 1 + i] = LOWER[b.data[pos + 1 + i]]
        n += c + 1
        pos += c + 1


cdef int wire_parse_opt(query_t* q, const uint8_t* rdata, uint32_t rdlen, uint16_t rclass,
                        uint32_t ttl) noexcept nogil:
    """RFC 6891 OPT: payload size, extended rcode/version/DO, then options.  Known options are
    checked for their RFC's shape (a malformed one is FORMERR); unknown ones are ignored."""
    cdef uint32_t p = 0, olen, addrlen, i
    cdef uint16_t code
    q.udp_size = rclass
    q.ednsver = (ttl >> 16) & 0xFF
    q.do_bit = (ttl & 0x8000) != 0
    # the OPT itself is well placed: any reply, FORMERR for a bad option included, carries one
    # (RFC 6891 §6.1.1 "MUST include an OPT record")
    q.edns = True
    while p < rdlen:
        if rdlen - p < 4:
            return PARSE_FORMERR
        code = rd16(rdata + p)
        olen = rd16(rdata + p + 2)
        p += 4
        if rdlen - p < olen:
            return PARSE_FORMERR
        if code == OPT_NSID:
            q.nsid = True       # RFC 5001 §2.1: the request's payload is empty; ignore any
        elif code == OPT_ECS:
            # RFC 7871 §6, §7.1.1.  Not echoed unless this option is valid: a bad second ECS
            # after a good one must not leave its fields behind the first's flag (every reply
            # parses, the FORMERR included)
            q.ecs = False
            if olen < 4:
                return PARSE_FORMERR
            q.ecs_family = rd16(rdata + p)
            q.ecs_source = rdata[p + 2]
            q.ecs_scope = rdata[p + 3]
            addrlen = (q.ecs_source + 7) // 8
            if q.ecs_family == 1:
                if q.ecs_source > 32:
                    return PARSE_FORMERR
            elif q.ecs_family == 2:
                if q.ecs_source > 128:
                    return PARSE_FORMERR
            else:
                return PARSE_FORMERR
            if q.ecs_scope != 0 or olen - 4 != addrlen:
                return PARSE_FORMERR
            memset(q.ecs_addr, 0, 16)
            for i in range(addrlen):
                q.ecs_addr[i] = rdata[p + 4 + i]
            if addrlen and (q.ecs_source % 8) and (q.ecs_addr[addrlen - 1] & (0xFF >> (q.ecs_source % 8))):
                return PARSE_FORMERR    # bits beyond the source prefix must be zero
            q.ecs = True
        elif code == OPT_COOKIE:
            # RFC 7873 §5.2.2: client cookie alone (8) or with a server cookie (16..40)
            if olen != 8 and (olen < 16 or olen > 40):
                return PARSE_FORMERR
            q.cookie_len = <uint8_t>olen
            memcpy(q.cookie, rdata + p, olen)
        p += olen
    return PARSE_OK


cdef int wire_parse_query(const uint8_t* pkt, uint32_t len, query_t* q, bint lenient) noexcept nogil:
    """Parse everything after the header checks: question, answer/authority counts, the
    additional section.  \\brief returns PARSE_OK / PARSE_FORMERR / PARSE_BADVERS; q.qend is
    set as soon as the question parsed (so error replies can echo it)."""
    cdef rbuf_t b
    cdef uint16_t qd, an, ns, ar, rtype, rclass
    cdef uint32_t i, rdlen, ttl, start, nstart
    b.data = pkt
    b.len = len
    b.pos = 12
    qd = rd16(pkt + 4)
    an = rd16(pkt + 6)
    ns = rd16(pkt + 8)
    ar = rd16(pkt + 10)
    q.qend = 0
    if qd > 1 or (qd == 0 and (an != 0 or ns != 0)):
        return PARSE_FORMERR
    if qd == 1:
        if wire_parse_qname(&b, q) != 0:
            return PARSE_FORMERR
        start = b.pos
        if not rb_take(&b, 4):
            return PARSE_FORMERR
        q.qtype = rd16(pkt + start)
        q.qclass = rd16(pkt + start + 2)
        q.qend = b.pos
    # A query carries no answer records, and authority records only for IXFR (RFC 1995 §3);
    # NOTIFY may carry an SOA in the answer section (RFC 1996 §3.7).
    if q.opcode == OP_QUERY and (an != 0 or (ns != 0 and q.qtype != T_IXFR)):
        return PARSE_FORMERR
    for i in range(<uint32_t>an + ns + ar):
        nstart = b.pos
        if wire_skip_name(&b) != 0:
            return PARSE_FORMERR
        start = b.pos
        if not rb_take(&b, 10):
            return PARSE_FORMERR
        rtype = rd16(pkt + start)
        rclass = rd16(pkt + start + 2)
        ttl = rd32(pkt + start + 4)
        rdlen = rd16(pkt + start + 8)
        if not rb_take(&b, rdlen):
            return PARSE_FORMERR
        if q.tsig:
            return PARSE_FORMERR        # RFC 8945 §5.1: TSIG must be the last record
        if rtype == T_OPT:
            # RFC 6891 §6.1.1: one OPT, in the additional section, owned by the root
            if i < <uint32_t>an + ns or q.edns or start - nstart != 1:
                return PARSE_FORMERR
            if wire_parse_opt(q, pkt + start + 10, rdlen, rclass, ttl) != PARSE_OK:
                return PARSE_FORMERR
        elif rtype == T_TSIG:
            if i < <uint32_t>an + ns:
                return PARSE_FORMERR
            q.tsig = True
    if b.pos != len and not lenient:
        return PARSE_FORMERR            # trailing bytes after the last record
    if q.edns and q.ednsver != 0:
        return PARSE_BADVERS
    return PARSE_OK if qd == 1 else PARSE_NOQUESTION
