# Sampled kernel receive stamps for the UDP workers (issue 10, the per-query cost every UDP query
# pays).  With SO_TIMESTAMPNS on, the kernel writes a 16-byte control message for every datagram
# read (about +120-170 ns of kernel CPU per datagram, bench/micro/kstamp.py); the stamps only feed
# a latency histogram (pop53_answer_latency_total_seconds), for which a sample is enough.  So a
# worker reads one receive batch in `every` with the flag on and the others with it off: two
# setsockopt calls per `every` batches.  A batch is chosen by its count, never by its content, so
# each query is stamped with probability 1/every and the sampled histogram is an unbiased picture
# of the whole.  Query scoring reads a stamp from every batch (its queue-delay input) and keeps
# them all: the workers are not sampled when it is on (pop53.serve.workers).

cdef extern from "p53_kstamp.h" nogil:
    int p53_set_rx_stamps(int fd, int on)

cdef struct kstamp_t:
    uint32_t every            # one batch in `every` stamped; 0 or 1: the socket as configured
    uint32_t count            # non-empty batches since the last stamped one
    int on                    # the flag as last set on the socket


cdef inline void kstamp_gate(kstamp_t* k, int fd) noexcept nogil:
    """Before a receive: the flag on for the batch whose turn it is, off for the others."""
    cdef int want
    if k.every <= 1:
        return
    want = 1 if k.count == 0 else 0
    if want != k.on and p53_set_rx_stamps(fd, want) == 0:
        k.on = want


cdef inline void kstamp_done(kstamp_t* k) noexcept nogil:
    """After a batch that received something (an idle timeout keeps its turn)."""
    if k.every > 1:
        k.count = k.count + 1 if k.count + 1 < k.every else 0
