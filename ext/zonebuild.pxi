# zonebuild.pxi: the compile of scanner records (pop53.zone.records.Records) into the image, in C
# over flat arrays (issue 15 point 1).  A million-name zone used to become a million Python node
# objects, tuples and bytes (10x the image at the peak); here a zone is a handful of arrays: per
# name its key (a slice of one lowercased copy of the scanner's names), labels, flags, cut and
# RRset range; per RRset its type, covers, TTL and record range; per record the scanner's index.
# The bytes written are pop53.zone.compiler's (its differential tests compare images), so every
# rule here mirrors a line of compiler._ZoneBuild / compiler._compile.  Signed zones too: NSEC3
# owners are kept out of the name table, and their DNSSEC block is ext/zonebuild_dsec.pxi's.

cdef inline uint32_t _zb_hash(const uint8_t* k, Py_ssize_t n) noexcept:
    """The build's own name tables: FNV-1a of the lowercased name (names are kept as the
    scanner read them, case and all: no lowercased copy of a million names)."""
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <uint32_t>zs_lower(k[i])) * 16777619u
    return h ^ (h >> 15)


cdef inline bint _zb_eq(const uint8_t* a, const uint8_t* b, Py_ssize_t n) noexcept:
    """Case-insensitive equality of two wire names of length n (label lengths are < 64, so
    lowering every octet leaves them alone)."""
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != b[i] and zs_lower(a[i]) != zs_lower(b[i]):
            return False
    return True


cdef inline uint32_t _zb_pow2(uint64_t n) noexcept nogil:
    cdef uint64_t size = 4
    while size < n:
        size <<= 1
    return <uint32_t>size


cdef inline uint64_t _zb_align4(uint64_t n) noexcept nogil:
    return (n + 3) & ~(<uint64_t>3)


cdef inline void* _zb_grow(void* p, size_t n) except NULL:
    cdef void* q = realloc(p, n if n else 1)
    if q == NULL:
        raise MemoryError()
    return q


cdef class FlatZone:
    """One zone's names and RRsets as arrays, built from the scanner's columns the way
    compiler._ZoneBuild builds its nodes: RRsets are runs of (name, type, covers) in `order`,
    with the lowest TTL and no repeated RDATA; then empty non-terminals, wildcard flags, the
    apex and the zone cuts.  Node order is the old dict's insertion order (record-holding names
    by scanner index, then the empty non-terminals as found)."""
    cdef readonly bytes key                   # the origin, lowercased wire form
    cdef readonly int olabels
    cdef readonly uint32_t neg_ttl
    cdef readonly uint32_t n_nodes, n_rrsets, n_records
    cdef readonly uint32_t n_nsec3            # NSEC3 owners (N_NSEC): written after the names
    cdef readonly int64_t apex
    cdef bytes keys                           # every scanner name as read, concatenated
    cdef bytes rdata
    cdef const uint32_t[::1] rdoff
    cdef const uint16_t[::1] rdlen
    cdef uint32_t cap
    cdef uint32_t* nkoff                      # into keys (the scanner keeps it under 4 GiB)
    cdef uint8_t* nklen
    cdef uint8_t* nlabels
    cdef uint16_t* nflags
    cdef int32_t* ncut
    cdef uint32_t* nrr                        # first RRset
    cdef uint32_t* nnrr                       # RRset count
    cdef uint32_t* noff                       # image offset (pass 1)
    cdef uint16_t* rtype
    cdef uint16_t* rcov
    cdef uint32_t* rttl
    cdef uint32_t* rfirst                     # first entry in rec
    cdef uint32_t* rcount
    cdef uint32_t* radd                       # first additional hit (FlatImage), when radd_n
    cdef uint32_t* radd_n
    cdef uint32_t* rec                        # scanner record index, per distinct record
    cdef uint32_t* slots                      # node index + 1, 0 = empty
    cdef uint32_t* worder                     # write order when n_nsec3: names, then NSEC3 owners
    cdef uint32_t mask

    def __dealloc__(self):
        free(self.nkoff); free(self.nklen); free(self.nlabels); free(self.nflags)
        free(self.ncut); free(self.nrr); free(self.nnrr); free(self.noff)
        free(self.rtype); free(self.rcov); free(self.rttl); free(self.rfirst); free(self.rcount)
        free(self.radd); free(self.radd_n); free(self.rec); free(self.slots); free(self.worder)

    def __init__(self, bytes names, const uint32_t[::1] node_off not None,
                 const uint8_t[::1] node_len not None, const uint32_t[::1] order not None,
                 const uint32_t[::1] node not None, const uint16_t[::1] rtype not None,
                 const uint16_t[::1] cov not None, const uint32_t[::1] ttl not None,
                 const uint32_t[::1] rdoff not None, const uint16_t[::1] rdlen not None,
                 bytes rdata, bytes okey, int olabels):
        cdef Py_ssize_t m = order.shape[0], j, i, k
        cdef int64_t pn = -1, nd, cur = -1
        cdef long pt = -1, pc = -1, t, c
        cdef uint32_t tt, r, first
        cdef const uint8_t* rd = <const uint8_t*>PyBytes_AS_STRING(rdata)
        cdef bint dup
        self.key, self.olabels, self.keys, self.rdata = okey, olabels, names, rdata
        self.rdoff, self.rdlen = rdoff, rdlen
        self.rtype = <uint16_t*>_zb_grow(NULL, 2 * m)
        # zeroed pages, written only for an RRSIG's covered type: an unsigned zone's stay
        # unmapped (issue 15)
        self.rcov = <uint16_t*>calloc(m or 1, 2)
        if self.rcov == NULL:
            raise MemoryError()
        self.rttl = <uint32_t*>_zb_grow(NULL, 4 * m)
        self.rfirst = <uint32_t*>_zb_grow(NULL, 4 * m)
        self.rcount = <uint32_t*>_zb_grow(NULL, 4 * m)
        self.rec = <uint32_t*>_zb_grow(NULL, 4 * m)
        self._reserve(node_off.shape[0] + 16)
        # RRsets: runs of (name, type, covers) in `order`
        for j in range(m):
            i = order[j]
            nd, t, c, tt = node[i], rtype[i], cov[i], ttl[i]
            if nd == pn and t == pt and c == pc:
                r = self.n_rrsets - 1
                if tt < self.rttl[r]:
                    self.rttl[r] = tt
                dup = False
                first = self.rfirst[r]
                for k in range(first, first + self.rcount[r]):
                    if rdlen[self.rec[k]] == rdlen[i] and memcmp(
                            rd + rdoff[self.rec[k]], rd + rdoff[i], rdlen[i]) == 0:
                        dup = True
                        break
                if not dup:
                    self.rec[self.n_records] = <uint32_t>i
                    self.n_records += 1
                    self.rcount[r] += 1
                continue
            if nd != pn:
                cur = self._add(node_off[nd], node_len[nd])
                pn = nd
            pt, pc = t, c
            r = self.n_rrsets
            self.n_rrsets += 1
            self.rtype[r], self.rttl[r] = <uint16_t>t, tt
            if c:
                self.rcov[r] = <uint16_t>c
            self.rfirst[r], self.rcount[r] = self.n_records, 1
            self.rec[self.n_records] = <uint32_t>i
            self.n_records += 1
            if self.nnrr[cur] == 0:
                self.nrr[cur] = r
            self.nnrr[cur] += 1
            if t == 5:
                self.nflags[cur] |= N_CNAME
            elif t == 39:
                self.nflags[cur] |= N_DNAME
            elif t == 2 and not self._is(cur, okey):
                self.nflags[cur] |= N_CUT
        self.radd = <uint32_t*>calloc(self.n_rrsets or 1, 4)
        self.radd_n = <uint32_t*>calloc(self.n_rrsets or 1, 4)
        if self.radd == NULL or self.radd_n == NULL:
            raise MemoryError()
        zone_split_nsec3(self)                    # zonebuild_dsec.pxi
        self._structure()
        zone_write_order(self)

    # -- names -----------------------------------------------------------------------------
    cdef int _reserve(self, uint64_t n) except -1:
        if n <= self.cap:
            return 0
        self.nkoff = <uint32_t*>_zb_grow(self.nkoff, 4 * n)
        self.nklen = <uint8_t*>_zb_grow(self.nklen, n)
        self.nlabels = <uint8_t*>_zb_grow(self.nlabels, n)
        self.nflags = <uint16_t*>_zb_grow(self.nflags, 2 * n)
        self.ncut = <int32_t*>_zb_grow(self.ncut, 4 * n)
        self.nrr = <uint32_t*>_zb_grow(self.nrr, 4 * n)
        self.nnrr = <uint32_t*>_zb_grow(self.nnrr, 4 * n)
        self.noff = <uint32_t*>_zb_grow(self.noff, 4 * n)
        self.cap = <uint32_t>n
        self._rehash(_zb_pow2(2 * n + 1))
        return 0

    cdef int _rehash(self, uint32_t size) except -1:
        cdef uint32_t i, s
        free(self.slots)
        self.slots = <uint32_t*>calloc(size, 4)
        if self.slots == NULL:
            raise MemoryError()
        self.mask = size - 1
        for i in range(self.n_nodes):
            if self.nflags[i] & N_NSEC:           # not a name of the zone (zone_split_nsec3)
                continue
            s = self._hash(i) & self.mask
            while self.slots[s]:
                s = (s + 1) & self.mask
            self.slots[s] = i + 1
        return 0

    cdef inline const uint8_t* _kp(self, uint64_t i) noexcept:
        return <const uint8_t*>PyBytes_AS_STRING(self.keys) + self.nkoff[i]

    cdef inline uint32_t _hash(self, uint64_t i) noexcept:
        return _zb_hash(self._kp(i), self.nklen[i])

    cdef bint _is(self, uint64_t i, bytes k):
        return self.nklen[i] == len(k) and _zb_eq(self._kp(i), <const uint8_t*>PyBytes_AS_STRING(k), len(k))

    cdef int64_t find(self, const uint8_t* k, Py_ssize_t n) noexcept:
        """The node whose name is k[:n] (case-insensitively), or -1."""
        cdef uint32_t s = _zb_hash(k, n) & self.mask, v
        while True:
            v = self.slots[s]
            if v == 0:
                return -1
            if self.nklen[v - 1] == n and _zb_eq(self._kp(v - 1), k, n):
                return v - 1
            s = (s + 1) & self.mask

    cdef int64_t _add(self, uint64_t koff, uint8_t klen) except -2:
        cdef uint32_t i = self.n_nodes, s
        cdef const uint8_t* k = <const uint8_t*>PyBytes_AS_STRING(self.keys) + koff
        cdef int labels = 0
        cdef Py_ssize_t p = 0
        if <uint64_t>i + 1 > self.cap:
            self._reserve(2 * <uint64_t>self.cap)
        while p < klen and k[p]:
            p += k[p] + 1
            labels += 1
        self.nkoff[i], self.nklen[i], self.nlabels[i] = <uint32_t>koff, klen, <uint8_t>labels
        self.nflags[i], self.ncut[i], self.nrr[i], self.nnrr[i], self.noff[i] = 0, -1, 0, 0, 0
        self.n_nodes += 1
        if 2 * <uint64_t>self.n_nodes > self.mask:
            self._rehash(2 * (self.mask + 1))
        else:
            s = self._hash(i) & self.mask
            while self.slots[s]:
                s = (s + 1) & self.mask
            self.slots[s] = i + 1
        return i

    cdef int _structure(self) except -1:
        """compiler._ZoneBuild._structure after its NSEC3 split (zone_split_nsec3)."""
        cdef uint32_t n_orig = self.n_nodes, i, a
        cdef int64_t p, found
        cdef uint64_t koff
        cdef int labels
        cdef uint8_t klen
        cdef const uint8_t* k
        cdef bint cuts = False
        # Empty non-terminals: every ancestor between a name and the apex exists (RFC 4592 §2.2.2)
        for i in range(n_orig):
            if self.nflags[i] & N_NSEC:
                continue
            koff, klen, labels = self.nkoff[i], self.nklen[i], self.nlabels[i]
            while labels > self.olabels + 1:
                k = <const uint8_t*>PyBytes_AS_STRING(self.keys) + koff
                klen -= k[0] + 1
                koff += k[0] + 1
                labels -= 1
                if self.find(k + k[0] + 1, klen) >= 0:
                    break
                self._add(koff, klen)
        for i in range(self.n_nodes):
            if self.nflags[i] & N_NSEC:
                continue
            if self.nnrr[i] == 0:
                self.nflags[i] |= N_ENT
            k = self._kp(i)
            if self.nklen[i] >= 2 and k[0] == 1 and k[1] == 42:     # "*"
                self.nflags[i] |= N_WILDCARD
                found = self.find(k + 2, self.nklen[i] - 2)
                if found < 0:
                    raise KeyError("the parent of a wildcard is missing")
                self.nflags[found] |= N_WILDCARD_CHILD
            if self.nflags[i] & N_CUT:
                cuts = True
        self.apex = self.find(<const uint8_t*>PyBytes_AS_STRING(self.key), len(self.key))
        if self.apex < 0:
            raise KeyError("no apex")
        self.nflags[self.apex] |= N_APEX
        # Zone cuts: a node at a cut points at itself; below a cut, at the (highest) cut.
        if cuts:
            for i in range(self.n_nodes):
                if self.nflags[i] & N_NSEC:
                    continue
                k, klen, labels = self._kp(i), self.nklen[i], self.nlabels[i]
                while labels > self.olabels:
                    p = self.find(k, klen)
                    if p >= 0 and self.nflags[p] & N_CUT:
                        self.ncut[i] = <int32_t>p
                    klen -= k[0] + 1
                    k += k[0] + 1
                    labels -= 1
                if self.ncut[i] >= 0 and self.ncut[i] != i:
                    self.nflags[i] |= N_BELOW_CUT
        # the apex SOA's negative TTL (RFC 2308 §5), and RRsets too big for the wire format
        for i in range(self.n_nodes):
            for a in range(self.nrr[i], self.nrr[i] + self.nnrr[i]):
                if self.rcount[a] > 65535:
                    raise OverflowError(self.key_of(i))
                if self.rtype[a] == 6 and i == self.apex:
                    p = self.rec[self.rfirst[a]]
                    self.neg_ttl = min(self.rttl[a], rd32(<const uint8_t*>PyBytes_AS_STRING(
                        self.rdata) + self.rdoff[p] + self.rdlen[p] - 4))
        return 0

    cdef inline uint32_t wnode(self, uint32_t j) noexcept:
        """The j-th node written (the first n_names are the zone's names, in its table)."""
        return self.worder[j] if self.worder != NULL else j

    @property
    def n_names(self) -> int:
        return self.n_nodes - self.n_nsec3

    def key_of(self, uint32_t i) -> bytes:
        """Node i's key: its lowercased wire name."""
        return PyBytes_FromStringAndSize(<const char*>self._kp(i), self.nklen[i]).lower()

    cdef bint has_address(self, uint32_t i) noexcept:
        cdef uint32_t a
        for a in range(self.nrr[i], self.nrr[i] + self.nnrr[i]):
            if self.rtype[a] == 1 or self.rtype[a] == 28:
                return True
        return False

    cdef uint64_t node_size(self, uint32_t i) noexcept:
        """compiler.write_node's record size (layout_node_size): node_t, name, rrset_t array,
        then per record a u16 length and the RDATA, aligned to 4."""
        cdef uint64_t size = _zb_align4(sizeof(node_t) + self.nklen[i])
        cdef uint32_t a, k
        size += sizeof(rrset_t) * self.nnrr[i]
        for a in range(self.nrr[i], self.nrr[i] + self.nnrr[i]):
            for k in range(self.rfirst[a], self.rfirst[a] + self.rcount[a]):
                size += 2 + self.rdlen[self.rec[k]]
        return _zb_align4(size)

    cdef uint32_t write_node(self, uint8_t* b, uint32_t i, int zone_idx, uint32_t seed,
                             uint32_t add_base) noexcept:
        """layout_node's bytes for node i at noff[i]; returns the SOA's rrset_t offset or 0."""
        cdef uint32_t off = self.noff[i], a, k, r, soa_off = 0
        cdef uint32_t klen = self.nklen[i], n = self.nnrr[i]
        cdef uint32_t name_off = off + sizeof(node_t)
        cdef uint32_t rrsets_off = (name_off + klen + 3) & ~3u
        cdef uint64_t data = <uint64_t>rrsets_off + sizeof(rrset_t) * n, rdata_off
        cdef const uint8_t* rd = <const uint8_t*>PyBytes_AS_STRING(self.rdata)
        cdef node_t* nd = <node_t*>(b + off)
        cdef rrset_t* rs
        cdef uint16_t wl
        nd.name_off = name_off
        nd.name_len = <uint8_t>klen
        nd.labels = self.nlabels[i]
        nd.flags = self.nflags[i]
        nd.cut_off = self.noff[self.ncut[i]] if self.ncut[i] >= 0 else 0
        nd.rrsets_off = rrsets_off
        nd.n_rrsets = <uint16_t>n
        nd.zone_idx = <uint16_t>zone_idx
        memcpy(b + name_off, self._kp(i), klen)
        for k in range(klen):                       # the key: the lowercased name
            b[name_off + k] = zs_lower(b[name_off + k])
        nd.hash = name_hash(b + name_off, klen, seed) if klen else 0
        for a in range(n):
            r = self.nrr[i] + a
            rdata_off = data
            for k in range(self.rfirst[r], self.rfirst[r] + self.rcount[r]):
                wl = self.rdlen[self.rec[k]]
                b[data] = (wl >> 8) & 0xFF
                b[data + 1] = wl & 0xFF
                memcpy(b + data + 2, rd + self.rdoff[self.rec[k]], wl)
                data += 2 + wl
            rs = <rrset_t*>(b + rrsets_off + sizeof(rrset_t) * a)
            rs.type = self.rtype[r]
            rs.count = <uint16_t>self.rcount[r]
            rs.ttl = self.rttl[r]
            rs.rdata_off = <uint32_t>rdata_off
            rs.rdata_len = <uint32_t>(data - rdata_off)
            rs.add_off = add_base + 4 * self.radd[r] if self.radd_n[r] else 0
            rs.add_count = <uint16_t>self.radd_n[r]
            rs.aux = self.rcov[r] if rs.type == 46 else 0
            if rs.type == 6:
                soa_off = rrsets_off + sizeof(rrset_t) * a
        return soa_off


cdef class FlatImage:
    """compiler._compile for zones that are all FlatZones (sorted by origin): additional-section
    targets resolved across every zone of the image (the longest zone holding the name).  Its
    offsets and bytes are ext/zonestream.pxi's (flat_layout, flat_stream: to a file or a
    buffer)."""
    cdef list zones
    cdef uint32_t* hit_zone
    cdef uint32_t* hit_node
    cdef uint64_t n_hits, hit_cap
    cdef uint32_t* zslots
    cdef uint32_t zmask

    def __dealloc__(self):
        free(self.hit_zone); free(self.hit_node); free(self.zslots)

    def __init__(self, list zones):
        cdef uint32_t z, s
        cdef FlatZone fz
        self.zones = zones
        self.zmask = _zb_pow2(2 * len(zones) + 1) - 1
        self.zslots = <uint32_t*>calloc(self.zmask + 1, 4)
        if self.zslots == NULL:
            raise MemoryError()
        for z in range(len(zones)):
            fz = zones[z]
            s = _zb_hash(<const uint8_t*>PyBytes_AS_STRING(fz.key), len(fz.key)) & self.zmask
            while self.zslots[s]:
                s = (s + 1) & self.zmask
            self.zslots[s] = z + 1
        self._targets()

    cdef int64_t _zone_of(self, const uint8_t* k, Py_ssize_t n) noexcept:
        cdef uint32_t s = _zb_hash(k, n) & self.zmask, v
        cdef FlatZone fz
        while True:
            v = self.zslots[s]
            if v == 0:
                return -1
            fz = <FlatZone>self.zones[v - 1]
            if len(fz.key) == n and memcmp(PyBytes_AS_STRING(fz.key), k, n) == 0:
                return v - 1
            s = (s + 1) & self.zmask

    cdef int _hit(self, uint32_t z, uint32_t nd) except -1:
        if self.n_hits == self.hit_cap:
            self.hit_cap = 2 * self.hit_cap + 64
            self.hit_zone = <uint32_t*>_zb_grow(self.hit_zone, 4 * self.hit_cap)
            self.hit_node = <uint32_t*>_zb_grow(self.hit_node, 4 * self.hit_cap)
        self.hit_zone[self.n_hits], self.hit_node[self.n_hits] = z, nd
        self.n_hits += 1
        return 0

    cdef int _targets(self) except -1:
        """Per NS/MX/SRV RRset, the in-image target names that have A/AAAA, in RDATA order, each
        once (compiler._compile's add_lists, in its order: zone, name, RRset)."""
        cdef uint32_t z, i, a, k, rec, start, first, t
        cdef uint64_t h
        cdef int64_t tz, tn
        cdef FlatZone fz, tzone
        cdef const uint8_t* rd
        cdef Py_ssize_t n, p
        cdef uint8_t buf[65536]
        cdef bint seen
        for z in range(len(self.zones)):
            fz = self.zones[z]
            rd = <const uint8_t*>PyBytes_AS_STRING(fz.rdata)
            for i in range(fz.n_nodes):
                for a in range(fz.nrr[i], fz.nrr[i] + fz.nnrr[i]):
                    t = fz.rtype[a]
                    if t == 2:
                        start = 0
                    elif t == 15:
                        start = 2
                    elif t == 33:
                        start = 6
                    else:
                        continue
                    first = <uint32_t>self.n_hits
                    for k in range(fz.rfirst[a], fz.rfirst[a] + fz.rcount[a]):
                        rec = fz.rec[k]
                        n = fz.rdlen[rec] - start if fz.rdlen[rec] > start else 0
                        for p in range(n):    # the target, lowercased (bytes.lower(): A-Z only)
                            buf[p] = rd[fz.rdoff[rec] + start + p]
                            if 65 <= buf[p] <= 90:
                                buf[p] += 32
                        # the longest zone holding the name (compiler._compile's find_node)
                        p = 0
                        tz = -1
                        while True:
                            tz = self._zone_of(buf + p, n - p)
                            if tz >= 0 or p >= n or (n - p == 1 and buf[p] == 0):
                                break
                            p += buf[p] + 1
                            if p > n:
                                p = n
                        if tz < 0:
                            continue
                        tzone = self.zones[tz]
                        tn = tzone.find(buf, n)
                        if tn < 0 or not tzone.has_address(<uint32_t>tn):
                            continue
                        seen = False
                        for h in range(first, self.n_hits):
                            if self.hit_zone[h] == tz and self.hit_node[h] == tn:
                                seen = True
                                break
                        if not seen:
                            self._hit(<uint32_t>tz, <uint32_t>tn)
                    if self.n_hits > first:
                        fz.radd[a], fz.radd_n[a] = first, <uint32_t>(self.n_hits - first)
        return 0
