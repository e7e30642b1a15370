# zonestream.pxi: the flat compile's image (ext/zonebuild.pxi) written straight to a file, a few
# MiB at a time, instead of into a buffer the size of the image (issue 15: the cold load of a
# million-name zone must peak at most 2x its image; the compiler child held the build's arrays
# and the whole image at once).  The bytes are compiler._compile's, in file order: the head
# (header, zone table, zone hash table; built by the caller), each zone's name and nodes, the
# additional-target lists, each zone's node hash table.  The checksum (ext/image.pxi) is
# computed as the bytes go out; the caller writes it into the header.  A signed zone's DNSSEC
# block (ext/zonebuild_dsec.pxi) follows its node hash table, built in a buffer of its own size.
# The in-memory compile (compiler.compile_zone_data) streams the same bytes into a bytearray.

from posix.unistd cimport write as _zst_write
from libc.errno cimport errno, EINTR
from libc.stdlib cimport realloc, qsort
from libc.string cimport memmove

DEF ZST_CHUNK = 1 << 20


cdef struct zst_out:
    int fd
    uint8_t* mem          # the image in memory, when not a file (mem_size bytes)
    uint64_t mem_size
    uint8_t* buf
    uint64_t cap          # bytes allocated at buf
    uint64_t fill         # bytes waiting in buf
    uint64_t pos          # image offset of buf[0] (a multiple of 32)
    ck_state ck


cdef int _zst_flush(zst_out* o, bint final) except -1:
    """Write out the whole 32-byte blocks waiting (all of it when final), checksumming them."""
    cdef uint64_t n = o.fill if final else o.fill & ~(<uint64_t>31), done = 0
    cdef ssize_t w
    ck_blocks(&o.ck, o.buf, o.pos, n & ~(<uint64_t>31))
    if o.mem != NULL:
        if o.pos + n > o.mem_size:
            raise ValueError("image larger than its layout")
        memcpy(o.mem + o.pos, o.buf, n)
        done = n
    while done < n:
        w = _zst_write(o.fd, o.buf + done, n - done)
        if w < 0:
            if errno == EINTR:
                continue
            raise OSError(errno, "cannot write the image")
        done += <uint64_t>w
    if not final:
        memmove(o.buf, o.buf + n, o.fill - n)
        o.pos += n
        o.fill -= n
    return 0


cdef uint8_t* _zst_room(zst_out* o, uint64_t n) except NULL:
    """n zeroed bytes at the end of what waits (flushing, or growing for a record bigger than
    the buffer)."""
    cdef uint8_t* p
    if o.fill + n > o.cap:
        _zst_flush(o, False)
    if o.fill + n > o.cap:
        p = <uint8_t*>realloc(o.buf, o.fill + n)
        if p == NULL:
            raise MemoryError()
        o.buf, o.cap = p, o.fill + n
    p = o.buf + o.fill
    memset(p, 0, n)
    o.fill += n
    return p


cdef int _zst_put(zst_out* o, const uint8_t* p, uint64_t n) except -1:
    cdef uint64_t k
    while n:
        k = n if n < ZST_CHUNK else ZST_CHUNK
        memcpy(_zst_room(o, k), p, k)
        p += k
        n -= k
    return 0


cdef int _zst_pad(zst_out* o, uint64_t to) except -1:
    """Zeros up to image offset `to`."""
    if o.pos + o.fill > to:
        raise ValueError("image layout out of order")
    while o.pos + o.fill < to:
        _zst_room(o, min(to - o.pos - o.fill, <uint64_t>ZST_CHUNK))
    return 0


def flat_layout(FlatImage img, uint32_t header_size, uint32_t zone_size, uint64_t max_image):
    """The image's pass 1 (every node's offset, into its FlatZone): {size, zones_off, ztab_off,
    ztab_size, name_offs, add_base, ntab_offs, ntab_sizes, dsecs, dsec_offs, nodes, rrsets,
    records}.  A signed zone's NSEC3 owners are written after its names and stay out of its
    table; its DNSSEC block (dsecs[z], else None) follows the table.  Raises
    OverflowError(size) past max_image."""
    cdef uint32_t n_zones = len(img.zones), z, j, i
    cdef uint64_t off = header_size, nodes = 0, rrsets = 0, records = 0
    cdef FlatZone fz
    lay = {"zones_off": off, "ztab_size": _zb_pow2(2 * n_zones + 1), "name_offs": [],
           "ntab_offs": [], "ntab_sizes": [], "dsec_offs": [],
           "dsecs": [zone_dsec_plan(fz) for fz in img.zones]}     # zonebuild_dsec.pxi
    off += <uint64_t>zone_size * n_zones
    lay["ztab_off"] = off
    off += 4 * <uint64_t>lay["ztab_size"]
    for z in range(n_zones):
        fz = img.zones[z]
        lay["name_offs"].append(off)
        off = _zb_align4(off + len(fz.key))
        for j in range(fz.n_nodes):
            i = fz.wnode(j)
            fz.noff[i] = <uint32_t>off if off <= max_image else 0
            off += fz.node_size(i)
        nodes += fz.n_nodes
        rrsets += fz.n_rrsets
        records += fz.n_records
    lay["add_base"] = off
    off += 4 * img.n_hits
    for z in range(n_zones):
        fz = img.zones[z]
        lay["ntab_sizes"].append(_zb_pow2(2 * <uint64_t>fz.n_names + 1))
        lay["ntab_offs"].append(off)
        off += 4 * <uint64_t>lay["ntab_sizes"][z]
        lay["dsec_offs"].append(off)
        if lay["dsecs"][z] is not None:
            off += (<FlatDsec>lay["dsecs"][z]).size
    if off > max_image:
        raise OverflowError(off)
    lay.update(size=off, nodes=nodes, rrsets=rrsets, records=records)
    return lay


cdef uint32_t _zst_soa_off(FlatZone fz) noexcept:
    """The zone's SOA rrset_t offset as write_node finds it (the last node written holding one)."""
    cdef uint32_t i, j, a, soa = 0
    for j in range(fz.n_nodes):
        i = fz.wnode(j)
        for a in range(fz.nnrr[i]):
            if fz.rtype[fz.nrr[i] + a] == 6:
                soa = ((fz.noff[i] + sizeof(node_t) + fz.nklen[i] + 3) & ~3u) + sizeof(rrset_t) * a
    return soa


cdef int _zst_table(zst_out* o, FlatZone fz, uint32_t size, uint32_t seed) except -1:
    """The zone's node hash table (compiler's fill_table: slot -> node offset, linear probing
    in node order), built apart and written out."""
    cdef uint32_t* tab = <uint32_t*>calloc(size, 4)
    cdef uint8_t key[256]
    cdef uint32_t i, j, s, h, k, mask = size - 1
    if tab == NULL:
        raise MemoryError()
    try:
        for j in range(fz.n_names):
            i = fz.wnode(j)
            for k in range(fz.nklen[i]):
                key[k] = zs_lower(fz._kp(i)[k])
            h = name_hash(key, fz.nklen[i], seed) if fz.nklen[i] else 0
            s = h & mask
            while tab[s]:
                s = (s + 1) & mask
            tab[s] = fz.noff[i]
        _zst_put(o, <const uint8_t*>tab, 4 * <uint64_t>size)
    finally:
        free(tab)
    return 0


cdef int _zst_dsec(zst_out* o, FlatDsec d, uint64_t off) except -1:
    """A signed zone's DNSSEC block, built apart (it is sorted and searched) and written out."""
    cdef uint8_t* blk = <uint8_t*>calloc(d.size or 1, 1)
    if blk == NULL:
        raise MemoryError()
    try:
        d.write(blk, off)
        _zst_put(o, blk, d.size)
    finally:
        free(blk)
    return 0


def flat_stream(FlatImage img, out, bytearray head, dict lay, uint32_t seed, list expired,
                int f_expired, uint32_t zone_size):
    """Write the image laid out by flat_layout to `out`: a file descriptor (at its current
    offset, which must be 0) or a bytearray of the image's size.  `head`: the header and zone
    hash table, filled by the caller (checksum field zero); the zone table entries are filled
    here.  Returns the checksum to store in the header."""
    cdef uint32_t n_zones = len(img.zones), z, i, j, need
    cdef uint64_t add_base = lay["add_base"], h
    cdef FlatZone fz
    cdef zone_t* zt
    cdef uint8_t[::1] hv = head
    cdef uint8_t[::1] mv
    cdef uint8_t* p
    cdef uint32_t v
    cdef zst_out o
    if len(head) != <uint64_t>lay["ztab_off"] + 4 * <uint64_t>lay["ztab_size"]:
        raise ValueError("head size")
    for z in range(n_zones):
        fz = img.zones[z]
        zt = <zone_t*>(&hv[0] + <uint64_t>lay["zones_off"] + zone_size * z)
        zt.name_off = <uint32_t>lay["name_offs"][z]
        zt.name_len = <uint8_t>len(fz.key)
        zt.labels = <uint8_t>fz.olabels
        zt.flags = f_expired if expired[z] else 0
        if lay["dsecs"][z] is not None:
            zt.flags |= Z_SIGNED
        zt.apex_off = fz.noff[fz.apex]
        zt.ntab_off = <uint32_t>lay["ntab_offs"][z]
        zt.ntab_mask = <uint32_t>lay["ntab_sizes"][z] - 1
        zt.n_nodes = fz.n_names
        zt.neg_ttl = fz.neg_ttl
        zt.soa_off = _zst_soa_off(fz)
    memset(&o, 0, sizeof(o))
    ck_init(&o.ck)
    if isinstance(out, bytearray):
        if len(out) != <uint64_t>lay["size"]:
            raise ValueError("buffer size differs from the layout")
        mv = out
        o.fd, o.mem, o.mem_size = -1, &mv[0], len(out)
    else:
        o.fd = out
    o.cap = ZST_CHUNK
    o.buf = <uint8_t*>malloc(o.cap)
    if o.buf == NULL:
        raise MemoryError()
    try:
        _zst_put(&o, &hv[0], len(head))
        for z in range(n_zones):
            fz = img.zones[z]
            _zst_pad(&o, <uint64_t>lay["name_offs"][z])
            _zst_put(&o, <const uint8_t*>PyBytes_AS_STRING(fz.key), len(fz.key))
            for j in range(fz.n_nodes):
                i = fz.wnode(j)
                _zst_pad(&o, fz.noff[i])
                need = <uint32_t>fz.node_size(i)
                p = _zst_room(&o, need)
                # write_node addresses the image by offset: hand it this node's bytes as if
                # the buffer started at the image's start
                fz.write_node(p - fz.noff[i], i, z, seed, <uint32_t>add_base)
        _zst_pad(&o, add_base)
        for h in range(img.n_hits):
            v = (<FlatZone>img.zones[img.hit_zone[h]]).noff[img.hit_node[h]]
            _zst_put(&o, <const uint8_t*>&v, 4)
        for z in range(n_zones):
            _zst_pad(&o, <uint64_t>lay["ntab_offs"][z])
            _zst_table(&o, img.zones[z], <uint32_t>lay["ntab_sizes"][z], seed)
            if lay["dsecs"][z] is not None:
                _zst_dsec(&o, lay["dsecs"][z], <uint64_t>lay["dsec_offs"][z])
        if o.pos + o.fill != <uint64_t>lay["size"]:
            raise ValueError("image size differs from its layout")
        h = o.fill & ~(<uint64_t>31)
        _zst_flush(&o, True)
        return ck_final(&o.ck, o.buf + h, o.fill - h, lay["size"])
    finally:
        free(o.buf)


# -- the build's record order, without numpy's sort temporaries ---------------------------------
cdef const uint16_t* _zfo_type
cdef const uint16_t* _zfo_cov

cdef inline bint _zfo_less(uint32_t a, uint32_t b) noexcept nogil:
    if _zfo_type[a] != _zfo_type[b]:
        return _zfo_type[a] < _zfo_type[b]
    if _zfo_cov[a] != _zfo_cov[b]:
        return _zfo_cov[a] < _zfo_cov[b]
    return a < b


cdef int _zfo_cmp(const void* x, const void* y) noexcept nogil:
    cdef uint32_t a = (<const uint32_t*>x)[0], b = (<const uint32_t*>y)[0]
    return -1 if _zfo_less(a, b) else (1 if _zfo_less(b, a) else 0)


def flat_order(const uint32_t[::1] node not None, const uint16_t[::1] rtype not None,
               const uint16_t[::1] cov not None, uint32_t n_nodes):
    """np.lexsort((np.arange(n), cov, rtype, node)) as a bytearray of uint32: records by name,
    type, covered type and file order.  A counting sort by name (file order kept), then each
    name's few records by (type, covers, index); a lexsort of a million-name zone allocates
    several arrays the size of the zone (issue 15)."""
    global _zfo_type, _zfo_cov
    cdef Py_ssize_t m = node.shape[0], i, j, s, e, k
    cdef uint32_t v
    if rtype.shape[0] != m or cov.shape[0] != m:
        raise ValueError("column lengths differ")
    out = bytearray(4 * m)
    if m == 0:
        return out
    if m > 0xFFFFFFFFLL:
        raise OverflowError("too many records")
    cdef uint32_t[::1] o = memoryview(out).cast("I")
    cdef uint32_t* start = <uint32_t*>calloc(<size_t>n_nodes + 1, 4)
    if start == NULL:
        raise MemoryError()
    try:
        for i in range(m):
            if node[i] >= n_nodes:
                raise ValueError("node index out of range")
            start[node[i] + 1] += 1
        for i in range(n_nodes):
            start[i + 1] += start[i]
        for i in range(m):
            o[start[node[i]]] = i
            start[node[i]] += 1
        _zfo_type, _zfo_cov = &rtype[0], &cov[0]
        s = 0
        for j in range(n_nodes):              # start[j] is now the end of name j's records
            e = start[j]
            if e - s > 32:
                qsort(&o[s], e - s, 4, _zfo_cmp)
            else:
                for i in range(s + 1, e):     # insertion sort: a name's records are few
                    v = o[i]
                    k = i - 1
                    while k >= s and _zfo_less(v, o[k]):
                        o[k + 1] = o[k]
                        k -= 1
                    o[k + 1] = v
            s = e
    finally:
        free(start)
        _zfo_type = _zfo_cov = NULL
    return out
