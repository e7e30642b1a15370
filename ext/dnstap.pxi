# dnstap, the producer's half (issue 14 point 11): a worker copies a sampled query and its
# reply, with the addresses and timestamps, into its own ring; a writer thread drains the rings
# off the hot path, encodes the dnstap protobuf and writes Frame Streams (dnstap_out.pxi,
# pop53/serve/dnstap.py).
#
# The ring is single-producer single-consumer, preallocated, lock-free: the producer owns
# `head`, the writer owns `tail`, each publishes its own with one atomic store.  A record is a
# dt_rec_t header followed by the query bytes and the reply bytes, rounded up to 8 bytes, laid
# contiguously; when a record does not fit before the end of the buffer a pad marker sends the
# reader back to the start.  A full ring never blocks a worker: the record is dropped and counted
# (dt_ring_t.dropped).
#
# Entry points for every data path (the UDP worker, the TCP loop, the AF_XDP path):
#   dt_sampled(r)   1 in r.sample calls is true (a countdown, no random numbers)
#   dt_push(r, ...) copy one sampled exchange; false when the ring was full
#   dt_udp(r, ...)  both for a datagram with its struct sockaddr

cdef extern from "<time.h>" nogil:
    int CLOCK_REALTIME

cdef extern from "p53_dnstap.h" nogil:
    int p53_pktinfo_dst(const void* control, size_t len, uint8_t* out)

cdef enum:
    DT_QUERY = 1              # dt_ring_t.kinds
    DT_RESPONSE = 2
    DT_UDP = 1                # dnstap SocketProtocol
    DT_TCP = 2
    DT_PAD = 0xFFFFFFFF       # dt_rec_t.size: skip to the end of the buffer
    DT_AUTH = 1               # dnstap Message.Type of the query: AUTH_QUERY (response: +1)
    DT_RESOLVER = 3           # RESOLVER_QUERY: what our control plane sends (docs/dnstap.md)

cdef struct dt_rec_t:
    uint32_t size             # the whole record, header included, a multiple of 8; or DT_PAD
    uint16_t qlen             # query bytes following the header (0: not logged)
    uint16_t rlen             # reply bytes following the query (0: not logged)
    uint8_t family            # 4 or 6
    uint8_t proto             # DT_UDP, DT_TCP
    uint8_t kinds             # DT_QUERY | DT_RESPONSE present
    uint8_t pad               # 1: saddr is our address (response_address)
    uint16_t cport            # the client's port (host order)
    uint16_t sport            # ours
    uint8_t caddr[16]
    uint8_t saddr[16]
    int64_t qsec
    int64_t rsec
    uint32_t qnsec
    uint32_t rnsec
    uint8_t mt                # the query's Message.Type (DT_AUTH, DT_RESOLVER); response: mt + 1
    uint8_t zlen              # query_zone bytes after the reply (a name in wire form), 0: none


cdef inline bint dt_sampled(dt_ring_t* r) noexcept nogil:
    """True for 1 in r.sample calls."""
    r.countdown -= 1
    if r.countdown:
        return False
    r.countdown = r.sample
    r.sampled += 1
    return True


cdef bint dt_push(dt_ring_t* r, uint8_t proto, uint8_t family, const uint8_t* caddr,
                  uint16_t cport, const uint8_t* query, uint32_t qlen, const uint8_t* reply,
                  uint32_t rlen, const timespec* tq, const uint8_t* saddr=NULL,
                  uint8_t kinds=0, uint8_t mt=DT_AUTH, const uint8_t* zone=NULL,
                  uint8_t zlen=0) noexcept nogil:
    """Copy one sampled exchange (query and/or reply, as r.kinds says) into the ring.  tq: when
    the query was received (CLOCK_REALTIME), NULL: now.  saddr: the address the query was sent
    to (same family), NULL: the ring's (the listen address).  kinds: what to copy instead of
    r.kinds (a dropped query: DT_QUERY alone).  mt: the query's dnstap type (DT_AUTH: we answer;
    DT_RESOLVER: we asked, caddr is ours).  zone: query_zone (a wire-form name, zlen bytes).
    False (and counted) when full."""
    cdef uint64_t head = r.head, pos, to_end, need, total
    cdef uint8_t k = kinds if kinds and r.kinds else r.kinds     # r.kinds 0: dnstap is off
    cdef uint32_t ql = qlen if (k & DT_QUERY) and query != NULL and qlen <= 65535 else 0
    cdef uint32_t rl = rlen if (k & DT_RESPONSE) and reply != NULL and rlen <= 65535 else 0
    cdef dt_rec_t* rec
    cdef timespec now
    if ql == 0 and rl == 0:
        return True
    if zone == NULL:
        zlen = 0
    need = (sizeof(dt_rec_t) + ql + rl + zlen + 7) & ~(<uint64_t>7)
    pos = head & (r.cap - 1)
    to_end = r.cap - pos
    total = need if need <= to_end else to_end + need
    if total > r.cap - (head - p53_load_u64(&r.tail)):
        r.dropped += 1
        return False
    if need > to_end:
        (<uint32_t*>(r.buf + pos))[0] = DT_PAD
        head += to_end
        pos = 0
    rec = <dt_rec_t*>(r.buf + pos)
    clock_gettime(CLOCK_REALTIME, &now)
    rec.size = <uint32_t>need
    rec.qlen = <uint16_t>ql
    rec.rlen = <uint16_t>rl
    rec.family = family
    rec.proto = proto
    rec.kinds = (DT_QUERY if ql else 0) | (DT_RESPONSE if rl else 0)
    rec.pad = saddr != NULL or r.srv_family == family
    rec.cport = cport
    rec.sport = r.srv_port
    memcpy(rec.caddr, caddr, 4 if family == 4 else 16)
    memcpy(rec.saddr, saddr if saddr != NULL else r.srv_addr, 4 if saddr != NULL and family == 4 else 16)
    rec.qsec = tq.tv_sec if tq != NULL else now.tv_sec
    rec.qnsec = <uint32_t>(tq.tv_nsec if tq != NULL else now.tv_nsec)
    rec.rsec = now.tv_sec
    rec.rnsec = <uint32_t>now.tv_nsec
    rec.mt = mt
    rec.zlen = zlen
    if ql:
        memcpy(r.buf + pos + sizeof(dt_rec_t), query, ql)
    if rl:
        memcpy(r.buf + pos + sizeof(dt_rec_t) + ql, reply, rl)
    if zlen:
        memcpy(r.buf + pos + sizeof(dt_rec_t) + ql + rl, zone, zlen)
    p53_store_u64(&r.head, head + need)
    return True


cdef inline void dt_sockaddr(dt_ring_t* r, uint8_t proto, const uint8_t* sa,
                             const uint8_t* query, uint32_t qlen, const uint8_t* reply,
                             uint32_t rlen, const timespec* tq, const void* control=NULL,
                             size_t control_len=0, uint8_t kinds=0) noexcept nogil:
    """dt_push for a peer given as a struct sockaddr (AF_INET or AF_INET6), if sampled.
    control: the datagram's control data (IP_PKTINFO gives the address it was sent to).
    kinds: as dt_push's (DT_QUERY: a query dropped without a reply)."""
    cdef uint16_t fam, port
    cdef uint8_t dst[16]
    cdef int dfam
    if not dt_sampled(r):
        return
    fam = (<const uint16_t*>sa)[0]
    port = (<uint16_t>sa[2] << 8) | sa[3]
    dfam = p53_pktinfo_dst(control, control_len, dst)
    if fam == 2:                                  # AF_INET: sin_addr at 4
        dt_push(r, proto, 4, sa + 4, port, query, qlen, reply, rlen, tq,
                dst if dfam == 4 else NULL, kinds)
    elif fam == 10:                               # AF_INET6: sin6_addr at 8
        dt_push(r, proto, 6, sa + 8, port, query, qlen, reply, rlen, tq,
                dst if dfam == 6 else NULL, kinds)
