# The control plane's side of observability: the readers whose counters the data plane fills,
# per-zone counters and latency summed on scrape (zstats.pxi counts them), the build info.
# The dnstap rings and their writer are in dnstap_out.pxi.

cdef extern from *:
    """
    #define P53_CYTHON_VERSION CYTHON_HEX_VERSION
    """
    unsigned long P53_CYTHON_VERSION

# ---------------------------------------------------------------------------------------------
# Readers: the objects whose stats_t the data plane counts into.
# ---------------------------------------------------------------------------------------------
cdef stats_t* reader_stats(object reader) except NULL:
    if isinstance(reader, Worker):
        return &(<Worker>reader).st
    if isinstance(reader, TcpLoop):
        return &(<TcpLoop>reader).L.st
    if isinstance(reader, Counters):
        return &(<Counters>reader).st
    raise TypeError(f"not a data-plane reader: {type(reader).__name__}")


def latency(list readers not None):
    """The answer-latency histogram summed over readers: (counts per bucket, sum in ns).  Bucket
    k < LAT_N - 1 counts replies whose batch took under 2**(10+k) ns; the last one the rest."""
    cdef uint64_t counts[LAT_N]
    cdef uint64_t total = 0
    cdef stats_t* st
    cdef int k
    memset(counts, 0, sizeof(counts))
    for r in readers:
        st = reader_stats(r)
        for k in range(LAT_N):
            counts[k] += st.lat[k]
        total += st.lat_sum_ns
    return [counts[k] for k in range(LAT_N)], total


def latency_from_kernel(list readers not None):
    """As latency(), from each query's kernel receive stamp (SO_TIMESTAMPNS) to its batch's
    send: the socket's receive queue included.  UDP workers on sockets with stamps only."""
    cdef uint64_t counts[LAT_N]
    cdef uint64_t total = 0
    cdef stats_t* st
    cdef int k
    memset(counts, 0, sizeof(counts))
    for r in readers:
        st = reader_stats(r)
        for k in range(LAT_N):
            counts[k] += st.klat[k]
        total += st.klat_sum_ns
    return [counts[k] for k in range(LAT_N)], total


LATENCY_BOUNDS_NS = tuple(1 << (10 + k) for k in range(LAT_N - 1))
_v = P53_CYTHON_VERSION
BUILD = {
    "cython": f"{_v >> 24}.{(_v >> 16) & 0xFF}.{(_v >> 8) & 0xFF}",
    "debug": bool(P53_DEBUG_BUILD),
    "features": ("udp-mmsg", "tcp-epoll", "rrl", "cookies", "dnssec", "mapping", "scoring",
                 "zone-stats", "dnstap"),
}


cdef class ZoneStats:
    """Per-zone counters: slots by zone name (stable across reloads), one array per reader."""
    cdef uint32_t cap
    cdef list readers
    cdef list arrays                # uint64_t* as ints, one per reader (freed in __dealloc__)
    cdef dict slots
    cdef readonly list names        # slot -> zone name; slot 0 is "(other)"

    def __cinit__(self, uint32_t capacity=65536):
        if capacity < 2:
            raise ValueError("at least two zone slots")
        self.cap = capacity
        self.readers = []
        self.arrays = []
        self.slots = {}
        self.names = ["(other)"]

    def __dealloc__(self):
        cdef stats_t* st
        for r, a in zip(self.readers, self.arrays):
            st = reader_stats(r)
            st.zs = NULL
            st.zs_cap = 0
            free(<void*><size_t>a)

    def attach(self, reader):
        """Count reader's replies per zone from now on (before its loop starts).  The array is
        calloc'd: pages are touched only as zones get slots, so capacity costs address space."""
        cdef stats_t* st = reader_stats(reader)
        cdef uint64_t* a
        if st.zs != NULL:
            raise RuntimeError("zone counters already attached")
        a = <uint64_t*>calloc(<size_t>self.cap * ZS_WIDTH, sizeof(uint64_t))
        if a == NULL:
            raise MemoryError()
        st.zs_cap = self.cap
        st.zs = a
        self.readers.append(reader)
        self.arrays.append(<size_t>a)

    def label(self, ImageView view not None, list zone_names not None):
        """Give the image its zone index -> slot table (zone_names in image order), before it is
        published.  A view that has one keeps it (a published table never changes)."""
        cdef bytes table
        cdef uint32_t* t
        cdef Py_ssize_t i
        if view.img.zslot != NULL:
            return
        if len(zone_names) != view.img.n_zones:
            raise ValueError("one name per zone of the image")
        table = PyBytes_FromStringAndSize(NULL, 4 * len(zone_names) or 4)
        t = <uint32_t*>PyBytes_AS_STRING(table)
        for i, name in enumerate(zone_names):
            slot = self.slots.get(name)
            if slot is None:
                slot = len(self.names) if len(self.names) < self.cap else 0
                if slot:
                    self.names.append(name)
                    self.slots[name] = slot
            t[i] = slot
        view.zslots = table             # lives as long as the view
        view.img.zslot = t

    def snapshot(self):
        """[(zone, rcode counts, type counts)] summed over readers, zones with counts only."""
        cdef Py_ssize_t n = len(self.names), s
        cdef int k
        cdef uint64_t acc[ZS_WIDTH]
        cdef uint64_t* a
        cdef bint any_
        out = []
        for s in range(n):
            memset(acc, 0, sizeof(acc))
            for ai in self.arrays:
                a = <uint64_t*><size_t>ai + s * ZS_WIDTH
                for k in range(ZS_WIDTH):
                    acc[k] += a[k]
            any_ = False
            for k in range(ZS_RCODES):
                any_ = any_ or acc[k] != 0
            if any_:
                out.append((self.names[s], [acc[k] for k in range(ZS_RCODES)],
                            [acc[ZS_RCODES + k] for k in range(ZS_TYPES)]))
        return out
