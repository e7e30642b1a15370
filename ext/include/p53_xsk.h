/* AF_XDP for the XDP worker (ext/xdp.pxi): one socket per interface queue with its UMEM and
 * four rings, set up with plain syscalls (no libxdp at build or run time), the ring operations
 * (single producer / single consumer, acquire/release like the kernel's side), and the frame
 * work: parse Ethernet + IPv4/IPv6 + UDP of a query, and write the reply's mirrored headers
 * with correct checksums (RFC 791 header checksum, RFC 768 / RFC 8200 §8.1 UDP checksum).
 *
 * Frame pools: the RX frames live in the fill ring and come back to it as soon as their query
 * is answered; the TX frames live in a free stack and come back on completion.  A worker owns
 * its socket, so nothing here is shared between threads. */
#ifndef P53_XSK_H
#define P53_XSK_H
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/if_xdp.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

typedef struct {
    uint32_t *producer, *consumer, *flags;
    void *ring;
    uint32_t mask, size, local;   /* local: our producer (fill, tx) or consumer (rx, comp) index */
    void *map;
    size_t map_len;
} p53_ring_t;

typedef struct {
    int fd;
    int zerocopy;
    uint8_t *umem;
    size_t umem_len;
    uint32_t frame_size, nframes;
    p53_ring_t rx, tx, fill, comp;
    uint64_t *free_tx;            /* stack of TX frame addresses */
    uint32_t nfree;
} p53_xsk_t;

typedef struct {                  /* one parsed query frame */
    uint32_t hdrlen;              /* Ethernet + IP + UDP */
    uint32_t plen;                /* DNS payload length */
    int v6;
} p53_pkt_t;

static int p53_ring_map(int fd, p53_ring_t *r, const struct xdp_ring_offset *off, uint32_t n,
                        size_t desc, off_t pgoff) {
    size_t len = off->desc + n * desc;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, pgoff);
    if (m == MAP_FAILED)
        return -errno;
    r->map = m;
    r->map_len = len;
    r->producer = (uint32_t *)((uint8_t *)m + off->producer);
    r->consumer = (uint32_t *)((uint8_t *)m + off->consumer);
    r->flags = (uint32_t *)((uint8_t *)m + off->flags);
    r->ring = (uint8_t *)m + off->desc;
    r->mask = n - 1;
    r->size = n;
    r->local = 0;
    return 0;
}

static void p53_xsk_close(p53_xsk_t *x) {
    p53_ring_t *rs[4] = {&x->rx, &x->tx, &x->fill, &x->comp};
    for (int i = 0; i < 4; i++)
        if (rs[i]->map) { munmap(rs[i]->map, rs[i]->map_len); rs[i]->map = NULL; }
    if (x->fd >= 0) { close(x->fd); x->fd = -1; }
    if (x->umem) { munmap(x->umem, x->umem_len); x->umem = NULL; }
    free(x->free_tx);
    x->free_tx = NULL;
}

/* Open an AF_XDP socket on (ifindex, queue): nframes frames of frame_size bytes (powers of
 * two), half for RX (all in the fill ring) and half for TX.  Zero copy when the driver allows,
 * copy mode otherwise (the kernel picks with neither flag; force_copy forces copy).
 * Returns 0 or -errno, with *step naming what failed. */
static int p53_xsk_open(p53_xsk_t *x, int ifindex, int queue, uint32_t nframes,
                        uint32_t frame_size, int force_copy, const char **step) {
    struct xdp_umem_reg reg;
    struct xdp_mmap_offsets off;
    struct sockaddr_xdp sa;
    struct xdp_options opts;
    socklen_t ol = sizeof(off);
    uint32_t half = nframes / 2, i;
    int rc;
    memset(x, 0, sizeof(*x));
    x->fd = -1;
    x->frame_size = frame_size;
    x->nframes = nframes;
#define P53_STEP(s, call) do { *step = s; if ((call) < 0) { rc = -errno; goto fail; } } while (0)
    P53_STEP("socket(AF_XDP)", x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0));
    x->umem_len = (size_t)nframes * frame_size;
    *step = "mmap(UMEM)";
    x->umem = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (x->umem == MAP_FAILED) { x->umem = NULL; rc = -errno; goto fail; }
    memset(&reg, 0, sizeof(reg));
    reg.addr = (uint64_t)(uintptr_t)x->umem;
    reg.len = x->umem_len;
    reg.chunk_size = frame_size;
    reg.headroom = 0;
    P53_STEP("XDP_UMEM_REG", setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)));
    P53_STEP("XDP_UMEM_FILL_RING", setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &nframes, sizeof(nframes)));
    P53_STEP("XDP_UMEM_COMPLETION_RING", setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &nframes, sizeof(nframes)));
    P53_STEP("XDP_RX_RING", setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &half, sizeof(half)));
    P53_STEP("XDP_TX_RING", setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &half, sizeof(half)));
    P53_STEP("XDP_MMAP_OFFSETS", getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol));
    *step = "mmap(rings)";
    if ((rc = p53_ring_map(x->fd, &x->rx, &off.rx, half, sizeof(struct xdp_desc), XDP_PGOFF_RX_RING)) ||
        (rc = p53_ring_map(x->fd, &x->tx, &off.tx, half, sizeof(struct xdp_desc), XDP_PGOFF_TX_RING)) ||
        (rc = p53_ring_map(x->fd, &x->fill, &off.fr, nframes, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING)) ||
        (rc = p53_ring_map(x->fd, &x->comp, &off.cr, nframes, sizeof(uint64_t), XDP_UMEM_PGOFF_COMPLETION_RING)))
        goto fail;
    /* RX frames 0..half-1 go to the fill ring now; TX frames half..nframes-1 to the stack */
    for (i = 0; i < half; i++)
        ((uint64_t *)x->fill.ring)[i] = (uint64_t)i * frame_size;
    x->fill.local = half;
    __atomic_store_n(x->fill.producer, half, __ATOMIC_RELEASE);
    *step = "malloc";
    x->free_tx = malloc(sizeof(uint64_t) * half);
    if (!x->free_tx) { rc = -ENOMEM; goto fail; }
    for (i = 0; i < half; i++)
        x->free_tx[i] = (uint64_t)(half + i) * frame_size;
    x->nfree = half;
    memset(&sa, 0, sizeof(sa));
    sa.sxdp_family = AF_XDP;
    sa.sxdp_ifindex = ifindex;
    sa.sxdp_queue_id = queue;
    sa.sxdp_flags = XDP_USE_NEED_WAKEUP | (force_copy ? XDP_COPY : 0);
    P53_STEP("bind", bind(x->fd, (struct sockaddr *)&sa, sizeof(sa)));
    ol = sizeof(opts);
    if (getsockopt(x->fd, SOL_XDP, XDP_OPTIONS, &opts, &ol) == 0)
        x->zerocopy = (opts.flags & XDP_OPTIONS_ZEROCOPY) != 0;
#undef P53_STEP
    return 0;
fail:
    p53_xsk_close(x);
    return rc;
}

/* -- rings: the consumer side (rx, comp) ---------------------------------------------------- */
static inline uint32_t p53_cons_peek(p53_ring_t *r, uint32_t max) {
    uint32_t n = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE) - r->local;
    return n < max ? n : max;
}
static inline void p53_cons_release(p53_ring_t *r, uint32_t n) {
    r->local += n;
    __atomic_store_n(r->consumer, r->local, __ATOMIC_RELEASE);
}
/* -- the producer side (fill, tx) ----------------------------------------------------------- */
static inline uint32_t p53_prod_room(p53_ring_t *r) {
    return __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE) + r->size - r->local;
}
static inline void p53_prod_submit(p53_ring_t *r, uint32_t n) {
    r->local += n;
    __atomic_store_n(r->producer, r->local, __ATOMIC_RELEASE);
}
static inline int p53_needs_wakeup(const p53_ring_t *r) {
    return (__atomic_load_n(r->flags, __ATOMIC_RELAXED) & XDP_RING_NEED_WAKEUP) != 0;
}
static inline struct xdp_desc *p53_desc(p53_ring_t *r, uint32_t i) {
    return &((struct xdp_desc *)r->ring)[(r->local + i) & r->mask];
}
static inline uint64_t *p53_addr(p53_ring_t *r, uint32_t i) {
    return &((uint64_t *)r->ring)[(r->local + i) & r->mask];
}

/* Completed TX frames back to the free stack. */
static inline void p53_xsk_complete(p53_xsk_t *x) {
    uint32_t n = p53_cons_peek(&x->comp, x->comp.size), i;
    for (i = 0; i < n; i++)
        x->free_tx[x->nfree++] = *p53_addr(&x->comp, i) & ~(uint64_t)(x->frame_size - 1);
    p53_cons_release(&x->comp, n);
}

/* Frames on the TX ring the kernel has not taken yet. */
static inline int p53_tx_pending(p53_xsk_t *x) {
    return __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE) != x->tx.local;
}

/* Copy mode sends at most 32 frames per sendto (the kernel's TX_BATCH_SIZE) and says EAGAIN
 * while more wait; kick until the ring is taken (bounded: a busy peer may say EBUSY/ENOBUFS). */
static inline void p53_xsk_kick_tx(p53_xsk_t *x) {
    int i;
    if (!p53_needs_wakeup(&x->tx))
        return;
    for (i = 0; i < 16; i++) {
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            return;
        if (errno != EAGAIN && errno != EBUSY && errno != EINTR)
            return;
        if (!p53_tx_pending(x))
            return;
    }
}

/* Wait for frames (idle) at most ms milliseconds; also the wake-up a fill ring may ask for. */
static inline int p53_xsk_wait(p53_xsk_t *x, int ms) {
    struct pollfd p = {x->fd, POLLIN, 0};
    return poll(&p, 1, ms);
}

/* Frames the kernel dropped before our RX ring: ring full, or no fill frame / invalid. */
static inline int p53_xsk_drops(p53_xsk_t *x, uint64_t *drops) {
    struct xdp_statistics st;
    socklen_t l = sizeof(st);
    memset(&st, 0, sizeof(st));
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &l) != 0)
        return -1;
    *drops = st.rx_dropped + st.rx_ring_full;
    return 0;
}

/* -- frames ---------------------------------------------------------------------------------- */
static inline uint16_t p53_rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* Parse a query frame.  Returns 1 with *k filled and the client's sockaddr_in/in6 written to
 * sa, or 0 (drop): not the served port, not plain IPv4/IPv6 + UDP (the XDP program already
 * passed those to the kernel; this is the second look), or lengths that disagree. */
static inline int p53_pkt_parse(const uint8_t *f, uint32_t len, uint16_t port_be, p53_pkt_t *k,
                                void *sa) {
    const uint8_t *u;
    uint32_t ulen, ipl;
    uint16_t et;
    if (len < 14 + 20 + 8)
        return 0;
    et = p53_rd16(f + 12);
    if (et == 0x0800) {
        const uint8_t *ip = f + 14;
        if (ip[0] != 0x45 || ip[9] != IPPROTO_UDP || (p53_rd16(ip + 6) & 0x3fff))
            return 0;
        ipl = p53_rd16(ip + 2);
        if (ipl < 28 || ipl > len - 14)
            return 0;
        u = ip + 20;
        k->v6 = 0;
        k->hdrlen = 14 + 20 + 8;
        struct sockaddr_in *s = sa;
        memset(s, 0, sizeof(*s));
        s->sin_family = AF_INET;
        memcpy(&s->sin_port, u, 2);
        memcpy(&s->sin_addr, ip + 12, 4);
        ulen = p53_rd16(u + 4);
        if (ulen < 8 || ulen > ipl - 20)
            return 0;
    } else if (et == 0x86DD) {
        const uint8_t *ip = f + 14;
        if (len < 14 + 40 + 8 || (ip[0] >> 4) != 6 || ip[6] != IPPROTO_UDP)
            return 0;
        ipl = p53_rd16(ip + 4);           /* payload length */
        if (ipl < 8 || ipl > len - 54)
            return 0;
        u = ip + 40;
        k->v6 = 1;
        k->hdrlen = 14 + 40 + 8;
        struct sockaddr_in6 *s = sa;
        memset(s, 0, sizeof(*s));
        s->sin6_family = AF_INET6;
        memcpy(&s->sin6_port, u, 2);
        memcpy(&s->sin6_addr, ip + 8, 16);
        ulen = p53_rd16(u + 4);
        if (ulen < 8 || ulen > ipl)
            return 0;
    } else {
        return 0;
    }
    if (memcmp(u + 2, &port_be, 2) != 0)
        return 0;
    k->plen = ulen - 8;
    return 1;
}

/* One's-complement sum of memory-order 16-bit words (RFC 1071: byte-order independent, so
 * the folded sum is stored as is).  32-bit loads into a 64-bit accumulator. */
static inline uint64_t p53_csum_add(uint64_t acc, const uint8_t *p, uint32_t n) {
    uint32_t w;
    uint16_t h;
    while (n >= 4) { memcpy(&w, p, 4); acc += w; p += 4; n -= 4; }
    if (n >= 2) { memcpy(&h, p, 2); acc += h; p += 2; n -= 2; }
    if (n) { uint8_t last[2] = {p[0], 0}; memcpy(&h, last, 2); acc += h; }
    return acc;
}
static inline uint16_t p53_csum_fold(uint64_t acc) {
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)~acc;
}

/* Write the reply's headers into out (whose payload of plen bytes is already at out +
 * k->hdrlen): Ethernet and IP addresses and UDP ports mirrored from the query frame q, fresh
 * lengths, IPv4 header checksum, UDP checksum over the pseudo-header.  Returns the frame length. */
static inline uint32_t p53_pkt_reply(const uint8_t *q, uint8_t *out, const p53_pkt_t *k,
                                     uint32_t plen) {
    uint32_t ulen = plen + 8;
    uint8_t *ip = out + 14, *u;
    uint64_t acc;
    uint16_t c, be;
    memcpy(out, q + 6, 6);                 /* destination MAC = the query's source */
    memcpy(out + 6, q, 6);
    memcpy(out + 12, q + 12, 2);
    if (!k->v6) {
        uint32_t tot = 20 + ulen;
        ip[0] = 0x45; ip[1] = 0;
        ip[2] = tot >> 8; ip[3] = tot & 0xff;
        ip[4] = 0; ip[5] = 0;              /* id 0 with DF (RFC 6864 §4.1: atomic datagram) */
        ip[6] = 0x40; ip[7] = 0;
        ip[8] = 64; ip[9] = IPPROTO_UDP;
        ip[10] = 0; ip[11] = 0;
        memcpy(ip + 12, q + 14 + 16, 4);   /* source = the address the query was sent to */
        memcpy(ip + 16, q + 14 + 12, 4);
        c = p53_csum_fold(p53_csum_add(0, ip, 20));
        memcpy(ip + 10, &c, 2);
        u = ip + 20;
        acc = p53_csum_add(0, ip + 12, 8);
    } else {
        ip[0] = 0x60; ip[1] = 0; ip[2] = 0; ip[3] = 0;
        ip[4] = ulen >> 8; ip[5] = ulen & 0xff;
        ip[6] = IPPROTO_UDP; ip[7] = 64;
        memcpy(ip + 8, q + 14 + 24, 16);
        memcpy(ip + 24, q + 14 + 8, 16);
        u = ip + 40;
        acc = p53_csum_add(0, ip + 8, 32);
    }
    memcpy(u, q + k->hdrlen - 8 + 2, 2);   /* source port = the query's destination port */
    memcpy(u + 2, q + k->hdrlen - 8, 2);
    u[4] = ulen >> 8; u[5] = ulen & 0xff;
    u[6] = 0; u[7] = 0;
    be = htons(IPPROTO_UDP); acc += be;
    be = htons((uint16_t)ulen); acc += be;
    c = p53_csum_fold(p53_csum_add(acc, u, ulen));
    if (c == 0)
        c = 0xffff;                        /* RFC 768: a computed zero is sent as all ones */
    memcpy(u + 6, &c, 2);
    return k->hdrlen + plen;
}
#endif
