# The AF_XDP worker: the same batch loop as the socket worker (udp_loop.pxi) over one XSK socket per
# interface queue instead of recvmmsg/sendmmsg.  Receive a batch of frames from the RX ring,
# check the headers, score/admit, answer with core_answer straight into a TX frame after the
# mirrored headers, rate-limit, write lengths and checksums, put the batch on the TX ring,
# return the RX frames to the fill ring.  One answer function, two transports: the counters,
# the control ring (NOTIFY/XFR/TSIG go to Python as from a socket worker), the epochs of image
# reclamation and the scoring state are the base class's.  Setup and frame work are C in
# include/p53_xsk.h; pop53.serve.xdp loads the XDP program and puts each socket in its map.

cdef extern from "p53_xsk.h" nogil:
    cdef struct xdp_desc:
        uint64_t addr
        uint32_t len
        uint32_t options
    ctypedef struct p53_ring_t:
        uint32_t size
    ctypedef struct p53_xsk_t:
        int fd
        int zerocopy
        uint8_t* umem
        uint32_t frame_size
        uint32_t nframes
        p53_ring_t rx
        p53_ring_t tx
        p53_ring_t fill
        p53_ring_t comp
        uint64_t* free_tx
        uint32_t nfree
    ctypedef struct p53_pkt_t:
        uint32_t hdrlen
        uint32_t plen
        int v6
    int p53_xsk_open(p53_xsk_t* x, int ifindex, int queue, uint32_t nframes, uint32_t frame_size,
                     int force_copy, const char** step)
    void p53_xsk_close(p53_xsk_t* x)
    uint32_t p53_cons_peek(p53_ring_t* r, uint32_t max)
    void p53_cons_release(p53_ring_t* r, uint32_t n)
    uint32_t p53_prod_room(p53_ring_t* r)
    void p53_prod_submit(p53_ring_t* r, uint32_t n)
    bint p53_needs_wakeup(const p53_ring_t* r)
    xdp_desc* p53_desc(p53_ring_t* r, uint32_t i)
    uint64_t* p53_addr(p53_ring_t* r, uint32_t i)
    void p53_xsk_complete(p53_xsk_t* x)
    void p53_xsk_kick_tx(p53_xsk_t* x)
    bint p53_tx_pending(p53_xsk_t* x)
    int p53_xsk_drops(p53_xsk_t* x, uint64_t* drops)
    int p53_xsk_wait(p53_xsk_t* x, int ms)
    int p53_pkt_parse(const uint8_t* f, uint32_t len, uint16_t port_be, p53_pkt_t* k, void* sa)
    uint32_t p53_pkt_reply(const uint8_t* q, uint8_t* out, const p53_pkt_t* k, uint32_t plen)

cdef extern from "<string.h>" nogil:
    char* strerror(int errnum)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recvfrom(int fd, void* buf, size_t n, int flags, void* addr, void* alen)

cdef enum:
    XSK_FRAMES = 4096         # per socket: half RX (fill ring), half TX; 16 MiB of UMEM
    XSK_FRAME = 4096
    XSK_IDLE_MS = 100         # like the socket worker's receive timeout: stop and epochs


cdef class XdpWorker(Worker):
    """One AF_XDP worker: its XSK socket on one queue of one interface, UMEM and rings
    (allocated once in open()), and everything a socket Worker has.  Construct it as
    XdpWorker(-1, index, control) and open() it."""
    cdef p53_xsk_t x
    cdef uint16_t port_be
    cdef uint32_t mtu
    cdef readonly int queue

    def __cinit__(self, *args, **kwargs):
        self.x.fd = -1
        self.x.umem = NULL
        self.x.free_tx = NULL

    def __dealloc__(self):
        if self.x.umem != NULL or self.x.fd >= 0:
            p53_xsk_close(&self.x)

    def open(self, int ifindex, int queue, int port, int mtu=1500, bint force_copy=False):
        """Create the socket on (ifindex, queue) for UDP port `port`.  Raises OSError naming
        the step that failed (no AF_XDP in the kernel, no capability, queue out of range...)."""
        cdef const char* step = NULL
        cdef int rc
        if self.x.umem != NULL:
            raise RuntimeError("XDP worker already open")
        if mtu < 576:       # RFC 791's minimum; below it no 512-octet answer fits a frame
            raise OSError(22, f"AF_XDP: MTU {mtu} is below 576")
        rc = p53_xsk_open(&self.x, ifindex, queue, XSK_FRAMES, XSK_FRAME, force_copy, &step)
        if rc < 0:
            raise OSError(-rc, f"AF_XDP {step.decode()}: {strerror(-rc).decode()}")
        self.fd = self.x.fd
        self.queue = queue
        self.port_be = ((port & 0xff) << 8) | ((port >> 8) & 0xff)
        self.mtu = mtu

    def close(self):
        """Release the socket and the UMEM (after the loop has returned)."""
        if self.running:
            raise RuntimeError("XDP worker still running")
        if self.x.umem != NULL or self.x.fd >= 0:
            p53_xsk_close(&self.x)
        self.fd = -1

    def xdp_stats(self):
        """The kernel's counters for this socket (XDP_STATISTICS)."""
        cdef uint64_t d = 0
        if self.x.fd < 0 or p53_xsk_drops(&self.x, &d) != 0:
            return {"kernel_drops": 0}
        return {"kernel_drops": d}

    @property
    def xsk_fd(self):
        return self.x.fd

    @property
    def zerocopy(self):
        return bool(self.x.zerocopy)

    def run(self, Shared shared, Responder responder, RateLimiter limiter=None,
            Scorer scorer=None):
        """The loop; returns when stop() is called (noticed within XSK_IDLE_MS when idle)."""
        cdef rcfg_t* cfg = &responder.cfg
        cdef rrl_t* rl = limiter.ptr() if limiter is not None else NULL
        if self.x.umem == NULL:
            raise RuntimeError("XDP worker not open")
        if self.running:
            raise RuntimeError("worker already running")
        self.scorer = scorer
        self.running = 1
        p53_store_int(&self.stop_flag, 0)
        with nogil:
            self._xloop(shared, cfg, rl, scorer)
        self.running = 0

    cdef void _dt_dropped_frame(self, uint32_t i, const uint8_t* f, const p53_pkt_t* k,
                                const timespec* tq) noexcept nogil:
        """dnstap: a query dropped without a reply, AUTH_QUERY alone (udp_loop.pxi: _dt_dropped)."""
        cdef const uint8_t* sa = <const uint8_t*>&self.addrs[i]
        if self.st.dt != NULL and dt_sampled(self.st.dt):
            dt_push(self.st.dt, DT_UDP, 6 if k.v6 else 4, sa + (8 if k.v6 else 4),
                    (<uint16_t>sa[2] << 8) | sa[3], f + k.hdrlen, k.plen, NULL, 0, tq,
                    f + 14 + (24 if k.v6 else 16), DT_QUERY)

    cdef void _xloop(self, Shared shared, const rcfg_t* cfg, rrl_t* rl,
                     Scorer scorer) noexcept nogil:
        cdef p53_xsk_t* x = &self.x
        cdef uint32_t n, i, m, room, outlen, now = 0, slip_ctr = 0, cl_len, cap, slot
        cdef uint32_t cap4 = self.mtu - 28, cap6 = self.mtu - 48
        cdef int act
        cdef const uint8_t* cl
        cdef const uint8_t* f
        cdef uint8_t* t
        cdef uint64_t ta, kd = 0
        cdef xdp_desc* d
        cdef p53_pkt_t* k
        cdef p53_pkt_t pk[BATCH]
        cdef timespec ts, t0, tq
        cdef const uint8_t* sa
        cdef const image_t* img
        cdef const map_snap_t* maps
        cdef query_t q
        cdef ctl_msg_t* cm
        cdef const known_t* kn = NULL
        cdef uint64_t txa[BATCH]
        cdef uint32_t txl[BATCH]
        slot = cfg.edns_max if cfg.edns_max > 512 else 512
        if slot > XSK_FRAME - 62:
            slot = XSK_FRAME - 62
        while not p53_load_int(&self.stop_flag):
            p53_xsk_complete(x)
            n = p53_cons_peek(&x.rx, BATCH)
            if n == 0:
                # quiescent point; the poll is also the wake-up a fill ring may ask for
                p53_store_u64(&self.epoch, self.epoch + 1)
                if p53_tx_pending(x):        # frames a kick left on the ring (EBUSY)
                    p53_xsk_kick_tx(x)
                p53_xsk_wait(x, XSK_IDLE_MS)
                continue
            p53_store_u64(&self.epoch, self.epoch + 1)
            self.st.batches += 1
            clock_gettime(CLOCK_MONOTONIC, &t0)
            if self.st.dt != NULL:
                clock_gettime(CLOCK_REALTIME, &tq)
            if scorer is not None:
                sc_batch(&scorer.cfg, &self.sc, n, BATCH, 0, False, False, -1, -1)   # no stamps; drops below
                if n == BATCH and p53_xsk_drops(x, &kd) == 0:
                    # the kernel's drops before our ring feed the overload controller (at its
                    # next tick) as sc_drops does a socket's; read on full batches only (the
                    # counter starts at 0 with the ring: no baseline to take)
                    sc_count_drops(&self.sc, False, <uint32_t>kd, True)
            for i in range(n):
                d = p53_desc(&x.rx, i)
                if not p53_pkt_parse(x.umem + d.addr, d.len, self.port_be, &pk[i], &self.addrs[i]):
                    self.addrs[i].ss_family = 0
            if scorer is not None:
                kn = scorer.begin(&self.sc)
                sc_prefetch(kn, <const uint8_t*>self.addrs, sizeof(sockaddr_storage), n)
            if rl != NULL:
                clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
                now = <uint32_t>ts.tv_sec
            img = <const image_t*>p53_load_ptr(&shared.current)
            self.sc.img = img              # the relay check's name probe (scoring_trust.pxi)
            maps = <const map_snap_t*>p53_load_ptr(&shared.maps)
            m = 0
            for i in range(n):
                d = p53_desc(&x.rx, i)
                f = x.umem + d.addr
                self.st.udp += 1
                if self.addrs[i].ss_family == 0:
                    self.st.queries += 1           # not a datagram we can answer (see parse)
                    self.st.dropped += 1
                    continue
                k = &pk[i]
                cl = client_addr(<const uint8_t*>&self.addrs[i], &cl_len)
                if scorer is not None and sc_admit(&scorer.cfg, kn, &self.sc, cfg,
                                                   f + k.hdrlen, k.plen, cl, cl_len) < 0:
                    self._dt_dropped_frame(i, f, k, &tq)
                    continue
                if x.nfree == 0:
                    p53_xsk_complete(x)
                    if x.nfree == 0:                 # TX backlog: no frame to answer into
                        self.st.queries += 1
                        self.st.send_errors += 1
                        continue
                ta = x.free_tx[x.nfree - 1]
                t = x.umem + ta
                cap = cap6 if k.v6 else cap4
                if cap > slot:
                    cap = slot
                act = core_answer(img, cfg, f + k.hdrlen, k.plen, t + k.hdrlen, cap, False,
                                  &outlen, &q, &self.st, cl, cl_len, maps)
                if act == ACT_DROP:
                    continue
                if rl != NULL and act == ACT_REPLY and not q.cookie_ok:
                    act = rrl_decide(rl, now, <const uint8_t*>&self.addrs[i], t + k.hdrlen,
                                     outlen, &slip_ctr)
                    if act == RRL_DROP:
                        self.st.rrl_dropped += 1
                        self._dt_dropped_frame(i, f, k, &tq)
                        continue
                    if act == RRL_SLIP:
                        outlen = rrl_truncate(t + k.hdrlen, outlen, q.edns, cfg.edns_max)
                        self.st.rrl_slipped += 1
                    act = ACT_REPLY
                if act == ACT_CONTROL and self.control_enabled:
                    if self.ring_head - p53_load_u64(&self.ring_tail) < CTL_RING:
                        cm = &self.ring[self.ring_head % CTL_RING]
                        cm.len = k.plen
                        memcpy(cm.data, f + k.hdrlen, cm.len if cm.len <= CTL_MAX else CTL_MAX)
                        memcpy(&cm.addr, &self.addrs[i], sizeof(sockaddr_storage))
                        cm.addrlen = 28 if k.v6 else 16
                        p53_store_u64(&self.ring_head, self.ring_head + 1)
                        p53_wake(self.wake_fd)
                        continue
                if self.st.dt != NULL and dt_sampled(self.st.dt):
                    # dnstap (dnstap.pxi): the peer from the parsed frame, the address asked
                    # from the frame's IP header (IPv4 dst at 16, IPv6 at 24)
                    sa = <const uint8_t*>&self.addrs[i]
                    dt_push(self.st.dt, DT_UDP, 6 if k.v6 else 4, sa + (8 if k.v6 else 4),
                            (<uint16_t>sa[2] << 8) | sa[3], f + k.hdrlen, k.plen,
                            t + k.hdrlen, outlen, &tq, f + 14 + (24 if k.v6 else 16))
                x.nfree -= 1
                txa[m] = ta
                txl[m] = p53_pkt_reply(f, t, k, outlen)
                m += 1
            # the RX frames go back to the fill ring (it holds every RX frame: always room)
            room = p53_prod_room(&x.fill)
            if room > n:
                room = n
            for i in range(room):
                p53_addr(&x.fill, i)[0] = p53_desc(&x.rx, i).addr & ~(<uint64_t>XSK_FRAME - 1)
            p53_prod_submit(&x.fill, room)
            p53_cons_release(&x.rx, n)
            if p53_needs_wakeup(&x.fill):
                recvfrom(x.fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)
            room = p53_prod_room(&x.tx)
            for i in range(m):
                if i >= room:                      # TX ring full: the frame is not sent
                    x.free_tx[x.nfree] = txa[i]
                    x.nfree += 1
                    self.st.send_errors += 1
                    continue
                d = p53_desc(&x.tx, i)
                d.addr = txa[i]
                d.len = txl[i]
                d.options = 0
            p53_prod_submit(&x.tx, m if m <= room else room)
            if m:
                p53_xsk_kick_tx(x)
            lat_add(&self.st, &t0, m)       # every reply of the batch waited this long
            # batch boundary: done with img
            p53_store_u64(&self.epoch, self.epoch + 1)
