# The worker loop: recvmmsg a batch, answer each query from the current image, sendmmsg the
# replies.  (Filled in by the server work; this part holds the system declarations.)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC
