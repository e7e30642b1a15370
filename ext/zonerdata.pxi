# zonerdata.pxi: RDATA text to wire for the common types (issue 15 point 2), into ZoneScanner.rd.
#
# Each parser accepts only text it is sure of, with the result dnspython gives for it; for
# anything else it returns 1 and the scanner hands the record to dnspython (which then parses it
# or gives its own error).  Returns 0 when the record (through its EOL/EOF) is consumed.
# Formats: RFC 1035 §3.3 (SOA, NS, CNAME, PTR, MX, TXT), §3.4.1 (A), RFC 3596 (AAAA), RFC 2782
# (SRV), RFC 6672 (DNAME), RFC 8659 (CAA), RFC 4034 §2-5 (DNSKEY, RRSIG, NSEC, DS), RFC 5155
# (NSEC3, NSEC3PARAM), RFC 6698 (TLSA), RFC 3597 §5 (\# for a type dnspython does not know).

cdef inline uint32_t zr_u32_at(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef int zr_uint(ZoneScanner s, unsigned long long maxv, unsigned long long* out) except -1:
    """Next token as an unsigned decimal <= maxv (dns.tokenizer get_uint*)."""
    cdef unsigned long long v = 0
    cdef Py_ssize_t i
    if s.tok() != ZT_WORD or s.tesc or s.tl > 10:
        return 1
    for i in range(s.tl):
        if not zs_digit(s.ts[i]):
            return 1
        v = v * 10 + (s.ts[i] - 48)
    if v > maxv:
        return 1
    out[0] = v
    return 0


cdef inline int zr_u8(ZoneScanner s) except -1:
    cdef unsigned long long v
    if zr_uint(s, 255, &v):
        return 1
    zsb_u8(&s.rd, <unsigned int>v)
    return 0


cdef inline int zr_u16(ZoneScanner s) except -1:
    cdef unsigned long long v
    if zr_uint(s, 65535, &v):
        return 1
    zsb_u16be(&s.rd, <unsigned int>v)
    return 0


cdef int zr_ttl(ZoneScanner s) except -1:
    """Next token as a TTL (dns.tokenizer get_ttl: BIND units allowed)."""
    cdef long long t
    if s.tok() != ZT_WORD or s.tesc:
        return 1
    t = zs_ttl(s.ts, s.tl)
    if t < 0:
        return 1
    zsb_u32be(&s.rd, <uint32_t>t)
    return 0


cdef int zr_name(ZoneScanner s) except -1:
    """Next token as a domain name relative to the current $ORIGIN, written uncompressed."""
    cdef unsigned char buf[256]
    cdef int n
    if s.tok() != ZT_WORD:
        return 1
    n = zs_name(s.ts, s.tl, s.origin, s.origin_len, buf)
    if n <= 0:
        return 1
    zsb_put(&s.rd, buf, n)
    return 0


cdef int zr_end(ZoneScanner s) except -1:
    cdef int k = s.tok()
    if k == ZT_EOF:
        s.pending = True
        return 0
    return 0 if k == ZT_EOL else 1


cdef Py_ssize_t zr_unescape(ZoneScanner s, Py_ssize_t maxlen) except -2:
    """The current token's bytes with \\DDD and \\X applied (dns.tokenizer unescape_to_bytes),
    appended to rd; its length, or -1 when malformed or longer than maxlen."""
    cdef Py_ssize_t i = 0, n = 0
    cdef int c, v
    cdef const unsigned char* t = s.ts
    while i < s.tl:
        c = t[i]
        i += 1
        if c == 92:
            if i >= s.tl:
                return -1
            c = t[i]
            i += 1
            if zs_digit(c):
                if i + 2 > s.tl or not zs_digit(t[i]) or not zs_digit(t[i + 1]):
                    return -1
                v = (c - 48) * 100 + (t[i] - 48) * 10 + (t[i + 1] - 48)
                i += 2
                if v > 255:
                    return -1
                c = v
        if n >= maxlen:
            return -1
        zsb_u8(&s.rd, c)
        n += 1
    return n


cdef int zr_txt(ZoneScanner s) except -1:
    """TXT: one or more <character-string>s, each at most 255 bytes (RFC 1035 §3.3.14)."""
    cdef int k, strings = 0
    cdef size_t at
    cdef Py_ssize_t n
    while True:
        k = s.tok()
        if k == ZT_EOL or k == ZT_EOF:
            break
        at = s.rd.len
        zsb_u8(&s.rd, 0)
        n = zr_unescape(s, 255)
        if n < 0:
            return 1
        s.rd.data[at] = <unsigned char>n
        strings += 1
    if k == ZT_EOF:
        s.pending = True
    return 0 if strings else 1


cdef int zr_hexval(int c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    c = zs_lower(c)
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef Py_ssize_t zr_hex_rest(ZoneScanner s) except -2:
    """The remaining words of the record concatenated and read as hex; the byte count, or -1."""
    cdef int k, v, hi = -1
    cdef Py_ssize_t i, n = 0
    while True:
        k = s.tok()
        if k == ZT_EOL or k == ZT_EOF:
            break
        if k != ZT_WORD or s.tesc:
            return -1
        for i in range(s.tl):
            v = zr_hexval(s.ts[i])
            if v < 0:
                return -1
            if hi < 0:
                hi = v
            else:
                zsb_u8(&s.rd, (hi << 4) | v)
                hi = -1
                n += 1
    if k == ZT_EOF:
        s.pending = True
    return n if hi < 0 else -1


cdef int zr_b64val(int c) noexcept nogil:
    if 65 <= c <= 90:
        return c - 65
    if 97 <= c <= 122:
        return c - 71
    if 48 <= c <= 57:
        return c + 4
    if c == 43:
        return 62
    if c == 47:
        return 63
    return -1


cdef Py_ssize_t zr_b64_rest(ZoneScanner s) except -2:
    """The remaining words concatenated and read as strict base64 (what dnspython's
    b64decode(validate=True) accepts); the byte count, or -1."""
    cdef int k, v, q = 0, pad = 0
    cdef uint32_t acc = 0
    cdef bint done = False
    cdef Py_ssize_t i, n = 0
    while True:
        k = s.tok()
        if k == ZT_EOL or k == ZT_EOF:
            break
        if k != ZT_WORD or s.tesc:
            return -1
        for i in range(s.tl):
            if done:
                return -1
            if s.ts[i] == 61:                   # '='
                if q < 2:
                    return -1
                pad += 1
                q += 1
                acc <<= 6
            else:
                if pad:
                    return -1
                v = zr_b64val(s.ts[i])
                if v < 0:
                    return -1
                acc = (acc << 6) | <uint32_t>v
                q += 1
            if q == 4:
                zsb_u8(&s.rd, (acc >> 16) & 0xFF)
                if pad < 2:
                    zsb_u8(&s.rd, (acc >> 8) & 0xFF)
                if pad < 1:
                    zsb_u8(&s.rd, acc & 0xFF)
                n += 3 - pad
                done = pad > 0
                q = 0
                acc = 0
    if k == ZT_EOF:
        s.pending = True
    return n if q == 0 and n > 0 else -1


cdef int zr_bitmap(ZoneScanner s) except -1:
    """NSEC/NSEC3 type bitmap (RFC 4034 §4.1.2): windows of the listed types, in order."""
    cdef uint8_t bits[8192]
    cdef int k, t, w, last, i
    cdef int used[256]
    memset(bits, 0, sizeof(bits))
    memset(used, 0, sizeof(used))
    while True:
        k = s.tok()
        if k == ZT_EOL or k == ZT_EOF:
            break
        if k != ZT_WORD or s.tesc:
            return 1
        t = zs_type_fast(s.ts, s.tl)
        if t <= 0:
            return 1
        bits[t >> 3] |= 0x80 >> (t & 7)
        used[t >> 8] = 1
    if k == ZT_EOF:
        s.pending = True
    for w in range(256):
        if not used[w]:
            continue
        last = 0
        for i in range(32):
            if bits[w * 32 + i]:
                last = i + 1
        zsb_u8(&s.rd, w)
        zsb_u8(&s.rd, last)
        zsb_put(&s.rd, bits + w * 32, last)
    return 0


cdef long long zr_days(long long y, long long m, long long d) noexcept nogil:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)."""
    y -= m <= 2
    cdef long long era = (y if y >= 0 else y - 399) // 400
    cdef long long yoe = y - era * 400
    cdef long long doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef long long doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef int zr_sigtime(ZoneScanner s) except -1:
    """RRSIG expiration/inception: YYYYMMDDHHmmSS (UTC) or seconds (RFC 4034 §3.2)."""
    cdef long long v = 0, y, mo, d, h, mi, se, mdays
    cdef Py_ssize_t i
    cdef const unsigned char* t
    if s.tok() != ZT_WORD or s.tesc:
        return 1
    t = s.ts
    for i in range(s.tl):
        if not zs_digit(t[i]):
            return 1
    if s.tl <= 10:
        for i in range(s.tl):
            v = v * 10 + (t[i] - 48)
    elif s.tl == 14:
        y = (t[0] - 48) * 1000 + (t[1] - 48) * 100 + (t[2] - 48) * 10 + (t[3] - 48)
        mo = (t[4] - 48) * 10 + (t[5] - 48)
        d = (t[6] - 48) * 10 + (t[7] - 48)
        h = (t[8] - 48) * 10 + (t[9] - 48)
        mi = (t[10] - 48) * 10 + (t[11] - 48)
        se = (t[12] - 48) * 10 + (t[13] - 48)
        if y < 1 or mo < 1 or mo > 12 or d < 1 or h > 23 or mi > 59 or se > 59:
            return 1
        mdays = 30 if mo in (4, 6, 9, 11) else (28 if mo == 2 else 31)
        if mo == 2 and (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
            mdays = 29
        if d > mdays:
            return 1
        v = zr_days(y, mo, d) * 86400 + h * 3600 + mi * 60 + se
    else:
        return 1
    if v < 0 or v > 0xFFFFFFFFLL:
        return 1
    zsb_u32be(&s.rd, <uint32_t>v)
    return 0


cdef int zr_salt(ZoneScanner s) except -1:
    """NSEC3/NSEC3PARAM salt: '-' (empty) or hex, with its length byte (RFC 5155 §3.3)."""
    cdef Py_ssize_t i
    cdef int hi, lo
    if s.tok() != ZT_WORD or s.tesc:
        return 1
    if s.tl == 1 and s.ts[0] == 45:
        zsb_u8(&s.rd, 0)
        return 0
    if s.tl % 2 or s.tl > 510:
        return 1
    zsb_u8(&s.rd, s.tl // 2)
    for i in range(0, s.tl, 2):
        hi = zr_hexval(s.ts[i])
        lo = zr_hexval(s.ts[i + 1])
        if hi < 0 or lo < 0:
            return 1
        zsb_u8(&s.rd, (hi << 4) | lo)
    return 0


cdef int zr_b32hex_val(int c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    c = zs_lower(c)
    if 97 <= c <= 118:
        return c - 87
    return -1


cdef int zr_next_hashed(ZoneScanner s) except -1:
    """NSEC3 next hashed owner: unpadded base32hex (RFC 4648 §7), canonical final bits."""
    cdef size_t at
    cdef uint64_t acc = 0
    cdef int bits = 0, v
    cdef Py_ssize_t i, n = 0
    if s.tok() != ZT_WORD or s.tesc or s.tl == 0 or s.tl > 408:
        return 1
    at = s.rd.len
    zsb_u8(&s.rd, 0)
    for i in range(s.tl):
        v = zr_b32hex_val(s.ts[i])
        if v < 0:
            return 1
        acc = (acc << 5) | <uint64_t>v
        bits += 5
        if bits >= 8:
            bits -= 8
            zsb_u8(&s.rd, (acc >> bits) & 0xFF)
            n += 1
    if bits >= 5 or (acc & ((1u << bits) - 1)) or n > 255:
        return 1               # a dangling character or non-zero unused bits: dnspython decides
    # only lengths that are whole base32 groups or their standard unpadded forms
    if s.tl % 8 not in (0, 2, 4, 5, 7):
        return 1
    s.rd.data[at] = <unsigned char>n
    return 0


cdef int zr_generic(ZoneScanner s, int rtype) except -1:
    """RFC 3597 §5 `\\# <length> <hex>`, only for types dnspython has no class for (a known
    type's wire form must be checked by its own parser: dnspython does that)."""
    cdef unsigned long long want
    cdef Py_ssize_t n
    if zr_uint(s, 65535, &want):
        return 1
    if not s.hooks.is_generic(rtype):
        return 1
    n = zr_hex_rest(s)
    if n < 0 or <unsigned long long>n != want:
        return 1
    return 0


cdef int zr_rdata(ZoneScanner s, int rtype) except -1:
    """The record's RDATA into s.rd (whose length is 0); 0 done, 1 not sure (dnspython)."""
    cdef int k, i, part, v, ndig, at
    cdef char buf[48]
    cdef uint8_t a6[16]
    cdef unsigned long long u
    cdef Py_ssize_t n
    cdef const unsigned char* save_p = s.p
    cdef int save_line = s.line, save_multi = s.multiline
    k = s.tok()
    if k == ZT_WORD and s.tl == 2 and s.ts[0] == 92 and s.ts[1] == 35:     # \#
        return zr_generic(s, rtype)
    s.p, s.line, s.multiline = save_p, save_line, save_multi                  # unread it
    if rtype == 1:                                   # A: strict dotted quad, as dns.ipv4
        if s.tok() != ZT_WORD or s.tesc or s.tl > 15:
            return 1
        part = 0
        ndig = 0
        v = 0
        for i in range(s.tl + 1):
            if i == s.tl or s.ts[i] == 46:
                if ndig == 0 or v > 255 or part > 3:
                    return 1
                zsb_u8(&s.rd, v)
                part += 1
                ndig = 0
                v = 0
            elif zs_digit(s.ts[i]):
                if ndig == 1 and v == 0:
                    return 1                          # leading zero
                v = v * 10 + (s.ts[i] - 48)
                ndig += 1
            else:
                return 1
        if part != 4:
            return 1
        return zr_end(s)
    if rtype == 28:                                  # AAAA: hex and colons only, via libc
        if s.tok() != ZT_WORD or s.tesc or s.tl > 39:
            return 1
        for i in range(s.tl):
            if s.ts[i] != 58 and zr_hexval(s.ts[i]) < 0:
                return 1
            buf[i] = s.ts[i]
        buf[s.tl] = 0
        if zs_inet_pton(10, buf, a6) != 1:
            return 1
        zsb_put(&s.rd, a6, 16)
        return zr_end(s)
    if rtype == 2 or rtype == 5 or rtype == 12 or rtype == 39:     # NS CNAME PTR DNAME
        return zr_name(s) or zr_end(s)
    if rtype == 15:                                  # MX
        return zr_u16(s) or zr_name(s) or zr_end(s)
    if rtype == 16:
        return zr_txt(s)
    if rtype == 6:                                   # SOA
        if zr_name(s) or zr_name(s) or zr_uint(s, 0xFFFFFFFFLL, &u):
            return 1
        zsb_u32be(&s.rd, <uint32_t>u)
        return zr_ttl(s) or zr_ttl(s) or zr_ttl(s) or zr_ttl(s) or zr_end(s)
    if rtype == 33:                                  # SRV
        return zr_u16(s) or zr_u16(s) or zr_u16(s) or zr_name(s) or zr_end(s)
    if rtype == 257:                                 # CAA
        if zr_u8(s):
            return 1
        k = s.tok()
        if (k != ZT_WORD and k != ZT_QSTR) or s.tesc or s.tl == 0 or s.tl > 255:
            return 1
        zsb_u8(&s.rd, s.tl)
        for i in range(s.tl):
            v = zs_lower(s.ts[i])
            if not (zs_digit(v) or 97 <= v <= 122):
                return 1
        zsb_put(&s.rd, s.ts, s.tl)
        k = s.tok()
        if (k != ZT_WORD and k != ZT_QSTR) or zr_unescape(s, 65535) < 0:
            return 1
        return zr_end(s)
    if rtype == 43:                                  # DS
        if zr_u16(s) or zr_u8(s) or zr_uint(s, 255, &u):
            return 1
        zsb_u8(&s.rd, <unsigned int>u)
        n = zr_hex_rest(s)
        if u == 1 and n == 20 or u == 2 and n == 32 or u == 3 and n == 32 or u == 4 and n == 48:
            return 0
        return 1
    if rtype == 48:                                  # DNSKEY
        if zr_u16(s) or zr_u8(s) or zr_u8(s):
            return 1
        return 0 if zr_b64_rest(s) > 0 else 1
    if rtype == 46:                                  # RRSIG
        if s.tok() != ZT_WORD or s.tesc:
            return 1
        v = zs_type_fast(s.ts, s.tl)
        if v < 0:
            return 1
        zsb_u16be(&s.rd, v)
        if (zr_u8(s) or zr_u8(s) or zr_ttl(s) or zr_sigtime(s) or zr_sigtime(s) or zr_u16(s)
                or zr_name(s)):
            return 1
        return 0 if zr_b64_rest(s) > 0 else 1
    if rtype == 47:                                  # NSEC
        return zr_name(s) or zr_bitmap(s)
    if rtype == 50:                                  # NSEC3
        return (zr_u8(s) or zr_u8(s) or zr_u16(s) or zr_salt(s) or zr_next_hashed(s)
                or zr_bitmap(s))
    if rtype == 51:                                  # NSEC3PARAM
        return zr_u8(s) or zr_u8(s) or zr_u16(s) or zr_salt(s) or zr_end(s)
    if rtype == 52:                                  # TLSA
        if zr_u8(s) or zr_u8(s) or zr_u8(s):
            return 1
        return 0 if zr_hex_rest(s) > 0 else 1
    return 1
