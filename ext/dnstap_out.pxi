# dnstap, the consumer's half (dnstap.pxi is the producer's): the rings as Python objects, the
# protobuf encoder and the drain that writes Frame Streams data frames.  The drain and the encoder
# run without the GIL in the writer's thread (pop53/serve/dnstap.py), never in a worker.

# ---------------------------------------------------------------------------------------------
# dnstap: the rings (one per reader) and the writer that drains them.
# ---------------------------------------------------------------------------------------------
cdef class DnstapRing:
    """One reader's dnstap ring (dnstap.pxi)."""
    cdef dt_ring_t r
    cdef object reader

    def __cinit__(self, uint64_t size=1 << 20, uint32_t sample=1, bint queries=True,
                  bint responses=True, bint tcp=False, bytes server=None, int port=0):
        """size: bytes (rounded up to a power of two, at least 64 KiB); server: our address (4 or
        16 bytes) written as response_address."""
        cdef uint64_t cap = 1 << 16
        if sample < 1:
            raise ValueError("sample is 1 in N, N >= 1")
        while cap < size:
            cap <<= 1
        self.r.buf = <uint8_t*>malloc(cap)
        if self.r.buf == NULL:
            raise MemoryError()
        self.r.cap = cap
        self.r.sample = sample
        self.r.countdown = sample
        self.r.kinds = (DT_QUERY if queries else 0) | (DT_RESPONSE if responses else 0)
        self.r.proto = DT_TCP if tcp else DT_UDP
        if server is not None and len(server) in (4, 16):
            self.r.srv_family = 4 if len(server) == 4 else 6
            memcpy(self.r.srv_addr, <const char*>server, len(server))
        self.r.srv_port = port

    def __dealloc__(self):
        cdef stats_t* st
        if self.reader is not None:
            st = reader_stats(self.reader)
            st.dt = NULL
        free(self.r.buf)

    def attach(self, reader):
        """reader (a Worker or TcpLoop, before its loop starts) logs through this ring."""
        cdef stats_t* st = reader_stats(reader)
        if st.dt != NULL:
            raise RuntimeError("a dnstap ring is already attached")
        st.dt = &self.r
        self.reader = reader

    def push(self, bytes query, bytes reply, bytes client not None, int port=0):
        """Log one exchange as a worker would (sampling included); for tests and tools.
        Returns False when the ring was full (the record dropped and counted)."""
        cdef const uint8_t* q = <const uint8_t*>(<char*>query) if query is not None else NULL
        cdef const uint8_t* rp = <const uint8_t*>(<char*>reply) if reply is not None else NULL
        if len(client) not in (4, 16):
            raise ValueError("client: 4 or 16 address bytes")
        if not dt_sampled(&self.r):
            return True
        return dt_push(&self.r, self.r.proto, 4 if len(client) == 4 else 6,
                       <const uint8_t*>(<char*>client), port, q,
                       len(query) if query is not None else 0, rp,
                       len(reply) if reply is not None else 0, NULL)

    def configure(self, uint32_t sample, bint queries, bint responses):
        """New sampling and kinds while the reader runs (`ctl reload`): plain stores the reader
        sees at its next sampled query; a countdown above the new rate is cut to it."""
        if sample < 1:
            raise ValueError("sample is 1 in N, N >= 1")
        self.r.kinds = (DT_QUERY if queries else 0) | (DT_RESPONSE if responses else 0)
        self.r.sample = sample
        if self.r.countdown > sample:
            self.r.countdown = sample

    def log(self, int mt, bint tcp, bytes client not None, int cport, bytes server, int sport,
            bytes query=None, bytes reply=None, double qtime=0.0, bytes zone=None):
        """One control-plane message, not sampled (the caller holds a lock: one producer):
        mt DT_AUTH (1: we answer; client = the peer) or DT_RESOLVER (3: we asked; client = our
        address, server = the peer).  qtime: when the query was sent or received (time.time()),
        0: now.  zone: query_zone, a name in wire form.  False when the ring was full (counted)."""
        cdef timespec tq
        cdef uint8_t kinds = (DT_QUERY if query is not None else 0) | \
            (DT_RESPONSE if reply is not None else 0)
        kinds &= self.r.kinds                 # `queries` / `responses` hold here too
        if not kinds:
            return True
        if len(client) not in (4, 16) or (server is not None and len(server) != len(client)):
            raise ValueError("client and server: 4 or 16 address bytes, the same family")
        if mt != DT_AUTH and mt != DT_RESOLVER:
            raise ValueError("mt: 1 (AUTH) or 3 (RESOLVER)")
        if zone is not None and not 0 < len(zone) <= 255:
            raise ValueError("zone: a wire-form name, 1..255 bytes")
        if qtime > 0:
            tq.tv_sec = <time_t>qtime
            tq.tv_nsec = <long>((qtime - <double>tq.tv_sec) * 1e9)
        self.r.srv_port = <uint16_t>sport
        return dt_push(&self.r, DT_TCP if tcp else DT_UDP, 4 if len(client) == 4 else 6,
                       <const uint8_t*>(<char*>client), <uint16_t>cport,
                       <const uint8_t*>(<char*>query) if query is not None else NULL,
                       len(query) if query is not None else 0,
                       <const uint8_t*>(<char*>reply) if reply is not None else NULL,
                       len(reply) if reply is not None else 0, &tq if qtime > 0 else NULL,
                       <const uint8_t*>(<char*>server) if server is not None else NULL,
                       kinds, <uint8_t>mt,
                       <const uint8_t*>(<char*>zone) if zone is not None else NULL,
                       len(zone) if zone is not None else 0)

    def stats(self):
        return {"sampled": p53_load_u64(&self.r.sampled),
                "dropped": p53_load_u64(&self.r.dropped),
                "pending_bytes": p53_load_u64(&self.r.head) - p53_load_u64(&self.r.tail)}


cdef enum:
    DT_OUT = 1 << 20              # the writer's output buffer
    DT_FRAME_MAX = 65535 * 2 + 1024


cdef inline uint8_t* pb_varint(uint8_t* p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <uint8_t>(v | 0x80)
        v >>= 7
        p += 1
    p[0] = <uint8_t>v
    return p + 1


cdef inline uint8_t* pb_bytes(uint8_t* p, uint8_t key, const uint8_t* b, uint32_t n) noexcept nogil:
    p[0] = key
    p = pb_varint(p + 1, n)
    memcpy(p, b, n)
    return p + n


cdef inline uint8_t* pb_fixed32(uint8_t* p, uint8_t key, uint32_t v) noexcept nogil:
    p[0] = key
    p[1] = <uint8_t>v
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>(v >> 16)
    p[4] = <uint8_t>(v >> 24)
    return p + 5


cdef struct dt_writer_t:
    uint8_t* out
    uint32_t len
    uint8_t ident[255]
    uint8_t ident_len
    uint8_t version[255]
    uint8_t version_len
    uint64_t frames
    uint64_t bytes
    uint64_t lost                 # frames encoded but not written (the output failed)


cdef uint32_t dt_encode(dt_writer_t* w, const dt_rec_t* rec, bint response) noexcept nogil:
    """One Frame Streams data frame (4-byte length, then a dnstap.Dnstap protobuf) at w.out +
    w.len: a Message of type AUTH_QUERY (1) or AUTH_RESPONSE (2) (dnstap.proto).  Returns its
    size."""
    cdef uint8_t* f = w.out + w.len
    cdef uint8_t* p = f + 4
    cdef uint8_t* m
    cdef uint8_t* body
    cdef uint32_t alen = 4 if rec.family == 4 else 16, mlen, hl, size
    cdef const uint8_t* data = (<const uint8_t*>rec) + sizeof(dt_rec_t)
    if w.ident_len:
        p = pb_bytes(p, 0x0A, w.ident, w.ident_len)               # identity = 1
    if w.version_len:
        p = pb_bytes(p, 0x12, w.version, w.version_len)           # version = 2
    p[0] = 0x78                                                   # type = 15: MESSAGE
    p[1] = 1
    p[2] = 0x72                                                   # message = 14
    m = p + 3                                                     # its length, at most 3 bytes,
    body = m + 3                                                  # is written once known
    p = body
    p[0] = 0x08                                                   # Message.type = 1
    p[1] = rec.mt + 1 if response else rec.mt                     # e.g. AUTH_RESPONSE / AUTH_QUERY
    p[2] = 0x10                                                   # socket_family = 2
    p[3] = 1 if rec.family == 4 else 2                            # INET / INET6
    p[4] = 0x18                                                   # socket_protocol = 3
    p[5] = rec.proto                                              # UDP / TCP
    p += 6
    p = pb_bytes(p, 0x22, rec.caddr, alen)                        # query_address = 4
    if rec.pad:                                                   # our address is known
        p = pb_bytes(p, 0x2A, rec.saddr, alen)                    # response_address = 5
    p[0] = 0x30                                                   # query_port = 6
    p = pb_varint(p + 1, rec.cport)
    p[0] = 0x38                                                   # response_port = 7
    p = pb_varint(p + 1, rec.sport)
    p[0] = 0x40                                                   # query_time_sec = 8
    p = pb_varint(p + 1, <uint64_t>rec.qsec)
    p = pb_fixed32(p, 0x4D, rec.qnsec)                            # query_time_nsec = 9
    if rec.zlen:
        p = pb_bytes(p, 0x5A, data + rec.qlen + rec.rlen, rec.zlen)   # query_zone = 11
    if response:
        p[0] = 0x60                                               # response_time_sec = 12
        p = pb_varint(p + 1, <uint64_t>rec.rsec)
        p = pb_fixed32(p, 0x6D, rec.rnsec)                        # response_time_nsec = 13
        p = pb_bytes(p, 0x72, data + rec.qlen, rec.rlen)          # response_message = 14
    else:
        p = pb_bytes(p, 0x52, data, rec.qlen)                     # query_message = 10
    mlen = <uint32_t>(p - body)
    hl = <uint32_t>(pb_varint(m, mlen) - m)
    if hl < 3:
        memmove(m + hl, body, mlen)
        p -= 3 - hl
    size = <uint32_t>(p - f - 4)
    f[0] = <uint8_t>(size >> 24)
    f[1] = <uint8_t>(size >> 16)
    f[2] = <uint8_t>(size >> 8)
    f[3] = <uint8_t>size
    w.len += size + 4
    return size + 4


cdef int dt_flush(dt_writer_t* w, int fd, const int* stop) noexcept nogil:
    """Write the output buffer to fd (blocking; a send timeout on the socket wakes us to look
    at stop).  0, or -errno (the buffer is then discarded and its frames counted lost)."""
    cdef uint32_t off = 0
    cdef ssize_t k
    while off < w.len:
        k = write(fd, w.out + off, w.len - off)
        if k < 0:
            if errno == EINTR or ((errno == EAGAIN or errno == EWOULDBLOCK)
                                  and not p53_load_int(stop)):
                continue
            return -errno
        off += <uint32_t>k
    w.bytes += w.len
    w.len = 0
    return 0


cdef int64_t dt_drain(dt_writer_t* w, dt_ring_t** rings, int n, int fd,
                      const int* stop) noexcept nogil:
    """Encode and write everything the rings hold now.  Returns frames written, or -errno."""
    cdef int i, rc
    cdef uint64_t tail, head, pos, mask
    cdef dt_ring_t* r
    cdef const dt_rec_t* rec
    cdef int64_t frames = 0, pending = 0
    for i in range(n):
        r = rings[i]
        mask = r.cap - 1
        tail = r.tail
        head = p53_load_u64(&r.head)
        while tail < head:
            pos = tail & mask
            rec = <const dt_rec_t*>(r.buf + pos)
            if rec.size == DT_PAD:
                tail += r.cap - pos
                continue
            if w.len + DT_FRAME_MAX > DT_OUT:
                p53_store_u64(&r.tail, tail)        # encoded: the producer may reuse the room
                rc = dt_flush(w, fd, stop)
                if rc < 0:
                    w.lost += pending
                    return rc
                frames += pending
                pending = 0
            if rec.kinds & DT_QUERY:
                dt_encode(w, rec, False)
                pending += 1
            if rec.kinds & DT_RESPONSE:
                dt_encode(w, rec, True)
                pending += 1
            tail += rec.size
        p53_store_u64(&r.tail, tail)
    rc = dt_flush(w, fd, stop)
    if rc < 0:
        w.lost += pending
        return rc
    frames += pending
    w.frames += frames
    return frames


cdef class DnstapWriter:
    """Drains dnstap rings into Frame Streams data frames on a file descriptor (the control
    frames and the handshake are pop53/serve/dnstap.py's)."""
    cdef dt_writer_t w
    cdef list rings
    cdef dt_ring_t** ptrs
    cdef int n
    cdef int stop_flag

    def __cinit__(self, list rings not None, identity=b"", version=b""):
        cdef Py_ssize_t i
        identity = identity.encode() if isinstance(identity, str) else bytes(identity)
        version = version.encode() if isinstance(version, str) else bytes(version)
        if len(identity) > 255 or len(version) > 255:
            raise ValueError("identity and version are at most 255 bytes")
        self.rings = list(rings)
        self.n = len(self.rings)
        self.ptrs = <dt_ring_t**>calloc(self.n or 1, sizeof(dt_ring_t*))
        self.w.out = <uint8_t*>malloc(DT_OUT)
        if self.ptrs == NULL or self.w.out == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.ptrs[i] = &(<DnstapRing?>self.rings[i]).r
        memcpy(self.w.ident, <const char*>identity, len(identity))
        self.w.ident_len = len(identity)
        memcpy(self.w.version, <const char*>version, len(version))
        self.w.version_len = len(version)

    def __dealloc__(self):
        free(self.ptrs)
        free(self.w.out)

    def drain(self, int fd):
        """Write every record the rings hold as data frames to fd; returns the frames written.
        Raises OSError when the output fails (those frames are counted lost)."""
        cdef int64_t rc
        with nogil:
            rc = dt_drain(&self.w, self.ptrs, self.n, fd, &self.stop_flag)
        if rc < 0:
            raise OSError(-rc, "dnstap output failed")
        return rc

    def stop(self):
        """A drain blocked on a full socket gives up at its next send timeout."""
        p53_store_int(&self.stop_flag, 1)

    def stats(self):
        out = {"frames": self.w.frames, "bytes": self.w.bytes, "lost": self.w.lost,
               "sampled": 0, "dropped": 0}
        for r in self.rings:
            st = r.stats()
            out["sampled"] += st["sampled"]
            out["dropped"] += st["dropped"]
        return out


def bench_observe(ImageView image not None, list wires not None, int repeat=100,
                  ZoneStats zones=None, DnstapRing ring=None, DnstapWriter writer=None,
                  int devnull=-1, bytes control=None):
    """Time the C loop of bench_answer_batch with what a worker adds per query: per-zone counting
    (zones: its first reader's array; the image labelled first) and a dnstap push (ring; the
    consumer is emulated by discarding the ring after each pass, or with writer and devnull by
    encoding and writing each pass to that fd).  control: a datagram's control data (cmsgs, as
    recvmmsg writes them): each query's kernel stamp is read from it and counted per 64 as a
    worker does (klat_add).  Nanoseconds per query.  For bench/ only."""
    cdef msghdr mh
    cdef uint64_t ks[BATCH]
    cdef int nk = 0
    cdef int n = len(wires), i, r
    cdef const uint8_t** bufs = <const uint8_t**>malloc(n * sizeof(uint8_t*))
    cdef uint32_t* lens = <uint32_t*>malloc(n * sizeof(uint32_t))
    cdef uint8_t out[4096]
    cdef uint8_t sa[28]
    cdef uint32_t outlen
    cdef query_t q
    cdef stats_t st
    cdef timespec t0, t1, tq
    cdef Responder responder = Responder()
    cdef const image_t* img = image.ptr()
    cdef dt_ring_t* dt = &ring.r if ring is not None else NULL
    cdef dt_writer_t* w = &writer.w if writer is not None else NULL
    cdef dt_ring_t** wr = writer.ptrs if writer is not None else NULL
    cdef int wn = writer.n if writer is not None else 0
    cdef int stop = 0
    keep = [bytes(x) for x in wires]
    for i in range(n):
        bufs[i] = <const uint8_t*>(<bytes>keep[i])
        lens[i] = len(keep[i])
    memset(&st, 0, sizeof(st))
    memset(sa, 0, sizeof(sa))
    sa[0] = 2                                          # AF_INET, 192.0.2.1:5353
    sa[2] = 0x14
    sa[3] = 0xE9
    sa[4] = 192
    sa[6] = 2
    sa[7] = 1
    memset(&mh, 0, sizeof(mh))
    if control is not None:
        mh.msg_control = <void*>(<char*>control)
        mh.msg_controllen = len(control)
    if zones is not None:
        st.zs = <uint64_t*><size_t>zones.arrays[0]
        st.zs_cap = zones.cap
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        clock_gettime(CLOCK_REALTIME, &tq)
        for r in range(repeat):
            for i in range(n):
                core_answer(img, &responder.cfg, bufs[i], lens[i], out, sizeof(out), False,
                            &outlen, &q, &st, NULL, 0, NULL)
                if dt != NULL:
                    dt_sockaddr(dt, DT_UDP, sa, bufs[i], lens[i], out, outlen, &tq)
                if mh.msg_controllen:
                    ks[nk] = p53_rx_stamp_ns(&mh)
                    nk += 1
                    if nk == BATCH:
                        klat_add(&st, ks, nk)
                        nk = 0
            if dt != NULL:
                if w != NULL:
                    dt_drain(w, wr, wn, devnull, &stop)
                else:
                    p53_store_u64(&dt.tail, p53_load_u64(&dt.head))
        clock_gettime(CLOCK_MONOTONIC, &t1)
    free(bufs)
    free(lens)
    return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (<double>n * repeat)
