/* Sampled kernel receive stamps (ext/kstamp.pxi).  A socket asks for software receive stamps
 * with SO_TIMESTAMPING (SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE) and stops
 * asking with 0.  Not SO_TIMESTAMPNS: turning that off only clears the socket's report flag,
 * while the kernel's global "stamp every arriving packet" switch (netstamp_needed_key, taken by
 * sock_enable_timestamp) stays held until the socket closes, so every packet of the machine
 * (replies to clients included) keeps paying for the stamp.  Clearing RX_SOFTWARE drops the
 * hold (sock_disable_timestamp -> net_disable_timestamp, net/core/sock.c), at the price of a
 * static-key flip, which is why the stamps are sampled by time windows, not per batch. */
#ifndef P53_KSTAMP_H
#define P53_KSTAMP_H
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <linux/net_tstamp.h>

#ifndef SO_TIMESTAMPING
#define SO_TIMESTAMPING 37
#endif
#ifndef SCM_TIMESTAMPING
#define SCM_TIMESTAMPING SO_TIMESTAMPING
#endif
#ifndef SCM_TIMESTAMPNS
#define SCM_TIMESTAMPNS 35
#endif

static inline int p53_set_rx_stamps(int fd, int on) {
    int v = on ? (SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE) : 0;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &v, sizeof v);
}

/* A datagram's kernel receive stamp in ns (CLOCK_REALTIME when the stack queued it), from
 * SCM_TIMESTAMPNS (a socket stamping always) or SCM_TIMESTAMPING's software stamp (ts[0], a
 * sampled socket), or 0 when the message carries none. */
static inline uint64_t p53_kstamp_ns(const void *mv) {
    const struct msghdr *m = (const struct msghdr *)mv;
    struct cmsghdr *c;
    struct timespec ts;
    if (m->msg_controllen == 0 || m->msg_control == NULL)
        return 0;
    for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR((struct msghdr *)m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_len < CMSG_LEN(sizeof ts))
            continue;
        if (c->cmsg_type == SCM_TIMESTAMPNS || c->cmsg_type == SCM_TIMESTAMPING) {
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        }
    }
    return 0;
}

/* The stamp window of now: whole seconds of CLOCK_MONOTONIC_COARSE (no system call; the same
 * in every worker and process of the machine, so their sockets switch together and the global
 * switch flips about twice per `every` seconds). */
static inline uint64_t p53_kstamp_second(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec;
}
#endif
