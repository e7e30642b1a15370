# DNS over TCP in the data plane (RFC 7766): one epoll loop per TCP thread, with the GIL
# released, that accepts, reads length-framed messages, answers them with core_answer and
# writes.  No Python object exists per connection or per query: a connection is a slot in a
# table allocated once (TcpLoop.conns), its bytes live in the loop's two scratch buffers, and
# only what a slow peer leaves behind (a partial message, unsent answers) is copied to a
# per-connection heap buffer that is freed as soon as it empties.
#
# RFC 7766 behaviour:
#   - pipelining: every complete message in what was read is answered, in order (§6.2.1.1);
#   - half-close: a peer that shut its write side still gets every answer, then FIN;
#   - answers up to 65535 bytes, never truncated (outcap 65535, tcp=True);
#   - no data before the handshake completes: plain accept(), no TCP Fast Open;
#   - timeouts (§6.2.3): idle between messages; a short one for an incomplete message
#     (counted from its first byte, so trickling bytes does not extend it: slowloris), shorter
#     still when more than half the connection slots are taken (as NSD does); a write timeout
#     for a peer that does not read its answers (its connection is reset, freeing the kernel
#     buffers too);
#   - limits: global connections (shared by every loop), connections per client address
#     (IPv4 /32, IPv6 /64), queries per connection.  When every slot is taken, the connection
#     that has waited longest for an incomplete message is evicted for the newcomer; a table
#     full of connections that completed queries refuses newcomers instead.
#   - the per-connection query limit stops reading, answers every complete message already
#     read, sends FIN and reads until the peer closes (closing with unread data would send RST,
#     which can destroy answers still in flight).
# Messages for the control plane (NOTIFY, AXFR/IXFR, TSIG-signed) hand the whole connection, from
# that message on, to the Python side (serve/tcp.py) through a ring; its answers already made
# travel with it so the order on the wire is kept.
#
# Image lifetime: as the UDP worker (io.pxi): the image pointer is loaded once per epoll batch
# and `epoch` is bumped before and after every batch; epoll_wait's 50 ms timeout keeps an idle
# loop passing quiescent points.

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* ev)
    int epoll_wait(int epfd, epoll_event* evs, int maxevents, int timeout)
    unsigned int EPOLLIN
    unsigned int EPOLLOUT
    unsigned int EPOLLERR
    unsigned int EPOLLHUP
    unsigned int EPOLLRDHUP
    unsigned int EPOLLEXCLUSIVE
    int EPOLL_CTL_ADD
    int EPOLL_CTL_MOD
    int EPOLL_CTL_DEL
    int EPOLL_CLOEXEC

cdef extern from "<sys/socket.h>" nogil:
    cdef struct linger:
        int l_onoff
        int l_linger
    int accept4(int fd, sockaddr* addr, socklen_t* alen, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t len)
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int MSG_NOSIGNAL
    int SHUT_WR
    int SOL_SOCKET
    int SO_LINGER

cdef extern from "<netinet/in.h>" nogil:
    int IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY

cdef extern from "<errno.h>" nogil:
    int ECONNABORTED

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t write(int fd, const void* buf, size_t n)

cdef extern from "<string.h>" nogil:
    void* memmove(void* d, const void* s, size_t n)

cdef extern from "<stdlib.h>" nogil:
    void* realloc(void* p, size_t n)

cdef extern from "p53_tcp.h" nogil:
    int p53_add_int(int* p, int v)
    uint32_t p53_add_u32(uint32_t* p, int32_t v)
    uint64_t p53_add_u64(uint64_t* p, uint64_t v)
    int p53_take_u32(uint32_t* p, uint32_t limit)

cdef enum:
    TCP_EVENTS = 128
    TCP_READ = 65536               # bytes asked of one recv()
    TCP_RS = 2 * 65538             # read scratch: a carried partial message + one read
    TCP_WS_FLUSH = 16384           # answers are sent once this many bytes are ready
    TCP_WS = TCP_WS_FLUSH + 65537 + 2
    TCP_RING = 64                  # connections waiting for the control plane, per loop
    TCP_IPTAB = 65536              # per-address counters (a keyed hash picks the slot)
    TCP_ACCEPTS = 64               # accepts per readiness event of a listening socket
    TCP_READS = 4                  # recv() per connection per event (fairness)
    TCP_SWEEP_MS = 100
    TCP_LINGER_MS = 2000           # after FIN at the query limit: wait this long for the peer
    C_FREE = 0
    C_OPEN = 1
    C_LINGER = 2

cdef uint64_t TCP_LISTEN = 0xFFFFFFFFU


cdef struct tconn_t:
    int fd
    uint32_t gen                   # bumped when the slot is reused (stale events are ignored)
    uint8_t state
    uint8_t eof                    # the peer shut its write side
    uint8_t limit                  # the query limit was reached: no more reads
    uint32_t events                # the epoll interest now registered
    uint32_t queries
    uint32_t ipslot
    uint8_t* inb                   # carried input (a partial message, or messages not yet
    uint32_t in_len                # answered because the peer is not reading)
    uint8_t* outb                  # answers the kernel did not take yet
    uint32_t out_off
    uint32_t out_len
    uint64_t t_active              # ms: last bytes read
    uint64_t t_msg                 # ms: the incomplete message (or the connection) began
    uint64_t t_out                 # ms: the last write progress while output is pending
    socklen_t alen
    sockaddr_storage addr


cdef struct handoff_t:
    int fd
    socklen_t alen
    sockaddr_storage addr
    uint8_t* out                   # answers made before the handoff, to be sent first
    uint32_t out_len
    uint8_t* inp                   # the unanswered input, from the control message on
    uint32_t in_len
    uint32_t queries


cdef inline uint64_t now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef struct tgroup_t:
    uint32_t conns
    uint64_t refused, evicted, timed_out, stalled, per_ip_refused
    uint32_t* iptab
    uint8_t ipkey[16]
    uint32_t max_connections, max_per_ip, max_queries
    uint64_t idle_ms, msg_ms, busy_ms, write_ms


cdef uint32_t ip_slot(const tgroup_t* g, const sockaddr_storage* sa) noexcept nogil:
    """The counter slot of a client: IPv4 /32, IPv6 /64 (one host's usual allocation)."""
    cdef uint32_t n
    cdef const uint8_t* a = client_addr(<const uint8_t*>sa, &n)
    cdef uint8_t h[8]
    p53_siphash24(a, 4 if n == 4 else (8 if n == 16 else 0), g.ipkey, h)
    return (<uint32_t>h[0] | (<uint32_t>h[1] << 8)) & (TCP_IPTAB - 1)


cdef inline uint32_t p53_load_u32(uint32_t* p) noexcept nogil:
    return p53_add_u32(p, 0)


cdef class TcpGroup:
    """What every TCP loop of a server shares: the limits, the connection count and the
    per-address counters (atomics: loops run in parallel)."""
    cdef tgroup_t g

    def __cinit__(self, int max_connections=1024, int max_per_ip=0, int max_queries=1000,
                  double idle_timeout=10.0, double message_timeout=2.0, double busy_timeout=0.2,
                  double write_timeout=5.0, bytes key=None):
        if max_connections < 1 or max_per_ip < 0 or max_queries < 1:
            raise ValueError("TCP limits must be positive")
        self.g.max_connections = max_connections
        self.g.max_per_ip = max_per_ip
        self.g.max_queries = max_queries
        self.g.idle_ms = <uint64_t>(idle_timeout * 1000)
        self.g.msg_ms = <uint64_t>(message_timeout * 1000)
        self.g.busy_ms = <uint64_t>(busy_timeout * 1000)
        self.g.write_ms = <uint64_t>(write_timeout * 1000)
        if key is None or len(key) != 16:
            import os
            key = os.urandom(16)
        memcpy(self.g.ipkey, <const char*>key, 16)
        self.g.iptab = <uint32_t*>calloc(TCP_IPTAB, sizeof(uint32_t))
        if self.g.iptab == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.g.iptab)

    @property
    def max_connections(self):
        return self.g.max_connections

    @property
    def connections(self):
        return p53_load_u32(&self.g.conns)

    def stats(self):
        return {"tcp_connections": p53_load_u32(&self.g.conns),
                "tcp_refused": p53_load_u64(&self.g.refused),
                "tcp_refused_per_ip": p53_load_u64(&self.g.per_ip_refused),
                "tcp_evicted": p53_load_u64(&self.g.evicted),
                "tcp_timed_out": p53_load_u64(&self.g.timed_out),
                "tcp_stalled": p53_load_u64(&self.g.stalled)}


cdef class TcpLoop:
    """One TCP thread: an epoll set over the listening sockets (EPOLLEXCLUSIVE, so one loop
    wakes per new connection) and its connections."""
    cdef TcpGroup group
    cdef tgroup_t* g
    cdef Responder responder
    cdef readonly int index
    cdef int ep
    cdef int notify_fd
    cdef int control_enabled
    cdef int* lfds
    cdef int nl
    cdef tconn_t* conns
    cdef uint32_t cap
    cdef uint32_t* freelist
    cdef uint32_t nfree
    cdef uint8_t* rs
    cdef uint8_t* ws
    cdef epoll_event* evs
    cdef handoff_t* ring
    cdef uint64_t ring_head        # written by the loop
    cdef uint64_t ring_tail        # written by the control plane
    cdef stats_t st
    cdef uint64_t epoch
    cdef int stop_flag
    cdef int running
    cdef uint64_t now
    cdef uint64_t accept_paused    # ms: accept() failed for lack of resources (0: accepting)
    cdef const image_t* img
    cdef const rcfg_t* cfg

    def __cinit__(self, TcpGroup group not None, list fds not None, int index=0,
                  bint control=False, int notify_fd=-1):
        cdef uint32_t i
        cdef epoll_event ev
        self.group = group
        self.g = &group.g
        self.index = index
        self.control_enabled = control
        self.notify_fd = notify_fd
        self.ep = -1
        self.cap = group.g.max_connections
        self.nl = len(fds)
        self.lfds = <int*>calloc(self.nl + 1, sizeof(int))
        self.conns = <tconn_t*>calloc(self.cap, sizeof(tconn_t))
        self.freelist = <uint32_t*>malloc(self.cap * sizeof(uint32_t))
        self.rs = <uint8_t*>malloc(TCP_RS)
        self.ws = <uint8_t*>malloc(TCP_WS)
        self.evs = <epoll_event*>calloc(TCP_EVENTS, sizeof(epoll_event))
        self.ring = <handoff_t*>calloc(TCP_RING, sizeof(handoff_t))
        if not (self.lfds and self.conns and self.freelist and self.rs and self.ws and self.evs
                and self.ring):
            raise MemoryError()
        for i in range(self.cap):
            self.conns[i].fd = -1
            self.freelist[i] = self.cap - 1 - i
        self.nfree = self.cap
        self.ep = epoll_create1(EPOLL_CLOEXEC)
        if self.ep < 0:
            raise OSError("epoll_create1 failed")
        for i in range(<uint32_t>self.nl):
            self.lfds[i] = fds[i]
        self._listen(True)

    def __dealloc__(self):
        cdef uint32_t i
        cdef handoff_t* h
        if self.conns != NULL:
            for i in range(self.cap):
                if self.conns[i].state != C_FREE:
                    self._release(&self.conns[i], True, False)
        if self.ring != NULL:
            while self.ring_tail < self.ring_head:
                h = &self.ring[self.ring_tail % TCP_RING]
                close(h.fd)
                free(h.out)
                free(h.inp)
                self.ring_tail += 1
        if self.ep >= 0:
            close(self.ep)
        free(self.lfds); free(self.conns); free(self.freelist); free(self.rs); free(self.ws)
        free(self.evs); free(self.ring)

    def run(self, Shared shared not None, Responder responder not None):
        """The loop; returns when stop() is called (within 50 ms)."""
        if self.running:
            raise RuntimeError("TCP loop already running")
        self.responder = responder
        self.cfg = &responder.cfg
        self.running = 1
        p53_store_int(&self.stop_flag, 0)
        with nogil:
            self._loop(shared)
        self.running = 0

    def stop(self):
        p53_store_int(&self.stop_flag, 1)

    @property
    def epoch(self):
        return p53_load_u64(&self.epoch)

    @property
    def running(self):
        return bool(self.running)

    def stats(self):
        return stats_dict(&self.st)

    def take_handoffs(self):
        """The connections handed to the control plane: a list of (fd, sockaddr bytes, answers
        to send first, unanswered input, queries answered so far).  The caller owns the fds."""
        cdef list out = []
        cdef handoff_t* h
        cdef uint64_t head = p53_load_u64(&self.ring_head)
        while self.ring_tail < head:
            h = &self.ring[self.ring_tail % TCP_RING]
            out.append((h.fd, PyBytes_FromStringAndSize(<const char*>&h.addr, h.alen),
                        PyBytes_FromStringAndSize(<const char*>h.out, h.out_len) if h.out_len else b"",
                        PyBytes_FromStringAndSize(<const char*>h.inp, h.in_len) if h.in_len else b"",
                        h.queries))
            free(h.out)
            free(h.inp)
            h.out = NULL
            h.inp = NULL
            p53_store_u64(&self.ring_tail, self.ring_tail + 1)
        return out

    # -- the loop (nogil) ---------------------------------------------------------------------
    cdef void _loop(self, Shared shared) noexcept nogil:
        cdef int n, i
        cdef uint64_t tag, last_sweep = 0
        cdef tconn_t* c
        cdef uint32_t i32
        while not p53_load_int(&self.stop_flag):
            n = epoll_wait(self.ep, self.evs, TCP_EVENTS, 50)
            p53_store_u64(&self.epoch, self.epoch + 1)     # quiescent: no image held
            self.now = now_ms()
            self.img = <const image_t*>p53_load_ptr(&shared.current)
            for i in range(n if n > 0 else 0):
                tag = self.evs[i].data.u64
                if (tag >> 32) == TCP_LISTEN:
                    self._accept(self.lfds[<uint32_t>tag])
                    continue
                c = &self.conns[<uint32_t>tag]
                if c.state == C_FREE or c.gen != <uint32_t>(tag >> 32):
                    continue                                # closed earlier in this batch
                self._event(c, self.evs[i].events)
            self.img = NULL
            if self.now - last_sweep >= TCP_SWEEP_MS:
                self._sweep()
                last_sweep = self.now
                if self.accept_paused and self.now - self.accept_paused >= TCP_SWEEP_MS:
                    self.accept_paused = 0
                    self._listen(True)
            p53_store_u64(&self.epoch, self.epoch + 1)
        for i32 in range(self.cap):
            if self.conns[i32].state != C_FREE:
                self._release(&self.conns[i32], True, False)

    cdef void _accept(self, int lfd) noexcept nogil:
        cdef int k, fd, one = 1
        cdef sockaddr_storage sa
        cdef socklen_t alen
        cdef uint32_t idx, slot
        cdef tconn_t* c
        cdef epoll_event ev
        cdef tgroup_t* g = self.g
        for k in range(TCP_ACCEPTS):
            alen = sizeof(sockaddr_storage)
            fd = accept4(lfd, <sockaddr*>&sa, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR and \
                        errno != ECONNABORTED:
                    # out of descriptors or memory: level-triggered epoll would report the
                    # listening socket again at once and spin; stop accepting for a while
                    self._listen(False)
                    self.accept_paused = self.now
                return
            slot = ip_slot(g, &sa)
            if g.max_per_ip and not p53_take_u32(&g.iptab[slot], g.max_per_ip):
                p53_add_u64(&g.per_ip_refused, 1)
                p53_add_u64(&g.refused, 1)
                close(fd)
                continue
            if not g.max_per_ip:
                p53_add_u32(&g.iptab[slot], 1)
            if not p53_take_u32(&g.conns, g.max_connections):
                # every slot taken: make room by evicting a connection stuck in an incomplete
                # message, if there is one; never one that completed its queries
                if not (self._evict() and p53_take_u32(&g.conns, g.max_connections)):
                    p53_add_u32(&g.iptab[slot], -1)
                    p53_add_u64(&g.refused, 1)
                    close(fd)
                    continue
            if self.nfree == 0:         # cannot happen: cap = the global limit
                p53_add_u32(&g.iptab[slot], -1)
                p53_add_u32(&g.conns, -1)
                close(fd)
                continue
            self.nfree -= 1
            idx = self.freelist[self.nfree]
            c = &self.conns[idx]
            c.fd = fd
            c.state = C_OPEN
            c.eof = 0
            c.limit = 0
            c.queries = 0
            c.ipslot = slot
            c.inb = NULL
            c.in_len = 0
            c.outb = NULL
            c.out_off = 0
            c.out_len = 0
            c.t_active = self.now
            c.t_msg = self.now
            c.t_out = self.now
            c.alen = alen
            memcpy(&c.addr, &sa, sizeof(sockaddr_storage))
            # answers go out as whole frames; do not let Nagle hold the next one back
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
            c.events = EPOLLIN | EPOLLRDHUP
            ev.events = c.events
            ev.data.u64 = (<uint64_t>c.gen << 32) | idx
            if epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev) != 0:
                self._release(c, True, True)

    cdef void _listen(self, bint on) noexcept nogil:
        """Watch the listening sockets (again), or stop watching them."""
        cdef epoll_event ev
        cdef int i
        for i in range(self.nl):
            ev.events = EPOLLIN | EPOLLEXCLUSIVE
            ev.data.u64 = (TCP_LISTEN << 32) | <uint64_t>i
            epoll_ctl(self.ep, EPOLL_CTL_ADD if on else EPOLL_CTL_DEL, self.lfds[i], &ev)

    cdef bint _evict(self) noexcept nogil:
        """Close the connection of this loop that has waited longest for an incomplete message
        (a slowloris holds its slots that way; a real client sends its query at once)."""
        cdef uint32_t i, best = 0xFFFFFFFFU
        cdef uint64_t oldest = 0xFFFFFFFFFFFFFFFFULL
        cdef tconn_t* c
        for i in range(self.cap):
            c = &self.conns[i]
            if c.state == C_OPEN and c.out_len == 0 and not c.eof and \
                    (c.in_len or c.queries == 0) and c.t_msg < oldest:
                oldest = c.t_msg
                best = i
        if best == 0xFFFFFFFFU:
            return False
        p53_add_u64(&self.g.evicted, 1)
        self._release(&self.conns[best], True, True)
        return True

    cdef void _release(self, tconn_t* c, bint close_fd, bint abort) noexcept nogil:
        """Free a slot.  abort: reset the connection (SO_LINGER 0), which also drops whatever
        the kernel still holds for it."""
        cdef linger lg
        if close_fd:
            if abort:
                lg.l_onoff = 1
                lg.l_linger = 0
                setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(linger))
            close(c.fd)
        free(c.inb)
        free(c.outb)
        c.inb = NULL
        c.outb = NULL
        c.in_len = 0
        c.out_len = 0
        c.out_off = 0
        c.fd = -1
        c.state = C_FREE
        c.gen = (c.gen + 1) & 0x7FFFFFFFU
        p53_add_u32(&self.g.iptab[c.ipslot], -1)
        p53_add_u32(&self.g.conns, -1)
        self.freelist[self.nfree] = <uint32_t>(c - self.conns)
        self.nfree += 1

    cdef void _interest(self, tconn_t* c, uint32_t events) noexcept nogil:
        cdef epoll_event ev
        if c.events == events:
            return
        c.events = events
        ev.events = events
        ev.data.u64 = (<uint64_t>c.gen << 32) | <uint64_t>(c - self.conns)
        epoll_ctl(self.ep, EPOLL_CTL_MOD, c.fd, &ev)

    cdef void _event(self, tconn_t* c, uint32_t events) noexcept nogil:
        cdef ssize_t r
        cdef int k
        if c.state == C_LINGER:
            # after our FIN: read and discard until the peer closes too (bounded per event;
            # the sweep ends it after TCP_LINGER_MS in any case)
            for k in range(TCP_READS):
                r = recv(c.fd, self.rs, TCP_RS, MSG_DONTWAIT)
                if r > 0:
                    continue
                if r == 0 or (errno != EAGAIN and errno != EINTR):
                    self._release(c, True, False)
                return
            return
        if events & EPOLLERR:
            self._release(c, True, True)
            return
        if c.out_len:
            if self._flush(c) < 0:
                self._release(c, True, True)
                return
            if c.out_len:
                if events & EPOLLHUP:
                    self._release(c, True, True)
                return
        self._serve(c)

    cdef int _flush(self, tconn_t* c) noexcept nogil:
        """Send pending answers.  0 (done or would block) or -1 (the connection failed)."""
        cdef ssize_t n
        while c.out_off < c.out_len:
            n = send(c.fd, c.outb + c.out_off, c.out_len - c.out_off, MSG_NOSIGNAL | MSG_DONTWAIT)
            if n > 0:
                c.out_off += <uint32_t>n
                c.t_out = self.now
            elif n < 0 and errno == EINTR:
                continue
            elif n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK):
                return 0
            else:
                self.st.send_errors += 1
                return -1
        free(c.outb)
        c.outb = NULL
        c.out_off = 0
        c.out_len = 0
        c.t_active = self.now           # the idle timeout runs from the last answer taken
        return 0

    cdef int _send(self, tconn_t* c, const uint8_t* data, uint32_t n) noexcept nogil:
        """Send answers now; what the kernel does not take waits in the connection's buffer
        (and reading stops until it is gone).  0, or -1 (failed; the caller closes)."""
        cdef ssize_t k = 0
        cdef uint8_t* nb
        if c.out_len == 0:
            while True:
                k = send(c.fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT)
                if k < 0 and errno == EINTR:
                    continue
                break
            if k < 0:
                if errno != EAGAIN and errno != EWOULDBLOCK:
                    self.st.send_errors += 1
                    return -1
                k = 0
            if <uint32_t>k == n:
                return 0
            c.t_out = self.now
        nb = <uint8_t*>realloc(c.outb, c.out_len + n - k)
        if nb == NULL:
            return -1
        c.outb = nb
        memcpy(c.outb + c.out_len, data + k, n - k)
        c.out_len += n - <uint32_t>k
        return 0

    cdef void _serve(self, tconn_t* c) noexcept nogil:
        """Answer every complete message of the carried input and of what can be read now, in
        order; carry the rest; then pick what to wait for."""
        cdef uint8_t* rs = self.rs
        cdef uint8_t* ws = self.ws
        cdef uint32_t L = c.in_len, off = 0, wlen = 0, m, outlen, cl_len
        cdef int reads = 0, act
        cdef bint consumed = False, drained = False
        cdef ssize_t r
        cdef query_t q
        cdef const uint8_t* cl = client_addr(<const uint8_t*>&c.addr, &cl_len)
        if L:
            memcpy(rs, c.inb, L)
            free(c.inb)
            c.inb = NULL
            c.in_len = 0
        while True:
            while L - off >= 2 and c.out_len == 0:
                m = (<uint32_t>rs[off] << 8) | rs[off + 1]
                if L - off - 2 < m:
                    break
                act = core_answer(self.img, self.cfg, rs + off + 2, m, ws + wlen + 2, 65535, True,
                                  &outlen, &q, &self.st, cl, cl_len)
                self.st.tcp += 1
                if act == ACT_CONTROL and self.control_enabled:
                    if self._handoff(c, rs + off, L - off, wlen):
                        return
                    # the ring is full: the fallback reply goes out instead
                c.queries += 1
                off += 2 + m
                consumed = True
                if act != ACT_DROP:
                    ws[wlen] = <uint8_t>(outlen >> 8)
                    ws[wlen + 1] = <uint8_t>outlen
                    wlen += 2 + outlen
                if wlen >= TCP_WS_FLUSH:
                    if self._send(c, ws, wlen) < 0:
                        self._release(c, True, True)
                        return
                    wlen = 0
                if c.queries >= self.g.max_queries:
                    c.limit = 1     # read no more; what was read is still answered
            if off:
                memmove(rs, rs + off, L - off)
                L -= off
                off = 0
            if c.limit or c.eof or c.out_len or drained or reads >= TCP_READS or \
                    L + TCP_READ > TCP_RS:
                break
            r = recv(c.fd, rs + L, TCP_RS - L, MSG_DONTWAIT)
            reads += 1
            if r > 0:
                # a short read took everything there was: answer it and wait for epoll
                # (level-triggered) rather than pay a recv() that returns EAGAIN
                drained = <size_t>r < TCP_RS - L
                if L == 0 and not consumed:
                    c.t_msg = self.now          # a new message begins
                L += <uint32_t>r
                c.t_active = self.now
            elif r == 0:
                c.eof = 1
                break
            elif errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
                break
            else:
                self.st.recv_errors += 1
                self._release(c, True, True)
                return
        if wlen and self._send(c, ws, wlen) < 0:
            self._release(c, True, True)
            return
        if L:
            c.inb = <uint8_t*>malloc(L)
            if c.inb == NULL:
                self._release(c, True, True)
                return
            memcpy(c.inb, rs, L)
            c.in_len = L
            if consumed:
                c.t_msg = self.now
        if c.out_len:
            self._interest(c, EPOLLOUT)     # stop reading until the peer takes its answers
        elif c.eof:
            self._release(c, True, False)   # every answer sent: FIN
        elif c.limit:
            # RFC 7766 §6.2.3: the server closes; FIN first, then drain what the peer still
            # sends so the close does not turn into a reset that destroys answers in flight
            shutdown(c.fd, SHUT_WR)
            c.state = C_LINGER
            c.t_msg = self.now
            self._interest(c, EPOLLIN)
        else:
            self._interest(c, EPOLLIN | EPOLLRDHUP)

    cdef bint _handoff(self, tconn_t* c, const uint8_t* rest, uint32_t rest_len,
                       uint32_t wlen) noexcept nogil:
        """Give the connection, from the control message on, to the control plane.  False when
        the ring is full (the caller answers with the fallback instead)."""
        cdef handoff_t* h
        cdef uint32_t pend = c.out_len - c.out_off
        cdef epoll_event ev
        cdef char wake = 104
        if self.ring_head - p53_load_u64(&self.ring_tail) >= TCP_RING:
            return False
        h = &self.ring[self.ring_head % TCP_RING]
        h.out = <uint8_t*>malloc(pend + wlen + 1)
        h.inp = <uint8_t*>malloc(rest_len + 1)
        if h.out == NULL or h.inp == NULL:
            free(h.out)
            free(h.inp)
            h.out = NULL
            h.inp = NULL
            return False
        if pend:
            memcpy(h.out, c.outb + c.out_off, pend)
        memcpy(h.out + pend, self.ws, wlen)
        h.out_len = pend + wlen
        memcpy(h.inp, rest, rest_len)
        h.in_len = rest_len
        h.fd = c.fd
        h.alen = c.alen
        memcpy(&h.addr, &c.addr, sizeof(sockaddr_storage))
        h.queries = c.queries
        epoll_ctl(self.ep, EPOLL_CTL_DEL, c.fd, &ev)
        self._release(c, False, False)
        p53_store_u64(&self.ring_head, self.ring_head + 1)
        if self.notify_fd >= 0:
            write(self.notify_fd, &wake, 1)     # wake the control plane; a full pipe is fine
        return True

    cdef void _sweep(self) noexcept nogil:
        """Timeouts, every TCP_SWEEP_MS."""
        cdef tgroup_t* g = self.g
        cdef bint busy = p53_load_u32(&g.conns) * 2 > g.max_connections
        cdef uint64_t lim, now = self.now
        cdef uint32_t i
        cdef tconn_t* c
        for i in range(self.cap):
            c = &self.conns[i]
            if c.state == C_FREE:
                continue
            if c.state == C_LINGER:
                if now - c.t_msg >= TCP_LINGER_MS:
                    self._release(c, True, False)
            elif c.out_len:
                # a peer that does not read its answers (write timeout)
                if now - c.t_out >= g.write_ms:
                    p53_add_u64(&g.stalled, 1)
                    self._release(c, True, True)
            elif c.in_len or c.queries == 0:
                # an incomplete message (or none yet): counted from its first byte
                lim = g.busy_ms if busy and g.busy_ms < g.msg_ms else g.msg_ms
                if c.queries == 0 and g.idle_ms < lim:
                    lim = g.idle_ms
                if now - c.t_msg >= lim:
                    p53_add_u64(&g.timed_out, 1)
                    self._release(c, True, False)
            elif now - c.t_active >= g.idle_ms:
                self._release(c, True, False)
