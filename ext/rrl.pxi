# Response rate limiting (RRL), the admission stage after the answer: a reflection attack sends
# small queries with a victim's source address and wants big answers sent there.  Each UDP
# response is accounted to a bucket keyed by (client prefix, response kind, name), as BIND and
# Knot do:
#   answer        NOERROR with answers           the query name
#   referral      NOERROR, no AA, authority      the delegation point (first authority owner)
#   nodata        NOERROR, no answers            the query name
#   nxdomain      NXDOMAIN                       the zone (first authority owner: the SOA's)
#   error         any other rcode                none (prefix and kind only)
# so a random-subdomain flood still lands in one bucket per zone.  Clients in an exempt prefix
# (by default loopback, where the monitoring agent probes from) are never limited.  Over its rate a response is
# dropped, except every `slip`-th, which goes out as an empty TC=1 reply: a real client behind a
# spoofed prefix retries over TCP (RFC 7766), which is never limited.  Everything is read from
# the reply we wrote, so nothing here trusts the query's bytes beyond what the writer echoed.

cdef extern from "p53_rrl.h" nogil:
    ctypedef struct p53_rrl_bucket:
        uint64_t key
        uint64_t state
    int32_t p53_rrl_take(p53_rrl_bucket* b, uint64_t key, uint32_t now, int32_t rate)

cdef enum:
    RRL_PASS = 0
    RRL_SLIP = 1
    RRL_DROP = 2
    RRL_ANSWER = 1
    RRL_REFERRAL = 2
    RRL_NODATA = 3
    RRL_NXDOMAIN = 4
    RRL_ERROR = 5

cdef struct rrl_t:
    p53_rrl_bucket* table
    uint64_t mask
    int32_t rate              # responses per second per bucket; 0 = off
    uint32_t slip             # every slip-th limited response is sent truncated; 0 = none
    uint32_t v4_bits
    uint32_t v6_bits
    uint32_t seed
    uint32_t n_exempt         # exempt prefixes (at most MAX_EXEMPT)
    uint8_t ex_len[32]        # 4 or 16 address bytes
    uint8_t ex_bits[32]
    uint8_t ex_addr[32][16]

cdef enum:
    MAX_EXEMPT = 32


cdef const uint8_t* V4_MAPPED = b"\0\0\0\0\0\0\0\0\0\0\xff\xff"


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    """splitmix64's finalizer: every input bit reaches every output bit."""
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef uint32_t rrl_name_at(const uint8_t* r, uint32_t len, uint32_t pos, uint32_t seed,
                          uint32_t* end) noexcept nogil:
    """The image hash of the (lowercased) name at r[pos], following compression pointers
    backwards only, at most 255 bytes; *end = the offset after it in place (0 when malformed:
    then the hash covers what was read, which only makes the bucket coarser)."""
    cdef uint8_t buf[256]
    cdef uint32_t n = 0, p = pos, hops = 0, i, lab
    end[0] = 0
    while p < len:
        lab = r[p]
        if lab & 0xC0 == 0xC0:
            if p + 1 >= len or hops >= 16:
                break
            if end[0] == 0:
                end[0] = p + 2
            i = ((lab & 0x3F) << 8) | r[p + 1]
            if i >= p:
                break
            p = i
            hops += 1
            continue
        if lab > 63 or p + 1 + lab > len or n + 1 + lab > 255:
            break
        buf[n] = <uint8_t>lab
        for i in range(lab):
            buf[n + 1 + i] = LOWER[r[p + 1 + i]]
        n += 1 + lab
        p += 1 + lab
        if lab == 0:
            if end[0] == 0:
                end[0] = p
            break
    return name_hash(buf, n, seed) if n else 0


cdef int rrl_classify(const uint8_t* r, uint32_t len, uint32_t seed, uint32_t* name) noexcept nogil:
    """The response kind and its name hash (see the table at the top)."""
    cdef uint32_t qend = 0, q
    cdef uint8_t rcode
    name[0] = 0
    if len < 12:
        return RRL_ERROR
    rcode = r[3] & 0x0F
    if rcode != 0 and rcode != 3:
        return RRL_ERROR
    q = rrl_name_at(r, len, 12, seed, &qend)
    if rd16(r + 4) != 1 or qend == 0 or qend + 4 > len:
        return RRL_ERROR
    qend += 4
    if rcode == 0 and rd16(r + 6) > 0:
        name[0] = q
        return RRL_ANSWER
    if rcode == 0 and not (r[2] & 0x04) and rd16(r + 8) > 0:
        name[0] = rrl_name_at(r, len, qend, seed, &q)
        return RRL_REFERRAL
    if rcode == 0:
        name[0] = q
        return RRL_NODATA
    name[0] = rrl_name_at(r, len, qend, seed, &q) if rd16(r + 8) > 0 else q
    return RRL_NXDOMAIN


cdef const uint8_t* client_addr(const uint8_t* sa, uint32_t* nbytes) noexcept nogil:
    """The client address in a sockaddr_in/in6 and its length (4 or 16; 0 for anything else).
    An IPv4-mapped IPv6 client counts as IPv4."""
    cdef uint16_t family = (<const uint16_t*>sa)[0]
    nbytes[0] = 0
    if family == 2:                             # AF_INET: sin_addr at offset 4
        nbytes[0] = 4
        return sa + 4
    if family == 10:                            # AF_INET6: sin6_addr at offset 8
        if memcmp(sa + 8, V4_MAPPED, 12) == 0:
            nbytes[0] = 4
            return sa + 20
        nbytes[0] = 16
        return sa + 8
    return sa


cdef inline bint prefix_eq(const uint8_t* a, const uint8_t* b, uint32_t bits) noexcept nogil:
    cdef uint32_t full = bits >> 3, rest = bits & 7
    if memcmp(a, b, full) != 0:
        return False
    return rest == 0 or ((a[full] ^ b[full]) & <uint8_t>(0xFF << (8 - rest))) == 0


cdef bint rrl_exempt(const rrl_t* rl, const uint8_t* a, uint32_t nbytes) noexcept nogil:
    cdef uint32_t i
    for i in range(rl.n_exempt):
        if rl.ex_len[i] == nbytes and prefix_eq(a, rl.ex_addr[i], rl.ex_bits[i]):
            return True
    return False


cdef uint64_t rrl_key(const rrl_t* rl, const uint8_t* a, uint32_t nbytes, int kind,
                      uint32_t name) noexcept nogil:
    """(client prefix, kind, name) as one nonzero 64-bit key; a: the client address."""
    cdef uint64_t h = <uint64_t>rl.seed * <uint64_t>0x9e3779b97f4a7c15 + <uint64_t>kind
    cdef uint32_t bits = rl.v4_bits if nbytes == 4 else rl.v6_bits
    cdef uint32_t i
    cdef uint8_t b
    h = mix64(h ^ (<uint64_t>nbytes << 56))
    for i in range(nbytes):
        if bits >= 8 * (i + 1):
            b = a[i]
        elif bits > 8 * i:
            b = a[i] & <uint8_t>(0xFF << (8 - (bits - 8 * i)))
        else:
            b = 0
        h = mix64(h ^ b)
    h = mix64(h ^ (<uint64_t>name << 8))
    return h if h else 1


cdef int rrl_decide(rrl_t* rl, uint32_t now, const uint8_t* sa, const uint8_t* reply,
                    uint32_t len, uint32_t* slip_ctr) noexcept nogil:
    """RRL_PASS, RRL_SLIP or RRL_DROP for this response to this client."""
    cdef uint32_t name, nbytes
    cdef const uint8_t* a = client_addr(sa, &nbytes)
    cdef int kind
    cdef uint64_t key
    if rl.n_exempt and rrl_exempt(rl, a, nbytes):
        return RRL_PASS
    kind = rrl_classify(reply, len, rl.seed, &name)
    key = rrl_key(rl, a, nbytes, kind, name)
    if p53_rrl_take(&rl.table[key & rl.mask], key, now, rl.rate) >= 0:
        return RRL_PASS
    if rl.slip:
        slip_ctr[0] += 1
        if slip_ctr[0] >= rl.slip:
            slip_ctr[0] = 0
            return RRL_SLIP
    return RRL_DROP


cdef uint32_t rrl_truncate(uint8_t* r, uint32_t len, bint edns, uint16_t payload) noexcept nogil:
    """Rewrite a reply in place as the slip reply: header and question, TC=1, no records but
    an OPT when the query had one (RFC 6891 §6.1.1).  Returns its length."""
    cdef uint32_t qend = 0
    rrl_name_at(r, len, 12, 0, &qend)
    if qend == 0 or qend + 4 > len:
        qend = 12
    else:
        qend += 4
    r[2] |= 0x02                                # TC
    r[6] = r[7] = r[8] = r[9] = r[10] = r[11] = 0
    if edns:
        r[qend] = 0                             # root owner, type OPT, class = payload size
        r[qend + 1] = 0
        r[qend + 2] = 41
        r[qend + 3] = payload >> 8
        r[qend + 4] = payload & 0xFF
        memset(r + qend + 5, 0, 6)              # extended rcode, version, flags, RDLENGTH
        r[11] = 1
        qend += 11
    return qend


cdef class RateLimiter:
    """One RRL table for all workers of a server (see the top of this file)."""
    cdef rrl_t rl
    cdef uint32_t _slip_ctr
    cdef readonly int rate
    cdef readonly int slip

    def __cinit__(self, int rate, int slip=2, int ipv4_prefix=24, int ipv6_prefix=56,
                  int table_size=65536, uint32_t seed=0, exempt=()):
        import ipaddress
        nets = [ipaddress.ip_network(e, strict=False) for e in exempt]
        if len(nets) > MAX_EXEMPT:
            raise ValueError(f"at most {MAX_EXEMPT} exempt prefixes")
        if rate < 1 or rate > 1_000_000:
            raise ValueError("rate must be within 1..1000000")
        if slip < 0 or slip > 100:
            raise ValueError("slip must be within 0..100")
        if not 0 <= ipv4_prefix <= 32 or not 0 <= ipv6_prefix <= 128:
            raise ValueError("prefix lengths: IPv4 0..32, IPv6 0..128")
        if table_size < 1024 or table_size > (1 << 26) or table_size & (table_size - 1):
            raise ValueError("table_size must be a power of two within 1024..67108864")
        self.rl.table = <p53_rrl_bucket*>calloc(table_size, sizeof(p53_rrl_bucket))
        if self.rl.table == NULL:
            raise MemoryError()
        self.rl.mask = table_size - 1
        self.rl.rate = rate
        self.rl.slip = slip
        self.rl.v4_bits = ipv4_prefix
        self.rl.v6_bits = ipv6_prefix
        self.rl.seed = seed
        self.rl.n_exempt = len(nets)
        for i, net in enumerate(nets):
            raw = net.network_address.packed
            self.rl.ex_len[i] = len(raw)
            self.rl.ex_bits[i] = net.prefixlen
            memcpy(self.rl.ex_addr[i], <const char*>raw, len(raw))
        self.rate = rate
        self.slip = slip

    def __dealloc__(self):
        free(self.rl.table)

    cdef rrl_t* ptr(self):
        return &self.rl

    def account(self, const uint8_t[::1] sockaddr not None, const uint8_t[::1] reply not None,
                uint32_t now, bint edns=False, uint16_t payload=1232):
        """One response through the limiter, as the worker loop does it (for tests):
        ("pass" | "slip" | "drop", the reply to send or None)."""
        cdef uint32_t ctr = self._slip_ctr
        cdef uint8_t buf[65535 + 11]
        cdef uint32_t n = <uint32_t>reply.shape[0]
        cdef int d
        if sockaddr.shape[0] < 28 or n > 65535:
            raise ValueError("a sockaddr_in/in6 (28 bytes of sockaddr_storage) and a reply")
        memset(buf, 0, 12 + 11)                  # a reply shorter than a header reads as zeros
        if n:
            memcpy(buf, &reply[0], n)
        d = rrl_decide(&self.rl, now, &sockaddr[0], buf, n, &ctr)
        self._slip_ctr = ctr
        if d == RRL_DROP:
            return "drop", None
        if d == RRL_SLIP:
            n = rrl_truncate(buf, n, edns, payload)
            return "slip", PyBytes_FromStringAndSize(<const char*>buf, n)
        return "pass", PyBytes_FromStringAndSize(<const char*>buf, n)

    def bench(self, const uint8_t[::1] sockaddr not None, const uint8_t[::1] reply not None,
              uint32_t n):
        """Nanoseconds per decision for n decisions on one reply, the client address varied
        over its last two bytes (bench/micro/rrl.py: what the limiter adds to a UDP response)."""
        cdef uint8_t sa[28]
        cdef uint32_t i, ctr = 0, now = 1
        cdef int sink = 0
        cdef timespec t0, t1
        if sockaddr.shape[0] < 28 or reply.shape[0] < 12:
            raise ValueError("a 28-byte sockaddr and a reply")
        memcpy(sa, &sockaddr[0], 28)
        with nogil:
            clock_gettime(CLOCK_MONOTONIC, &t0)
            for i in range(n):
                sa[7] = <uint8_t>i              # the last IPv4 byte or an IPv6 address byte
                sa[6] = <uint8_t>(i >> 8)
                sink += rrl_decide(&self.rl, now + (i >> 20), sa, &reply[0],
                                   <uint32_t>reply.shape[0], &ctr)
            clock_gettime(CLOCK_MONOTONIC, &t1)
        return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n + 0 * sink

    def classify(self, const uint8_t[::1] reply not None):
        """(kind, name hash) of a reply, kind one of answer/referral/nodata/nxdomain/error."""
        cdef uint32_t name = 0
        cdef int k = rrl_classify(&reply[0], <uint32_t>reply.shape[0], self.rl.seed, &name) \
            if reply.shape[0] else RRL_ERROR
        return ("", "answer", "referral", "nodata", "nxdomain", "error")[k], name
