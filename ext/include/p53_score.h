/* Query scoring's C helpers: the kernel's receive-queue drop counter (SO_RXQ_OVFL, socket(7))
 * read from the control data of a received datagram. */
#ifndef P53_SCORE_H
#define P53_SCORE_H
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

/* The cumulative count of datagrams the kernel dropped on this socket before this one was
 * queued, when the socket has SO_RXQ_OVFL on (the cmsg comes once drops happened).  m: a
 * struct msghdr*.  Returns 1 and sets *out when the message carries it. */
static inline int p53_rxq_ovfl(const void *mv, uint32_t *out) {
    const struct msghdr *m = (const struct msghdr *)mv;
    struct cmsghdr *c;
    if (m->msg_controllen == 0 || m->msg_control == NULL)
        return 0;
    for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR((struct msghdr *)m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL
                && c->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
            memcpy(out, CMSG_DATA(c), sizeof(uint32_t));
            return 1;
        }
    }
    return 0;
}
#ifndef SO_TIMESTAMPNS
#define SO_TIMESTAMPNS 35
#endif
#ifndef SCM_TIMESTAMPNS
#define SCM_TIMESTAMPNS SO_TIMESTAMPNS
#endif
#ifndef SCM_TIMESTAMPING
#define SCM_TIMESTAMPING 37
#endif

/* The kernel's receive timestamp of a datagram (SO_TIMESTAMPNS, socket(7): CLOCK_REALTIME at
 * the moment the stack queued it; or SO_TIMESTAMPING's software stamp, ts[0], which the
 * sampled UDP workers ask for, ext/kstamp.pxi) in ns, or 0 when the message carries none. */
static inline uint64_t p53_rx_stamp_ns(const void *mv) {
    const struct msghdr *m = (const struct msghdr *)mv;
    struct cmsghdr *c;
    struct timespec ts;
    if (m->msg_controllen == 0 || m->msg_control == NULL)
        return 0;
    for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR((struct msghdr *)m, c)) {
        if (c->cmsg_level == SOL_SOCKET
                && (c->cmsg_type == SCM_TIMESTAMPNS || c->cmsg_type == SCM_TIMESTAMPING)
                && c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        }
    }
    return 0;
}

/* CLOCK_REALTIME and CLOCK_MONOTONIC in ns (vDSO calls). */
static inline uint64_t p53_real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static inline uint64_t p53_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
#endif
