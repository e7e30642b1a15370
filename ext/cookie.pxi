# DNS COOKIE server cookies (RFC 7873, constructed as RFC 9018 says so every pop53 of an anycast
# fleet sharing the secret recognises every other's): 16 bytes = version 1, three reserved
# bytes, a timestamp (seconds, network order) and SipHash-2-4 over (client cookie | version |
# reserved | timestamp | client address) under the 16-byte server secret.  A cookie is taken
# while it is at most an hour old and at most five minutes ahead (RFC 9018 §4.3), under the
# current or the previous secret (rotation).  A valid one proves the client's address, which
# lets response rate limiting pass it (rrl.pxi).  A missing or invalid server cookie never
# refuses a query (RFC 7873 §5.2.3): the answer carries a fresh one.

cdef extern from "p53_siphash.h" nogil:
    void p53_siphash24(const uint8_t* inp, size_t n, const uint8_t* key, uint8_t* out)


cdef void cookie_hash(const uint8_t* secret, const uint8_t* client_cookie, const uint8_t* head,
                      const uint8_t* ip, uint32_t iplen, uint8_t* out8) noexcept nogil:
    """SipHash-2-4(client cookie | head (version, reserved, timestamp: 8 bytes) | ip)."""
    cdef uint8_t buf[32]
    memcpy(buf, client_cookie, 8)
    memcpy(buf + 8, head, 8)
    memcpy(buf + 16, ip, iplen)
    p53_siphash24(buf, 16 + iplen, secret, out8)


cdef void cookie_make(const uint8_t* secret, const uint8_t* client_cookie, const uint8_t* ip,
                      uint32_t iplen, uint32_t now, uint8_t* out16) noexcept nogil:
    """A fresh server cookie (16 bytes) for this client cookie and address."""
    out16[0] = 1
    out16[1] = out16[2] = out16[3] = 0
    out16[4] = now >> 24
    out16[5] = (now >> 16) & 0xFF
    out16[6] = (now >> 8) & 0xFF
    out16[7] = now & 0xFF
    cookie_hash(secret, client_cookie, out16, ip, iplen, out16 + 8)


cdef bint cookie_valid(const rcfg_t* cfg, const uint8_t* cookie, uint32_t cookie_len,
                       const uint8_t* ip, uint32_t iplen, uint32_t now) noexcept nogil:
    """A client cookie followed by a version-1 server cookie of ours, in its time window."""
    cdef uint8_t h[8]
    cdef uint32_t ts
    cdef int64_t age
    if cookie_len != 24 or cookie[8] != 1:
        return False
    ts = (<uint32_t>cookie[12] << 24) | (<uint32_t>cookie[13] << 16) | (<uint32_t>cookie[14] << 8) | cookie[15]
    age = <int32_t>(now - ts)                   # serial arithmetic: the 2^32 wrap is an hour too
    if age > 3600 or age < -300:
        return False
    cookie_hash(cfg.cookie_secret, cookie, cookie + 8, ip, iplen, h)
    if memcmp(h, cookie + 16, 8) == 0:
        return True
    if cfg.cookie_has_prev:
        cookie_hash(cfg.cookie_prev, cookie, cookie + 8, ip, iplen, h)
        return memcmp(h, cookie + 16, 8) == 0
    return False


cdef inline uint32_t wall_seconds() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME_COARSE, &ts)
    return <uint32_t>ts.tv_sec
