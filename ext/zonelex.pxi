# zonelex.pxi: the zone-file scanner's primitives (issue 15 point 2): growable output
# buffers, names in wire form, TTLs, type mnemonics, the exceptions.  The scanner itself
# (its tokenizer, directives and record assembly) is zonescan.pxi; RDATA: zonerdata.pxi.

from libc.stdlib cimport realloc
from libc.string cimport memchr

cdef extern from "<arpa/inet.h>" nogil:
    int zs_inet_pton "inet_pton"(int af, const char* src, void* dst)

cdef enum:
    ZT_EOF = 0
    ZT_EOL = 1
    ZT_WORD = 2
    ZT_QSTR = 3
    ZT_WS = 4

cdef enum:
    ZS_MAX_INCLUDE = 32


class ZoneScanError(Exception):
    """A zone file error: (message, file, line, owner text or None)."""


class ZoneScanFallback(Exception):
    """The file needs dnspython's reader (non-ASCII text in a token, $UNICODE)."""


cdef struct zs_buf_t:
    unsigned char* data
    size_t len
    size_t cap


cdef int zsb_grow(zs_buf_t* b, size_t n) except -1:
    cdef size_t cap = b.cap * 2 if b.cap else 4096
    cdef unsigned char* d
    while cap < b.len + n:
        cap *= 2
    d = <unsigned char*>realloc(b.data, cap)
    if d == NULL:
        raise MemoryError()
    b.data = d
    b.cap = cap
    return 0


cdef inline int zsb_put(zs_buf_t* b, const void* p, size_t n) except -1:
    if b.len + n > b.cap:
        zsb_grow(b, n)
    memcpy(b.data + b.len, p, n)
    b.len += n
    return 0


cdef inline int zsb_u8(zs_buf_t* b, unsigned int v) except -1:
    cdef uint8_t x = <uint8_t>v
    return zsb_put(b, &x, 1)


cdef inline int zsb_u16be(zs_buf_t* b, unsigned int v) except -1:
    cdef uint8_t x[2]
    x[0] = (v >> 8) & 0xFF
    x[1] = v & 0xFF
    return zsb_put(b, x, 2)


cdef inline int zsb_u32be(zs_buf_t* b, uint32_t v) except -1:
    cdef uint8_t x[4]
    x[0] = (v >> 24) & 0xFF
    x[1] = (v >> 16) & 0xFF
    x[2] = (v >> 8) & 0xFF
    x[3] = v & 0xFF
    return zsb_put(b, x, 4)


cdef bytes zsb_bytes(zs_buf_t* b):
    return PyBytes_FromStringAndSize(<char*>b.data, b.len) if b.len else b""


cdef bytes zsb_take(zs_buf_t* b):
    """zsb_bytes, then the buffer is freed (empty again).  A big buffer is copied 16 MiB at a
    time and the whole pages copied are given back at once (MADV_DONTNEED inside the block, as
    glibc's own trim does with free memory; the block is freed right after): a signed zone's
    RDATA, its biggest column (~200 MiB for a million names), is not held twice (issue 12)."""
    cdef bytes out
    cdef char* dst
    cdef size_t at = 0, n, lo, hi, page = 4096
    if b.len < (32 << 20):
        out = zsb_bytes(b)
    else:
        out = PyBytes_FromStringAndSize(NULL, b.len)
        dst = PyBytes_AS_STRING(out)
        lo = (<size_t>b.data + page - 1) & ~(page - 1)       # the block's first whole page
        while at < b.len:
            n = min(b.len - at, <size_t>16 << 20)
            memcpy(dst + at, b.data + at, n)
            at += n
            hi = (<size_t>b.data + at) & ~(page - 1)         # whole pages copied so far
            if hi > lo:
                madvise(<void*>lo, hi - lo, MADV_DONTNEED)
                lo = hi
    free(b.data)
    b.data, b.len, b.cap = NULL, 0, 0
    return out


cdef inline int zs_lower(int c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline uint32_t zs_fmix(uint32_t h) noexcept nogil:
    """MurmurHash3's finalizer: FNV-1a's low bits alone cluster in a linear-probing table."""
    h ^= h >> 16
    h *= 0x85ebca6bu
    h ^= h >> 13
    h *= 0xc2b2ae35u
    h ^= h >> 16
    return h


cdef inline bint zs_digit(int c) noexcept nogil:
    return 48 <= c <= 57


cdef bint zs_ieq(const unsigned char* s, Py_ssize_t n, const char* word) noexcept nogil:
    """Token s[:n] equals the upper-case ASCII `word`, ignoring case."""
    cdef Py_ssize_t i = 0
    while i < n:
        if word[i] == 0 or zs_lower(s[i]) != zs_lower(<unsigned char>word[i]):
            return False
        i += 1
    return word[n] == 0


cdef int zs_name(const unsigned char* s, Py_ssize_t n, const unsigned char* org, int olen,
                 unsigned char* out) noexcept nogil:
    """\\brief Text name s[:n] (RFC 1035 §5.1: \\DDD and \\X escapes, '@', relative to `org`)
    to wire form in out[0:256].  Returns its length; -1 malformed (dnspython says why), -2 a
    non-ASCII byte (the file goes to dnspython: IDNA), -3 a raw NUL byte, -4 relative with no
    origin."""
    cdef Py_ssize_t i = 0
    cdef int o = 1, lab = 0, llen = 0, c, v
    if n == 1 and s[0] == 64:            # '@'
        if olen == 0:
            return -4
        memcpy(out, org, olen)
        return olen
    if n == 1 and s[0] == 46:            # '.'
        out[0] = 0
        return 1
    while i < n:
        c = s[i]
        i += 1
        if c >= 0x80:
            return -2
        if c == 0:
            return -3
        if c == 46:                      # '.' ends a label
            if llen == 0:
                return -1
            out[lab] = llen
            lab = o
            o += 1
            llen = 0
            if i == n:                   # a trailing dot: absolute
                out[lab] = 0
                return o if o <= 255 else -1
            continue
        if c == 92:                      # '\\'
            if i >= n:
                return -1
            c = s[i]
            i += 1
            if c >= 0x80:
                return -2
            if zs_digit(c):
                if i + 2 > n or not zs_digit(s[i]) or not zs_digit(s[i + 1]):
                    return -1
                v = (c - 48) * 100 + (s[i] - 48) * 10 + (s[i + 1] - 48)
                i += 2
                if v > 255:
                    return -1
                c = v
        if llen >= 63 or o >= 255:
            return -1
        out[o] = c
        o += 1
        llen += 1
    if llen == 0:
        return -1
    out[lab] = llen
    if olen == 0:
        return -4
    if o + olen > 255:
        return -1
    memcpy(out + o, org, olen)
    return o + olen


cdef bint zs_name_under(const unsigned char* n, int nlen, const unsigned char* z, int zlen) noexcept nogil:
    """Wire name n is z or below it (case-insensitive, on label boundaries)."""
    cdef int k = 0, i
    while k < nlen:
        if nlen - k == zlen:
            for i in range(zlen):
                if zs_lower(n[k + i]) != zs_lower(z[i]):
                    return False
            return True
        if n[k] == 0:
            return False
        k += n[k] + 1
    return False


cdef long long zs_ttl(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """dns.ttl.from_text: digits, or BIND units (1w2d3h4m5s).  -1 when not a TTL."""
    cdef long long total = 0, cur = 0
    cdef bint need = True, digits = True
    cdef Py_ssize_t i
    cdef int c
    if n == 0:
        return -1
    for i in range(n):
        if not zs_digit(s[i]):
            digits = False
    if digits:
        if n > 10:
            return -1
        for i in range(n):
            total = total * 10 + (s[i] - 48)
        return total if total <= 0xFFFFFFFFLL else -1
    for i in range(n):
        c = s[i]
        if zs_digit(c):
            cur = cur * 10 + (c - 48)
            if cur > 0xFFFFFFFFLL:
                return -1
            need = False
            continue
        if need:
            return -1
        c = zs_lower(c)
        if c == 119:
            total += cur * 604800
        elif c == 100:
            total += cur * 86400
        elif c == 104:
            total += cur * 3600
        elif c == 109:
            total += cur * 60
        elif c == 115:
            total += cur
        else:
            return -1
        if total > 0xFFFFFFFFLL:
            return -1
        cur = 0
        need = True
    if not need:
        return -1
    return total


cdef int zs_type_fast(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """The common type mnemonics without a Python call; -1 for anything else."""
    if n == 1 and zs_lower(s[0]) == 97:
        return 1
    if zs_ieq(s, n, b"AAAA"): return 28
    if zs_ieq(s, n, b"NS"): return 2
    if zs_ieq(s, n, b"CNAME"): return 5
    if zs_ieq(s, n, b"TXT"): return 16
    if zs_ieq(s, n, b"MX"): return 15
    if zs_ieq(s, n, b"SOA"): return 6
    if zs_ieq(s, n, b"SRV"): return 33
    if zs_ieq(s, n, b"PTR"): return 12
    if zs_ieq(s, n, b"RRSIG"): return 46
    if zs_ieq(s, n, b"NSEC"): return 47
    if zs_ieq(s, n, b"NSEC3"): return 50
    if zs_ieq(s, n, b"DS"): return 43
    if zs_ieq(s, n, b"DNSKEY"): return 48
    if zs_ieq(s, n, b"NSEC3PARAM"): return 51
    if zs_ieq(s, n, b"TLSA"): return 52
    if zs_ieq(s, n, b"CAA"): return 257
    if zs_ieq(s, n, b"DNAME"): return 39
    if zs_ieq(s, n, b"SVCB"): return 64
    if zs_ieq(s, n, b"HTTPS"): return 65
    if zs_ieq(s, n, b"HINFO"): return 13
    if zs_ieq(s, n, b"NAPTR"): return 35
    if zs_ieq(s, n, b"SSHFP"): return 44
    if zs_ieq(s, n, b"CDS"): return 59
    if zs_ieq(s, n, b"CDNSKEY"): return 60
    if zs_ieq(s, n, b"SPF"): return 99
    return -1




cdef bint zs_name_ieq(const unsigned char* a, const unsigned char* b, int n) noexcept nogil:
    for i in range(n):
        if zs_lower(a[i]) != zs_lower(b[i]):
            return False
    return True
