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
#include <time.h>
#include <sys/socket.h>
#include <linux/net_tstamp.h>

#ifndef SO_TIMESTAMPING
#define SO_TIMESTAMPING 37
#endif

static inline int p53_set_rx_stamps(int fd, int on) {
    int v = on ? (SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE) : 0;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &v, sizeof v);
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
