# zonebuild_dsec.pxi: a signed zone's DNSSEC block (ext/p53.pxd dsec_t) in the C compile
# (zonebuild.pxi), the same bytes as pop53.dnssec.index.plan writes for the node compile: every
# rule below mirrors a line there.  Everything a denial needs that can be known at load time is
# found once (RFC 4035 §3.1.3, RFC 5155 §7.2): the NSEC chain in canonical order (RFC 4034 §6.1)
# or the NSEC3 owners sorted by hash, and per name of the zone the record proving its types, the
# one covering "*.<name>" and, under NSEC3 opt-out, the closest provable encloser's and the next
# closer cover.  The block is built in a buffer of its own size from the FlatZone's names and
# node offsets (never from the image: it is streamed to its file, ext/zonestream.pxi), so a
# million names cost no Python object; SHA-1 (RFC 5155 §5) is the data plane's own (p53_sha1.h).

cdef extern from "stdlib.h" nogil:
    void qsort_r(void* base, size_t nmemb, size_t size,
                 int (*compar)(const void*, const void*, void*) noexcept nogil, void* arg)


cdef int zone_split_nsec3(FlatZone fz) except -1:
    """dnssec.index.split_nsec3_owners: a name holding only NSEC3 (and its RRSIG) is a hashed
    owner, not a name of the zone (RFC 5155 §7.1): N_NSEC, out of the name table."""
    cdef uint32_t i, a
    cdef bint n3, other
    for i in range(fz.n_nodes):
        n3 = other = False
        for a in range(fz.nrr[i], fz.nrr[i] + fz.nnrr[i]):
            if fz.rtype[a] == 50:
                n3 = True
            elif fz.rtype[a] != 46:
                other = True
        if n3 and not other:
            fz.nflags[i] |= N_NSEC
            fz.n_nsec3 += 1
    if fz.n_nsec3:
        fz._rehash(fz.mask + 1)
    return 0


cdef int zone_write_order(FlatZone fz) except -1:
    """The node compile writes a zone's names (in its dict's order), then its NSEC3 owners."""
    cdef uint32_t i, k = 0, h
    if not fz.n_nsec3:
        return 0
    fz.worder = <uint32_t*>_zb_grow(NULL, 4 * <size_t>fz.n_nodes)
    h = fz.n_nodes - fz.n_nsec3
    for i in range(fz.n_nodes):
        if fz.nflags[i] & N_NSEC:
            fz.worder[h] = i
            h += 1
        else:
            fz.worder[k] = i
            k += 1
    return 0


cdef inline int _zd_labels(const uint8_t* k, Py_ssize_t n, uint16_t* at) noexcept nogil:
    """The start of each label of a wire name (not the root's); returns how many (at most 130:
    a 255-octet name has 127, "*." before it one more)."""
    cdef int c = 0
    cdef Py_ssize_t p = 0
    while p < n and k[p] and c < 130:
        at[c] = <uint16_t>p
        c += 1
        p += k[p] + 1
    return c


cdef int _zd_canon(const uint8_t* a, Py_ssize_t na, const uint8_t* b, Py_ssize_t nb) noexcept nogil:
    """RFC 4034 §6.1's canonical order of two wire names (dnssec.index.canonical_key), ignoring
    ASCII case: labels compared right to left as lowercased octet strings, a label that is a
    prefix of the other first, then the name with fewer labels."""
    cdef uint16_t pa[130]
    cdef uint16_t pb[130]
    cdef int ia = _zd_labels(a, na, pa), ib = _zd_labels(b, nb, pb), c, n, x
    cdef uint8_t la, lb
    while ia > 0 and ib > 0:
        ia -= 1
        ib -= 1
        la, lb = a[pa[ia]], b[pb[ib]]
        n = la if la < lb else lb
        for x in range(n):
            c = zs_lower(a[pa[ia] + 1 + x]) - zs_lower(b[pb[ib] + 1 + x])
            if c != 0:
                return c
        if la != lb:
            return <int>la - <int>lb
    return ia - ib


# a FlatZone's names for the C callbacks: node i is keys[koff[i]:koff[i] + klen[i]]
cdef struct zd_names:
    const uint8_t* keys
    const uint32_t* koff
    const uint8_t* klen


cdef int _zd_chain_cmp(const void* x, const void* y, void* names) noexcept nogil:
    """qsort_r order of NSEC owners given as node indices."""
    cdef const zd_names* nm = <const zd_names*>names
    cdef uint32_t p = (<const uint32_t*>x)[0], q = (<const uint32_t*>y)[0]
    return _zd_canon(nm.keys + nm.koff[p], nm.klen[p], nm.keys + nm.koff[q], nm.klen[q])


cdef int _zd_n3_cmp(const void* x, const void* y, void* unused) noexcept nogil:
    """(hash, node offset): the order of dnssec.index's sorted (hash, offset) tuples."""
    cdef const n3ent_t* p = <const n3ent_t*>x
    cdef const n3ent_t* q = <const n3ent_t*>y
    cdef int c = memcmp(p.hash, q.hash, 20)
    if c != 0:
        return c
    return (p.node_off > q.node_off) - (p.node_off < q.node_off)


cdef bint _zd_b32hex(const uint8_t* s, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """base64.b32hexdecode(label.upper()) when it gives a SHA-1 hash (RFC 4648 §7, RFC 5155 §3.3:
    32 characters, no padding, 20 octets); False for anything else."""
    cdef uint64_t acc
    cdef int q, i, v
    cdef uint8_t ch
    if n != 32:
        return False
    for q in range(4):
        acc = 0
        for i in range(8):
            ch = s[8 * q + i]
            if 48 <= ch <= 57:
                v = ch - 48
            elif 65 <= ch <= 86:
                v = ch - 55
            elif 97 <= ch <= 118:
                v = ch - 87
            else:
                return False
            acc = (acc << 5) | <uint64_t>v
        for i in range(5):
            out[5 * q + i] = <uint8_t>(acc >> (8 * (4 - i)))
    return True


cdef inline bint _zd_has(FlatZone fz, uint32_t i, uint16_t t) noexcept:
    cdef uint32_t a
    for a in range(fz.nrr[i], fz.nrr[i] + fz.nnrr[i]):
        if fz.rtype[a] == t:
            return True
    return False


cdef bint _zd_n3_entry(FlatZone fz, uint32_t i, const uint8_t* salt, Py_ssize_t slen,
                       uint32_t iterations, uint8_t* out) noexcept:
    """Whether NSEC3 owner i belongs to the zone's chain (its first NSEC3 record has hash
    algorithm 1 and the NSEC3PARAM's iterations and salt; not a chain being replaced) and its
    first label is a base32hex SHA-1 hash, which goes to `out`."""
    cdef uint32_t a = fz.nrr[i], rec
    cdef const uint8_t* w
    cdef const uint8_t* k = fz._kp(i)
    cdef Py_ssize_t wl, have
    while fz.rtype[a] != 50:
        a += 1
    rec = fz.rec[fz.rfirst[a]]
    w = <const uint8_t*>PyBytes_AS_STRING(fz.rdata) + fz.rdoff[rec]
    wl = fz.rdlen[rec]
    # NSEC3 RDATA: algorithm, flags, iterations(2), salt length, salt, ... (RFC 5155 §3.2)
    if wl < 5 or w[0] != 1 or ((<uint32_t>w[2] << 8) | w[3]) != iterations:
        return False
    have = min(<Py_ssize_t>w[4], wl - 5)
    if have != slen or memcmp(w + 5, salt, slen) != 0:
        return False
    return fz.nklen[i] > 0 and k[0] < fz.nklen[i] and _zd_b32hex(k + 1, k[0], out)


cdef class FlatDsec:
    """The DNSSEC block of one FlatZone: its size known before the offsets (pass 1), its bytes
    written after the zone's nodes (write)."""
    cdef FlatZone fz
    cdef readonly int mode
    cdef uint32_t iterations
    cdef bytes salt
    cdef uint32_t n_chain, n_info
    cdef readonly uint64_t size

    cdef inline bint _auth(self, uint32_t i) noexcept:
        return not (self.fz.nflags[i] & (N_BELOW_CUT | N_NSEC))

    cdef int write(self, uint8_t* dst, uint64_t off) except -1:
        """The block (self.size bytes, zeroed) into dst, which lands at image offset `off`;
        the zone's node offsets (noff) are set."""
        cdef dsec_t* d = <dsec_t*>dst
        cdef uint64_t entry = sizeof(uint32_t) if self.mode == DS_NSEC else sizeof(n3ent_t)
        cdef uint64_t chain = sizeof(dsec_t), info = sizeof(dsec_t) + entry * self.n_chain
        d.mode = <uint8_t>self.mode
        d.salt_len = <uint8_t>len(self.salt)
        d.iterations = <uint16_t>self.iterations
        d.n_chain = self.n_chain
        d.chain_off = <uint32_t>(off + chain)
        d.n_info = self.n_info
        d.info_off = <uint32_t>(off + info)
        memcpy(d.salt, PyBytes_AS_STRING(self.salt), len(self.salt))
        if self.mode == DS_NSEC:
            self._nsec(<uint32_t*>(dst + chain), <dinfo_t*>(dst + info))
        else:
            self._nsec3(<n3ent_t*>(dst + chain), <dinfo_t*>(dst + info))
        return 0

    cdef int _nsec(self, uint32_t* chain, dinfo_t* info) except -1:
        """dnssec.index._plan_nsec: the NSEC owners in canonical order; per name the NSEC that
        proves its types (its own, or for a name without one the covering NSEC) and the NSEC
        covering "*.<name>".  The chain is sorted as node indices, then turned into offsets."""
        cdef FlatZone fz = self.fz
        cdef uint32_t j, i, k = 0
        cdef uint8_t wild[260]
        cdef zd_names nm
        nm.keys = <const uint8_t*>PyBytes_AS_STRING(fz.keys)
        nm.koff, nm.klen = fz.nkoff, fz.nklen
        for j in range(fz.n_names):
            i = fz.wnode(j)
            if self._auth(i) and _zd_has(fz, i, 47):
                chain[k] = i
                k += 1
        qsort_r(chain, k, sizeof(uint32_t), _zd_chain_cmp, &nm)
        k = 0
        wild[0], wild[1] = 1, 42
        for j in range(fz.n_names):
            i = fz.wnode(j)
            if not self._auth(i):
                continue
            info[k].node_off = fz.noff[i]
            if _zd_has(fz, i, 47):
                info[k].match = fz.noff[i]
            elif self.n_chain:
                info[k].match = fz.noff[_zd_nsec_cover(&nm, chain, self.n_chain, fz._kp(i),
                                                       fz.nklen[i])]
            memcpy(wild + 2, fz._kp(i), fz.nklen[i])
            if self.n_chain:
                info[k].wild = fz.noff[_zd_nsec_cover(&nm, chain, self.n_chain, wild,
                                                      fz.nklen[i] + 2)]
            info[k].nc = 0
            k += 1
        for k in range(self.n_chain):
            chain[k] = fz.noff[chain[k]]
        return 0

    cdef int _nsec3(self, n3ent_t* ent, dinfo_t* info) except -1:
        """dnssec.index._plan_nsec3: the chain's owners sorted by hash; per name its matching
        NSEC3 and the one covering the hash of "*.<name>", or for a name opt-out left without an
        NSEC3 (an insecure delegation, or an empty non-terminal above only such, RFC 5155
        §7.2.3-4) the closest provable encloser's NSEC3, the cover of the next closer name, and
        the wildcard proof of "*.<closest provable encloser>" (§7.2.2, §8.4)."""
        cdef FlatZone fz = self.fz
        cdef uint32_t j, i, k = 0, n = self.n_chain, m
        cdef const uint8_t* salt = <const uint8_t*>PyBytes_AS_STRING(self.salt)
        cdef Py_ssize_t slen = len(self.salt), nl, cl, al, x
        cdef const uint8_t* child
        cdef const uint8_t* anc
        cdef uint8_t h[20]
        cdef uint8_t wild[260]
        cdef uint8_t* name = wild + 2            # the name, lowercased (RFC 5155 §5)
        for j in range(fz.n_names, fz.n_nodes):
            i = fz.wnode(j)
            if _zd_n3_entry(fz, i, salt, slen, self.iterations, ent[k].hash):
                ent[k].node_off = fz.noff[i]
                k += 1
        qsort_r(ent, k, sizeof(n3ent_t), _zd_n3_cmp, NULL)
        if n == 0:
            return 0
        k = 0
        wild[0], wild[1] = 1, 42
        for j in range(fz.n_names):
            i = fz.wnode(j)
            if not self._auth(i):
                continue
            nl = fz.nklen[i]
            for x in range(nl):
                name[x] = zs_lower(fz._kp(i)[x])
            p53_nsec3_hash(name, nl, salt, slen, self.iterations, h)
            info[k].node_off = fz.noff[i]
            info[k].match = _zd_n3_find(ent, n, h)
            p53_nsec3_hash(wild, nl + 2, salt, slen, self.iterations, h)
            info[k].wild = _zd_n3_cover(ent, n, h)
            info[k].nc = 0
            if info[k].match == 0:
                child, cl = name, nl
                anc, al = name + name[0] + 1, nl - name[0] - 1
                while al > 0:
                    p53_nsec3_hash(anc, al, salt, slen, self.iterations, h)
                    m = _zd_n3_find(ent, n, h)
                    if m:
                        info[k].match = m
                        p53_nsec3_hash(child, cl, salt, slen, self.iterations, h)
                        info[k].nc = _zd_n3_cover(ent, n, h)
                        # "*.<encloser>": the encloser moved up to follow "*." (memmove: the
                        # two overlap, and name is of no use after this)
                        memmove(wild + 2, anc, al)
                        p53_nsec3_hash(wild, al + 2, salt, slen, self.iterations, h)
                        info[k].wild = _zd_n3_cover(ent, n, h)
                        break
                    child, cl = anc, al
                    al -= anc[0] + 1
                    anc += anc[0] + 1
            k += 1
        return 0


cdef uint32_t _zd_nsec_cover(const zd_names* nm, const uint32_t* chain, uint32_t n,
                             const uint8_t* key, Py_ssize_t klen) noexcept:
    """The last NSEC owner (a node index) strictly before `key` in canonical order; before the
    first, the last one (the chain wraps: dnssec.index's chain[bisect_left(...) - 1]).  n > 0."""
    cdef uint32_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _zd_canon(nm.keys + nm.koff[chain[mid]], nm.klen[chain[mid]], key, klen) < 0:
            lo = mid + 1
        else:
            hi = mid
    return chain[lo - 1] if lo > 0 else chain[n - 1]


cdef uint32_t _zd_n3_cover(const n3ent_t* ent, uint32_t n, const uint8_t* h) noexcept:
    """The NSEC3 whose hash is the last strictly before h, wrapping (bisect_left - 1)."""
    cdef uint32_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if memcmp(ent[mid].hash, h, 20) < 0:
            lo = mid + 1
        else:
            hi = mid
    return ent[lo - 1].node_off if lo > 0 else ent[n - 1].node_off


cdef uint32_t _zd_n3_find(const n3ent_t* ent, uint32_t n, const uint8_t* h) noexcept:
    """The NSEC3 whose hash is h (the last of equal ones, as dict(chain) keeps), or 0."""
    cdef uint32_t lo = 0, hi = n, mid
    while lo < hi:                       # bisect_right
        mid = (lo + hi) >> 1
        if memcmp(ent[mid].hash, h, 20) <= 0:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0 and memcmp(ent[lo - 1].hash, h, 20) == 0:
        return ent[lo - 1].node_off
    return 0


cdef object zone_dsec_plan(FlatZone fz):
    """dnssec.index.plan's choice and sizes for one zone: NSEC3 when the apex has an NSEC3PARAM
    with SHA-1 and flags 0 (RFC 5155 §4), else NSEC when the apex has an NSEC, else None (no
    chain to prove denials with: served as unsigned for denials, RRSIGs still go out)."""
    cdef FlatDsec d
    cdef uint32_t a, r, rec, j, i, apex = <uint32_t>fz.apex
    cdef const uint8_t* rd = <const uint8_t*>PyBytes_AS_STRING(fz.rdata)
    cdef const uint8_t* w
    cdef Py_ssize_t wl
    cdef uint8_t h[20]
    cdef uint64_t entry
    d = FlatDsec.__new__(FlatDsec)
    d.fz = fz
    for a in range(fz.nrr[apex], fz.nrr[apex] + fz.nnrr[apex]):
        if fz.rtype[a] != 51:
            continue
        for r in range(fz.rfirst[a], fz.rfirst[a] + fz.rcount[a]):
            rec = fz.rec[r]
            w, wl = rd + fz.rdoff[rec], fz.rdlen[rec]
            if wl >= 5 and w[0] == 1 and w[1] == 0 and wl == 5 + w[4]:
                d.mode = DS_NSEC3
                d.iterations = (<uint32_t>w[2] << 8) | w[3]
                d.salt = PyBytes_FromStringAndSize(<const char*>w + 5, w[4])
                break
        break
    if d.mode == 0 and _zd_has(fz, apex, 47):
        d.mode, d.salt = DS_NSEC, b""
    if d.mode == 0:
        return None
    for j in range(fz.n_names):
        i = fz.wnode(j)
        if d._auth(i):
            d.n_info += 1
            if d.mode == DS_NSEC and _zd_has(fz, i, 47):
                d.n_chain += 1
    if d.mode == DS_NSEC3:
        for j in range(fz.n_names, fz.n_nodes):
            if _zd_n3_entry(fz, fz.wnode(j), <const uint8_t*>PyBytes_AS_STRING(d.salt),
                            len(d.salt), d.iterations, h):
                d.n_chain += 1
        if d.n_chain == 0:
            d.n_info = 0
    entry = sizeof(uint32_t) if d.mode == DS_NSEC else sizeof(n3ent_t)
    d.size = (sizeof(dsec_t) + entry * d.n_chain + sizeof(dinfo_t) * d.n_info + 3) & ~(<uint64_t>3)
    return d
