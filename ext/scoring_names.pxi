# The kernel stage's name filter (issue 13, water torture relayed by trusted resolvers): a Bloom
# filter of every node name of the published image, in a BPF array map the steering program
# reads (pop53/scoring/ebpf_relay.py).  For an address whose relay bit is set (sc_relay_bit), a
# question name that is not in it is no node of a served zone (its answer is an NXDOMAIN, a
# wildcard's or a referral: what sc_name_exists calls absent), and the program sends it to the
# normal socket, so the relay's random names do not queue ahead of the known resolvers' queries
# and the worker does not spend its time reading and cutting them (the `purged` counter).  A
# false positive only keeps such a name in the priority socket, where the worker cuts it as
# before; there are no false negatives, so a real name always reaches the priority socket.
#
# The hash (the program computes the same, word by word, on the name in its stack): the wire
# name zero-padded to 8-byte words, each read little-endian and lowercased (A-Z only, eight
# bytes at once), folded in by xor and multiply; two bits of the mixed result, one from each
# end.  Two halves: a fill writes the one not live, then flips word 0, so the program never sees
# a half-built filter.

cdef inline uint64_t nf_lower8(uint64_t x) noexcept nogil:
    """The eight bytes of x with A-Z lowercased, nothing else changed."""
    cdef uint64_t x7 = x & 0x7F7F7F7F7F7F7F7FULL
    cdef uint64_t ge_a = x7 + 0x3F3F3F3F3F3F3F3FULL      # high bit: byte >= 'A'
    cdef uint64_t gt_z = x7 + 0x2525252525252525ULL      # high bit: byte > 'Z'
    return x | (((ge_a & ~gt_z & ~x) & 0x8080808080808080ULL) >> 2)


cdef uint64_t nf_hash(const uint8_t* name, uint32_t n) noexcept nogil:
    """The filter's hash of a wire name of n bytes (n <= 255)."""
    cdef uint8_t buf[264]
    cdef uint64_t h = 0x243F6A8885A308D3ULL, w
    cdef uint32_t off = 0
    memset(buf, 0, sizeof(buf))
    memcpy(buf, name, n if n <= 256 else 256)
    while off < n:
        memcpy(&w, buf + off, 8)          # little-endian, as the program reads its stack
        h = (h ^ nf_lower8(w)) * 0x9E3779B97F4A7C15ULL
        off += 8
    h ^= h >> 29
    h *= 0xBF58476D1CE4E5B9ULL
    return h ^ (h >> 32)


cdef inline uint64_t nf_bit(uint64_t h, int k) noexcept nogil:
    """The name's k-th bit (0 or 1) in a half: one from each end of its hash."""
    return h & ((1ULL << NF_SHIFT) - 1) if k == 0 else h >> (64 - NF_SHIFT)


cdef inline void nf_set(uint64_t* half, uint64_t h) noexcept nogil:
    cdef uint64_t b
    cdef int k
    for k in range(2):
        b = nf_bit(h, k)
        half[b >> 6] |= 1ULL << (b & 63)


NAME_FILTER_WORDS = NF_WORDS


def name_filter_fill(ImageView view, object buf):
    """Fill the half of the name filter in `buf` (writable, NF_WORDS u64 words: the kernel
    stage's mmapped map) that is not live with every node name of `view`'s zones (None: no
    name), then make it the live one.  Returns how many names went in.  One filler at a time
    (NameFilter's thread)."""
    cdef Py_buffer b
    cdef uint64_t* words
    cdef uint64_t* half
    cdef uint64_t live, count = 0
    cdef const image_t* img = view.ptr() if view is not None else NULL
    cdef const zone_t* z
    cdef const uint32_t* tab
    cdef const node_t* node
    cdef uint32_t zi, slot
    PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE)
    try:
        if b.len != NF_WORDS * 8:
            raise ValueError(f"the name filter is {NF_WORDS * 8} bytes")
        words = <uint64_t*>b.buf
        live = p53_load_u64(&words[0]) & 1
        half = words + 1 + (1 - live) * NF_HALF_WORDS
        with nogil:
            memset(half, 0, NF_HALF_WORDS * 8)
            if img != NULL:
                for zi in range(img.n_zones):
                    z = &img.zones[zi]
                    tab = <const uint32_t*>(img.base + z.ntab_off)
                    for slot in range(z.ntab_mask + 1):
                        if tab[slot]:
                            node = img_node(img, tab[slot])
                            nf_set(half, nf_hash(node_name(img, node), node.name_len))
                            count += 1
            p53_store_u64(&words[0], 1 - live)
    finally:
        PyBuffer_Release(&b)
    return count


def name_filter_has(object buf, bytes wire not None):
    """Whether the live half of the name filter in `buf` holds the wire name (tests)."""
    cdef const uint8_t[::1] m = buf
    cdef const uint64_t* words = <const uint64_t*>&m[0]
    cdef const uint64_t* half
    cdef uint64_t h, b
    cdef int k
    if len(wire) > 255 or m.shape[0] != NF_WORDS * 8:
        raise ValueError("a wire name of at most 255 bytes, a whole filter")
    half = words + 1 + (words[0] & 1) * NF_HALF_WORDS
    h = nf_hash(<const uint8_t*>(<char*>wire), len(wire))
    for k in range(2):
        b = nf_bit(h, k)
        if not (half[b >> 6] >> (b & 63)) & 1:
            return False
    return True
