# The TCP loop itself (see tcp.pxi for what it does and why): functions over one loop's state,
# tloop_t, all nogil.  TcpLoop (tcp.pxi) owns the state and runs tl_loop in its thread.

cdef void tl_loop(tloop_t* lp, const void* const* current, const void* const* maps) noexcept nogil:
    cdef int n, i
    cdef uint64_t tag, last_sweep = 0
    cdef tconn_t* c
    cdef uint32_t i32
    cdef timespec t0
    cdef uint64_t replies
    while not p53_load_int(&lp.stop_flag):
        n = epoll_wait(lp.ep, lp.evs, TCP_EVENTS, TCP_SWEEP_MS)
        clock_gettime(CLOCK_MONOTONIC, &t0)          # answer latency per batch (zstats.pxi)
        replies = lp.st.replies
        p53_store_u64(&lp.epoch, lp.epoch + 1)     # quiescent: no image held
        lp.now = now_ms()
        lp.img = <const image_t*>p53_load_ptr(current)
        lp.maps = <const map_snap_t*>p53_load_ptr(maps)     # one (zones, maps) snapshot per batch
        for i in range(n if n > 0 else 0):
            tag = lp.evs[i].data.u64
            if (tag >> 32) == TCP_LISTEN:
                tl_accept(lp, lp.lfds[<uint32_t>tag])
                continue
            c = &lp.conns[<uint32_t>tag]
            if c.state == C_FREE or c.gen != <uint32_t>(tag >> 32):
                continue                                # closed earlier in this batch
            tl_event(lp, c, lp.evs[i].events)
        lp.img = NULL
        lp.maps = NULL
        lat_add(&lp.st, &t0, lp.st.replies - replies)
        if lp.now - last_sweep >= TCP_SWEEP_MS:
            tl_sweep(lp)
            last_sweep = lp.now
            if lp.accept_paused and lp.now - lp.accept_paused >= TCP_SWEEP_MS:
                lp.accept_paused = 0
                tl_listen(lp, True)
        p53_store_u64(&lp.epoch, lp.epoch + 1)
    for i32 in range(lp.cap):
        if lp.conns[i32].state != C_FREE:
            tl_release(lp, &lp.conns[i32], True, False)

cdef void tl_accept(tloop_t* lp, int lfd) noexcept nogil:
    cdef int k, fd, one = 1
    cdef sockaddr_storage sa
    cdef socklen_t alen
    cdef uint32_t idx, slot
    cdef tconn_t* c
    cdef epoll_event ev
    cdef tgroup_t* g = lp.g
    for k in range(TCP_ACCEPTS):
        alen = sizeof(sockaddr_storage)
        fd = accept4(lfd, <sockaddr*>&sa, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR and \
                    errno != ECONNABORTED:
                # out of descriptors or memory: level-triggered epoll would report the
                # listening socket again at once and spin; stop accepting for a while
                tl_listen(lp, False)
                lp.accept_paused = lp.now
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
            if not (tl_evict(lp) and p53_take_u32(&g.conns, g.max_connections)):
                p53_add_u32(&g.iptab[slot], -1)
                p53_add_u64(&g.refused, 1)
                close(fd)
                continue
        if lp.nfree == 0:         # cannot happen: cap = the global limit
            p53_add_u32(&g.iptab[slot], -1)
            p53_add_u32(&g.conns, -1)
            close(fd)
            continue
        lp.nfree -= 1
        idx = lp.freelist[lp.nfree]
        c = &lp.conns[idx]
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
        c.t_active = lp.now
        c.t_msg = lp.now
        c.t_out = lp.now
        c.alen = alen
        memcpy(&c.addr, &sa, sizeof(sockaddr_storage))
        # answers go out as whole frames; do not let Nagle hold the next one back
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
        c.events = EPOLLIN | EPOLLRDHUP
        ev.events = c.events
        ev.data.u64 = (<uint64_t>c.gen << 32) | idx
        if epoll_ctl(lp.ep, EPOLL_CTL_ADD, fd, &ev) != 0:
            tl_release(lp, c, True, True)

cdef void tl_listen(tloop_t* lp, bint on) noexcept nogil:
    """Watch the listening sockets (again), or stop watching them."""
    cdef epoll_event ev
    cdef int i
    for i in range(lp.nl):
        ev.events = EPOLLIN | EPOLLEXCLUSIVE
        ev.data.u64 = (TCP_LISTEN << 32) | <uint64_t>i
        epoll_ctl(lp.ep, EPOLL_CTL_ADD if on else EPOLL_CTL_DEL, lp.lfds[i], &ev)

cdef bint tl_evict(tloop_t* lp) noexcept nogil:
    """Close the connection of this loop that has waited longest for an incomplete message
    (a slowloris holds its slots that way; a real client sends its query at once).  A
    connection that has sent nothing yet is spared for the busy timeout: its query may simply
    not have been read yet."""
    cdef uint32_t i, best = 0xFFFFFFFFU
    cdef uint64_t oldest = 0xFFFFFFFFFFFFFFFFULL
    cdef tconn_t* c
    for i in range(lp.cap):
        c = &lp.conns[i]
        if c.state == C_OPEN and c.out_len == 0 and not c.eof and \
                (c.in_len or (c.queries == 0 and lp.now - c.t_msg >= lp.g.busy_ms)) and \
                c.t_msg < oldest:
            oldest = c.t_msg
            best = i
    if best == 0xFFFFFFFFU:
        return False
    p53_add_u64(&lp.g.evicted, 1)
    tl_release(lp, &lp.conns[best], True, True)
    return True

cdef void tl_release(tloop_t* lp, tconn_t* c, bint close_fd, bint abort) noexcept nogil:
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
    p53_add_u32(&lp.g.iptab[c.ipslot], -1)
    p53_add_u32(&lp.g.conns, -1)
    lp.freelist[lp.nfree] = <uint32_t>(c - lp.conns)
    lp.nfree += 1

cdef void tl_interest(tloop_t* lp, tconn_t* c, uint32_t events) noexcept nogil:
    cdef epoll_event ev
    if c.events == events:
        return
    c.events = events
    ev.events = events
    ev.data.u64 = (<uint64_t>c.gen << 32) | <uint64_t>(c - lp.conns)
    epoll_ctl(lp.ep, EPOLL_CTL_MOD, c.fd, &ev)

cdef void tl_event(tloop_t* lp, tconn_t* c, uint32_t events) noexcept nogil:
    cdef ssize_t r
    cdef int k
    if c.state == C_LINGER:
        # after our FIN: read and discard until the peer closes too (bounded per event;
        # the sweep ends it after TCP_LINGER_MS in any case)
        for k in range(TCP_READS):
            r = recv(c.fd, lp.rs, TCP_RS, MSG_DONTWAIT)
            if r > 0:
                continue
            if r == 0 or (errno != EAGAIN and errno != EINTR):
                tl_release(lp, c, True, False)
            return
        return
    if events & EPOLLERR:
        tl_release(lp, c, True, True)
        return
    if c.out_len:
        if tl_flush(lp, c) < 0:
            tl_release(lp, c, True, True)
            return
        if c.out_len:
            if events & EPOLLHUP:
                tl_release(lp, c, True, True)
            return
    tl_serve(lp, c)

cdef int tl_flush(tloop_t* lp, tconn_t* c) noexcept nogil:
    """Send pending answers.  0 (done or would block) or -1 (the connection failed)."""
    cdef ssize_t n
    while c.out_off < c.out_len:
        n = send(c.fd, c.outb + c.out_off, c.out_len - c.out_off, MSG_NOSIGNAL | MSG_DONTWAIT)
        if n > 0:
            c.out_off += <uint32_t>n
            c.t_out = lp.now
        elif n < 0 and errno == EINTR:
            continue
        elif n < 0 and (errno == EAGAIN or errno == EWOULDBLOCK):
            return 0
        else:
            lp.st.send_errors += 1
            return -1
    free(c.outb)
    c.outb = NULL
    c.out_off = 0
    c.out_len = 0
    c.t_active = lp.now           # the idle timeout runs from the last answer taken
    return 0

cdef int tl_send(tloop_t* lp, tconn_t* c, const uint8_t* data, uint32_t n) noexcept nogil:
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
                lp.st.send_errors += 1
                return -1
            k = 0
        if <uint32_t>k == n:
            return 0
        c.t_out = lp.now
    nb = <uint8_t*>realloc(c.outb, c.out_len + n - k)
    if nb == NULL:
        return -1
    c.outb = nb
    memcpy(c.outb + c.out_len, data + k, n - k)
    c.out_len += n - <uint32_t>k
    return 0

cdef void tl_serve(tloop_t* lp, tconn_t* c) noexcept nogil:
    """Answer every complete message of the carried input and of what can be read now, in
    order; carry the rest; then pick what to wait for."""
    cdef uint8_t* rs = lp.rs
    cdef uint8_t* ws = lp.ws
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
            act = core_answer(lp.img, lp.cfg, rs + off + 2, m, ws + wlen + 2, 65535, True,
                              &outlen, &q, &lp.st, cl, cl_len, lp.maps)
            lp.st.tcp += 1
            if act == ACT_CONTROL and lp.control_enabled:
                if tl_handoff(lp, c, rs + off, L - off, wlen):
                    return
                # the ring is full: the fallback reply goes out instead
            if lp.st.dt != NULL and act != ACT_DROP:   # dnstap (dnstap.pxi)
                dt_sockaddr(lp.st.dt, DT_TCP, <const uint8_t*>&c.addr, rs + off + 2, m,
                            ws + wlen + 2, outlen, NULL)
            c.queries += 1
            off += 2 + m
            consumed = True
            if act != ACT_DROP:
                ws[wlen] = <uint8_t>(outlen >> 8)
                ws[wlen + 1] = <uint8_t>outlen
                wlen += 2 + outlen
            if wlen >= TCP_WS_FLUSH:
                if tl_send(lp, c, ws, wlen) < 0:
                    tl_release(lp, c, True, True)
                    return
                wlen = 0
            if c.queries >= lp.g.max_queries:
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
                c.t_msg = lp.now          # a new message begins
            L += <uint32_t>r
            c.t_active = lp.now
        elif r == 0:
            c.eof = 1
            break
        elif errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
            break
        else:
            lp.st.recv_errors += 1
            tl_release(lp, c, True, True)
            return
    if wlen and tl_send(lp, c, ws, wlen) < 0:
        tl_release(lp, c, True, True)
        return
    if L:
        c.inb = <uint8_t*>malloc(L)
        if c.inb == NULL:
            tl_release(lp, c, True, True)
            return
        memcpy(c.inb, rs, L)
        c.in_len = L
        if consumed:
            c.t_msg = lp.now
    if c.out_len:
        tl_interest(lp, c, EPOLLOUT)     # stop reading until the peer takes its answers
    elif c.eof:
        tl_release(lp, c, True, False)   # every answer sent: FIN
    elif c.limit:
        # RFC 7766 §6.2.3: the server closes; FIN first, then drain what the peer still
        # sends so the close does not turn into a reset that destroys answers in flight
        shutdown(c.fd, SHUT_WR)
        c.state = C_LINGER
        c.t_msg = lp.now
        tl_interest(lp, c, EPOLLIN)
    else:
        tl_interest(lp, c, EPOLLIN | EPOLLRDHUP)

cdef bint tl_handoff(tloop_t* lp, tconn_t* c, const uint8_t* rest, uint32_t rest_len,
                   uint32_t wlen) noexcept nogil:
    """Give the connection, from the control message on, to the control plane.  False when
    the ring is full (the caller answers with the fallback instead)."""
    cdef handoff_t* h
    cdef uint32_t pend = c.out_len - c.out_off
    cdef epoll_event ev
    cdef char wake = 104
    if lp.ring_head - p53_load_u64(&lp.ring_tail) >= TCP_RING:
        return False
    h = &lp.ring[lp.ring_head % TCP_RING]
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
    memcpy(h.out + pend, lp.ws, wlen)
    h.out_len = pend + wlen
    memcpy(h.inp, rest, rest_len)
    h.in_len = rest_len
    h.fd = c.fd
    h.alen = c.alen
    memcpy(&h.addr, &c.addr, sizeof(sockaddr_storage))
    h.queries = c.queries
    epoll_ctl(lp.ep, EPOLL_CTL_DEL, c.fd, &ev)
    tl_release(lp, c, False, False)
    p53_store_u64(&lp.ring_head, lp.ring_head + 1)
    if lp.notify_fd >= 0:
        write(lp.notify_fd, &wake, 1)     # wake the control plane; a full pipe is fine
    return True

cdef void tl_sweep(tloop_t* lp) noexcept nogil:
    """Timeouts, every TCP_SWEEP_MS."""
    cdef tgroup_t* g = lp.g
    cdef bint busy = p53_load_u32(&g.conns) * 2 > g.max_connections
    cdef uint64_t lim, now = lp.now
    cdef uint32_t i
    cdef tconn_t* c
    for i in range(lp.cap):
        c = &lp.conns[i]
        if c.state == C_FREE:
            continue
        if c.state == C_LINGER:
            if now - c.t_msg >= TCP_LINGER_MS:
                tl_release(lp, c, True, False)
        elif c.out_len:
            # a peer that does not read its answers (write timeout)
            if now - c.t_out >= g.write_ms:
                p53_add_u64(&g.stalled, 1)
                tl_release(lp, c, True, True)
        elif c.in_len or c.queries == 0:
            # an incomplete message (or none yet): counted from its first byte
            lim = g.busy_ms if busy and g.busy_ms < g.msg_ms else g.msg_ms
            if c.queries == 0 and g.idle_ms < lim:
                lim = g.idle_ms
            if now - c.t_msg >= lim:
                p53_add_u64(&g.timed_out, 1)
                tl_release(lp, c, True, False)
        elif now - c.t_active >= g.idle_ms:
            tl_release(lp, c, True, False)
