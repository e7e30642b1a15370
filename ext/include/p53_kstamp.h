/* Sampled kernel receive stamps (ext/kstamp.pxi): turn SO_TIMESTAMPNS on or off for one socket.
 * The kernel checks the socket's flag when a datagram is read (sock_recv_timestamp), and keeps
 * stamping packets on arrival once any socket asked for stamps (the SOCK_TIMESTAMP flag stays
 * set when the option is turned off again), so a batch read with the flag on carries the true
 * arrival times, queue included. */
#ifndef P53_KSTAMP_H
#define P53_KSTAMP_H
#include <sys/socket.h>

#ifndef SO_TIMESTAMPNS
#define SO_TIMESTAMPNS 35
#endif

static inline int p53_set_rx_stamps(int fd, int on) {
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
}
#endif
