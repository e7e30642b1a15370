/* Tiny C helpers for the worker loop: atomics (Cython has no volatile/atomic qualifiers) and
 * the IP_PKTINFO fix-up that makes a reply leave from the address the query was sent to. */
#ifndef P53_SYS_H
#define P53_SYS_H
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

/* Invariants of our own writes (never checks on peer input): compiled in by POP53_DEBUG=1. */
#ifdef POP53_DEBUG
#include <stdio.h>
#include <stdlib.h>
#define P53_ASSERT(x) do { if (!(x)) { fprintf(stderr, "pop53: invariant failed: %s (%s:%d)\n", \
                                               #x, __FILE__, __LINE__); abort(); } } while (0)
#define P53_DEBUG_BUILD 1
#else
#define P53_ASSERT(x) ((void)0)
#define P53_DEBUG_BUILD 0
#endif

static inline const void *p53_load_ptr(const void *const *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline void p53_store_ptr(const void **p, const void *v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}
static inline uint64_t p53_load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline void p53_store_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}
/* The steering program's wake map (pop53.scoring.ebpf.WakeMap): per worker a 64-bit word, one
 * cache line apart: the priority datagrams the program steered to the worker (bits 0-47), the
 * known datagrams it sent to the worker's normal socket instead since the worker set WAKE_SLEEP
 * (bits 48-55, at most WAKE_REDIR_MAX: a worker that does not wake for them, stopped or starved
 * of CPU, gets the rest in its priority socket), WAKE_ON (the program attached keeps the word)
 * and WAKE_SLEEP (the worker waits in its normal socket's receive). */
#define P53_WAKE_SLOTS 1024
#define P53_WAKE_STRIDE 8
#define P53_WAKE_SLEEP_BIT 63
#define P53_WAKE_ON_BIT 62
#define P53_WAKE_REDIR_SHIFT 48
#define P53_WAKE_REDIR_MAX 8
#define P53_WAKE_SLEEP (1ULL << P53_WAKE_SLEEP_BIT)
#define P53_WAKE_ON (1ULL << P53_WAKE_ON_BIT)
#define P53_WAKE_COUNT ((1ULL << P53_WAKE_REDIR_SHIFT) - 1)
#define P53_WAKE_REDIR (0xFFULL << P53_WAKE_REDIR_SHIFT)

/* the steering program's wake word (ext/udp_recv.pxi, UdpReceive._receive_woken): the kernel
 * adds to it with BPF_ATOMIC, so every access is a full-barrier read-modify-write */
static inline uint64_t p53_fetch_or_u64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
static inline uint64_t p53_fetch_and_u64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
}
static inline int p53_load_int(const int *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline void p53_store_int(int *p, int v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

/* Turn the control data received with a datagram into the control data for its reply: keep
 * IP_PKTINFO / IPV6_PKTINFO (source address = the address the query was sent to) and clear the
 * interface index so routing picks the way back (anycast paths may be asymmetric).  Returns the
 * control length to send (0 = none). */
static inline size_t p53_reply_control(struct msghdr *m) {
    struct cmsghdr *c;
    if (m->msg_controllen == 0)
        return 0;
    for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo *pi = (struct in_pktinfo *)CMSG_DATA(c);
            pi->ipi_ifindex = 0;
            pi->ipi_spec_dst = pi->ipi_addr;
            memmove(m->msg_control, c, c->cmsg_len);
            return CMSG_SPACE(sizeof(struct in_pktinfo));
        }
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo *pi = (struct in6_pktinfo *)CMSG_DATA(c);
            pi->ipi6_ifindex = 0;
            memmove(m->msg_control, c, c->cmsg_len);
            return CMSG_SPACE(sizeof(struct in6_pktinfo));
        }
    }
    return 0;
}
/* Whether the socket asks for the address each datagram was sent to (IP_PKTINFO or
 * IPV6_RECVPKTINFO: a wildcard bind, every reply needs its query's control data). */
static inline int p53_wants_pktinfo(int fd) {
    int on = 0;
    socklen_t len = sizeof on;
    if (getsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, &len) == 0 && on)
        return 1;
    on = 0;
    len = sizeof on;
    return getsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, &len) == 0 && on;
}
/* Whether the socket has SO_TIMESTAMPNS (or SO_TIMESTAMP) on: a control message per datagram. */
static inline int p53_rcv_stamps(int fd) {
    int on = 0;
    socklen_t len = sizeof on;
#ifndef SO_TIMESTAMPNS_OLD
#define SO_TIMESTAMPNS_OLD 35
#endif
    if (getsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS_OLD, &on, &len) == 0 && on)
        return 1;
    on = 0;
    len = sizeof on;
    return getsockopt(fd, SOL_SOCKET, SO_TIMESTAMP, &on, &len) == 0 && on;
}
#endif
