/* Waking the control plane's housekeeping thread from a worker (ext/udp_loop.pxi,
 * Worker._loop): one 8-byte write to an eventfd (eventfd(2)); never blocks (the counter
 * saturates long after the thread has woken and read it). */
#ifndef P53_WAKE_H
#define P53_WAKE_H
#include <stdint.h>
#include <unistd.h>

static inline void p53_wake(int fd) {
    uint64_t one = 1;
    if (fd >= 0 && write(fd, &one, sizeof one) < 0) {
        /* EAGAIN (a counter near its limit): the thread has a wake-up pending anyway */
    }
}
#endif
