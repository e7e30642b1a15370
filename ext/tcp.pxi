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
# and `epoch` is bumped before and after every batch; epoll_wait's timeout keeps an idle loop
# passing quiescent points (TCP_SWEEP_MS, like the UDP workers' 100 ms receive timeout: at 50 ms
# the 20 wake-ups a second cost the server ~3 ms of CPU a second, loaded or idle).

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


cdef struct tloop_t:
    tgroup_t* g
    int ep
    int notify_fd
    int control_enabled
    int* lfds
    int nl
    tconn_t* conns
    uint32_t cap
    uint32_t* freelist
    uint32_t nfree
    uint8_t* rs                    # read scratch
    uint8_t* ws                    # answer scratch
    epoll_event* evs
    handoff_t* ring
    uint64_t ring_head             # written by the loop
    uint64_t ring_tail             # written by the control plane
    stats_t st
    uint64_t epoch
    int stop_flag
    uint64_t now                   # ms, once per epoll batch
    uint64_t accept_paused         # ms: accept() failed for lack of resources (0: accepting)
    const image_t* img
    const map_snap_t* maps          # mapped answers, loaded with img once per batch
    const rcfg_t* cfg


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
    cdef Responder responder
    cdef readonly int index
    cdef int running
    cdef tloop_t L

    def __cinit__(self, TcpGroup group not None, list fds not None, int index=0,
                  bint control=False, int notify_fd=-1):
        cdef uint32_t i
        self.group = group
        self.L.g = &group.g
        self.index = index
        self.L.control_enabled = control
        self.L.notify_fd = notify_fd
        self.L.ep = -1
        self.L.cap = group.g.max_connections
        self.L.nl = len(fds)
        self.L.lfds = <int*>calloc(self.L.nl + 1, sizeof(int))
        self.L.conns = <tconn_t*>calloc(self.L.cap, sizeof(tconn_t))
        self.L.freelist = <uint32_t*>malloc(self.L.cap * sizeof(uint32_t))
        self.L.rs = <uint8_t*>malloc(TCP_RS)
        self.L.ws = <uint8_t*>malloc(TCP_WS)
        self.L.evs = <epoll_event*>calloc(TCP_EVENTS, sizeof(epoll_event))
        self.L.ring = <handoff_t*>calloc(TCP_RING, sizeof(handoff_t))
        if not (self.L.lfds and self.L.conns and self.L.freelist and self.L.rs and self.L.ws
                and self.L.evs and self.L.ring):
            raise MemoryError()
        for i in range(self.L.cap):
            self.L.conns[i].fd = -1
            self.L.freelist[i] = self.L.cap - 1 - i
        self.L.nfree = self.L.cap
        self.L.ep = epoll_create1(EPOLL_CLOEXEC)
        if self.L.ep < 0:
            raise OSError("epoll_create1 failed")
        for i in range(<uint32_t>self.L.nl):
            self.L.lfds[i] = fds[i]
        tl_listen(&self.L, True)

    def __dealloc__(self):
        cdef uint32_t i
        cdef handoff_t* h
        if self.L.conns != NULL:
            for i in range(self.L.cap):
                if self.L.conns[i].state != C_FREE:
                    tl_release(&self.L, &self.L.conns[i], True, False)
        if self.L.ring != NULL:
            while self.L.ring_tail < self.L.ring_head:
                h = &self.L.ring[self.L.ring_tail % TCP_RING]
                close(h.fd)
                free(h.out)
                free(h.inp)
                self.L.ring_tail += 1
        if self.L.ep >= 0:
            close(self.L.ep)
        free(self.L.lfds); free(self.L.conns); free(self.L.freelist); free(self.L.rs)
        free(self.L.ws); free(self.L.evs); free(self.L.ring)

    def run(self, Shared shared not None, Responder responder not None):
        """The loop; returns when stop() is called (within 50 ms)."""
        if self.running:
            raise RuntimeError("TCP loop already running")
        self.responder = responder
        self.L.cfg = &responder.cfg
        self.running = 1
        p53_store_int(&self.L.stop_flag, 0)
        with nogil:
            tl_loop(&self.L, <const void* const*>&shared.current, <const void* const*>&shared.maps)
        self.running = 0

    def stop(self):
        p53_store_int(&self.L.stop_flag, 1)

    @property
    def epoch(self):
        return p53_load_u64(&self.L.epoch)

    @property
    def running(self):
        return bool(self.running)

    def stats(self):
        return stats_dict(&self.L.st)

    def take_handoffs(self):
        """The connections handed to the control plane: a list of (fd, sockaddr bytes, answers
        to send first, unanswered input, queries answered so far).  The caller owns the fds."""
        cdef list out = []
        cdef handoff_t* h
        cdef uint64_t head = p53_load_u64(&self.L.ring_head)
        while self.L.ring_tail < head:
            h = &self.L.ring[self.L.ring_tail % TCP_RING]
            out.append((h.fd, PyBytes_FromStringAndSize(<const char*>&h.addr, h.alen),
                        PyBytes_FromStringAndSize(<const char*>h.out, h.out_len) if h.out_len else b"",
                        PyBytes_FromStringAndSize(<const char*>h.inp, h.in_len) if h.in_len else b"",
                        h.queries))
            free(h.out)
            free(h.inp)
            h.out = NULL
            h.inp = NULL
            p53_store_u64(&self.L.ring_tail, self.L.ring_tail + 1)
        return out


include "tcp_conn.pxi"
