/* A bounded loopback flood for bench/attack: DNS queries to 127.0.0.1:PORT from SOURCES
 * addresses, batches of 64 datagrams (one source a batch), for at most SECONDS and at most RATE
 * datagrams a second (0: as fast as it goes).
 *   flood [-t sock|ring|pkt] [-k KICK] [-u] [-s SHARED] [-d SHARE:PERIOD_US:PID] PORT SECONDS
 *         RATE SOURCES MODE NAME SRC COUNT [SHARED]
 *   MODE 0: random subdomains of NAME (a fresh 12-hex-digit label each)
 *   MODE 1: NAME itself, repeated
 *   SRC 0: 127.2.X.Y (one /24 each while SOURCES <= 256)
 *   SRC 1: bots, one per /24: 127.(16 + i / 256).(i % 256).1
 *   SRC 2: spoofed known sources: 127.1.0.(100 + i % 150), the known resolvers' own /24
 *   SRC 3: relaying known resolvers: 127.3.(i % 256).1 (listed as known)
 *   COUNT 1: drain and count the replies (the capacity measurement), the last ones 10 ms after
 *     the time is up; the sockets get 1 MiB receive buffers
 *   SHARED (-s, or the 9th argument): a file several flood processes map to share one budget:
 *     each sends while the sum of all of them is behind RATE (the one that gets CPU time sends;
 *     RATE is the total)
 *   -t sock (default): one connected UDP socket per source, sendmmsg.
 *   -t ring: prebuilt IPv4/UDP frames written into an AF_PACKET TX ring (TPACKET_V2) on `lo`,
 *     PACKET_QDISC_BYPASS, one sendto kick per KICK frames (default 16: the kernel sends a kick
 *     without a preemption point, so a server woken on this CPU waits for at most ~16 datagrams'
 *     work; kicks of 64 sent -4% to +8% more a core): the sender's socket, UDP, IP and
 *     route output are skipped; a source is a header field (UDP checksum 0, legal on IPv4,
 *     RFC 768).  Each frame is copied into the skb's head (a virtio-net header says so):
 *     attached as ring pages, local delivery copies them into a fresh page each.
 *     The receive side is the same as a local sender's (loopback_xmit -> netif_rx -> ip_rcv) but
 *     for one route input lookup a datagram, and that needs net.ipv4.conf.lo.route_localnet = 1
 *     (else 127/8 arriving on lo is a martian): bench/attack/run.py sets it in a network
 *     namespace of its own.
 *   -t pkt: the same frames through sendmmsg on the AF_PACKET socket (no ring), to compare.
 *   -d SHARE:PERIOD_US:PID: this flood is the servers' CPU cap (bench/attack/steal.c) while it
 *     runs on their CPU: at SCHED_FIFO it sends (or, held back by RATE, spins) until it has had
 *     SHARE of the time since it started (a slice at most SHARE + 1/4 of PERIOD_US), then
 *     sleeps to its next wake-up, PERIOD_US after the last; the stealer PID it replaces is stopped (SIGSTOP) when its loop starts and continued
 *     when it ends, so the cap's idle half of the CPU floods instead of spinning.
 *   With ring or pkt every source still gets a UDP socket bound to its address (the frames use
 *   its port, the server's replies queue there and are dropped once its buffer is full, as with
 *   sock), unless -u: then no socket, and every reply costs the server an ICMP port unreachable.
 * Prints the datagrams sent and the replies counted.  Loopback only: the destination is fixed.
 * A batch is built once: per datagram only the ID and, in MODE 0, the random label are
 * rewritten. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "duty.h"

#define BATCH 64
#define FRAME 256                /* ring frame: tpacket2_hdr, sockaddr_ll room, then the frame */
#define NFRAMES 4096
#define HDRS 42                  /* Ethernet 14 + IPv4 20 + UDP 8 */
#define VNET ((int)sizeof(struct virtio_net_hdr))

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static const char hex[] = "0123456789abcdef";

static void relabel(uint8_t *p) {           /* a fresh random label at offset 13 */
    uint64_t r = next();
    for (int i = 0; i < 12; i++) p[13 + i] = hex[(r >> (4 * i)) & 15];
}

static int build(uint8_t *p, int mode, const uint8_t *zone, int zlen, uint16_t id) {
    int n = 0;
    p[n++] = id >> 8; p[n++] = id & 0xFF;
    p[n++] = 0; p[n++] = 0;                 /* RD=0: as a resolver asks an authority */
    p[n++] = 0; p[n++] = 1; memset(p + n, 0, 6); n += 6;
    if (mode == 0) {
        p[n++] = 12;
        relabel(p);
        n += 12;
    }
    memcpy(p + n, zone, zlen); n += zlen;
    p[n++] = 0; p[n++] = 1; p[n++] = 0; p[n++] = 1;
    return n;
}

static void source_ip(char *ip, size_t len, int srcmode, int i) {
    if (srcmode == 1) snprintf(ip, len, "127.%d.%d.1", 16 + (i >> 8), i & 255);
    else if (srcmode == 2) snprintf(ip, len, "127.1.0.%d", 100 + i % 150);
    else if (srcmode == 3) snprintf(ip, len, "127.3.%d.1", i & 255);
    /* a fifth from the measured resolvers' own addresses (they relay it too), the rest as 3 */
    else if (srcmode == 4 && i % 5 == 0) snprintf(ip, len, "127.1.0.%d", 1 + (i / 5) % 20);
    else if (srcmode == 4) snprintf(ip, len, "127.3.%d.1", i & 255);
    else snprintf(ip, len, "127.2.%d.%d", i & 255, (i >> 8) + 1);
}

/* The 42 header bytes of a frame from `src`:`sport` to 127.0.0.1:`dport` with `plen` bytes of
 * DNS: a zero Ethernet header (lo's address), IPv4 with DF and its checksum, UDP checksum 0. */
static void headers(uint8_t *h, uint32_t src, uint16_t sport, uint16_t dport, int plen) {
    memset(h, 0, 12);
    h[12] = 0x08; h[13] = 0x00;
    uint8_t *ip = h + 14;
    uint16_t tot = 20 + 8 + plen;
    uint8_t v[20] = {0x45, 0, tot >> 8, tot & 0xFF, 0, 0, 0x40, 0, 64, 17, 0, 0};
    memcpy(v + 12, &src, 4);
    uint32_t dst = htonl(INADDR_LOOPBACK);
    memcpy(v + 16, &dst, 4);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += (v[i] << 8) | v[i + 1];
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    sum = ~sum & 0xFFFF;
    v[10] = sum >> 8; v[11] = sum & 0xFF;
    memcpy(ip, v, 20);
    uint8_t *u = ip + 20;
    uint16_t ulen = 8 + plen;
    u[0] = sport >> 8; u[1] = sport & 0xFF; u[2] = dport >> 8; u[3] = dport & 0xFF;
    u[4] = ulen >> 8; u[5] = ulen & 0xFF; u[6] = 0; u[7] = 0;
}

static struct tpacket2_hdr *frame(uint8_t *map, uint64_t i) {
    return (struct tpacket2_hdr *)(map + (size_t)(i % NFRAMES) * FRAME);
}

static int packet_socket(int ring, uint8_t **map) {
    int fd = socket(AF_PACKET, SOCK_RAW, 0);     /* protocol 0: this socket receives nothing */
    if (fd < 0) { perror("AF_PACKET"); return -1; }
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex("lo")};
    if (bind(fd, (struct sockaddr *)&ll, sizeof ll) < 0) { perror("bind lo"); return -1; }
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    if (!ring) return fd;
    /* a virtio-net header before each frame whose hdr_len is the whole frame: tpacket_snd then
     * copies the frame into the skb's head instead of attaching ring pages as fragments, which
     * the local delivery would copy into fresh pages anyway (skb_copy_ubufs, a page a datagram) */
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) { perror("VNET_HDR"); return -1; }
    int v = TPACKET_V2;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0) { perror("TPACKET_V2"); return -1; }
    struct tpacket_req req = {.tp_block_size = 1 << 16, .tp_frame_size = FRAME,
                              .tp_block_nr = NFRAMES * FRAME / (1 << 16), .tp_frame_nr = NFRAMES};
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof req) < 0) { perror("TX_RING"); return -1; }
    *map = mmap(NULL, (size_t)NFRAMES * FRAME, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (*map == MAP_FAILED) { perror("mmap ring"); return -1; }
    return fd;
}

/* Read and count every reply queued on socket `s`. */
static uint64_t drain(int s, struct mmsghdr *rmsgs, struct iovec *riov) {
    static uint8_t rbufs[BATCH][512];
    uint64_t got = 0;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            riov[i].iov_base = rbufs[i]; riov[i].iov_len = sizeof rbufs[i];
            memset(&rmsgs[i], 0, sizeof rmsgs[i]);
            rmsgs[i].msg_hdr.msg_iov = &riov[i]; rmsgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(s, rmsgs, BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0) return got;
        got += r;
    }
}

int main(int argc, char **argv) {
    const char *tx = "sock", *shared = NULL;
    int bound = 1, kick = 16, opt;
    struct duty duty = {0};                  /* -d: the cap's duty cycle (duty.h) */
    pid_t stealer = 0;                       /* ... and the stealer it stands in for */
    while ((opt = getopt(argc, argv, "+t:us:k:d:")) != -1) {
        if (opt == 't') tx = optarg;
        else if (opt == 'd') {
            unsigned us = 0;
            int pid = 0;
            if (sscanf(optarg, "%lf:%u:%d", &duty.share, &us, &pid) < 2 || duty.share <= 0 ||
                duty.share >= 1 || us < 20) return 2;
            duty.period = us / 1e6;
            stealer = pid;
        }
        else if (opt == 'k') kick = atoi(optarg);
        else if (opt == 'u') bound = 0;
        else if (opt == 's') shared = optarg;
        else return 2;
    }
    argc -= optind - 1; argv += optind - 1;
    int sockmode = !strcmp(tx, "sock"), ring = !strcmp(tx, "ring");
    if ((argc != 9 && argc != 10) || (!sockmode && !ring && strcmp(tx, "pkt"))) {
        fprintf(stderr, "usage: flood [-t sock|ring|pkt] [-k KICK] [-u] [-s SHARED] [-d SHARE:PERIOD_US:PID] PORT SECONDS RATE "
                "SOURCES MODE NAME(wire, hex) SRC COUNT [SHARED]\n");
        return 2;
    }
    if (argc == 10) shared = argv[9];
    if (kick < 1 || kick > NFRAMES / 2) return 2;
    if (sockmode) bound = 1;
    uint64_t own = 0, *total = &own;         /* the budget's counter: ours, or shared */
    if (shared) {
        int fd = open(shared, O_RDWR | O_CREAT, 0600);
        if (fd < 0 || ftruncate(fd, 64) < 0) { perror(shared); return 1; }
        total = mmap(NULL, 64, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (total == MAP_FAILED) { perror("mmap"); return 1; }
        close(fd);
    }
    int port = atoi(argv[1]), nsrc = atoi(argv[4]), mode = atoi(argv[5]);
    int srcmode = atoi(argv[7]), count = atoi(argv[8]);
    double seconds = atof(argv[2]), rate = atof(argv[3]);
    uint8_t zone[256];
    int zlen = strlen(argv[6]) / 2;
    if (nsrc < 1 || nsrc > 65536 || seconds <= 0 || seconds > 600 || zlen < 1 || zlen > 255) return 2;
    if (count && !bound) return 2;
    for (int i = 0; i < zlen; i++) sscanf(argv[6] + 2 * i, "%2hhx", &zone[i]);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* the cap's place first: the sources' sockets are made in its slices, not in what a busy
     * server (whose cgroup weighs 256x more) leaves a normal task (4,096 bots took ~2 s) */
    if (duty.share > 0) {
        if (duty_begin(&duty, "flood")) return 1;
        if (stealer > 0) kill(stealer, SIGSTOP);
    }
    int *socks = calloc(nsrc, sizeof(int));
    uint8_t (*hdr)[HDRS] = calloc(nsrc, HDRS);
    static uint8_t bufs[BATCH][300];
    int plen = build(bufs[0], mode, zone, zlen, 0);
    for (int i = 0; i < nsrc; i++) {
        if (duty.share > 0) duty_tick(&duty, now());
        struct sockaddr_in a = {.sin_family = AF_INET};
        char ip[32];
        source_ip(ip, sizeof ip, srcmode, i);
        inet_pton(AF_INET, ip, &a.sin_addr);
        uint16_t sport = 1024 + i % 60000;
        if (bound) {
            socks[i] = socket(AF_INET, SOCK_DGRAM, 0);
            int one = 1;
            setsockopt(socks[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (count) {
                /* room for several batches of replies between two reads (root: past rmem_max) */
                int rcv = 1 << 20;
                if (setsockopt(socks[i], SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
                    setsockopt(socks[i], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
            }
            if (socks[i] < 0 || bind(socks[i], (struct sockaddr *)&a, sizeof a) < 0) { perror(ip); return 1; }
            /* connected: no route lookup a datagram, and the replies find it by early demux */
            if (connect(socks[i], (struct sockaddr *)&dst, sizeof dst) < 0) { perror("connect"); return 1; }
            struct sockaddr_in b;
            socklen_t bl = sizeof b;
            getsockname(socks[i], (struct sockaddr *)&b, &bl);
            sport = ntohs(b.sin_port);
        }
        headers(hdr[i], a.sin_addr.s_addr, sport, port, plen);
    }
    uint8_t *ringmap = NULL;
    int pfd = sockmode ? -1 : packet_socket(ring, &ringmap);
    if (!sockmode && pfd < 0) return 1;
    static uint8_t frames[BATCH][HDRS + 300];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    uint64_t sent = 0, got = 0;
    struct iovec riov[BATCH];
    struct mmsghdr rmsgs[BATCH];
    double t0 = now(), end = t0 + seconds;
    for (int i = 0; i < BATCH; i++) {
        build(bufs[i], mode, zone, zlen, (uint16_t)i);
        iov[i].iov_base = sockmode ? (void *)bufs[i] : (void *)frames[i];
        iov[i].iov_len = sockmode ? plen : HDRS + plen;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t fill = 0, done = 0;             /* ring frames written, and sent */
    int queued = 0;                          /* frames written since the last kick */
    const int toff = TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);   /* where a TX frame starts */
    for (uint64_t b = 0;; b++) {
        double t = now();
        if (t >= end) break;
        if (duty.share > 0) duty_tick(&duty, t);
        if (rate > 0 && __atomic_load_n(total, __ATOMIC_RELAXED) > (t - t0) * rate) {
            struct timespec ts = {0, 200000};
            if (duty.share == 0) nanosleep(&ts, NULL);     /* a cap spins out its slice */
            continue;
        }
        int k = 0;
        if (ring) {
            /* one batch (one source, as the socket path sends them), kicked `kick` frames at a
             * time: the kernel sends a kick's frames without a preemption point (with
             * PREEMPT_NONE a woken server on this CPU waits for the kick to end; sendmmsg
             * offers one every datagram, cond_resched) */
            if (fill - done <= NFRAMES - BATCH) {
                const uint8_t *h = hdr[b % nsrc];
                for (int i = 0; i < BATCH; i++, fill++) {
                    struct tpacket2_hdr *f = frame(ringmap, fill);
                    struct virtio_net_hdr *vh = (void *)((uint8_t *)f + toff);
                    memset(vh, 0, VNET);
                    vh->hdr_len = HDRS + plen;        /* little-endian (virtio 1.0) on x86 */
                    uint8_t *d = (uint8_t *)f + toff + VNET;
                    uint16_t id = (uint16_t)fill;
                    memcpy(d, h, HDRS);
                    memcpy(d + HDRS, bufs[i], plen);
                    d[HDRS] = id >> 8; d[HDRS + 1] = id & 0xFF;
                    if (mode == 0) relabel(d + HDRS);
                    f->tp_len = VNET + HDRS + plen;
                    __atomic_store_n(&f->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
                    if (++queued >= kick) {
                        sendto(pfd, NULL, 0, MSG_DONTWAIT, NULL, 0);
                        queued = 0;
                    }
                }
            }
            /* the batch's rest (a kick of more than a batch waits for the next one), or the
             * frames a full ring still holds */
            if ((queued && kick <= BATCH) || fill - done > NFRAMES - BATCH) {
                sendto(pfd, NULL, 0, MSG_DONTWAIT, NULL, 0);
                queued = 0;
            }
            /* loopback_xmit orphans each skb, so a sent frame is available again by now; one
             * the kernel has not taken yet stays requested for the next kick */
            for (; done != fill; done++, k++) {
                unsigned st = __atomic_load_n(&frame(ringmap, done)->tp_status, __ATOMIC_ACQUIRE);
                if (st == TP_STATUS_WRONG_FORMAT) { fprintf(stderr, "ring: frame refused\n"); return 1; }
                if (st != TP_STATUS_AVAILABLE) break;
            }
        } else {
            for (int i = 0; i < BATCH; i++) {
                uint16_t id = (uint16_t)(sent + i);
                bufs[i][0] = id >> 8; bufs[i][1] = id & 0xFF;
                if (mode == 0) relabel(bufs[i]);
                if (!sockmode) {
                    memcpy(frames[i], hdr[b % nsrc], HDRS);
                    memcpy(frames[i] + HDRS, bufs[i], plen);
                }
            }
            k = sendmmsg(sockmode ? socks[b % nsrc] : pfd, msgs, BATCH, MSG_DONTWAIT);
        }
        if (k > 0) {
            sent += k;
            if (total != &own) __atomic_fetch_add(total, (uint64_t)k, __ATOMIC_RELAXED);
            else own = sent;
        }
        if (count)
            got += drain(socks[(b + nsrc - 1) % nsrc], rmsgs, riov);  /* the previous socket's */
    }
    if (stealer > 0) kill(stealer, SIGCONT);
    if (count) {
        /* the replies to the last batches of each source: a source is read only after the
         * batch that follows its own, so at a low rate most sockets hold one batch's replies
         * when the time is up (they were undercounted by up to SOURCES x 64) */
        struct timespec grace = {0, 10000000};
        nanosleep(&grace, NULL);
        for (int i = 0; i < nsrc; i++) got += drain(socks[i], rmsgs, riov);
    }
    printf("%llu %llu\n", (unsigned long long)sent, (unsigned long long)got);
    return 0;
}
