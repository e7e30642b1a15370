# The UDP worker's receive (Worker, udp_loop.pxi, is this plus the batch loop): the normal
# socket, and with scoring's kernel stage its priority socket, read first; waiting for queries
# in one receive call (a plain worker, or with the steering program's wake words) or in one
# poll of both sockets.  Scored without kernel stamps ([scoring] kernel_stamps = false), it
# also keeps the queue delay's bound for the controller (`clock_bound`): every datagram in a
# queue arrived after the worker last found that queue empty, so a batch waited at most from
# then (`rx_since`) to its receive; a priority datagram also arrived after any earlier full read
# whose leftovers the reads since have taken (_prio_since).  An idle worker's wait for its
# wake-up is not counted (the bound of a queue that was empty starts again when a wait returns,
# _woke): that is no queue that shedding would shorten.


cdef class UdpReceive(WorkerBase):
    """How a UDP worker takes its next batch: from which socket, waiting how (see the module
    text).  Touches no Python object."""

    cdef inline void _tail(self, size_t clen) noexcept nogil:
        """Give every receive header `clen` bytes of control space."""
        cdef int i
        if self.tail_ctl == clen:
            return
        for i in range(BATCH):
            self.rmsgs[i].msg_hdr.msg_controllen = clen
        self.tail_ctl = clen

    cdef int _receive(self, int* rfd) noexcept nogil:
        """One batch: the priority socket first, then the normal socket.  Once the normal
        queue has emptied (a short batch, or nothing) the worker waits for either socket with
        one poll (at most 100 ms, so that stop is noticed; 0 then) and reads the ready one,
        the priority socket first: two system calls a wake-up at low load instead of a failed
        read of each socket before the wait and again after it."""
        cdef int n
        cdef bint prio_ready = True, normal_ready = True
        cdef pollfd pf[2]
        if self.pfd < 0:
            if self.clock_bound:
                return self._read_normal(rfd, MSG_WAITFORONE)
            rfd[0] = self.fd
            return recvmmsg(self.fd, self.rmsgs, BATCH, MSG_WAITFORONE, NULL)
        if self.wake != NULL and p53_load_u64(self.wake) & WAKE_ON:
            n = self._receive_woken(rfd)
            if n != WAKE_POLL:
                return n
        if self.drained:
            pf[0].fd = self.pfd
            pf[1].fd = self.fd
            pf[0].events = pf[1].events = POLLIN
            pf[0].revents = pf[1].revents = 0
            if poll(pf, 2, 100) <= 0:
                if self.wake != NULL:
                    self._prio_resync(p53_load_u64(self.wake))     # idle: nothing on its way
                return 0
            if self.clock_bound:
                self._woke()
            prio_ready = pf[0].revents != 0
            normal_ready = pf[1].revents != 0
        if prio_ready:
            n = self._read_prio(rfd)
            if n > 0:
                return n
        if not normal_ready:
            return 0
        return self._read_normal(rfd, MSG_DONTWAIT)

    cdef int _read_prio(self, int* rfd) noexcept nogil:
        """Read the priority socket without waiting; counts what it read (_prio_pending).  The
        program counts a datagram before the kernel queues it, so after the read the count
        holds every datagram read: pending below zero were datagrams it never counted (queued
        before set_priority), taken off so that none is left waiting uncounted."""
        cdef int n
        cdef int64_t pend = -1
        rfd[0] = self.pfd
        self._tail(CTRL_SLOT)           # every known resolver's stamp (sc_prio_sent)
        if self.clock_bound:
            self.rx_since = self._prio_since()
        n = recvmmsg(self.pfd, self.rmsgs, BATCH, MSG_DONTWAIT, NULL)
        self.prio_skip = 0
        if n > 0:
            self.prio_read += <uint64_t>n
            if self.wake != NULL:
                pend = self._prio_pending(p53_load_u64(self.wake))
                if pend < 0:
                    self.prio_base -= <uint64_t>(-pend)
                    pend = 0
        if self.clock_bound:
            self._prio_note(n, pend)
        return n

    cdef void _prio_note(self, int n, int64_t left) noexcept nogil:
        """clock_bound: a priority read of n datagrams started at rx_t0, after which at most
        `left` stayed queued (the wake word's count; -1: unknown).  A short read emptied the
        queue, so after its start; a full one is remembered for _prio_since."""
        cdef uint32_t i, cap
        if n < BATCH:
            self.prio_clear = self.rx_t0
            self.prio_empty = True
            return
        self.prio_empty = False
        cap = self._prio_cap()
        if left < 0 or left > <int64_t>cap:
            left = cap          # the count also holds drops the controller has not read yet
        i = self.ph_k % PH_RING
        self.ph_t[i] = self.rx_t0
        self.ph_left[i] = <uint32_t>left if left < <int64_t>UINT32_MAX else UINT32_MAX
        self.ph_k += 1

    cdef uint64_t _prio_since(self) noexcept nogil:
        """clock_bound: since when the datagrams the next priority read takes waited at most.
        They arrived after the queue was last found empty (prio_clear), and after any earlier
        full read whose leftovers (ph_left) the full reads since have taken (64 each): the
        queue is FIFO, so whatever stayed queued after that read was read before this one.
        Without the second bound a queue that never empties would count its whole busy stretch
        as waiting: tens of ms at a flood's start, where the datagrams waited a few."""
        cdef uint64_t since = self.prio_clear, taken = 0
        cdef uint32_t k = self.ph_k, stop = self.ph_k - PH_RING if self.ph_k > PH_RING else 0
        cdef uint32_t i
        while k > stop:
            k -= 1
            i = k % PH_RING
            if self.ph_t[i] <= since:
                break
            if taken >= self.ph_left[i]:
                return self.ph_t[i]
            taken += BATCH
        return since

    cdef uint32_t _prio_cap(self) noexcept nogil:
        """The most datagrams the priority queue can hold: its receive buffer (as the kernel
        counts it, refreshed every 256 full reads: the control plane resizes it) over the
        kernel's charge per datagram, plus the one the kernel admits past the limit;
        UINT32_MAX when the charge is unknown."""
        cdef int rcv = 0
        cdef socklen_t sl = sizeof(int)
        if self.prio_truesize == 0:
            return UINT32_MAX
        if self.prio_cap == 0 or (self.ph_k & 255) == 0:
            if getsockopt(self.pfd, SOL_SOCKET, SO_RCVBUF, &rcv, &sl) == 0 and rcv > 0:
                self.prio_cap = <uint32_t>rcv // self.prio_truesize + 2
            elif self.prio_cap == 0:
                return UINT32_MAX
        return self.prio_cap

    cdef int _read_normal(self, int* rfd, int flags) noexcept nogil:
        """Read the normal socket (MSG_WAITFORONE: waiting when it is empty)."""
        cdef int n
        cdef bint waits = (flags & MSG_WAITFORONE) != 0 and self.drained
        self._tail(self.tail_want)
        rfd[0] = self.fd
        self.rx_since = self.normal_clear
        n = recvmmsg(self.fd, self.rmsgs, self.vlen, flags, NULL)
        self.drained = n < self.vlen
        if self.wake != NULL and n > 0 and p53_load_u64(self.wake) & WAKE_REDIR:
            # the program's redirects are in the word before their datagrams are queued: taken
            # now, they count before this batch is scored (sc_tick: else a known query the
            # program sent here just as the worker woke would count as sharing this queue)
            self._redirected(p53_fetch_and_u64(self.wake, ~WAKE_REDIR))
        if self.clock_bound:
            if waits:
                self._woke()                # (a receive timeout too: the wait is over)
                self.rx_since = self.rx_t0
            if self.drained:
                self.normal_clear = self.rx_t0
        return n

    cdef inline void _woke(self) noexcept nogil:
        """clock_bound: a wait for either socket returned; the bounds of the queues that were
        empty when it began start again now: the normal queue's (a worker waits only once it
        emptied) and the priority queue's if its last look found it empty (a poll returns at
        once for a priority queue that was not: its bound goes on)."""
        self._woke_at(p53_mono_ns())

    cdef inline void _woke_at(self, uint64_t now) noexcept nogil:
        self.rx_t0 = now
        self.normal_clear = now
        if self.prio_empty:
            self.prio_clear = now

    def probe_priority_bound(self, events, int cap=0):
        """For tests, on a worker that is not running: the priority queue's bound replayed.
        `events`: ("read", start_ns, n, left) (a priority read of n datagrams, at most `left`
        then queued, -1: unknown) or ("wake", ns, 0, 0) (a wait returned); `cap`: the most
        datagrams the queue holds (0: unknown).  Returns, for each read, since when its
        datagrams waited at most (_prio_since)."""
        if self.running or self.pfd >= 0:
            raise RuntimeError("a worker running or with a priority socket")
        out = []
        self.prio_truesize = 1 if cap > 0 else 0
        self.prio_cap = <uint32_t>cap
        self.ph_k = 0
        self.prio_clear = 0
        self.prio_empty = False
        for kind, t, n, left in events:
            if kind == "wake":
                self._woke_at(t)
                continue
            self.rx_t0 = t
            out.append(self._prio_since())
            self._prio_note(n, left)
        self.prio_truesize = 0
        self.prio_cap = 0
        return out

    cdef inline int64_t _prio_pending(self, uint64_t word) noexcept nogil:
        """Priority datagrams the steering program counted (the wake word's count) that were
        neither read nor dropped by the kernel (the priority socket's drop counter as the
        controller last read it, sc_drops): in its queue, or about to be."""
        cdef uint64_t dropped = 0
        if self.sc.drops_known:
            dropped = <uint32_t>(self.sc.ovfl_last_p - self.prio_drops0)
        return <int64_t>((word & WAKE_COUNT) - self.prio_base - self.prio_read - dropped)

    cdef int _receive_woken(self, int* rfd) noexcept nogil:
        """_receive with the steering program's wake word (set_priority): the priority socket
        is read only when the program counted datagrams for it that are still pending (and
        every PRIO_RECHECK batches regardless: a safety net), not once a batch; and once the
        normal queue emptied the worker waits in the normal socket's receive, as a worker
        without scoring does (one system call a wake-up instead of a poll and a read), with
        WAKE_SLEEP set: meanwhile the program sends the known resolvers to this normal socket,
        whose queue is empty, so they wait behind nothing (up to WAKE_REDIR_MAX of them, in
        case the worker does not run to take them).  The program adds to the count and
        the worker sets WAKE_SLEEP by atomic read-modify-writes of the same word, so either the
        worker sees the datagram counted (and reads it instead of waiting) or the program sees
        the worker waiting (and sends it to the normal socket).  Returns WAKE_POLL for the
        poll path (_receive): priority datagrams pending, not yet in the queue."""
        cdef int n
        cdef uint64_t word
        self.prio_skip += 1
        if not self.drained:
            if self._prio_pending(p53_load_u64(self.wake)) > 0 or self.prio_skip >= PRIO_RECHECK:
                n = self._read_prio(rfd)
                if n > 0:
                    return n
            elif self.clock_bound:
                self.prio_clear = self.rx_t0    # nothing pending: the priority queue is empty
                self.prio_empty = True
            return self._read_normal(rfd, MSG_DONTWAIT)
        if sc_recent(&self.sc, self.sc.prio_ms) and (
                self.sc.allow[SC_FLOOD] < SC_ONE or sc_recent(&self.sc, self.sc.last_over)):
            # known resolvers asked in the last second and a flood is on (a class cut, or an
            # overload tick in the last second): they must not be sent into the normal queue,
            # which a worker that sheds the flood cheaply finds empty often; wait with poll,
            # as without the wake words.  (With no known resolver to send, a wait costs
            # nothing, and after a flood the worker saves its poll at once.)
            return WAKE_POLL
        word = p53_fetch_or_u64(self.wake, WAKE_SLEEP)
        if self._prio_pending(word) > 0:
            self._redirected(p53_fetch_and_u64(self.wake, ~(WAKE_SLEEP | WAKE_REDIR)))
            n = self._read_prio(rfd)
            return n if n > 0 else WAKE_POLL
        self.idle_sleeps += 1
        n = self._read_normal(rfd, MSG_WAITFORONE)     # waits up to SO_RCVTIMEO
        word = p53_fetch_and_u64(self.wake, ~(WAKE_SLEEP | WAKE_REDIR))
        self._redirected(word)
        if n > 0:
            return n
        # a receive timeout: idle, so nothing is on its way to the priority socket either
        n = self._read_prio(rfd)
        if n <= 0:
            self._prio_resync(word)
        return n

    cdef inline void _redirected(self, uint64_t word) noexcept nogil:
        """The redirects the program counted in `word` while the worker waited: known
        resolvers' queries that come through the normal socket with its queue empty.  The
        controller does not take them for known resolvers sharing the normal queue (sc_tick),
        and they are known resolvers this worker serves, as a priority batch says
        (s.prio_ms, sc_protecting): when a flood starts the worker guards them at once, as it
        does when they came through its priority socket."""
        cdef uint64_t r = (word & WAKE_REDIR) >> WAKE_REDIR_SHIFT
        if r:
            self.sc.redirected += r
            self.sc.prio_ms = sc_now_ms() | 1

    cdef void _prio_resync(self, uint64_t word) noexcept nogil:
        """After a receive timeout with the priority socket empty: nothing is on its way to it
        any more, so nothing is pending (a count that drifted, e.g. by drops the controller has
        not read yet, is made true again)."""
        self.prio_base = self.prio_base + <uint64_t>self._prio_pending(word)
