# Per-zone counters and the answer-latency histogram (issue 14 point 12), counted in the data
# plane: plain increments into the answering reader's own arrays (a UDP worker, a TCP loop, the
# handed-over TCP connections), no atomics, no Python, no cache line shared between threads.
# The control plane sums the readers' arrays on scrape (observe.pxi: ZoneStats, latency).
#
# Per zone: every reply to a query that reached a zone (the longest served suffix, as resolve()
# in query.pxi finds it; a DS query at a child apex counts for the parent that answers it)
# counts once by rcode bucket and once by query-type bucket.  Queries in no zone (REFUSED),
# malformed ones and CHAOS queries count in the server-wide counters only.
#
# Slots: a zone keeps its counter slot across reloads.  The control plane gives each zone name a
# slot the first time an image carries it and writes that image's zone index -> slot table
# (image_t.zslot) before the image is published, so a worker reads the zone index and the table
# from the one image pointer it loaded for the batch: a reload never moves a count to another
# zone.  Slot 0 is "(other)": zones past the capacity, or an image published without a table.
#
# Latency: per batch.  A UDP worker reads the monotonic clock when recvmmsg returns and again
# after sendmmsg; every reply of the batch is counted with that duration (each of them waited
# from its batch's receive to the send).  A TCP loop does the same per epoll batch.  Two
# clock reads (vDSO) per batch, not per query.

cdef extern from *:
    """
    /* answer-latency bucket of a duration: k < 21 holds ns < 2**(10+k), 21 the rest */
    static inline unsigned p53_lat_bucket(uint64_t ns) {
        unsigned b = ns ? 64 - (unsigned)__builtin_clzll(ns) : 0;   /* bit length */
        b = b > 10 ? b - 10 : 0;
        return b < 21 ? b : 21;
    }
    """
    unsigned p53_lat_bucket(uint64_t ns) nogil

# the query-type buckets: these, then "other" (bucket ZS_TYPES - 1)
cdef uint16_t ZS_TYPE_LIST[15]
ZS_TYPE_LIST[:] = [1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 48, 64, 65, 257, 255]
ZS_TYPE_NAMES = ("A", "NS", "CNAME", "SOA", "PTR", "MX", "TXT", "AAAA", "SRV", "DS", "DNSKEY",
                 "SVCB", "HTTPS", "CAA", "ANY", "other")
ZS_RCODE_NAMES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
                  "other")
cdef uint8_t ZS_TYPE_OF[256]
memset(ZS_TYPE_OF, ZS_TYPES - 1, sizeof(ZS_TYPE_OF))
for _i in range(14 + 1):
    if ZS_TYPE_LIST[_i] < 256:
        ZS_TYPE_OF[ZS_TYPE_LIST[_i]] = _i


cdef inline void zs_count(stats_t* st, const image_t* img, uint32_t zone, uint8_t rcode,
                          uint16_t qtype) noexcept nogil:
    """Count one reply for the zone at index `zone` of `img`."""
    cdef uint32_t slot = 0
    cdef uint64_t* z
    if img.zslot != NULL and zone < img.n_zones:
        slot = img.zslot[zone]
        if slot >= st.zs_cap:
            slot = 0
    z = st.zs + <size_t>slot * ZS_WIDTH
    z[rcode if rcode < ZS_RCODES - 1 else ZS_RCODES - 1] += 1
    if qtype < 256:
        z[ZS_RCODES + ZS_TYPE_OF[qtype]] += 1
    elif qtype == 257:
        z[ZS_RCODES + 13] += 1          # CAA
    else:
        z[ZS_RCODES + ZS_TYPES - 1] += 1


cdef inline void lat_add(stats_t* st, const timespec* t0, uint64_t n) noexcept nogil:
    """Count n replies that took from t0 (CLOCK_MONOTONIC) until now."""
    cdef timespec t1
    cdef int64_t ns
    if n == 0:
        return
    clock_gettime(CLOCK_MONOTONIC, &t1)
    ns = (<int64_t>t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec)
    if ns < 0:
        ns = 0
    st.lat[p53_lat_bucket(<uint64_t>ns)] += n
    st.lat_sum_ns += <uint64_t>ns * n


cdef inline void klat_add(stats_t* st, const uint64_t* stamps, int n) noexcept nogil:
    """Count n replies from each one's kernel receive stamp (CLOCK_REALTIME ns, 0: none) until
    now: the socket's queue plus the server.  One clock read per batch; per reply a subtraction,
    a bucket and two adds."""
    cdef uint64_t now, ns
    cdef int j
    if n <= 0:
        return
    now = p53_real_ns()
    for j in range(n):
        if stamps[j] == 0:
            continue
        ns = now - stamps[j] if now > stamps[j] else 0
        st.klat[p53_lat_bucket(ns)] += 1
        st.klat_sum_ns += ns
