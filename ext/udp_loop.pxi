# The worker loop: recvmmsg a batch, answer each query from the current image, sendmmsg the
# replies.  One worker = one thread = one SO_REUSEPORT socket; the loop runs with the GIL
# released and touches no Python object.
#
# The image lifetime this loop keeps (its `epoch` after every batch): io.pxi.

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)


cdef class Worker(UdpReceive):
    """One UDP worker's loop: receive a batch (the priority socket first), score and admit,
    answer, send; with the GIL released and no Python object touched."""

    def run(self, Shared shared, Responder responder, RateLimiter limiter=None,
            Scorer scorer=None):
        """The loop; returns when stop() is called.  The socket must have a receive timeout
        (SO_RCVTIMEO) so that stop and reclamation are noticed while idle.  With a limiter,
        UDP responses pass response rate limiting (rrl.pxi); with a scorer, queries are scored
        and admitted by class before any lookup (scoring.pxi)."""
        cdef rcfg_t* cfg = &responder.cfg
        cdef rrl_t* rl = limiter.ptr() if limiter is not None else NULL
        self.scorer = scorer
        cdef uint32_t slot = cfg.edns_max if cfg.edns_max > 512 else 512
        if self.running:
            raise RuntimeError("worker already running")
        free(self.sbuf)
        self.sbuf = <uint8_t*>malloc(BATCH * slot)
        if self.sbuf == NULL:
            raise MemoryError()
        self.sslot = slot
        # With scoring the controller's queue delay comes from the worker's clock (udp_recv.pxi,
        # clock_bound): a socket asking for kernel stamps has the kernel stamp every packet the
        # machine receives, ~3% of a reply at full speed (docs/scoring.md), so the stamps are
        # sampled as without scoring.  With [scoring] kernel_stamps it needs one stamp per full
        # batch, not one per datagram: the normal socket has no SO_TIMESTAMPNS
        # (pop53.scoring.service), keeps the last read datagram's stamp (SOCK_TIMESTAMP, turned
        # on by a first ioctl here) and its receive headers get no control space (none to write
        # but a wildcard bind's IP_PKTINFO), so the kernel converts no stamp and writes no
        # control message per datagram: that was ~150-250 ns of a reply at full speed.  Else
        # every stamp feeds the latency histogram.
        self.clock_bound = scorer is not None and not scorer.cfg.kstamps
        if self.normal_clear == 0:
            self.normal_clear = self.prio_clear = self.rx_since = p53_mono_ns()
        self.sock_stamp = scorer is not None and scorer.cfg.kstamps and not p53_rcv_stamps(self.fd)
        if self.sock_stamp:
            p53_sock_stamp_ns(self.fd)
        self.tail_want = CTRL_SLOT if not self.sock_stamp or p53_wants_pktinfo(self.fd) else 0
        # the first read does not wait (_receive): what queued while the worker was stopped
        # (a restart) counts from when it last found its queues empty
        self.drained = False
        self.running = 1
        p53_store_int(&self.stop_flag, 0)
        with nogil:
            self._loop(shared, cfg, rl, scorer)
        self.running = 0

    cdef void _loop(self, Shared shared, const rcfg_t* cfg, rrl_t* rl,
                    Scorer scorer) noexcept nogil:
        cdef int n, i, m, sent, k, act, rfd = self.fd, c = 0
        cdef uint64_t tw = 0        # the batch's work start in ns, receive included (sc_cost)
        cdef uint32_t outlen, now = 0, slip_ctr = 0, cl_len
        cdef const uint8_t* cl
        cdef timespec ts, t0, tq       # t0: batch start (latency); tq: received (dnstap)
        cdef const image_t* img
        cdef const map_snap_t* maps
        cdef query_t q
        cdef ctl_msg_t* cm
        cdef const known_t* kn = NULL
        cdef uint64_t ks[BATCH]        # each reply's kernel receive stamp (klat_add), 0: none
        cdef uint64_t bstamp = 0       # the batch's stamp for the controller (sc_batch)
        cdef uint64_t qd = 0, since = 0  # the batch's clock and since when it waited (sc_batch)
        cdef bint has_qd
        cdef int full = BATCH
        cdef int used = BATCH          # headers the last receive may have written
        for i in range(BATCH):
            self.riov[i].iov_base = self.rbuf + i * RECV_SLOT
            self.riov[i].iov_len = RECV_SLOT
            self.rmsgs[i].msg_hdr.msg_name = &self.addrs[i]
            self.rmsgs[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsgs[i].msg_hdr.msg_iovlen = 1
            self.rmsgs[i].msg_hdr.msg_control = self.cbuf + i * CTRL_SLOT
            self.rmsgs[i].msg_hdr.msg_controllen = self.tail_want
        self.tail_ctl = self.tail_want
        while not p53_load_int(&self.stop_flag):
            # recvmmsg writes back only the lengths and flags of the messages it filled
            for i in range(used):
                self.rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                self.rmsgs[i].msg_hdr.msg_controllen = self.tail_ctl
                self.rmsgs[i].msg_hdr.msg_flags = 0
            if scorer is not None:
                tw = p53_mono_ns()      # the batch's work, receive included (sc_cost)
                self.rx_t0 = tw
            kstamp_gate(&self.kst, self.fd, self.pfd)
            self.vlen = sc_normal_batch(&self.sc, BATCH) if scorer is not None else BATCH
            n = self._receive(&rfd)
            used = n if n > 0 else 0
            # quiescent point: this worker holds no image pointer here
            p53_store_u64(&self.epoch, self.epoch + 1)
            if n <= 0:
                if n < 0 and errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
                    self.st.recv_errors += 1
                continue
            self.st.batches += 1
            clock_gettime(CLOCK_MONOTONIC, &t0)
            if self.st.dt != NULL:
                clock_gettime(CLOCK_REALTIME, &tq)
            if scorer is not None:
                full = BATCH if rfd == self.pfd else self.vlen
                if self.clock_bound:
                    # the queue delay's bound (udp_recv.pxi) of a priority or a full normal
                    # batch (a short one emptied the queue)
                    has_qd = rfd == self.pfd or n >= full
                    since = self.rx_since
                    qd = <uint64_t>t0.tv_sec * 1000000000ull + <uint64_t>t0.tv_nsec
                else:
                    # kernel stamps: the priority batch's oldest datagram; a full normal
                    # batch's newest; one stamp a batch either way
                    if rfd == self.pfd or not self.sock_stamp:
                        bstamp = p53_rx_stamp_ns(&self.rmsgs[0].msg_hdr)
                    else:
                        bstamp = p53_sock_stamp_ns(self.fd) if n >= self.vlen else 0
                    has_qd = bstamp != 0
                    since = bstamp
                    qd = p53_real_ns() if has_qd else 0
                sc_batch(&scorer.cfg, &self.sc, n, full, qd - since if qd > since else 0,
                         has_qd, rfd == self.pfd, self.fd, self.pfd)
                kn = scorer.begin(&self.sc)
                sc_prefetch(kn, <const uint8_t*>self.addrs, sizeof(sockaddr_storage), n)
            if rl != NULL:
                clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
                now = <uint32_t>ts.tv_sec
            img = <const image_t*>p53_load_ptr(&shared.current)
            self.sc.img = img              # the relay check's name probe (scoring_trust.pxi)
            maps = <const map_snap_t*>p53_load_ptr(&shared.maps)
            map_prefetch(maps, self.rbuf, RECV_SLOT, &self.rmsgs[0].msg_len, sizeof(mmsghdr),
                         <const uint8_t*>self.addrs, sizeof(sockaddr_storage), n)
            m = 0
            for i in range(n):
                self.st.udp += 1
                if self.rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    self.st.queries += 1
                    self.st.dropped += 1
                    continue
                cl = client_addr(<const uint8_t*>&self.addrs[i], &cl_len)
                if scorer is not None:
                    c = sc_admit(&scorer.cfg, kn, &self.sc, cfg, self.rbuf + i * RECV_SLOT,
                                 self.rmsgs[i].msg_len, cl, cl_len)
                    if c < 0:
                        self._dt_dropped(i, &tq)
                        continue
                act = core_answer(img, cfg, self.rbuf + i * RECV_SLOT, self.rmsgs[i].msg_len,
                                  self.sbuf + m * self.sslot, self.sslot, False, &outlen, &q,
                                  &self.st, cl, cl_len, maps)
                if act == ACT_DROP:
                    continue
                if scorer is not None and q.cookie_ok:
                    sc_trust_proven(&scorer.cfg, &self.sc, cl, cl_len)    # scoring_trust.pxi
                if scorer is not None and sc_nx_drop(&scorer.cfg, &self.sc, c, &q, cl, cl_len,
                                                     self.sbuf + m * self.sslot, outlen):
                    self._dt_dropped(i, &tq)
                    continue
                # a valid server cookie proves the address: not a reflection, never limited
                if rl != NULL and act == ACT_REPLY and not q.cookie_ok:
                    # response rate limiting: after the answer, on what it would send
                    act = rrl_decide(rl, now, <const uint8_t*>&self.addrs[i],
                                     self.sbuf + m * self.sslot, outlen, &slip_ctr)
                    if act == RRL_DROP:
                        self.st.rrl_dropped += 1
                        self._dt_dropped(i, &tq)
                        continue
                    if act == RRL_SLIP:
                        outlen = rrl_truncate(self.sbuf + m * self.sslot, outlen, q.edns,
                                              cfg.edns_max)
                        self.st.rrl_slipped += 1
                    act = ACT_REPLY
                if act == ACT_CONTROL and self.control_enabled:
                    if self.ring_head - p53_load_u64(&self.ring_tail) < CTL_RING:
                        cm = &self.ring[self.ring_head % CTL_RING]
                        cm.len = self.rmsgs[i].msg_len
                        memcpy(cm.data, self.rbuf + i * RECV_SLOT, cm.len if cm.len <= CTL_MAX else CTL_MAX)
                        memcpy(&cm.addr, &self.addrs[i], sizeof(sockaddr_storage))
                        cm.addrlen = self.rmsgs[i].msg_hdr.msg_namelen
                        p53_store_u64(&self.ring_head, self.ring_head + 1)
                        p53_wake(self.wake_fd)
                        continue
                    # ring full: the fallback reply goes out instead
                if self.st.dt != NULL:      # dnstap: sampled, copied to the ring (dnstap.pxi)
                    dt_sockaddr(self.st.dt, DT_UDP, <const uint8_t*>&self.addrs[i],
                                self.rbuf + i * RECV_SLOT, self.rmsgs[i].msg_len,
                                self.sbuf + m * self.sslot, outlen, &tq,
                                self.rmsgs[i].msg_hdr.msg_control,
                                self.rmsgs[i].msg_hdr.msg_controllen)
                self.siov[m].iov_base = self.sbuf + m * self.sslot
                self.siov[m].iov_len = outlen
                self.smsgs[m].msg_hdr.msg_name = &self.addrs[i]
                self.smsgs[m].msg_hdr.msg_namelen = self.rmsgs[i].msg_hdr.msg_namelen
                self.smsgs[m].msg_hdr.msg_iov = &self.siov[m]
                self.smsgs[m].msg_hdr.msg_iovlen = 1
                # the stamp first: the reply's control data is made in place over it
                ks[m] = p53_rx_stamp_ns(&self.rmsgs[i].msg_hdr)
                self.smsgs[m].msg_hdr.msg_control = self.cbuf + i * CTRL_SLOT
                self.smsgs[m].msg_hdr.msg_controllen = p53_reply_control(&self.rmsgs[i].msg_hdr)
                if self.smsgs[m].msg_hdr.msg_controllen == 0:
                    self.smsgs[m].msg_hdr.msg_control = NULL
                self.smsgs[m].msg_hdr.msg_flags = 0
                m += 1
            sent = 0
            while sent < m:
                k = sendmmsg(rfd, self.smsgs + sent, m - sent, 0)
                if k <= 0:
                    if k < 0 and errno == EINTR:
                        continue
                    # the first unsent message failed (e.g. unreachable): count it, go on
                    self.st.send_errors += 1
                    sent += 1
                    continue
                sent += k
            lat_add(&self.st, &t0, m)       # every reply of the batch waited this long
            klat_add(&self.st, ks, m)       # and from the kernel's receive, queue included
            if self.sock_stamp and rfd != self.pfd and bstamp:
                klat_add(&self.st, &bstamp, 1)  # scored: a full batch's newest reply
            if scorer is not None and rfd == self.pfd:
                sc_prio_sent(&self.sc, ks, m)   # known resolvers' own latency (scoring.pxi)
            if scorer is not None:
                sc_cost(&self.sc, n, full, p53_mono_ns() - tw)
                if self.pfd >= 0 and rfd != self.pfd:
                    sc_yield(&scorer.cfg, &self.sc)     # under a CPU quota (scoring.pxi)
            # batch boundary: done with img
            p53_store_u64(&self.epoch, self.epoch + 1)
            if self.coalesce_us and n < COALESCE_BELOW and self.pfd < 0:
                usleep(self.coalesce_us)    # holding no image: a quiescent point (set_coalesce)

    cdef inline void _dt_dropped(self, int i, const timespec* tq) noexcept nogil:
        """dnstap: a query dropped without a reply (scoring, the overload controller, RRL) is
        logged as AUTH_QUERY alone, sampled like the rest (docs/dnstap.md)."""
        if self.st.dt != NULL:
            dt_sockaddr(self.st.dt, DT_UDP, <const uint8_t*>&self.addrs[i],
                        self.rbuf + i * RECV_SLOT, self.rmsgs[i].msg_len, NULL, 0, tq,
                        self.rmsgs[i].msg_hdr.msg_control, self.rmsgs[i].msg_hdr.msg_controllen,
                        DT_QUERY)
