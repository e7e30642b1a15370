/* A bounded loopback flood for bench/attack: DNS queries to 127.0.0.1:PORT from SOURCES
 * sockets, sendmmsg batches of 64, for at most SECONDS and at most RATE datagrams a second
 * (0: as fast as it goes).
 *   MODE 0: random subdomains of NAME (a fresh 12-hex-digit label each)
 *   MODE 1: NAME itself, repeated
 *   SRC 0: 127.2.X.Y (one /24 each while SOURCES <= 256)
 *   SRC 1: bots, one per /24: 127.(16 + i / 256).(i % 256).1
 *   SRC 2: spoofed known sources: 127.1.0.(100 + i % 150), the known resolvers' own /24
 *   SRC 3: relaying known resolvers: 127.3.(i % 256).1 (listed as known)
 *   COUNT 1: drain and count the replies (the capacity measurement)
 *   SHARED (optional): a file several flood processes map to share one budget: each sends while
 *     the sum of all of them is behind RATE (the one that gets CPU time sends; RATE is the total)
 * Prints the datagrams sent and the replies counted.  Loopback only: the destination is fixed.
 * Every source socket is connected (no route lookup per datagram) and a batch is built once: per
 * datagram only the ID and, in MODE 0, the random label are rewritten. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

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

int main(int argc, char **argv) {
    if (argc != 9 && argc != 10) {
        fprintf(stderr, "usage: flood PORT SECONDS RATE SOURCES MODE NAME(wire, hex) SRC COUNT [SHARED]\n");
        return 2;
    }
    uint64_t own = 0, *total = &own;         /* the budget's counter: ours, or shared */
    if (argc == 10) {
        int fd = open(argv[9], O_RDWR | O_CREAT, 0600);
        if (fd < 0 || ftruncate(fd, 64) < 0) { perror(argv[9]); return 1; }
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
    for (int i = 0; i < zlen; i++) sscanf(argv[6] + 2 * i, "%2hhx", &zone[i]);
    int *socks = calloc(nsrc, sizeof(int));
    for (int i = 0; i < nsrc; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        char ip[32];
        if (srcmode == 1) snprintf(ip, sizeof ip, "127.%d.%d.1", 16 + (i >> 8), i & 255);
        else if (srcmode == 2) snprintf(ip, sizeof ip, "127.1.0.%d", 100 + i % 150);
        else if (srcmode == 3) snprintf(ip, sizeof ip, "127.3.%d.1", i & 255);
        else snprintf(ip, sizeof ip, "127.2.%d.%d", i & 255, (i >> 8) + 1);
        inet_pton(AF_INET, ip, &a.sin_addr);
        socks[i] = socket(AF_INET, SOCK_DGRAM, 0);
        int one = 1;
        setsockopt(socks[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (socks[i] < 0 || bind(socks[i], (struct sockaddr *)&a, sizeof a) < 0) { perror(ip); return 1; }
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    for (int i = 0; i < nsrc; i++)
        if (connect(socks[i], (struct sockaddr *)&dst, sizeof dst) < 0) { perror("connect"); return 1; }
    static uint8_t bufs[BATCH][300];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    uint64_t sent = 0, got = 0;
    static uint8_t rbufs[BATCH][512];
    struct iovec riov[BATCH];
    struct mmsghdr rmsgs[BATCH];
    double t0 = now(), end = t0 + seconds;
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = build(bufs[i], mode, zone, zlen, (uint16_t)i);
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    for (uint64_t b = 0;; b++) {
        double t = now();
        if (t >= end) break;
        if (rate > 0 && __atomic_load_n(total, __ATOMIC_RELAXED) > (t - t0) * rate) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
            continue;
        }
        for (int i = 0; i < BATCH; i++) {
            uint16_t id = (uint16_t)(sent + i);
            bufs[i][0] = id >> 8; bufs[i][1] = id & 0xFF;
            if (mode == 0) relabel(bufs[i]);
        }
        int k = sendmmsg(socks[b % nsrc], msgs, BATCH, MSG_DONTWAIT);
        if (k > 0) {
            sent += k;
            if (total != &own) __atomic_fetch_add(total, (uint64_t)k, __ATOMIC_RELAXED);
            else own = sent;
        }
        if (count) {
            int s = socks[(b + nsrc - 1) % nsrc];       /* the previous socket's replies */
            for (;;) {
                for (int i = 0; i < BATCH; i++) {
                    riov[i].iov_base = rbufs[i]; riov[i].iov_len = sizeof rbufs[i];
                    memset(&rmsgs[i], 0, sizeof rmsgs[i]);
                    rmsgs[i].msg_hdr.msg_iov = &riov[i]; rmsgs[i].msg_hdr.msg_iovlen = 1;
                }
                int r = recvmmsg(s, rmsgs, BATCH, MSG_DONTWAIT, NULL);
                if (r <= 0) break;
                got += r;
            }
        }
    }
    printf("%llu %llu\n", (unsigned long long)sent, (unsigned long long)got);
    return 0;
}
