# Query scoring per ADDRESS inside known prefixes (issue 13; scoring.pxi has the classes and
# the controller): a known prefix is a /24 or /56, and an attacker who knows it can spoof any
# address in it, so sc_known_class judges the address too, from small shared and per-worker
# filters, no lookup:
#   trust    one bit per address slot (2^20), set when the address is seen again trust_after_ms
#            into a calm stretch (no overload tick, nothing cut, its prefix not strict), or at
#            once by a valid server cookie of ours; shared by the workers and, with the kernel
#            stage, by the eBPF steering program (a mmapped BPF array map, scoring/ebpf.py)
#   strict   one bit per prefix slot (2^18): the prefix has a trusted address, went over
#            known_rate or holds a relaying address; only its trusted addresses are steered to
#            the priority socket, and over known_rate only they are top (every prefix's for a
#            second after that socket dropped: sc_prio_overflow)
#   per-address sketches of queries and NXDOMAIN answers (halved each window): an address
#            over known_addr_rate or whose answers are mostly NXDOMAIN (water torture it relays)
#            is demoted to normal; a trusted relay, until cutting every other class has not
#            protected the known resolvers, only for names in a zone under NXDOMAIN pressure
#   cookie   one bit per address slot, set by a valid server cookie of ours: the kernel stage
#            steers the address only with a valid cookie (scoring/ebpf_cookie.py), aged as trust
#   demoted  one bit per address slot (the workers' own, not the kernel's): trusted until a flood
#            of its own demoted it as a whole; its real names stay top from the normal socket and
#            its trust comes back once the flood stops (sc_trust_back), aged as trust
# The bit regions are indexed by (folded key * golden) >> shift, the kernel program's way.
# Aging (the control plane, pop53.scoring.aging): a trusted slot's trust_first holds when it was
# last seen (refreshed at most four times a second), and Scorer.age clears the trust of slots not seen
# for trust_ttl; strict bits are cleared after a calm stretch (Scorer.clear_strict) and come back
# at the next query of a trusted address of the prefix (sc_trust_seen) or its next flood.

cdef extern from *:
    """
    #define p53_or_u64(p, v) __atomic_fetch_or((p), (v), __ATOMIC_RELAXED)
    #define p53_and_u64(p, v) __atomic_fetch_and((p), (v), __ATOMIC_RELAXED)
    static inline uint32_t p53_le32(const uint8_t* p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
    """
    uint64_t p53_or_u64(uint64_t* p, uint64_t v) nogil
    uint64_t p53_and_u64(uint64_t* p, uint64_t v) nogil
    uint32_t p53_le32(const uint8_t* p) nogil


cdef inline uint32_t sc_addr_key(const uint8_t* a, uint32_t alen) noexcept nogil:
    """A source address folded to 32 bits as the kernel stage folds it (scoring/ebpf.py): the
    IPv4 address read as a little-endian word; the XOR of an IPv6 address's four words."""
    if alen == 4:
        return p53_le32(a)
    if alen == 16:
        return p53_le32(a) ^ p53_le32(a + 4) ^ p53_le32(a + 8) ^ p53_le32(a + 12)
    return 0


cdef inline uint32_t sc_prefix_key(const uint8_t* a, uint32_t alen) noexcept nogil:
    """The /24 (its three bytes) or /56 (word 0 XOR the next three bytes) folded the same way."""
    if alen == 4:
        return p53_le32(a) & 0xFFFFFF
    if alen == 16:
        return p53_le32(a) ^ (p53_le32(a + 4) & 0xFFFFFF)
    return 0


cdef inline uint32_t sc_golden(uint32_t key, int shift) noexcept nogil:
    return <uint32_t>(key * <uint32_t>0x9E3779B1u) >> shift


cdef inline bint sc_bit(const uint64_t* w, uint32_t i) noexcept nogil:
    return (w[i >> 6] >> (i & 63)) & 1


cdef uint32_t sc_addr_count(uint16_t (*sk)[4096], uint32_t key, bint add) noexcept nogil:
    """A count-min sketch over exact addresses (two rows): count one (add) and/or estimate."""
    cdef uint64_t h = mix64(<uint64_t>key | (<uint64_t>1 << 40))
    cdef uint32_t i0 = <uint32_t>(h & (SC_COLS - 1)), i1 = <uint32_t>((h >> 32) & (SC_COLS - 1))
    if add:
        if sk[0][i0] < 65535:
            sk[0][i0] += 1
        if sk[1][i1] < 65535:
            sk[1][i1] += 1
    return sk[0][i0] if sk[0][i0] < sk[1][i1] else sk[1][i1]


cdef void sc_addr_decay(sc_state_t* s) noexcept nogil:
    """A new window for the per-address sketches: halved, not zeroed, so a demoted relaying
    address stays demoted for a few windows instead of coming back top (and into the priority
    socket) at every window."""
    cdef int i
    for i in range(SC_COLS):
        s.asketch[0][i] >>= 1
        s.asketch[1][i] >>= 1
        s.nxsrc[0][i] >>= 1
        s.nxsrc[1][i] >>= 1


cdef void sc_trust_mark(const sc_cfg_t* cfg, sc_state_t* s, uint32_t slot, const uint8_t* a,
                        uint32_t alen) noexcept nogil:
    """History per address inside known prefixes: an address becomes trusted when it is seen
    again trust_after_ms after its first sighting with no overload tick in between (a spoofed
    address appears with an attack, and the attack makes the overload that resets it; a flood
    the server absorbs still sends the prefix over known_rate, which restarts the first
    sightings of its untrusted addresses).  Only while nothing is cut."""
    cdef uint32_t now32 = <uint32_t>s.now_ms | 1, first, age
    if s.trust_first == NULL or s.allow[SC_NORMAL] != SC_ONE:
        return
    first = s.trust_first[slot]
    age = now32 - first
    if first == 0 or <uint64_t>age > s.now_ms - s.last_over:
        s.trust_first[slot] = now32            # first sighting in this calm stretch
    elif age >= cfg.trust_after_ms:
        s.trust_first[slot] = now32              # from now on: when it was last seen (aging)
        p53_or_u64(&s.trust[slot >> 6], <uint64_t>1 << (slot & 63))
        sc_strict(s, a, alen)        # the prefix has history now: only trusted ones are steered
        s.trusted_marks += 1


cdef inline void sc_untrust(sc_state_t* s, uint32_t slot) noexcept nogil:
    if s.trust != NULL and sc_bit(s.trust, slot):
        p53_and_u64(&s.trust[slot >> 6], ~(<uint64_t>1 << (slot & 63)))


cdef inline void sc_demote(sc_state_t* s, uint32_t slot, bint trusted) noexcept nogil:
    """A flood of the address's own (its rate, or water torture it relays) demotes it as a
    whole: untrusted, so the kernel stage no longer steers it to the priority socket.  If it
    was trusted its demoted bit remembers that (sc_trust_back)."""
    if trusted and s.demoted != NULL:
        p53_or_u64(&s.demoted[slot >> 6], <uint64_t>1 << (slot & 63))
    sc_untrust(s, slot)


cdef inline void sc_relay_bit(sc_state_t* s, uint32_t slot, bint on) noexcept nogil:
    """Say to the kernel stage whether this trusted address relays water torture (its relay
    bit): while it does, the steering program sends its names that are no node of a served
    zone to the normal socket, not ahead of the known resolvers' queries (ebpf_relay.py).
    Written only when it changes."""
    cdef uint64_t* w
    if s.trust == NULL:
        return
    w = &s.trust[SC_RELAY_BASE + (slot >> 6)]
    if sc_bit(s.trust + SC_RELAY_BASE, slot) == on:
        return
    if on:
        p53_or_u64(w, <uint64_t>1 << (slot & 63))
    else:
        p53_and_u64(w, ~(<uint64_t>1 << (slot & 63)))


cdef inline bint sc_was_trusted(const sc_state_t* s, uint32_t slot) noexcept nogil:
    return s.demoted != NULL and sc_bit(s.demoted, slot)


cdef inline void sc_trust_back(sc_state_t* s, uint32_t slot) noexcept nogil:
    """A demoted address that no longer floods (below known_addr_rate, its answers no longer
    mostly NXDOMAIN), or one still relaying a second after the risk run that demoted it
    (sc_relay_class), gets its trust back at once, overload or not: it earned it before the
    flood, and only calm would give it back by history, so a resolver that relayed one attack
    was cut for the rest of it and for the next (docs/scoring.md, "Demoted as a whole").  It
    gains no one anything: whoever spoofs its exact address shared its trust before."""
    p53_and_u64(&s.demoted[slot >> 6], ~(<uint64_t>1 << (slot & 63)))
    if s.trust != NULL and not sc_bit(s.trust, slot):
        p53_or_u64(&s.trust[slot >> 6], <uint64_t>1 << (slot & 63))
    s.regained += 1


cdef inline void sc_trust_proven(const sc_cfg_t* cfg, sc_state_t* s, const uint8_t* a,
                                 uint32_t alen) noexcept nogil:
    """A valid server cookie of ours proved the address (RFC 7873 §5.3).  Its cookie bit: from
    now on the kernel stage steers it to the priority socket only, and always, with a valid
    cookie (scoring/ebpf_cookie.py), known or not, trusted or not.  And trust at once (top in
    a known prefix over known_rate, steered there without the kernel's cookie check); not
    while the address is over known_addr_rate in the window: datagrams spoofing its exact
    address took its trust (sc_relay_class), and its own cookies must not hand it back to them."""
    cdef uint32_t slot, key
    if s.trust == NULL or alen == 0:
        return
    key = sc_addr_key(a, alen)
    slot = sc_golden(key, SC_TRUST_SHIFT)
    if s.trust_first != NULL:
        s.trust_first[slot] = <uint32_t>sc_now_ms() | 1     # last seen (aging)
    if not sc_bit(s.trust + SC_COOKIE_BASE, slot):
        p53_or_u64(&s.trust[SC_COOKIE_BASE + (slot >> 6)], <uint64_t>1 << (slot & 63))
    if sc_addr_count(s.asketch, key, False) > cfg.known_addr_rate:
        return
    if not sc_bit(s.trust, slot):
        p53_or_u64(&s.trust[slot >> 6], <uint64_t>1 << (slot & 63))
        s.trusted_marks += 1


cdef void sc_prefix_over(sc_state_t* s, const uint8_t* a, uint32_t alen, uint32_t v) noexcept nogil:
    """Raise the prefix's count in this window to at least v (both cells of its sketch)."""
    cdef uint64_t h = mix64(sc_prefix_hash(a, alen))
    cdef uint16_t w = <uint16_t>(v if v < 65535 else 65535)
    if s.sketch[0][h & (SC_COLS - 1)] < w:
        s.sketch[0][h & (SC_COLS - 1)] = w
    if s.sketch[1][(h >> 32) & (SC_COLS - 1)] < w:
        s.sketch[1][(h >> 32) & (SC_COLS - 1)] = w


cdef inline void sc_strict(sc_state_t* s, const uint8_t* a, uint32_t alen) noexcept nogil:
    """Mark the address's prefix strict: the kernel stage steers only its trusted addresses."""
    cdef uint32_t ps
    if s.trust == NULL:
        return
    ps = sc_golden(sc_prefix_key(a, alen), SC_STRICT_SHIFT)
    if not sc_bit(s.trust + SC_TRUST_WORDS, ps):
        p53_or_u64(&s.trust[SC_TRUST_WORDS + (ps >> 6)], <uint64_t>1 << (ps & 63))


cdef inline void sc_trust_seen(sc_state_t* s, uint32_t slot, const uint8_t* a,
                               uint32_t alen) noexcept nogil:
    """A trusted address asked: remember when (at most four stores a second, for Scorer.age) and
    keep its prefix strict (the control plane relaxes strict prefixes after calm; those with a
    trusted address still asking are strict again at its next query, before any flood)."""
    cdef uint32_t now32 = <uint32_t>s.now_ms | 1
    if s.trust_first != NULL and now32 - s.trust_first[slot] >= 256:
        s.trust_first[slot] = now32
    sc_strict(s, a, alen)


cdef uint64_t sc_age_bits(uint64_t* words, uint32_t* first, uint32_t ttl_ms, uint32_t now32,
                         bint restart) noexcept nogil:
    """Clear every bit of the SC_TRUST_WORDS `words` whose slot's time in `first` is older than
    ttl_ms (restart: and zero that time, the slot's history starts again); returns how many.
    The workers go on reading and setting bits meanwhile (atomic AND/OR on the same words)."""
    cdef uint64_t w, n = 0
    cdef uint32_t i, b, slot
    for i in range(SC_TRUST_WORDS):
        w = p53_load_u64(&words[i])
        if w == 0:
            continue
        for b in range(64):
            slot = (i << 6) | b
            if (w >> b) & 1 and now32 - first[slot] > ttl_ms:
                p53_and_u64(&words[i], ~(<uint64_t>1 << b))
                if restart:
                    first[slot] = 0
                n += 1
    return n


cdef uint64_t sc_trust_age(uint64_t* trust, uint32_t* first, uint64_t* demoted, uint32_t ttl_ms,
                           uint32_t now32) noexcept nogil:
    """Clear the trust of every trusted slot not seen for longer than ttl_ms (its history then
    starts again), the cookie bit of every slot not proven for as long, and the demoted bit
    (sc_trust_back) of every slot not seen for as long; returns how many trusted slots lost it.
    The demoted and cookie bits first: their slots' times are still there."""
    sc_age_bits(demoted, first, ttl_ms, now32, False)
    sc_age_bits(trust + SC_COOKIE_BASE, first, ttl_ms, now32, False)
    return sc_age_bits(trust, first, ttl_ms, now32, True)


cdef bint sc_name_exists(const image_t* img, const uint8_t* p, uint32_t n) noexcept nogil:
    """Before the lookup, for a relaying resolver's query in a zone under NXDOMAIN pressure:
    whether the question's name is a node of the served zone holding it (an owner name or an
    empty non-terminal, whose answer is no NXDOMAIN).  One exact lookup, no answer: names
    answered by a wildcard, a DNAME, a map or from below a delegation count as absent, and
    stay demoted.  A name that does not parse, or no image (the probe state): absent."""
    cdef lname_t t
    cdef const zone_t* z
    if img == NULL or sc_qname_end(p, n) == 0:
        return False
    lname_set(&t, p + 12, img.seed)
    z = image_find_zone(img, t.name, t.len, t.loff, t.labels, t.sh, 0)
    return z != NULL and zone_find(img, z, t.name, t.len, t.sh[0]) != NULL


cdef int sc_relay_class(const sc_cfg_t* cfg, sc_state_t* s, bint over, bint trusted,
                        uint32_t key, uint32_t slot, const uint8_t* a, uint32_t alen,
                        const uint8_t* p, uint32_t n) noexcept nogil:
    """A known address over known_addr_rate (`over`) or relaying water torture (mostly NXDOMAIN
    answers).  A trusted relaying address keeps its trust and its place in the priority socket
    while cutting the other classes protects the known resolvers (no tick in the last second
    found them at risk with every class but top at nothing, s.prio_risk_ms): only its names in
    a zone under NXDOMAIN pressure (sc_nx_zone_hit) are demoted, the rest stay top.  Otherwise
    the address is demoted as a whole and leaves the priority socket (untrusted, its prefix
    strict): an untrusted one could be a spoofer (what it asks gains it nothing), and past that
    last step a relay's flood must not share the known resolvers' queue.  Its real names stay
    top even then, from the normal socket (sc_was_trusted), and it regains its trust once it
    stops relaying or, still relaying, once that step is a second old (sc_trust_back)."""
    cdef int zone = -1
    cdef bint keep = False
    if (trusted or sc_was_trusted(s, slot)) and not over:
        keep = not sc_recent(s, s.prio_risk_ms)
        if keep and not trusted:
            # demoted by a risk run that is over (a second without one): back in the known
            # resolvers' queue, its random names still cut there, as before that run
            sc_trust_back(s, slot)
        zone = sc_nx_zone_hit(s, p, n)
        if zone < 0 or sc_name_exists(s.img, p, n):
            # a real name (in no zone under pressure, or a node of it) stays top even past the
            # risk run, trusted or demoted: no flood of its to take out of the known resolvers'
            # queue (its count may be a past attack's, kept by the halving and while normal is
            # cut).  Without this a later attack that kept them at risk demoted resolvers that
            # had relayed an earlier one, and a demoted one lost its real names to the cut
            sc_trust_seen(s, slot, a, alen)
            s.nx_spared += 1
            return SC_TOP
    if keep:
        sc_trust_seen(s, slot, a, alen)
        sc_relay_bit(s, slot, True)
    else:
        sc_demote(s, slot, trusted)
        sc_strict(s, a, alen)
        # and its prefix counts as over its rate in this window: so the strict mark is not
        # cleared by its neighbours' queries before a whole window passed without it
        sc_prefix_over(s, a, alen, cfg.known_rate + 1)
        zone = -1
        if s.allow[SC_NORMAL] < SC_ONE and not over:
            zone = sc_nx_zone_hit(s, p, n)
    if s.allow[SC_NORMAL] < SC_ONE:
        # it will likely be cut, so its answer is not seen: count it as its last ones were
        # (else its share of NXDOMAINs would fall by itself and it would come back top), and
        # its zone as still under pressure (else it would leave the list next window)
        sc_addr_count(s.nxsrc, key, True)
        if zone >= 0:
            s.nxz_now[zone] = 1
    s.nx_demoted += 1
    return SC_NORMAL


cdef int sc_known_class(const sc_cfg_t* cfg, sc_state_t* s, uint32_t count, const uint8_t* a,
                        uint32_t alen, const uint8_t* p, uint32_t n) noexcept nogil:
    """The class of a query from a known prefix (count: the prefix's queries in this window).
    Per address: over known_addr_rate or mostly NXDOMAIN answers (water torture it relays):
    sc_relay_class.  Within a prefix over known_rate (spoofed sources inside it) only trusted
    addresses stay top, and the prefix is marked strict so the kernel stage steers only its
    trusted addresses to the priority socket; in every prefix, for a second after the priority
    socket dropped (sc_prio_overflow), only trusted addresses are top."""
    cdef uint32_t key = sc_addr_key(a, alen)
    cdef uint32_t acount = sc_addr_count(s.asketch, key, True)
    cdef uint32_t nx = sc_addr_count(s.nxsrc, key, False)
    cdef uint32_t slot = sc_golden(key, SC_TRUST_SHIFT)
    cdef bint trusted = s.trust != NULL and sc_bit(s.trust, slot)
    cdef bint over = acount > cfg.known_addr_rate
    s.last_known = True
    if over or (nx >= 32 and <uint64_t>nx * 1024 > <uint64_t>acount * cfg.known_nx_share):
        return sc_relay_class(cfg, s, over, trusted, key, slot, a, alen, p, n)
    if nx:
        # it had NXDOMAINs lately but relays no more: its relay bit goes (a bit test only for
        # such addresses; a relay's count halves through nonzero values on its way down)
        sc_relay_bit(s, slot, False)
    if not trusted and sc_was_trusted(s, slot):
        sc_trust_back(s, slot)
        trusted = True
    if trusted:
        sc_trust_seen(s, slot, a, alen)
    if count <= cfg.known_rate:
        if not trusted and s.trust != NULL:
            if sc_overflow_on(s):
                # a priority socket dropped in the last second (sc_prio_overflow): only
                # addresses with history are top, as the kernel stage steers only them there.
                # Else a relayed flood's never-seen relays, sent to the normal socket, were top
                # there: uncut, and "known resolvers sharing the overloaded queue", which put the
                # real ones at risk until their own relayed share demoted them as a whole
                s.untrusted += 1
                s.held_tick += 1
                return SC_NORMAL
            s.last_fresh = s.in_prio
            sc_trust_mark(cfg, s, slot, a, alen)
        return SC_TOP
    sc_strict(s, a, alen)
    if trusted:
        return SC_TOP
    if s.trust_first != NULL and s.trust_first[slot] != 0:
        s.trust_first[slot] = 0     # its history starts again after its prefix calms down
    s.untrusted += 1
    return SC_NORMAL
