/* Query scoring's C helpers: the kernel's receive-queue drop counter (SO_MEMINFO, socket(7)),
 * a datagram's kernel receive stamp from its control data, the clocks. */
#ifndef P53_SCORE_H
#define P53_SCORE_H
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <linux/sockios.h>

#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif
#define P53_SK_MEMINFO_DROPS 8      /* SK_MEMINFO_DROPS, linux/sock_diag.h */

/* The socket's cumulative kernel drop counter now (sk_drops: datagrams dropped at a full
 * receive queue or by a socket filter), and how full its receive queue is: *queued
 * (sk_rmem_alloc) of *room (sk_rcvbuf), in the bytes the kernel charges (each datagram's
 * truesize); one getsockopt(SO_MEMINFO).  The overload controller reads it once a tick instead
 * of asking for it with every datagram (SO_RXQ_OVFL: a control message per datagram).  Returns
 * 1 and sets the three, 0 when the kernel cannot say. */
static inline int p53_sock_fill(int fd, uint32_t *drops, uint32_t *queued, uint32_t *room) {
    uint32_t mi[16];
    socklen_t len = sizeof mi;
    memset(mi, 0, sizeof mi);
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mi, &len) < 0
            || len < (P53_SK_MEMINFO_DROPS + 1) * sizeof(uint32_t))
        return 0;
    *drops = mi[P53_SK_MEMINFO_DROPS];
    *queued = mi[0];                /* SK_MEMINFO_RMEM_ALLOC */
    *room = mi[1];                  /* SK_MEMINFO_RCVBUF */
    return 1;
}

/* The drop counter alone. */
static inline int p53_sock_drops(int fd, uint32_t *out) {
    uint32_t queued, room;
    return p53_sock_fill(fd, out, &queued, &room);
}

/* The kernel receive stamp of the last datagram read from a socket (ns since the epoch), 0 when
 * it cannot say: ioctl(SIOCGSTAMPNS).  The first call turns the socket's stamp keeping on
 * (SOCK_TIMESTAMP; it returns ENOENT then): from there every datagram read stores its stamp in
 * the socket, a plain store, where SO_TIMESTAMPNS converts each one to a timespec and writes a
 * control message (or finds no room for it).  Only for a socket without SO_TIMESTAMPNS, whose
 * reads take that path instead and leave the stored stamp alone. */
static inline uint64_t p53_sock_stamp_ns(int fd) {
    struct timespec ts;
    if (ioctl(fd, SIOCGSTAMPNS, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
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
