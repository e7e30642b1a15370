/* What SO_TIMESTAMPNS costs the kernel per datagram: one thread sends a batch of 64 datagrams
 * (sendmmsg) to a loopback UDP socket and reads them back (recvmmsg), with the receive stamp
 * off, on, and sampled (on for one receive in 16, as pop53's workers do by default: the flag
 * set before the sampled recvmmsg and cleared before the next, ext/kstamp.pxi), the order
 * rotating each round.  Prints the CPU ns per datagram (send, loopback, receive) of each round:
 * off, on, sampled.  Built and run by bench/micro/kstamp.py. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define B 64
static double now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec * 1e9 + t.tv_nsec; }

#define SAMPLE 16
static double run(int stamp, int batches) {
    int r = socket(AF_INET, SOCK_DGRAM, 0), s = socket(AF_INET, SOCK_DGRAM, 0), one = 1, i, b;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    static char buf[B][64], cbuf[B][128];
    struct mmsghdr sm[B], rm[B];
    struct iovec sv[B], rv[B];
    double t0, t1;
    if (stamp) setsockopt(r, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);   /* 2: sampled */
    bind(r, (struct sockaddr *)&a, sizeof a);
    getsockname(r, (struct sockaddr *)&a, &l);
    connect(s, (struct sockaddr *)&a, sizeof a);
    memset(sm, 0, sizeof sm);
    for (i = 0; i < B; i++) {
        sv[i].iov_base = buf[i]; sv[i].iov_len = 40;
        sm[i].msg_hdr.msg_iov = &sv[i]; sm[i].msg_hdr.msg_iovlen = 1;
    }
    t0 = now();
    for (b = 0; b < batches; b++) {
        int n = 0, k, on = b % SAMPLE == 0;
        if (stamp == 2 && b % SAMPLE < 2)
            setsockopt(r, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
        sendmmsg(s, sm, B, 0);
        while (n < B) {
            for (i = 0; i < B; i++) {
                rv[i].iov_base = buf[i]; rv[i].iov_len = 64;
                memset(&rm[i].msg_hdr, 0, sizeof rm[i].msg_hdr);
                rm[i].msg_hdr.msg_iov = &rv[i]; rm[i].msg_hdr.msg_iovlen = 1;
                rm[i].msg_hdr.msg_control = cbuf[i]; rm[i].msg_hdr.msg_controllen = 128;
            }
            k = recvmmsg(r, rm, B - n, MSG_DONTWAIT, NULL);
            if (k > 0) n += k;
        }
    }
    t1 = now();
    close(r); close(s);
    return (t1 - t0) / ((double)batches * B);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 21, batches = argc > 2 ? atoi(argv[2]) : 500, i, j;
    double t[3];
    for (i = 0; i < rounds; i++) {
        for (j = 0; j < 3; j++) {
            int mode = (i + j) % 3;
            t[mode] = run(mode, batches);
        }
        printf("%.1f %.1f %.1f\n", t[0], t[1], t[2]);   /* off on sampled */
    }
    return 0;
}
