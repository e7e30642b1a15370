# Sampled kernel receive stamps for the UDP workers (issue 10, the per-query cost every UDP query
# pays).  The stamps only feed a latency histogram (pop53_answer_latency_total_seconds), for
# which a sample is enough, and they cost twice: the 16-byte control message per datagram read
# (+120-170 ns, bench/micro/kstamp.py), and the kernel stamping *every* packet arriving on the
# machine while any socket asks (the replies a server sends over loopback, a client's packets),
# which SO_TIMESTAMPNS never stops once set (ext/include/p53_kstamp.h).  So a sampled worker asks
# with SO_TIMESTAMPING during one whole second in `every` (CLOCK_MONOTONIC_COARSE seconds, the
# same windows in every worker) and not at all otherwise: two setsockopt calls and about two
# flips of the kernel's static key per `every` seconds, and no stamping cost in between.  The
# window is chosen by the clock, never by the traffic, so the sampled histogram is an unbiased
# picture of the time the server ran.  Scored workers are sampled the same way, their priority
# sockets with them, unless [scoring] kernel_stamps has the controller read a stamp from every
# batch (then they are not sampled, pop53.serve.workers).

cdef extern from "p53_kstamp.h" nogil:
    int p53_set_rx_stamps(int fd, int on)
    uint64_t p53_kstamp_second()

cdef struct kstamp_t:
    uint32_t every            # stamped one second in `every`; 0 or 1: the socket as configured
    int on                    # the option as last set on the socket


cdef inline int kstamp_want(uint32_t every, uint64_t second) noexcept nogil:
    """1 when `second` is a stamped window: one in `every`, at multiples of `every`."""
    return 1 if second % every == 0 else 0


cdef inline void kstamp_gate(kstamp_t* k, int fd, int pfd) noexcept nogil:
    """Before a receive (idle timeouts included, so an idle worker lets go too): stamps asked
    for during a stamped window, not asked for outside one; on the priority socket `pfd` too
    (-1: none)."""
    cdef int want
    if k.every <= 1:
        return
    want = kstamp_want(k.every, p53_kstamp_second())
    if want != k.on and p53_set_rx_stamps(fd, want) == 0:
        k.on = want
        if pfd >= 0:
            p53_set_rx_stamps(pfd, want)


def kstamp_window(uint32_t every, uint64_t second):
    """Whether a sampled worker stamps during CLOCK_MONOTONIC_COARSE second `second` (tests)."""
    return bool(kstamp_want(every, second)) if every > 1 else True
