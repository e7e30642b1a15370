# The UDP workers' side shared with the control plane: system declarations, the published
# image (Shared), the worker as the control plane configures and reads it (WorkerBase), and
# the counters of answers made outside the workers (Counters).  The loop: udp_loop.pxi.
#
# Image lifetime (quiescent-state reclamation, the RCU flavour Knot DNS uses): the control plane
# publishes a new image with one atomic store into Shared.current.  A worker loads the pointer
# once per batch and bumps its `epoch` after every batch (and after every receive timeout).  An
# old image may be freed once every running worker's epoch has moved past the value it had when
# the new image was published: no worker can still hold the old pointer.

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR

cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct sockaddr:
        unsigned short sa_family
    cdef struct sockaddr_storage:
        unsigned short ss_family
    cdef struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, timespec* timeout)
    int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags)
    int MSG_WAITFORONE
    int MSG_TRUNC
    int MSG_CTRUNC
    int MSG_DONTWAIT
    int getsockopt(int fd, int level, int name, void* value, socklen_t* length)
    int SOL_SOCKET
    int SO_RCVBUF

cdef extern from "<stdint.h>" nogil:
    const uint32_t UINT32_MAX

cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    short POLLIN

cdef extern from "p53_sys.h" nogil:
    const void* p53_load_ptr(const void* const* p)
    void p53_store_ptr(const void** p, const void* v)
    uint64_t p53_load_u64(const uint64_t* p)
    void p53_store_u64(uint64_t* p, uint64_t v)
    uint64_t p53_fetch_or_u64(uint64_t* p, uint64_t v)
    uint64_t p53_fetch_and_u64(uint64_t* p, uint64_t v)
    enum:
        WAKE_SLOTS "P53_WAKE_SLOTS"
        WAKE_STRIDE "P53_WAKE_STRIDE"
        WAKE_SLEEP_BIT "P53_WAKE_SLEEP_BIT"
        WAKE_ON_BIT "P53_WAKE_ON_BIT"
        WAKE_REDIR_SHIFT "P53_WAKE_REDIR_SHIFT"
        WAKE_REDIR_MAX "P53_WAKE_REDIR_MAX"
    const uint64_t WAKE_SLEEP "P53_WAKE_SLEEP"
    const uint64_t WAKE_REDIR "P53_WAKE_REDIR"
    const uint64_t WAKE_ON "P53_WAKE_ON"
    const uint64_t WAKE_COUNT "P53_WAKE_COUNT"
    int p53_load_int(const int* p)
    void p53_store_int(int* p, int v)
    size_t p53_reply_control(msghdr* m)
    int p53_wants_pktinfo(int fd)
    int p53_rcv_stamps(int fd)

cdef extern from "p53_wake.h" nogil:
    void p53_wake(int fd)

cdef enum:
    BATCH = 64
    PRIO_RECHECK = 32         # with the wake word, the priority socket is read this often anyway
    PH_RING = 128             # full priority reads remembered for the queue delay's bound
    WAKE_POLL = -1000         # UdpReceive._receive_woken: wait with poll instead
    COALESCE_BELOW = 16       # a batch this full is read again at once (set_coalesce)
    RECV_SLOT = 4096          # larger datagrams are truncated by the kernel and dropped
    CTRL_SLOT = 128           # IP_PKTINFO / IPV6_PKTINFO; SO_TIMESTAMPNS or SO_TIMESTAMPING (64)
    CTL_RING = 64             # control-plane messages waiting per worker
    CTL_MAX = 4096


# the wake map's layout, which the steering program must keep the same way (scoring/ebpf.py):
# (worker slots, u64 words per slot, the sleep bit, the "program keeps it" bit, the redirect
# count's shift and its cap)
WAKE_LAYOUT = (WAKE_SLOTS, WAKE_STRIDE, WAKE_SLEEP_BIT, WAKE_ON_BIT, WAKE_REDIR_SHIFT,
               WAKE_REDIR_MAX)


def wake_switch(object buf, int first, int count, bint on):
    """Set (or clear) WAKE_ON in the wake words of slots first..first+count-1 of the wake map
    `buf` (pop53.scoring.ebpf.WakeMap): whether the steering program attached keeps them.
    Atomically: the program and the workers change the same words."""
    cdef Py_buffer b
    cdef uint64_t* w
    cdef int i
    PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE)
    try:
        if first < 0 or count < 0 or (first + count) * WAKE_STRIDE * 8 > b.len:
            raise ValueError("wake slots outside the map")
        w = <uint64_t*>b.buf
        for i in range(first, first + count):
            if on:
                p53_fetch_or_u64(w + i * WAKE_STRIDE, WAKE_ON)
            else:
                p53_fetch_and_u64(w + i * WAKE_STRIDE, ~WAKE_ON)
    finally:
        PyBuffer_Release(&b)


cdef struct ctl_msg_t:
    uint32_t len
    socklen_t addrlen
    sockaddr_storage addr
    uint8_t data[4096]


cdef class Shared:
    """The published image every worker reads (one atomic pointer) and its generation."""
    cdef const void* current       # const image_t*
    cdef readonly uint64_t generation
    cdef readonly object holder    # keeps the published ImageView alive
    cdef const void* maps          # const map_snap_t*: mapped answers, published apart
    cdef readonly object maps_holder

    def publish(self, ImageView view):
        """Publish an image: one atomic store.  Returns the new generation.  The caller keeps
        the previous view alive until every worker has passed a batch boundary."""
        p53_store_ptr(&self.current, <const void*>(view.ptr() if view is not None else NULL))
        self.holder = view
        self.generation += 1
        return self.generation

    def publish_maps(self, MapSnapshot snap):
        """Publish a mapping snapshot (maps + liveness): one atomic store, reclaimed like an
        image (the caller keeps the previous one until every worker passed a batch boundary)."""
        p53_store_ptr(&self.maps, <const void*>(snap.ptr() if snap is not None else NULL))
        self.maps_holder = snap



cdef class WorkerBase:
    """One UDP worker as the control plane sees it: its sockets and batch arrays (allocated
    once), the settings made before it runs, its counters, its scoring state and the ring of
    control-plane messages it sets aside.  The loop that fills them is Worker (udp_loop.pxi)."""
    cdef int fd
    cdef int pfd                   # the priority socket (scoring's kernel stage), or -1
    cdef readonly int index
    cdef stats_t st
    cdef uint64_t epoch
    cdef int stop_flag
    cdef int running
    cdef int control_enabled
    cdef object scorer
    cdef mmsghdr* rmsgs
    cdef mmsghdr* smsgs
    cdef iovec* riov
    cdef iovec* siov
    cdef sockaddr_storage* addrs
    cdef uint8_t* rbuf
    cdef uint8_t* sbuf
    cdef uint8_t* cbuf
    cdef uint32_t sslot
    cdef ctl_msg_t* ring
    cdef uint64_t ring_head        # written by the worker
    cdef uint64_t ring_tail        # written by the control plane
    cdef sc_state_t sc             # query scoring: sketch, controller, counters (scoring.pxi)
    cdef kstamp_t kst              # sampled receive stamps (kstamp.pxi)
    cdef int wake_fd               # the housekeeping thread's eventfd, or -1 (set_wake)
    cdef int vlen                  # the normal socket's batch now (sc_normal_batch)
    cdef uint32_t coalesce_us      # pause after a batch of fewer than COALESCE_BELOW (set_coalesce)
    cdef size_t tail_want          # control space of the normal socket's receive headers
    cdef size_t tail_ctl           # ... as the headers are set now (_tail)
    cdef bint sock_stamp           # scored: the normal socket's stamp by ioctl (p53_sock_stamp_ns)
    cdef bint drained              # the normal queue emptied at the last read: wait (_receive)
    cdef bint clock_bound          # scored without kernel stamps: the queue delay by the clock
    cdef uint64_t rx_t0            # ... the receive's start (CLOCK_MONOTONIC ns, Worker._loop)
    cdef uint64_t normal_clear     # ... when the worker last found the normal queue empty
    cdef uint64_t prio_clear       # ... and the priority queue
    cdef uint64_t rx_since         # ... that of the queue the last receive read
    cdef bint prio_empty           # ... the last look found the priority queue empty
    cdef uint64_t ph_t[PH_RING]    # ... the last full priority reads' start (UdpReceive._prio_since)
    cdef uint32_t ph_left[PH_RING] # ... and at most how many stayed queued after each
    cdef uint32_t ph_k             # ... full priority reads so far
    cdef uint32_t prio_truesize    # the kernel's charge per datagram (set_priority), 0: unknown
    cdef uint32_t prio_cap         # the most datagrams the priority queue holds (_prio_cap)
    cdef uint64_t* wake            # this worker's word of the steering program's wake map, or NULL
    cdef Py_buffer wb              # ... the map's mmap (set_priority)
    cdef bint has_wb
    cdef uint64_t prio_base        # the wake word's count when set (then corrected, _read_prio)
    cdef uint64_t prio_read        # datagrams read from the priority socket since
    cdef uint32_t prio_drops0      # the priority socket's kernel drop counter when set
    cdef uint32_t prio_skip        # receives since the priority socket was last read
    cdef uint64_t idle_sleeps      # waits in the normal socket's receive with the wake bit set

    def __cinit__(self, int fd, int index=0, bint control=False):
        self.fd = fd
        self.pfd = -1
        self.wake_fd = -1
        self.vlen = BATCH
        self.index = index
        self.control_enabled = control
        memset(&self.st, 0, sizeof(stats_t))
        self.sslot = 65535
        self.rmsgs = <mmsghdr*>calloc(BATCH, sizeof(mmsghdr))
        self.smsgs = <mmsghdr*>calloc(BATCH, sizeof(mmsghdr))
        self.riov = <iovec*>calloc(BATCH, sizeof(iovec))
        self.siov = <iovec*>calloc(BATCH, sizeof(iovec))
        self.addrs = <sockaddr_storage*>calloc(BATCH, sizeof(sockaddr_storage))
        self.rbuf = <uint8_t*>malloc(BATCH * RECV_SLOT)
        self.cbuf = <uint8_t*>calloc(BATCH, CTRL_SLOT)
        self.ring = <ctl_msg_t*>calloc(CTL_RING, sizeof(ctl_msg_t))
        self.sbuf = NULL
        if not (self.rmsgs and self.smsgs and self.riov and self.siov and self.addrs and self.rbuf
                and self.cbuf and self.ring):
            raise MemoryError()

    def __dealloc__(self):
        if self.has_wb:
            PyBuffer_Release(&self.wb)
        free(self.rmsgs); free(self.smsgs); free(self.riov); free(self.siov)
        free(self.addrs); free(self.rbuf); free(self.sbuf); free(self.cbuf); free(self.ring)

    def set_priority(self, int fd, object wake=None, int slot=-1, int truesize=0):
        """Also serve `fd`, the priority socket known resolvers are steered to: drained first,
        before every batch of the normal socket (pop53.scoring.steer).  With `wake` (the
        steering program's wake map, pop53.scoring.ebpf.WakeMap's mmap) and this worker's
        `slot` in it, the worker reads its priority socket only when the program counted
        datagrams for it, and waits for queries in its normal socket's receive, as a worker
        without scoring does, while the program sends it its known resolvers there
        (udp_recv.pxi, UdpReceive._receive_woken).  `truesize`: what the kernel charges a
        receive buffer per datagram (pop53.scoring.service.datagram_truesize), which bounds how
        many the priority queue holds (UdpReceive._prio_since); 0: unknown."""
        if self.running:
            raise RuntimeError("worker already running")
        self.pfd = fd
        self.prio_truesize = truesize if truesize > 0 else 0
        self.prio_cap = 0
        if self.has_wb:
            PyBuffer_Release(&self.wb)
            self.has_wb = False
            self.wake = NULL
        if wake is None:
            return
        PyObject_GetBuffer(wake, &self.wb, PyBUF_WRITABLE)
        self.has_wb = True
        if slot < 0 or (slot + 1) * WAKE_STRIDE * 8 > self.wb.len:
            PyBuffer_Release(&self.wb)
            self.has_wb = False
            raise ValueError(f"wake slot {slot} outside the map")
        self.wake = <uint64_t*>self.wb.buf + slot * WAKE_STRIDE
        self.prio_drops0 = 0
        p53_sock_drops(fd, &self.prio_drops0)
        self.prio_base = p53_load_u64(self.wake) & WAKE_COUNT
        self.prio_read = 0

    def set_wake(self, int fd):
        """An eventfd written whenever a control-plane message is set aside (take_control), so
        the housekeeping thread need not poll for them; -1: none."""
        self.wake_fd = fd

    def sample_stamps(self, int every):
        """Kernel receive stamps during one second in `every` (kstamp.pxi); the socket must not
        have SO_TIMESTAMPNS on (it would hold the kernel's stamping on).  0 or 1: every batch
        as the socket is set."""
        if self.running:
            raise RuntimeError("worker already running")
        self.kst.every = every if every > 0 else 0
        self.kst.on = 0

    def set_coalesce(self, int us):
        """After a receive batch of fewer than COALESCE_BELOW queries, pause `us` microseconds
        before reading again (0: never).  Under moderate load most of a UDP query's CPU is the
        kernel's per-wake-up and per-batch work (the sleep and wake-up in recvmmsg, two system
        calls, waking the client's reader for each burst of replies): letting the queue fill a
        little trades latency for larger batches, 8-13% less CPU per query in the mapping
        bench on loopback (issue 10, docs/udp_cost.md); the latency is the sleep's real length,
        the timer slack and the wake-up included (about 100 us for 20 asked here), so the server
        leaves it off unless configured.  A full batch is never followed by a pause, so a
        saturated worker runs as before; neither is an idle wait, so the first query of a burst
        is answered at once."""
        if self.running:
            raise RuntimeError("worker already running")
        self.coalesce_us = us if us > 0 else 0

    @property
    def stamp_every(self):
        return self.kst.every if self.kst.every > 1 else 1

    def stop(self):
        p53_store_int(&self.stop_flag, 1)

    @property
    def epoch(self):
        return p53_load_u64(&self.epoch)

    @property
    def running(self):
        return bool(self.running)

    def take_control(self):
        """Drain the control-plane messages (NOTIFY, XFR, TSIG-signed) this worker set aside:
        a list of (message bytes, sockaddr bytes)."""
        cdef list out = []
        cdef ctl_msg_t* cm
        cdef uint64_t head = p53_load_u64(&self.ring_head)
        while self.ring_tail < head:
            cm = &self.ring[self.ring_tail % CTL_RING]
            out.append((PyBytes_FromStringAndSize(<const char*>cm.data, cm.len if cm.len <= CTL_MAX else CTL_MAX),
                        PyBytes_FromStringAndSize(<const char*>&cm.addr, cm.addrlen)))
            p53_store_u64(&self.ring_tail, self.ring_tail + 1)
        return out

    def scoring_stats(self):
        """Query scoring's counters, shares and controller level for this worker."""
        d = sc_stats_dict(&self.sc)
        d["idle_sleeps"] = self.idle_sleeps
        return d

    def stats(self):
        """A snapshot of the counters (plain ints; torn reads of a 64-bit counter cannot happen
        on the 64-bit targets we build for)."""
        return stats_dict(&self.st)


cdef dict stats_dict(const stats_t* s):
    return {
        "queries": s.queries, "udp": s.udp, "tcp": s.tcp, "replies": s.replies,
        "dropped": s.dropped, "truncated": s.truncated, "control": s.control,
        "bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "batches": s.batches,
        "send_errors": s.send_errors, "recv_errors": s.recv_errors,
        "rrl_dropped": s.rrl_dropped, "rrl_slipped": s.rrl_slipped,
        "cookies_valid": s.cookies_valid, "cookies_new": s.cookies_new,
        "mapped": {"ecs": s.mapped[0], "source": s.mapped[1], "default": s.mapped[2],
                   "ecs_untrusted": s.mapped[3]},
        "rcode": {i: s.rcode[i] for i in range(24) if s.rcode[i]},
        "qtype": {i: s.qtype[i] for i in range(257) if s.qtype[i]},
    }


cdef class Counters:
    """Counters for answers made outside the UDP workers (TCP, in-process)."""
    cdef stats_t st

    def answer(self, ImageView image, const uint8_t[::1] wire not None, Responder responder not None,
               bint tcp=True, bytes client=None, MapSnapshot maps=None):
        """Like the module-level answer(), counting into this object.  Returns (action, bytes).
        client: the packed client address (4 or 16 bytes), for server cookies and mapping."""
        cdef uint8_t* out = <uint8_t*>malloc(65535)
        cdef uint32_t outlen = 0
        cdef query_t q
        cdef int act
        cdef const image_t* img = image.ptr() if image is not None else NULL
        cdef const uint8_t* p = &wire[0] if wire.shape[0] else <const uint8_t*>b""
        cdef uint32_t n = <uint32_t>wire.shape[0]
        cdef const uint8_t* cl = <const uint8_t*>(<char*>client) if client is not None else NULL
        cdef uint32_t cl_len = len(client) if client is not None else 0
        cdef const map_snap_t* mp = maps.ptr() if maps is not None else NULL
        if out == NULL:
            raise MemoryError()
        try:
            if wire.shape[0] > 65535:
                self.st.queries += 1
                self.st.dropped += 1
                return ACT_DROP, None
            with nogil:
                act = core_answer(img, &responder.cfg, p, n, out, 65535, tcp, &outlen, &q, &self.st,
                                  cl, cl_len, mp)
                if tcp:
                    self.st.tcp += 1
                else:
                    self.st.udp += 1
            if act == ACT_DROP:
                return act, None
            return act, PyBytes_FromStringAndSize(<const char*>out, outlen)
        finally:
            free(out)

    def stats(self):
        return stats_dict(&self.st)
