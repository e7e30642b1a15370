# layout.pxi: the compiler's node writer (pop53.zone.compiler.write_node) in C loops: a
# million-name compile writes a million node records, and the struct packing in Python was the
# largest share of a cold load after the scanner (issue 15).  Same bytes as before: the
# compiler's differential tests compare images byte for byte.

def layout_node_size(bytes key, rrsets):
    """(bytes the node record takes, aligned to 4; its record count) for pass 1 of the compile:
    node_t, the name, the rrset_t array, then per record a u16 length and the RDATA."""
    cdef Py_ssize_t size = sizeof(node_t) + len(key), records = 0
    size = ((size + 3) & ~3) + <Py_ssize_t>sizeof(rrset_t) * len(rrsets)
    for rr in rrsets:
        wires = rr[2]
        records += len(wires)
        for w in wires:
            size += 2 + len(<bytes>w)
    return (size + 3) & ~3, records


def layout_node(uint8_t[::1] buf not None, uint32_t off, bytes key, int labels, int flags,
                uint32_t cut_off, rrsets, int zone_idx, uint32_t seed, adds):
    """\\brief Write one node record at `off` (node_t, lowercased name, rrset_t array, RDATA).
    `adds` is None or a callable: adds(i) -> (offset, count) of RRset i's additional targets.
    Returns the offset of the SOA's rrset_t, or 0.  Raises ValueError past the buffer."""
    cdef Py_ssize_t klen = len(key), n = len(rrsets), i, wl
    cdef uint32_t name_off = off + sizeof(node_t)
    cdef uint32_t rrsets_off = (name_off + <uint32_t>klen + 3) & ~3u
    cdef uint64_t data = <uint64_t>rrsets_off + sizeof(rrset_t) * n, rdata_off
    cdef uint32_t soa_off = 0, a_off, a_count
    cdef node_t* node
    cdef rrset_t* rs
    cdef bytes w
    cdef uint8_t* b = &buf[0]
    cdef uint64_t cap = buf.shape[0]
    if <uint64_t>rrsets_off + sizeof(rrset_t) * n > cap or klen > 255 or n > 65535:
        raise ValueError("node record out of bounds")
    node = <node_t*>(b + off)
    node.name_off = name_off
    node.name_len = <uint8_t>klen
    node.labels = <uint8_t>labels
    node.flags = <uint16_t>flags
    node.cut_off = cut_off
    node.rrsets_off = rrsets_off
    node.n_rrsets = <uint16_t>n
    node.zone_idx = <uint16_t>zone_idx
    node.hash = name_hash(<const uint8_t*>PyBytes_AS_STRING(key), <uint32_t>klen, seed) if klen else 0
    memcpy(b + name_off, PyBytes_AS_STRING(key), klen)
    for i in range(n):
        rr = rrsets[i]
        wires = rr[2]
        rdata_off = data
        for w in wires:
            wl = len(w)
            if data + 2 + wl > cap:
                raise ValueError("node record out of bounds")
            b[data] = (wl >> 8) & 0xFF
            b[data + 1] = wl & 0xFF
            memcpy(b + data + 2, PyBytes_AS_STRING(w), wl)
            data += 2 + wl
        a_off = a_count = 0
        if adds is not None:
            a_off, a_count = adds(i)
        rs = <rrset_t*>(b + rrsets_off + sizeof(rrset_t) * i)
        rs.type = <uint16_t>rr[0]
        rs.count = <uint16_t>len(wires)
        rs.ttl = <uint32_t>rr[1]
        rs.rdata_off = <uint32_t>rdata_off
        rs.rdata_len = <uint32_t>(data - rdata_off)
        rs.add_off = a_off
        rs.add_count = <uint16_t>a_count
        rs.aux = <uint16_t>rr[4] if rs.type == 46 else 0
        if rs.type == 6:
            soa_off = rrsets_off + sizeof(rrset_t) * i
    return soa_off


cdef int layout_labels(bytes key) except -1:
    cdef const uint8_t* k = <const uint8_t*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t p = 0, n = len(key)
    cdef int labels = 0
    while p < n and k[p]:
        p += k[p] + 1
        labels += 1
    return labels


def layout_nodes_from_records(dict nodes, list keys, const int64_t[::1] order not None,
                              const uint32_t[::1] node not None, const uint16_t[::1] rtype not None,
                              const uint16_t[::1] cov not None, const uint32_t[::1] ttl not None,
                              const uint32_t[::1] rdoff not None, const uint16_t[::1] rdlen not None,
                              bytes rdata, bytes okey, make_node, int f_cut, int f_cname,
                              int f_dname):
    """The compiler's nodes from the scanner's columns (pop53.zone.compiler._ZoneBuild): in
    `order` (name, type, covers, file order), runs of one (name, type, covers) are an RRset
    with the lowest TTL (dnspython's update_ttl) and no repeated RDATA.  Adds
    make_node(key, labels) objects to `nodes`, each with .rrsets = [(type, ttl, [rdata],
    [additional target keys] or (), covers)] and .flags.  Returns (the apex SOA's negative
    TTL: min of its TTL and MINIMUM, RFC 2308 §5, or 0; the nodes that have targets)."""
    cdef Py_ssize_t j, i, m = order.shape[0]
    cdef long pn = -1, pt = -1, pc = -1, nd, t, c
    cdef uint32_t tt, neg = 0
    cdef const char* rd = PyBytes_AS_STRING(rdata)
    cdef list wires = None, rrset = None, rrsets = None, targets
    cdef object n = None
    cdef bytes key, w
    cdef uint64_t off
    for j in range(m):
        i = order[j]
        nd, t, c, tt = node[i], rtype[i], cov[i], ttl[i]
        off = rdoff[i]
        w = PyBytes_FromStringAndSize(rd + off, rdlen[i])
        if nd == pn and t == pt and c == pc:
            if w not in wires:
                wires.append(w)
            if tt < <uint32_t>rrset[1]:
                rrset[1] = tt
            continue
        if nd != pn:
            key = <bytes>keys[nd]
            n = make_node(key, layout_labels(key))
            nodes[key] = n
            rrsets = n.rrsets
            pn = nd
        pt, pc = t, c
        wires = [w]
        rrset = [t, tt, wires, (), c]
        rrsets.append(rrset)
        if t == 5:
            n.flags |= f_cname
        elif t == 39:
            n.flags |= f_dname
        elif t == 2 and key != okey:
            n.flags |= f_cut
    cdef list with_targets = []
    cdef bint has
    for key, n in nodes.items():
        rrsets = n.rrsets
        has = False
        for j in range(len(rrsets)):
            rrset = <list>rrsets[j]
            t = rrset[0]
            wires = <list>rrset[2]
            if len(wires) > 65535:
                raise OverflowError(key)
            if t == 2:
                rrset[3] = [x.lower() for x in wires]
                has = True
            elif t == 15:
                rrset[3] = [x[2:].lower() for x in wires]
                has = True
            elif t == 33:
                rrset[3] = [x[6:].lower() for x in wires]
                has = True
            elif t == 6 and key == okey:
                w = <bytes>wires[0]
                neg = min(<uint32_t>rrset[1], rd32(<const uint8_t*>PyBytes_AS_STRING(w) + len(w) - 4))
            rrset[2] = tuple(wires)           # tuples: no spare slots (a million names)
            rrsets[j] = tuple(rrset)
        n.rrsets = tuple(rrsets)
        if has:
            with_targets.append(n)
    return neg, with_targets
