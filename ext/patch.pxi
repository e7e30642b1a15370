# Incremental image patching (IXFR fast path): see src/pop53/incremental.py.
# One helper: a single pass over every node an image's zone tables reach, collecting what the
# patcher needs to find the records that point at a node it replaces (cut pointers, additional
# target names).  In Python this walk costs seconds for a million names; here tens of ms.


cdef inline uint32_t _patch_target_pos(uint16_t rtype) noexcept nogil:
    # where the name the additional section follows starts in the RDATA (NS, MX, SRV)
    if rtype == T_NS:
        return 0
    if rtype == T_MX:
        return 2
    return 6


def patch_scan(const uint8_t[::1] buf not None, uint32_t[::1] node_offs not None,
               uint32_t[::1] cut_offs not None, uint32_t[::1] parent_hashes not None,
               uint32_t[::1] ref_rrsets not None, uint32_t[::1] ref_hashes not None):
    """Walk every node of every zone table of a (validated) image.  Fills, per node, its offset
    its cut_off and the hash of its parent's name (to find children); and per NS/MX/SRV record, the offset of its rrset_t and the image hash of
    its lowercased target name.  Returns (nodes, refs) counts; raises ValueError when an array
    is too small or the image is not well formed."""
    cdef const uint8_t* base = &buf[0]
    cdef uint64_t size = buf.shape[0]
    cdef const img_header_t* h
    cdef const zone_t* z
    cdef const uint32_t* tab
    cdef const node_t* node
    cdef const rrset_t* rs
    cdef uint32_t zi, s, off, i, j, p, rl, q, k, rl2
    cdef uint64_t nn = 0, nr = 0
    cdef uint64_t ncap = node_offs.shape[0], rcap = ref_rrsets.shape[0]
    cdef uint8_t lname[256]
    cdef uint32_t seed
    cdef int bad = 0
    if size < IMG_HEADER_SIZE:
        raise ValueError("not an image")
    if cut_offs.shape[0] < <Py_ssize_t>ncap or parent_hashes.shape[0] < <Py_ssize_t>ncap or ref_hashes.shape[0] < <Py_ssize_t>rcap:
        raise ValueError("array sizes differ")
    h = <const img_header_t*>base
    seed = h.seed
    with nogil:
        for zi in range(h.n_zones):
            z = <const zone_t*>(base + h.zones_off) + zi
            tab = <const uint32_t*>(base + z.ntab_off)
            for s in range(z.ntab_mask + 1):
                off = tab[s]
                if off == 0:
                    continue
                if nn >= ncap or not in_bounds(size, off, sizeof(node_t)):
                    bad = 1
                    break
                node = <const node_t*>(base + off)
                node_offs[nn] = off
                cut_offs[nn] = node.cut_off
                if node.name_len > 1 and base[node.name_off] + 1u < node.name_len:
                    parent_hashes[nn] = name_hash(base + node.name_off + base[node.name_off] + 1,
                                                  node.name_len - base[node.name_off] - 1, seed)
                else:
                    parent_hashes[nn] = 0
                nn += 1
                rs = <const rrset_t*>(base + node.rrsets_off)
                for i in range(node.n_rrsets):
                    if rs[i].type != T_NS and rs[i].type != T_MX and rs[i].type != T_SRV:
                        continue
                    p = rs[i].rdata_off
                    for j in range(rs[i].count):
                        rl = rd16(base + p)
                        q = p + 2 + _patch_target_pos(rs[i].type)
                        # lowercase the (validated, uncompressed) target name
                        k = 0
                        while base[q + k] != 0 and k < 255:
                            lname[k] = base[q + k]
                            for rl2 in range(1, base[q + k] + 1):
                                lname[k + rl2] = LOWER[base[q + k + rl2]]
                            k += base[q + k] + 1
                        lname[k] = 0
                        if nr >= rcap:
                            bad = 2
                            break
                        ref_rrsets[nr] = <uint32_t>(<const uint8_t*>&rs[i] - base)
                        ref_hashes[nr] = name_hash(lname, k + 1, seed)
                        nr += 1
                        p += 2 + rl
                    if bad:
                        break
                if bad:
                    break
            if bad:
                break
    if bad:
        raise ValueError("patch_scan: arrays too small or node out of bounds")
    return nn, nr
