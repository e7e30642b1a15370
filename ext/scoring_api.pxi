# Query scoring's Python-facing objects (scoring.pxi has the data-plane functions): the known
# table as published to the workers, the Scorer every UDP worker of a server shares (settings,
# the published table, entry points that run the worker loop's functions for tests and tools),
# and a learning window's seen set.

cdef extern from *:
    int __builtin_popcountll(unsigned long long x) nogil


cdef class KnownTable:
    """The compiled known-resolver table (pop53.scoring.known builds it): `v4`, a buffer of
    1 << 21 bytes, a bit per IPv4 /24 (bit k & 7 of byte k >> 3 for /24 number k), or None; `v6`, an open-addressing table
    of native uint64 slots (see known_t; slots from known_v6_slot()), or None.  Read-only from
    here on; any buffer (bytes, mmap) works.  The IPv6 filter in front of the exact table
    (sc_v6_filter) is derived here, at load time: a power of two of bits, at least 128 per key,
    2^16 to 2^24 (2 MiB); its false positives the exact table then answers."""
    cdef known_t kn
    cdef Py_buffer b4
    cdef Py_buffer b6
    cdef bint has4, has6
    cdef uint64_t* filter6
    cdef readonly object owner4, owner6
    cdef readonly uint64_t n_v4

    def __cinit__(self, object v4, object v6):
        cdef uint64_t i, b
        cdef int lg = 16
        self.has4 = self.has6 = False
        self.filter6 = NULL
        memset(&self.kn, 0, sizeof(known_t))
        if v4 is not None:
            PyObject_GetBuffer(v4, &self.b4, PyBUF_SIMPLE)
            self.has4 = True
            if self.b4.len != (1 << 21):
                PyBuffer_Release(&self.b4)
                self.has4 = False
                raise ValueError("the IPv4 table is 1 << 21 bytes, one bit per /24")
            self.kn.v4 = <const uint8_t*>self.b4.buf
            self.owner4 = v4
        if v6 is not None:
            PyObject_GetBuffer(v6, &self.b6, PyBUF_SIMPLE)
            self.has6 = True
            slots = self.b6.len // 8
            if self.b6.len % 8 or slots < 2 or slots & (slots - 1):
                raise ValueError("the IPv6 table is a power of two (>= 2) of 8-byte slots")
            self.kn.v6 = <const uint64_t*>self.b6.buf
            self.kn.v6_mask = slots - 1
            self.owner6 = v6
            for i in range(slots):
                if self.kn.v6[i] == 0:
                    continue
                if not self.kn.v6[i] & SC_V6_TAG:
                    raise ValueError("an IPv6 slot without its tag")
                self.kn.n_v6 += 1
            if self.kn.n_v6 == slots:
                raise ValueError("the IPv6 table needs an empty slot")
            if self.kn.n_v6:
                while lg < 24 and (<uint64_t>1 << lg) < 128 * self.kn.n_v6:
                    lg += 1
                self.filter6 = <uint64_t*>calloc(<size_t>1 << (lg - 6), 8)
                if self.filter6 == NULL:
                    raise MemoryError()
                self.kn.v6f_shift = 64 - (lg - 6)
                for i in range(slots):
                    if self.kn.v6[i]:
                        b = (self.kn.v6[i] & ~SC_V6_TAG) * SC_V6_MUL      # as sc_v6_filter
                        self.filter6[b >> self.kn.v6f_shift] |= \
                            (<uint64_t>1 << ((b >> 32) & 63)) | (<uint64_t>1 << ((b >> 38) & 63))
                self.kn.v6f = self.filter6

    def __dealloc__(self):
        if self.has4:
            PyBuffer_Release(&self.b4)
        if self.has6:
            PyBuffer_Release(&self.b6)
        free(self.filter6)

    @property
    def n_v6(self):
        return self.kn.n_v6

    @property
    def v6_filter_bits(self):
        """The IPv6 filter's size in bits (0: no IPv6 key)."""
        return (<uint64_t>1 << (64 - self.kn.v6f_shift + 6)) if self.kn.v6f != NULL else 0

    def v6_filter(self, bytes address not None):
        """Whether a packed IPv6 address's /56 passes the filter (a known /56 always does; the
        exact table decides)."""
        if len(address) != 16:
            raise ValueError("a 16-byte address")
        if self.kn.v6f == NULL:
            return False
        return bool(sc_v6_filter(&self.kn, sc_v6_key(<const uint8_t*>(<char*>address))))

    def known(self, bytes address not None):
        """Whether a packed address (4 or 16 bytes) is in a known /24 or /56."""
        if len(address) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        return bool(sc_known(&self.kn, <const uint8_t*>(<char*>address), len(address)))

    cdef const known_t* ptr(self):
        return &self.kn


cdef class Scorer:
    """Query scoring for every UDP worker of a server: the settings, and the published known
    table (one atomic pointer, as Shared does for images).  The per-query state is each
    worker's; this object also keeps one scratch state for the Python entry points below
    (tests, tools), which run the same C functions as the worker loop."""
    cdef sc_cfg_t cfg
    cdef const void* known          # const known_t*
    cdef readonly object holder     # keeps the published KnownTable alive
    cdef readonly uint64_t generation
    cdef sc_state_t probe
    cdef void* seen                 # seen_t* of the current learning window, or NULL
    cdef readonly object seen_holder
    # per-address history in known prefixes (sc_known_class): SC_ALL_WORDS u64 words, address
    # trust bits then strict prefix bits; our own until use_trust_buffer() hands us the kernel
    # stage's shared map, which the steering program reads
    cdef uint64_t* trust_own
    cdef void* trust                # uint64_t*, published
    cdef uint32_t* trust_first
    cdef uint64_t* demoted_bits     # SC_TRUST_WORDS words: sc_state_t.demoted, ours only (the
                                    # kernel stage does not read it)
    cdef Py_buffer tb
    cdef bint has_tb
    cdef readonly object trust_holder

    def __cinit__(self, uint32_t source_rate=2000, uint32_t known_rate=20000,
                  uint32_t window_ms=1000, uint32_t tick_ms=10, uint32_t full_run=4,
                  uint32_t recover=32, bint rd_odd=True, uint32_t delay_target_us=2000,
                  uint32_t nx_rate=1000, uint32_t known_addr_rate=20000,
                  uint32_t trust_after_ms=1000, uint32_t known_nx_percent=50,
                  bint yield_when_cut=True, bint kernel_stamps=False):
        cdef uint64_t per4 = <uint64_t>source_rate * window_ms // 1000
        cdef uint64_t perk = <uint64_t>known_rate * window_ms // 1000
        cdef uint64_t pera = <uint64_t>known_addr_rate * window_ms // 1000
        self.has_tb = False
        self.trust_own = <uint64_t*>calloc(SC_ALL_WORDS, sizeof(uint64_t))
        self.trust_first = <uint32_t*>calloc(1 << (32 - SC_TRUST_SHIFT), sizeof(uint32_t))
        self.demoted_bits = <uint64_t*>calloc(SC_TRUST_WORDS, sizeof(uint64_t))
        if self.trust_own == NULL or self.trust_first == NULL or self.demoted_bits == NULL:
            raise MemoryError()
        self.trust = self.trust_own
        if not 1 <= pera < 65535:
            raise ValueError("known_addr_rate times the window must be within 1..65534 queries")
        if not 1 <= known_nx_percent <= 100 or trust_after_ms > 86_400_000:
            raise ValueError("known_nx_percent within 1..100, trust_after_ms within 0..86400000")
        # the per-address sketch halves at each window (sc_addr_decay): an address asking at a
        # steady rate r a window holds a count near 2r, so over the rate is over twice it
        # (in a first window, twice the rate; saturating at 65535, which still counts as over)
        self.cfg.known_addr_rate = <uint32_t>(2 * pera if 2 * pera < 65534 else 65534)
        self.cfg.trust_after_ms = trust_after_ms
        self.cfg.known_nx_share = known_nx_percent * 1024 // 100
        if not 10 <= window_ms <= 60000 or not 1 <= tick_ms <= 1000:
            raise ValueError("window_ms within 10..60000, tick_ms within 1..1000")
        if not 1 <= per4 < 65535 or not 1 <= perk < 65535:
            raise ValueError("a rate times the window must be within 1..65534 queries")
        if not 1 <= full_run <= 1000 or not 1 <= recover <= SC_ONE:
            raise ValueError(f"full_run within 1..1000, recover within 1..{SC_ONE}")
        if not 1 <= delay_target_us <= 10_000_000:
            raise ValueError("delay_target_us within 1..10000000")
        cdef uint64_t pernx = <uint64_t>nx_rate * window_ms // 1000
        if not 1 <= pernx < 65535:
            raise ValueError("nx_rate times the window must be within 1..65534 NXDOMAINs")
        self.cfg.source_rate = <uint32_t>per4
        self.cfg.known_rate = <uint32_t>perk
        self.cfg.window_ms = window_ms
        self.cfg.tick_ms = tick_ms
        self.cfg.full_run = full_run
        self.cfg.recover = recover
        self.cfg.rd_odd = rd_odd
        self.cfg.yield_cut = yield_when_cut
        self.cfg.kstamps = kernel_stamps
        self.cfg.delay_target_us = delay_target_us
        self.cfg.nx_rate = <uint32_t>pernx
        sc_state_init(&self.probe, 1)

    def __dealloc__(self):
        # the kernel stage's buffer is released last: workers have stopped with the server
        if self.has_tb:
            PyBuffer_Release(&self.tb)
        free(self.trust_own)
        free(self.trust_first)
        free(self.demoted_bits)

    def use_trust_buffer(self, object buf):
        """Keep the trust bits in `buf` (writable, SC_ALL_WORDS * 8 bytes: the kernel stage's
        mmapped array map) from now on, with the bits learned so far; once, before workers run."""
        if self.has_tb:
            raise ValueError("the trust buffer is already set")
        PyObject_GetBuffer(buf, &self.tb, PyBUF_WRITABLE)
        if self.tb.len != SC_ALL_WORDS * 8:
            PyBuffer_Release(&self.tb)
            raise ValueError(f"the trust buffer is {SC_ALL_WORDS * 8} bytes")
        self.has_tb = True
        self.trust_holder = buf
        memcpy(self.tb.buf, self.trust_own, SC_ALL_WORDS * 8)
        p53_store_ptr(<const void**>&self.trust, <const void*>self.tb.buf)

    def trusted(self, bytes address not None):
        """Whether a packed address (4 or 16 bytes) is trusted (per-address history)."""
        if len(address) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        return bool(sc_bit(<const uint64_t*>self.trust, sc_golden(sc_addr_key(
            <const uint8_t*>(<char*>address), len(address)), SC_TRUST_SHIFT)))

    def demoted(self, bytes address not None):
        """Whether a packed address was trusted until a flood of its own demoted it as a whole
        (sc_relay_class): its real names stay top, and it gets its trust back once it stops."""
        if len(address) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        return bool(sc_bit(self.demoted_bits, sc_golden(sc_addr_key(
            <const uint8_t*>(<char*>address), len(address)), SC_TRUST_SHIFT)))

    def cookie_sender(self, bytes address not None):
        """Whether a packed address has sent a valid server cookie (its cookie bit: the kernel
        stage then steers it only with a valid cookie, pop53.scoring.ebpf_cookie)."""
        if len(address) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        return bool(sc_bit(<const uint64_t*>self.trust + SC_COOKIE_BASE, sc_golden(sc_addr_key(
            <const uint8_t*>(<char*>address), len(address)), SC_TRUST_SHIFT)))

    def strict(self, bytes address not None):
        """Whether the address's /24 or /56 is marked strict (it went over known_rate)."""
        if len(address) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        return bool(sc_bit(<const uint64_t*>self.trust + SC_TRUST_WORDS, sc_golden(sc_prefix_key(
            <const uint8_t*>(<char*>address), len(address)), SC_STRICT_SHIFT)))

    def relaying(self, bytes address not None):
        """Whether the address's relay bit is set (a trusted relay of water torture: the kernel
        stage's name check, ebpf_relay.py)."""
        if len(address) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        return bool(sc_bit(<const uint64_t*>self.trust + SC_RELAY_BASE, sc_golden(sc_addr_key(
            <const uint8_t*>(<char*>address), len(address)), SC_TRUST_SHIFT)))

    def clear_strict(self):
        """Relax every strict prefix and forget every relay bit (pop53.scoring.aging, after a
        calm stretch): a prefix with a trusted address still asking is strict again at its
        next query, a relay still relaying at its next random name.  Returns how many words of
        strict bits had bits."""
        cdef uint64_t* w = <uint64_t*>self.trust
        cdef int i, n = 0
        for i in range(SC_TRUST_WORDS, SC_COOKIE_BASE):
            if w[i]:
                p53_store_u64(&w[i], 0)
                n += 1
        for i in range(SC_RELAY_BASE, SC_RELAY_BASE + SC_TRUST_WORDS):
            if w[i]:
                p53_store_u64(&w[i], 0)
        return n

    cdef uint64_t _slots_set(self, uint32_t base) noexcept:
        """How many address slots have their bit set in the region at word `base`."""
        cdef const uint64_t* w = <const uint64_t*>self.trust
        cdef uint64_t n = 0
        cdef uint32_t i
        with nogil:
            for i in range(base, base + SC_TRUST_WORDS):
                if w[i]:
                    n += <uint64_t>__builtin_popcountll(w[i])
        return n

    def cookie_senders(self):
        """How many address slots have their cookie bit set (of 1 << 20)."""
        return self._slots_set(SC_COOKIE_BASE)

    def relays(self):
        """How many address slots have their relay bit set (of 1 << 20)."""
        return self._slots_set(SC_RELAY_BASE)

    def clear_cookies(self):
        """Clear every address's cookie bit (cookies turned off: the kernel stage stops waiting
        for cookies from them)."""
        cdef uint64_t* w = <uint64_t*>self.trust
        cdef int i
        for i in range(SC_COOKIE_BASE, SC_COOKIE_BASE + SC_TRUST_WORDS):
            if w[i]:
                p53_store_u64(&w[i], 0)

    def overflow_until(self):
        """Until when (CLOCK_MONOTONIC_COARSE seconds; 0: never) the kernel stage steers only
        trusted addresses to the priority socket: its queue overflowed (sc_prio_overflow)."""
        return p53_load_u64(<uint64_t*>self.trust + SC_OVERFLOW_WORD) / 1e9

    def age(self, double ttl_seconds):
        """Clear the trust of addresses not seen for longer than ttl_seconds (at most 30 days:
        the last-seen times are 32-bit milliseconds); returns how many slots lost it."""
        cdef uint32_t ttl
        cdef uint64_t n
        if not 0 <= ttl_seconds <= 30 * 86400:
            raise ValueError("ttl_seconds within 0..2592000")
        ttl = <uint32_t>(ttl_seconds * 1000)
        with nogil:
            n = sc_trust_age(<uint64_t*>p53_load_ptr(<const void**>&self.trust), self.trust_first,
                             self.demoted_bits, ttl, <uint32_t>sc_now_ms() | 1)
        return n

    def publish(self, KnownTable table):
        """Make `table` (or None) the one every worker reads: one atomic store.  Returns the
        generation; the caller keeps the previous table alive until every worker has passed a
        batch boundary (as for images)."""
        p53_store_ptr(&self.known, <const void*>(table.ptr() if table is not None else NULL))
        self.holder = table
        self.generation += 1
        return self.generation

    cdef const known_t* current(self) noexcept nogil:
        return <const known_t*>p53_load_ptr(&self.known)

    cdef const known_t* begin(self, sc_state_t* s) noexcept nogil:
        """A worker's batch start: the known table and the learning window's seen set."""
        s.seen = <seen_t*>p53_load_ptr(<const void**>&self.seen)
        s.trust = <uint64_t*>p53_load_ptr(<const void**>&self.trust)
        s.trust_first = self.trust_first
        s.demoted = self.demoted_bits
        # a priority batch while the overflow deadline holds (sc_prio_full): below top, the
        # backlog the kernel stage queued before it
        s.purge = s.in_prio and sc_overflow_on(s)
        return <const known_t*>p53_load_ptr(&self.known)

    def swap_seen(self, SeenSet fresh):
        """Start a learning window: publish `fresh` (or None: learning off) with one atomic
        store; returns the previous set, which workers may still write to until each has
        passed a batch boundary (the caller waits for that before reading it)."""
        old = self.seen_holder
        p53_store_ptr(<const void**>&self.seen, <const void*>(fresh.ptr() if fresh is not None else NULL))
        self.seen_holder = fresh
        return old

    # -- entry points for tests and tools: the worker loop's functions on the probe state --
    def classify(self, object packet, bytes client not None):
        """The class ("top", "normal", "odd", "flood") the worker loop gives this packet from
        this packed client address now (it counts in the probe's sketch)."""
        cdef const uint8_t[::1] p = packet
        cdef uint32_t n = <uint32_t>p.shape[0]
        if len(client) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        self.begin(&self.probe)
        self.probe.now_ms = sc_now_ms()
        return SCORE_CLASSES[sc_score(&self.cfg, self.current(),
                                      &self.probe, &p[0] if n else <const uint8_t*>b"", n,
                                      <const uint8_t*>(<char*>client), len(client))]

    def admit(self, object packet, bytes client not None, Responder responder=None):
        """Score and decide as the worker loop does (counting): True = answered, False = dropped."""
        cdef const uint8_t[::1] p = packet
        cdef uint32_t n = <uint32_t>p.shape[0]
        if responder is None:
            responder = _default_responder
        if len(client) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        self.probe.now_ms = sc_now_ms()
        return sc_admit(&self.cfg, self.begin(&self.probe), &self.probe, &responder.cfg,
                        &p[0] if n else <const uint8_t*>b"", n,
                        <const uint8_t*>(<char*>client), len(client)) >= 0

    def tick(self, bint overloaded, object top_at_risk=None):
        """One controller step on the probe state: `overloaded`, the normal queue; `top_at_risk`,
        the known resolvers' own queue (None: as `overloaded`, known resolvers sharing the
        overloaded queue as without the kernel stage)."""
        self.probe.now_ms = sc_now_ms()
        sc_tick(&self.cfg, &self.probe, overloaded,
                overloaded if top_at_risk is None else bool(top_at_risk))

    def batch(self, int n, double delay_us=-1, long long ovfl=-1, bint priority=False,
              int full=64, int priority_fd=-1):
        """After a receive batch of n datagrams (`full` asked for), as the worker loop calls it:
        the controller's inputs (the oldest datagram's queue delay in us and the socket's
        cumulative kernel drop counter, when given), and its tick when tick_ms has passed
        (real clock).  With `priority_fd`, a real socket's drop counter is read as the worker
        reads its priority socket's after a full priority batch (sc_prio_full); the first
        such call takes the baseline."""
        cdef uint64_t now = sc_now_ms()
        if self.probe.tick_start == 0:
            sc_state_init(&self.probe, now)
        self.begin(&self.probe)
        if ovfl >= 0:
            sc_count_drops(&self.probe, priority, <uint32_t>ovfl, True)
        if priority_fd >= 0 and not self.probe.drops_known:
            sc_drops(&self.probe, -1, priority_fd)
        elif priority_fd >= 0 and priority and n >= full:
            sc_prio_full(&self.probe, priority_fd, now)
        sc_observe(&self.cfg, &self.probe, now, n, full,
                   <uint64_t>(delay_us * 1000) if delay_us >= 0 else 0, delay_us >= 0, priority)

    def cookie_proven(self, bytes address not None):
        """A valid server cookie from this packed address, as the worker loop marks it."""
        if len(address) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        self.begin(&self.probe)
        sc_trust_proven(&self.cfg, &self.probe, <const uint8_t*>(<char*>address), len(address))

    def redirected(self, uint32_t n):
        """n redirects found in the wake word, as the worker counts them (udp_recv.pxi): known
        queries the steering program sent to the waiting worker's normal socket."""
        self.probe.redirected += n

    def normal_batch(self):
        """How many datagrams the worker loop would take from its normal socket next."""
        return sc_normal_batch(&self.probe, 64)

    def nx_check(self, object query, object reply, str klass="normal", bytes client=b"\0\0\0\0"):
        """The second check after the answer, as the worker loop makes it for a query of
        `klass` from `client` (packed) and our reply to it: True = the reply is dropped (counts
        the zone's NXDOMAIN, and the client's when it is top)."""
        cdef const uint8_t[::1] qb = query
        cdef const uint8_t[::1] rb = reply
        cdef query_t q
        if qb.shape[0] < 12 or rb.shape[0] < 12:
            raise ValueError("a query and a reply of at least a header each")
        q.qend = 0
        q.edns = q.nsid = q.ecs = q.tsig = q.cookie_ok = False
        q.cookie_len = 0
        q.ctl = 0
        q.qtype = 0
        if wire_parse_query(&qb[0], <uint32_t>qb.shape[0], &q, True) != PARSE_OK:
            raise ValueError("the query does not parse")
        if len(client) not in (4, 16):
            raise ValueError("a 4- or 16-byte address")
        return bool(sc_nx_drop(&self.cfg, &self.probe, SCORE_CLASSES.index(klass), &q,
                               <const uint8_t*>(<char*>client), len(client),
                               &rb[0], <uint32_t>rb.shape[0]))

    def new_window(self):
        """Start a new sketch window on the probe state."""
        sc_new_window(&self.probe)

    def stats(self):
        """The probe state's counters and shares (the worker's: Worker.scoring_stats())."""
        return sc_stats_dict(&self.probe)

    def bench(self, object packet, bytes first not None, uint32_t n, uint32_t spread=65536,
              bint prefetch=True):
        """Nanoseconds per scoring decision for n queries in batches of 64 as the worker loop
        makes them (sc_prefetch over the batch, then sc_admit each), the client address varied
        over `spread` prefixes from `first` (its first three bytes for IPv4: /24s over the whole
        table; bytes 4..6 for IPv6: /56s).  For bench/micro/scoring.py.  The addresses of the
        next batch are written while this one is scored (timed too): the worker's come from the
        kernel, written long before it reads them, and reading bytes still in the store queue
        would stall on store forwarding, which the worker never does."""
        cdef const uint8_t[::1] p = packet
        cdef uint8_t sas[2][64][28]
        cdef uint32_t i, j, k, b, alen = len(first), cl_len
        cdef const uint8_t* cl
        cdef uint8_t* a
        cdef int sink = 0
        cdef timespec t0, t1
        cdef const known_t* kn = self.current()
        cdef sc_state_t* st = &self.probe
        cdef Responder responder = Responder()
        cdef rcfg_t* rc = &responder.cfg
        if alen not in (4, 16) or p.shape[0] < 12 or spread == 0 or spread & (spread - 1) or n < 64:
            raise ValueError("a 4- or 16-byte address, a packet, spread a power of two, n >= 64")
        memset(sas, 0, sizeof(sas))
        for b in range(2):
            for j in range(64):
                (<uint16_t*>sas[b][j])[0] = 2 if alen == 4 else 10
                memcpy(sas[b][j] + (4 if alen == 4 else 8), <const char*>first, alen)
        with nogil:
            clock_gettime(CLOCK_MONOTONIC, &t0)
            for i in range(0, n + 1, 64):
                b = (i >> 6) & 1
                if i + 64 <= n:
                    for j in range(64):
                        # a mask, not a division (a 64-bit divide per query would be counted as
                        # scoring, which the worker never does): spread is a power of two
                        k = <uint32_t>((<uint64_t>(i + j) * <uint64_t>2654435761u) & (spread - 1))
                        a = sas[b][j] + (4 if alen == 4 else 12)   # IPv4: bytes 0..2; IPv6: 4..6
                        a[0] = <uint8_t>(k >> 16); a[1] = <uint8_t>(k >> 8); a[2] = <uint8_t>k
                if i == 0:
                    continue
                b ^= 1              # the batch written in the previous pass
                if prefetch:
                    sc_prefetch(kn, &sas[b][0][0], 28, 64)
                for j in range(64):
                    cl = client_addr(sas[b][j], &cl_len)
                    sink += sc_admit(&self.cfg, kn, st, rc, &p[0], <uint32_t>p.shape[0], cl, cl_len) >= 0
            clock_gettime(CLOCK_MONOTONIC, &t1)
        return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (n - n % 64) + 0 * sink


cdef class SeenSet:
    """One learning window's sources (IPv4 /24s as a bitmap, IPv6 /56s in a small table), written
    by the workers, read by pop53.scoring.learn once they have all left it."""
    cdef seen_t sn

    def __cinit__(self):
        self.sn.v4 = <uint8_t*>calloc(1 << 21, 1)
        self.sn.v6 = <uint64_t*>calloc(SC_SEEN6, sizeof(uint64_t))
        if self.sn.v4 == NULL or self.sn.v6 == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.sn.v4)
        free(self.sn.v6)

    cdef seen_t* ptr(self):
        return &self.sn

    def keys(self):
        """(IPv4 /24 keys, IPv6 /56 keys) seen: two lists of ints."""
        cdef list v4 = [], v6 = []
        cdef uint32_t i, b
        cdef const uint64_t* w = <const uint64_t*>self.sn.v4
        for i in range((1 << 21) // 8):
            if w[i]:
                for b in range(64):
                    if w[i] >> b & 1:
                        v4.append(i * 64 + b)     # little-endian: byte k, bit j = bit 8k+j
        for i in range(SC_SEEN6):
            if self.sn.v6[i]:
                v6.append(self.sn.v6[i] & ~SC_V6_TAG)
        return v4, v6
