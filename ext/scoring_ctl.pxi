# The overload controller runs every `tick_ms` in each worker from what the worker sees itself:
# on the normal socket the longest run of full recvmmsg batches in the tick (its queue never
# emptied), the kernel's drop counter (SO_MEMINFO, once a tick) and the queue delay; on the priority socket
# (the kernel stage) its drops and delay.  Overloaded: the worst class worse than normal (flood,
# odd) that had queries in the tick has its admission share halved (below 1/64 it is cut to
# nothing; worse classes without queries are cut to nothing at once).  The normal class is cut
# the same way only while the known resolvers are at risk: their own queue drops or waits, or
# they share the overloaded normal queue (no kernel stage); otherwise unknown clients get what
# is left.  Calm: the best class still cut regains `recover`/1024 of its share.  SC_TOP is
# never cut.  A share below one admits every k-th query deterministically (an accumulator, no
# random numbers).


cdef void sc_state_init(sc_state_t* s, uint64_t now) noexcept nogil:
    memset(s, 0, sizeof(sc_state_t))
    for c in range(SC_CLASSES):
        s.allow[c] = SC_ONE
    s.nx_allow = SC_ONE
    s.qd_min = SC_NONE_YET
    s.pq_min = SC_NONE_YET
    s.window_start = now
    s.tick_start = now if now else 1


cdef inline uint64_t sc_since(const sc_state_t* s, uint64_t when) noexcept nogil:
    """ms from the stamp `when` to this batch's clock.  Stamps are made odd (`now | 1`, so 0
    means never), so one can be a ms ahead of a tick in the same ms: that counts as 0."""
    return s.now_ms - when if s.now_ms > when else 0


cdef inline bint sc_recent(const sc_state_t* s, uint64_t when) noexcept nogil:
    """Whether the stamp `when` (0 = never) is within SC_TOP_HOLD_MS of this batch's clock."""
    return when != 0 and sc_since(s, when) < SC_TOP_HOLD_MS


cdef inline void sc_regain(const sc_cfg_t* cfg, uint32_t* share) noexcept nogil:
    if share[0] < SC_ONE:
        share[0] = share[0] + cfg.recover if share[0] + cfg.recover < SC_ONE else SC_ONE


cdef inline void sc_halve(uint32_t* share) noexcept nogil:
    """A multiplicative cut; below 1/64 a share goes to nothing."""
    share[0] >>= 1
    if share[0] < SC_ONE // 64:
        share[0] = 0


cdef void sc_tick(const sc_cfg_t* cfg, sc_state_t* s, bint over, bint risk) noexcept nogil:
    """One controller step.  `over`: the normal socket's queue is overloaded (runs of full
    batches, its kernel drops, a standing queue delay); `risk`: the known resolvers' own queue
    is (the priority socket's drops or delay).  Known resolvers whose queries came through the
    normal socket in the last SC_TOP_HOLD_MS (no kernel stage, or not steered) share its queue,
    so for them `over` is a risk too: one that cuts the classes, not one that counts toward
    the risk run (below), which only their own queue's risk (`risk` as given) makes.

    Overloaded, the classes worse than normal go first: the worst that had queries in this tick
    is cut multiplicatively, worse ones without any to nothing at once (a class is never
    admitted more than a better one).  The normal class is cut only while the known resolvers
    are at risk: otherwise unknown clients get what is left (the worker answers them at its
    full rate and the kernel drops what its queue cannot hold) and a normal class cut earlier
    recovers.  Calm: the best class still cut recovers additively.  SC_TOP is never cut."""
    cdef int c, last
    cdef uint64_t seen[4]
    cdef uint64_t prio = s.prio_rx - s.prio_mark, lifted = s.lifted - s.lift_mark
    cdef uint64_t redir = s.redirected - s.redir_mark, known_in
    cdef bint all_cut = s.allow[SC_NORMAL] == 0 and s.allow[SC_ODD] == 0 and s.allow[SC_FLOOD] == 0
    cdef bint own = risk            # their own queue's risk, before sharing the normal one
    for c in range(SC_CLASSES):
        seen[c] = s.admitted[c] + s.dropped[c] - s.mark[c]
        s.mark[c] = s.admitted[c] + s.dropped[c]
    s.prio_mark = s.prio_rx
    s.lift_mark = s.lifted
    s.redir_mark = s.redirected
    s.ticks += 1
    # known queries beyond the priority socket's (and the cookies lifted from a cut class, and
    # those the steering program sent to the normal socket while the worker waited there: its
    # queue was empty): they came through the normal socket and wait in its queue with everyone
    # else.  A redirect counts when the worker finds it in its wake word, which can be before
    # it reads the datagram (one the program sent as the worker woke is read a batch later,
    # perhaps in the next tick), so the redirects no known query of a tick matched count in
    # the next one too
    known_in = prio + lifted + redir + s.redir_carry
    if seen[SC_TOP] > known_in:
        s.top_shared_ms = s.now_ms | 1
    s.redir_carry = known_in - seen[SC_TOP] if seen[SC_TOP] < known_in else 0
    if s.redir_carry > redir:
        s.redir_carry = redir
    if over and sc_recent(s, s.top_shared_ms):
        risk = True
    if not (own and all_cut):
        s.risk_run_ms = 0
    if over or risk:
        s.overload_ticks += 1
        if risk:
            s.risk_ticks += 1
        last = SC_NORMAL if risk else SC_ODD
        for c in range(SC_CLASSES - 1, last - 1, -1):
            if s.allow[c] == 0:
                continue
            if seen[c] == 0:
                s.allow[c] = 0
                continue
            sc_halve(&s.allow[c])
            return
        if not risk:
            # the known resolvers are safe in their own queue: unknown clients get what is left
            sc_regain(cfg, &s.allow[SC_NORMAL])
            sc_regain(cfg, &s.nx_allow)
            return
        if not all_cut:
            return              # this tick cut the idle classes: the next one goes on
        # every class but SC_TOP is cut and the known resolvers are still at risk: their
        # NXDOMAINs for zones under pressure (water torture relayed by them) go next, and,
        # once that has lasted SC_RISK_RUN_MS, trusted relays leave their queue
        # (sc_relay_class).  Not at once: at a flood's start the priority queue is full of
        # untrusted relays the kernel stage still steers there until their first answers
        # demote them (their prefix strict); meanwhile it takes the known resolvers'
        # queries a few ms late, and demoting the trusted relays then would cost them their
        # trust for the whole attack.  And only while their own queue is at risk, not for
        # known queries sharing the normal one: those of relays demoted so are there because
        # of it, and counting them kept the run going, and the relays demoted, for as long as
        # the flood lasted (docs/scoring.md, "Relaying resolvers", the latch)
        if own and s.risk_run_ms == 0:
            s.risk_run_ms = s.now_ms | 1
        elif own and sc_since(s, s.risk_run_ms) >= SC_RISK_RUN_MS:
            s.prio_risk_ms = s.now_ms | 1
        sc_halve(&s.nx_allow)
        return
    # calm: the known resolvers' NXDOMAIN share recovers alongside the best cut class
    sc_regain(cfg, &s.nx_allow)
    for c in range(SC_NORMAL, SC_CLASSES):
        if s.allow[c] < SC_ONE:
            sc_regain(cfg, &s.allow[c])
            return


cdef inline int sc_qd_bucket(uint64_t ns) noexcept nogil:
    """The queue-delay histogram's bucket: b for ns < 16 us << b (b < SC_QD_BUCKETS - 1)."""
    cdef int b = 0
    cdef uint64_t lim = 16000
    while b < SC_QD_BUCKETS - 1 and ns >= lim:
        lim <<= 1
        b += 1
    return b


cdef inline void sc_count_drops(sc_state_t* s, bint prio, uint32_t d, bint count) noexcept nogil:
    """A socket's cumulative kernel drop counter read now: what it moved by since the last
    reading counts into the tick and the totals (unless `count` is false: a first reading, the
    baseline).  The counters are per socket and wrap at 2^32: unsigned differences."""
    if prio:
        if count:
            s.drops_tick_p += d - s.ovfl_last_p
            s.kernel_drops_p += d - s.ovfl_last_p
        s.ovfl_last_p = d
    else:
        if count:
            s.drops_tick += d - s.ovfl_last
            s.kernel_drops += d - s.ovfl_last
        s.ovfl_last = d


cdef inline void sc_prio_overflow(sc_state_t* s, uint64_t now) noexcept nogil:
    """The priority socket dropped in this tick (its queue, sized to PRIORITY_MS of work, is far
    beyond what the known resolvers alone send: a flood reaches it).  For SC_TOP_HOLD_MS the
    kernel stage steers only trusted addresses there (SC_OVERFLOW_WORD, the steering program's
    clock being the same CLOCK_MONOTONIC_COARSE) and only they are top (sc_known_class): a
    relayed flood's never-seen relays (addresses of known prefixes with no history) leave it at
    once instead of each staying until its first 32 answers demote it.  Not a queue that only
    waited: a stalled worker's known resolvers queue up without any flood."""
    s.overflow_ticks += 1
    sc_overflow_until(s, now)


cdef inline bint sc_overflow_on(const sc_state_t* s) noexcept nogil:
    """Whether the overflow deadline (SC_OVERFLOW_WORD) is ahead of this batch's clock."""
    return s.trust != NULL and s.now_ms * 1000000 < p53_load_u64(&s.trust[SC_OVERFLOW_WORD])


cdef inline void sc_overflow_until(sc_state_t* s, uint64_t now) noexcept nogil:
    """Store the overflow deadline, SC_TOP_HOLD_MS after `now` (ms), in the trust map."""
    if s.trust != NULL:
        p53_store_u64(&s.trust[SC_OVERFLOW_WORD], (now + SC_TOP_HOLD_MS) * 1000000)


cdef inline void sc_prio_fresh(sc_state_t* s) noexcept nogil:
    """An NXDOMAIN answered to an untrusted address of a known prefix, read from the priority
    socket (the kernel stage steers a prefix with no history there whole).  SC_FRESH_RUN of
    them since the queue last emptied is water torture relayed through never-seen addresses
    filling the known resolvers' queue, faster than each relay's own 32 NXDOMAINs demote it:
    the overflow deadline starts then, before the queue is full enough to drop (its PRIORITY_MS
    of work, twice that in time on half a core, answered ahead of the known resolvers' queries
    queued behind it).  Not a resolver with no history yet behind a held worker: its queue of
    mostly real names empties once the worker runs again."""
    s.fresh_run += 1
    if s.fresh_run >= SC_FRESH_RUN:
        s.fresh_run = 0             # a queue standing past the second trips it again
        s.fresh_floods += 1
        sc_overflow_until(s, s.now_ms)


cdef inline void sc_overflow_hold(sc_state_t* s, bint over) noexcept nogil:
    """At a tick while the deadline holds: the normal queue overloaded and SC_FRESH_RUN queries
    of the tick from untrusted addresses of known prefixes kept out of the priority socket by it
    (sc_known_class) renew it.  The flood that set it goes on, and without this it came back
    into the priority queue each time the second ran out, to fill it to its drop again (a real
    name from one spoofed source in each of 256 known /24s: neither relay test demotes those).
    A calm worker lets it run out, so real resolvers with no history, however busy, get their
    place back."""
    if over and s.held_tick >= SC_FRESH_RUN and sc_overflow_on(s):
        s.overflow_held += 1
        sc_overflow_until(s, s.now_ms)
    s.held_tick = 0


cdef void sc_prio_full(sc_state_t* s, int pfd, uint64_t now) noexcept nogil:
    """A full batch from the priority socket (64 queued: more than the known resolvers send in
    tens of ms): read its drop counter and its fill now, not at the next tick.  If it dropped,
    or holds more than a quarter of its room (SC_FILL_PART: 2 ms of work of its PRIORITY_MS),
    the deadline (sc_prio_overflow) starts at once: the kernel stage stops steering untrusted
    addresses there and what they queued before is dropped unanswered (sc_admit, `purge`), so
    the known resolvers' queries behind it wait for that backlog's receive, not for its
    answers.  At a quarter, not at the drop: a flood of real names from never-seen addresses
    (no relay test demotes them) filled the whole queue first, 8 ms of work ahead of the known
    resolvers; the room above stays for their queries meanwhile (a shorter queue dropped them
    with a trusted relay's flood, bench/results/attack-s18/prio2-ab.md).  The tick still counts
    the drops (overflow_ticks, risk).  One system call per full priority batch; none while the
    queue keeps up."""
    cdef uint32_t d, queued, room
    if not s.drops_known or not p53_sock_fill(pfd, &d, &queued, &room):
        return
    sc_count_drops(s, True, d, True)
    if s.drops_tick_p > 0:
        sc_overflow_until(s, now)
    elif queued > room // SC_FILL_PART:
        s.prio_filled += 1
        sc_overflow_until(s, now)


cdef void sc_observe(const sc_cfg_t* cfg, sc_state_t* s, uint64_t now, int n, int full,
                     uint64_t delay_ns, bint has_delay, bint prio) noexcept nogil:
    """The controller's inputs from one receive batch at `now` (sc_now_ms): n datagrams
    (`full` = a full batch), the queue delay of a datagram of it (sc_batch); then the tick and
    the sketch's window when due.  The normal socket's batches say whether its queue is
    overloaded, the priority socket's whether the known resolvers are at risk; the drop
    counters come in beforehand (sc_drops)."""
    cdef uint64_t missed
    cdef bint over, late, risk
    if s.tick_start == 0:
        sc_state_init(s, now)
    s.now_ms = now
    s.in_prio = prio
    if prio:
        if n > 0:
            s.prio_ms = now | 1
        if n < full:
            s.fresh_run = 0             # the priority queue emptied (sc_prio_fresh)
    elif n >= full:
        # a run of the normal socket's full batches counts whole 64-datagram batches: short
        # batches (sc_normal_batch) add up to one
        s.last_full = True
        s.run_q += <uint32_t>full
        if s.run_q >= 64:
            s.run_q -= 64
            s.run += 1
            if s.run > s.run_max:
                s.run_max = s.run
    else:
        s.last_full = False
        s.run = 0
        s.run_q = 0
    if has_delay:
        if prio:
            s.pw_hist[sc_qd_bucket(delay_ns)] += 1
            if delay_ns < s.pq_min:
                s.pq_min = delay_ns
            if delay_ns > s.pq_max:
                s.pq_max = delay_ns
        elif delay_ns < s.qd_min:
            s.qd_min = delay_ns
        s.qd_hist[sc_qd_bucket(delay_ns)] += 1
        s.qd_last = delay_ns
    if n < full and not prio:
        # the normal queue emptied: no standing queue in this tick, whatever the delays (a late
        # wake-up of an idle worker on a busy machine is not a queue that shedding would shorten)
        s.qd_min = 0
    if now - s.tick_start >= cfg.tick_ms:
        # queue delay (CoDel's idea, RFC 8289): overloaded when even the least delayed batch of
        # the tick waited longer than the target and the normal queue never emptied, i.e. a
        # standing queue, not a burst.  The known resolvers are at risk when their own queue
        # drops, stands the same way, or, while the normal queue is overloaded, any of their
        # batches waited longer than the target: a worker saturated by unknown clients under a
        # CPU quota is throttled for the quota's gaps and longer, and only cutting the normal
        # class gives it the idle time that keeps it under its quota
        late = s.qd_min != SC_NONE_YET and s.qd_min > <uint64_t>cfg.delay_target_us * 1000
        over = s.run_max >= cfg.full_run or s.drops_tick > 0 or late
        if s.drops_tick_p > 0:
            sc_prio_overflow(s, now)
        else:
            sc_overflow_hold(s, over)
        risk = s.drops_tick_p > 0 or (s.pq_min != SC_NONE_YET
                                      and s.pq_min > <uint64_t>cfg.delay_target_us * 1000) \
            or (over and s.pq_max > <uint64_t>cfg.delay_target_us * 1000)
        if late:
            s.delay_ticks += 1
        sc_tick(cfg, s, over, risk)
        if over or risk:
            s.last_over = now
        else:
            # an idle worker ticks only when a batch comes: the calm ticks it missed count
            missed = (now - s.tick_start) // cfg.tick_ms - 1
            while missed > 0 and (s.allow[SC_FLOOD] < SC_ONE or s.nx_allow < SC_ONE):
                sc_tick(cfg, s, False, False)
                missed -= 1
        s.tick_start = now
        s.run_max = 0                  # a run going on counts again at its next full batch
        s.drops_tick = 0
        s.drops_tick_p = 0
        s.qd_min = SC_NONE_YET
        s.pq_min = SC_NONE_YET
        s.pq_max = 0
    if prio:
        # counted after the tick: the tick compares the known queries admitted so far with the
        # priority datagrams of the batches they came from, not this one's (scored after it)
        s.prio_rx += n
    if now - s.window_start >= cfg.window_ms:
        sc_new_window(s)
        s.window_start = now


cdef void sc_new_window(sc_state_t* s) noexcept nogil:
    """A new sketch window: the source and zone counts start again, the zones under pressure
    roll (sc_nx_zone_roll), the per-address counts halve (sc_addr_decay)."""
    memset(s.sketch, 0, sizeof(s.sketch))
    memset(s.nx, 0, sizeof(s.nx))
    sc_nx_zone_roll(s)
    sc_addr_decay(s)


cdef void sc_drops(sc_state_t* s, int fd, int pfd) noexcept nogil:
    """The sockets' kernel drop counters, read once a tick (SO_MEMINFO: one system call each,
    instead of SO_RXQ_OVFL's control message with every datagram, capacity13's perf: the
    per-datagram control messages were ~240 ns of a reply at full speed); the first reading
    is the baseline (sc_count_drops)."""
    cdef uint32_t d
    if fd >= 0 and p53_sock_drops(fd, &d):
        sc_count_drops(s, False, d, s.drops_known)
    if pfd >= 0 and p53_sock_drops(pfd, &d):
        sc_count_drops(s, True, d, s.drops_known)
    s.drops_known = True


cdef void sc_batch(const sc_cfg_t* cfg, sc_state_t* s, int n, int full, uint64_t delay_ns,
                   bint has_delay, bint prio, int fd, int pfd) noexcept nogil:
    """After each recvmmsg (n datagrams, `full` the batch size): the batch's queue delay, if
    it has one (Worker._loop: by the worker's clock, or from a kernel receive stamp with
    kernel_stamps), and when a tick is due the drop counters of the normal socket `fd` and the
    priority socket `pfd` (sc_drops; fd < 0: the caller feeds drops itself), then sc_observe."""
    cdef uint64_t now = sc_now_ms()
    if fd >= 0 and s.tick_start != 0 and now - s.tick_start >= cfg.tick_ms:
        sc_drops(s, fd, pfd)
    elif prio and n >= full and pfd >= 0:
        sc_prio_full(s, pfd, now)
    sc_observe(cfg, s, now, n, full, delay_ns, has_delay, prio)


cdef inline bint sc_protecting(const sc_state_t* s) noexcept nogil:
    """Whether the worker is guarding the known resolvers' latency: its priority socket served
    known resolvers in the last SC_TOP_HOLD_MS and the normal socket has a backlog (its last
    batch was full: at once, before a tick says so) or a class is cut (a flood is on).  Without
    them (no kernel stage, or none asking) there is no one to guard, and the worker reads its
    normal socket in whole batches."""
    return s.tick_start != 0 and sc_recent(s, s.prio_ms) and (
        s.last_full or s.allow[SC_FLOOD] < SC_ONE)


cdef inline int sc_normal_batch(const sc_state_t* s, int full) noexcept nogil:
    """How many datagrams to take from the normal socket next: while guarding the known
    resolvers (sc_protecting), SC_SUB_BATCH, so the worker is back at the priority socket after
    a quarter of a batch of flood (a known resolver's query waits behind at most that much
    work, not 64 queries' receive, scoring and answers); else the whole batch."""
    if sc_protecting(s):
        return SC_SUB_BATCH
    return full


cdef inline void sc_yield(const sc_cfg_t* cfg, sc_state_t* s) noexcept nogil:
    """After a normal batch while guarding the known resolvers (sc_protecting), with
    `yield_when_cut`: enter the scheduler.  A worker under a flood never sleeps, so under a CPU
    quota (containers' CPU limits, the bench's cgroup) the kernel accounts its runtime only at
    its ticks (4 ms at HZ=250): it overruns its quota and is throttled for several periods,
    stalls of 4-12 ms at half a core (bench/attack/stalls.py) that the known resolvers' queries
    wait out.  Entering the scheduler after each batch stops it near its quota.  Not while no
    known resolver asks: without a quota, a yield hands the core to whatever else runs there
    (the flood's own senders in tests/scoring/test_capacity.py, which then answered far fewer
    of them).  Only with
    the kernel stage (known resolvers in their own queue, drained first): without it they share
    the normal queue, and handing the CPU away slows their way through it."""
    if cfg.yield_cut and sc_protecting(s):
        sched_yield()
        s.yields += 1


cdef void sc_prio_sent(sc_state_t* s, const uint64_t* stamps, int m) noexcept nogil:
    """After sending a priority batch's m replies: each one's kernel receive stamp to now (what a
    known resolver waited on our side: the priority queue, the batch ahead, the answer)."""
    cdef uint64_t now
    cdef int j
    if m <= 0:
        return
    now = p53_real_ns()
    for j in range(m):
        if stamps[j]:
            s.pl_hist[sc_qd_bucket(now - stamps[j] if now > stamps[j] else 0)] += 1


cdef inline void sc_cost(sc_state_t* s, int n, int full, uint64_t ns) noexcept nogil:
    """The worker's measured work per query: an EWMA (1/8) over full batches, from the receive
    to the end of the send (the queue is sized from it, pop53.scoring.service)."""
    cdef uint64_t ps
    if n < full or n <= 0:
        return
    ps = ns * 1000 // <uint64_t>n
    s.cost_ps = ps if s.cost_ps == 0 else s.cost_ps - s.cost_ps // 8 + ps // 8


cdef uint32_t sc_level(const sc_state_t* s) noexcept nogil:
    """The controller's level: how much of the admission it has taken away, 0 (nothing) to
    (SC_CLASSES - 1) * SC_ONE (every class but SC_TOP cut to nothing)."""
    cdef uint32_t lv = 0
    for c in range(SC_NORMAL, SC_CLASSES):
        lv += SC_ONE - s.allow[c]
    return lv


SCORE_CLASSES = ("top", "normal", "odd", "flood")
