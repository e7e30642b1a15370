# cython: language_level=3
# Cimported by _core.pyx (`from p53 cimport *`).
# Declarations of the data plane: wire structures, the compiled image layout, the response
# writer and the per-worker counters.  Code lives in the .pxi files included by _core.pyx.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

# ---------------------------------------------------------------------------------------------
# Compiled image (position independent: every reference is an offset from the image start).
# Little-endian, packed.  The layout is written by pop53/compiler.py; keep the two in step
# (IMG_VERSION guards it).
# ---------------------------------------------------------------------------------------------
cdef enum:
    IMG_VERSION = 2           # 2: signed zones have a DNSSEC block and keep NSEC3 owners out of
                              # the node table; a saved version-1 image would serve them unsigned
    IMG_HEADER_SIZE = 64

    # node_t.flags
    N_APEX = 0x0001
    N_CUT = 0x0002            # NS at a non-apex name: a delegation point
    N_BELOW_CUT = 0x0004      # strictly below a delegation point (glue or occluded)
    N_ENT = 0x0008            # empty non-terminal: exists, has no data
    N_WILDCARD_CHILD = 0x0010 # "*.<this name>" exists
    N_WILDCARD = 0x0020       # first label is "*"
    N_CNAME = 0x0040
    N_DNAME = 0x0080
    N_NSEC = 0x0100           # an NSEC3 owner: written, but not in the zone's table (RFC 5155 §7.1)

    # zone_t.flags
    Z_SIGNED = 0x0001         # an NSEC/NSEC3 chain: a dsec_t block follows the node table
    Z_EXPIRED = 0x0002        # a secondary past its SOA expire: SERVFAIL (RFC 1035 §3.3.13)

    # rrset_t.aux: for RRSIG rrsets (type 46) the covered type

    # dsec_t.mode
    DS_NSEC = 1
    DS_NSEC3 = 2

cdef packed struct img_header_t:
    char magic[8]             # b"POP53IMG"
    uint32_t version
    uint32_t header_size
    uint64_t size             # total bytes of the image
    uint32_t n_zones
    uint32_t zones_off        # zone_t[n_zones]
    uint32_t ztab_off         # uint32_t[ztab_mask + 1]: zone index + 1, 0 = empty
    uint32_t ztab_mask
    uint32_t seed             # name hash seed
    uint32_t flags
    uint32_t n_nodes
    uint32_t n_rrsets
    uint32_t n_records
    uint32_t checksum         # image_checksum() of the image with this field zeroed

cdef packed struct zone_t:
    uint32_t name_off         # lowercased wire name of the origin
    uint8_t name_len
    uint8_t labels
    uint16_t flags
    uint32_t apex_off         # node_t of the apex
    uint32_t ntab_off         # uint32_t[ntab_mask + 1]: node offsets, 0 = empty
    uint32_t ntab_mask
    uint32_t n_nodes
    uint32_t neg_ttl          # min(SOA TTL, SOA MINIMUM): RFC 2308 §5
    uint32_t soa_off          # rrset_t of the SOA

cdef packed struct node_t:
    uint32_t name_off         # lowercased wire name (absolute)
    uint8_t name_len
    uint8_t labels
    uint16_t flags
    uint32_t cut_off          # node_t of the delegation point at or above this name, 0 = none
    uint32_t rrsets_off       # rrset_t[n_rrsets], sorted by type
    uint16_t n_rrsets
    uint16_t zone_idx
    uint32_t hash             # name hash (reverse FNV-1a, seeded)

cdef packed struct rrset_t:
    uint16_t type
    uint16_t count
    uint32_t ttl
    uint32_t rdata_off        # count x ([u16 rdlength][rdata]), names uncompressed
    uint32_t rdata_len
    uint32_t add_off          # uint32_t[add_count]: node_t of in-image targets with A/AAAA
    uint16_t add_count
    uint16_t aux              # RRSIG: covered type (reserved for DNSSEC)

# A signed zone's DNSSEC block, at ntab_off + 4 * (ntab_mask + 1) (pop53/dnssec/index.py writes
# it; ext/dnssec.pxi reads it).  Every *_off/match/wild/nc is a node_t offset, 0 = none.
cdef packed struct dsec_t:
    uint8_t mode              # DS_NSEC or DS_NSEC3
    uint8_t salt_len
    uint16_t iterations       # NSEC3 (RFC 5155 §5; RFC 9276 recommends 0)
    uint32_t n_chain          # NSEC: uint32_t node offsets in canonical order (RFC 4034 §6.1)
    uint32_t chain_off        # NSEC3: n3ent_t sorted by hash
    uint32_t n_info
    uint32_t info_off         # dinfo_t[n_info] sorted by node_off
    uint8_t salt[255]
    uint8_t pad

cdef packed struct n3ent_t:
    uint8_t hash[20]
    uint32_t node_off

cdef packed struct dinfo_t:
    uint32_t node_off         # a name of the zone (not below a cut)
    uint32_t match            # the NSEC/NSEC3 proving its types (NSEC at an ENT: the cover)
    uint32_t wild             # the NSEC/NSEC3 covering "*.<name>" (it as closest encloser)
    uint32_t nc               # NSEC3 opt-out cut: next closer cover; match = closest provable encloser

# The denial proofs an answer owes (node_t offsets of NSEC/NSEC3 owners), written to the
# authority section once the answer section is complete (ext/dnssec.pxi: dnssec_flush).
cdef struct dproof_t:
    uint32_t n
    uint32_t node[24]
    uint32_t ttl[24]          # RFC 9077: min(record TTL, the zone's negative TTL)

cdef struct image_t:
    const uint8_t* base
    uint64_t size
    const img_header_t* hdr
    const zone_t* zones
    const uint32_t* ztab
    uint32_t ztab_mask
    uint32_t seed
    uint32_t n_zones
    const uint32_t* zslot     # zone index -> per-zone counter slot (zstats.pxi); NULL: none

# ---------------------------------------------------------------------------------------------
# Wire: the parsed query.
# ---------------------------------------------------------------------------------------------
cdef enum:
    MAX_NAME = 255
    MAX_LABELS = 128
    CMP_MAX = 48
    CHAIN_MAX = 8

    # DNS constants
    T_A = 1
    T_NS = 2
    T_CNAME = 5
    T_SOA = 6
    T_PTR = 12
    T_HINFO = 13
    T_MX = 15
    T_TXT = 16
    T_AAAA = 28
    T_SRV = 33
    T_DNAME = 39
    T_OPT = 41
    T_DS = 43
    T_RRSIG = 46
    T_NSEC = 47
    T_DNSKEY = 48
    T_NSEC3 = 50
    T_TKEY = 249
    T_TSIG = 250
    T_IXFR = 251
    T_AXFR = 252
    T_MAILB = 253
    T_MAILA = 254
    T_ANY = 255
    C_IN = 1
    C_CH = 3
    C_ANY = 255

    RC_NOERROR = 0
    RC_FORMERR = 1
    RC_SERVFAIL = 2
    RC_NXDOMAIN = 3
    RC_NOTIMP = 4
    RC_REFUSED = 5
    RC_YXDOMAIN = 6
    RC_NOTAUTH = 9
    RC_BADVERS = 16

    OP_QUERY = 0
    OP_NOTIFY = 4

    OPT_NSID = 3
    OPT_ECS = 8
    OPT_COOKIE = 10

    # what to do with a packet: the decision table's outcome
    ACT_DROP = 0
    ACT_REPLY = 1
    ACT_CONTROL = 2            # NOTIFY, XFR, TSIG-signed: hand to the control plane

    # query_t.why for ACT_CONTROL
    CTL_NOTIFY = 1
    CTL_XFR = 2
    CTL_TSIG = 3

cdef struct query_t:
    uint16_t id
    uint16_t flags            # header flags word as received
    uint8_t opcode
    uint16_t qtype
    uint16_t qclass
    uint8_t qname[256]        # lowercased wire form
    uint32_t qname_len
    uint32_t labels           # not counting the root
    uint8_t loff[128]         # offset of each label in qname (loff[labels] = root)
    uint32_t qend             # end of the question in the query packet
    # EDNS (RFC 6891)
    bint edns
    uint16_t udp_size
    uint8_t ednsver
    bint do_bit
    bint nsid
    bint ecs
    uint16_t ecs_family
    uint8_t ecs_source
    uint8_t ecs_scope
    uint8_t ecs_addr[16]
    uint8_t cookie_len
    uint8_t cookie[40]
    bint tsig
    uint8_t ctl               # CTL_* when the action is ACT_CONTROL
    bint cookie_ok            # it carried a valid server cookie of ours (the address is proven)
    uint32_t zone             # index of the zone that answered it; ZONE_NONE: none (zstats.pxi)

# ---------------------------------------------------------------------------------------------
# Responder configuration (identity for NSID and CHAOS, limits).  Owned by a Responder object.
# ---------------------------------------------------------------------------------------------
cdef struct rcfg_t:
    uint8_t identity[255]
    uint8_t identity_len
    uint8_t version[255]
    uint8_t version_len
    bint chaos                # answer CHAOS TXT id.server/hostname.bind/version.bind
    bint nsid                 # answer the NSID option (RFC 5001)
    uint16_t edns_max         # our advertised/used UDP payload limit (default 1232)
    bint lenient_trailing     # accept bytes after the last record (default: FORMERR)
    bint cookies              # answer DNS COOKIEs with RFC 9018 server cookies
    bint cookie_has_prev
    uint8_t cookie_secret[16]
    uint8_t cookie_prev[16]   # the previous secret, still accepted (rotation)

# ---------------------------------------------------------------------------------------------
# Response writer with mark/rollback (RFC 2181 §9: never a partial RRset).
# ---------------------------------------------------------------------------------------------
cdef struct wbuf_t:
    uint8_t* buf
    uint32_t cap              # bytes usable for sections (limit minus the OPT reserve)
    uint32_t pos
    uint16_t cmp[48]          # packet offsets of label starts usable as compression targets
    uint32_t ncmp
    uint16_t an
    uint16_t ns
    uint16_t ar
    bint tc

cdef struct wmark_t:
    uint32_t pos
    uint32_t ncmp
    uint16_t an
    uint16_t ns
    uint16_t ar

# ---------------------------------------------------------------------------------------------
# Observability attached to a reader's counters (zstats.pxi, dnstap.pxi): per-zone counters,
# the answer latency histogram and the dnstap ring.
# ---------------------------------------------------------------------------------------------
cdef enum:
    ZONE_NONE = 0xFFFFFFFF
    ZS_RCODES = 8             # NOERROR FORMERR SERVFAIL NXDOMAIN NOTIMP REFUSED YXDOMAIN other
    ZS_TYPES = 16             # the common types (zstats.pxi: ZS_TYPE_NAMES) and "other"
    ZS_WIDTH = 24             # ZS_RCODES + ZS_TYPES counters per zone slot
    LAT_N = 22                # latency buckets: k < 21 holds < 2**(10+k) ns, 21 the rest

cdef struct dt_ring_t:        # one producer (a worker or TCP loop), one consumer (the writer)
    uint8_t* buf
    uint64_t cap              # bytes, a power of two
    uint64_t head             # bytes written (the producer's)
    uint64_t tail             # bytes consumed (the writer's)
    uint64_t sampled          # queries sampled (the producer's)
    uint64_t dropped          # sampled but the ring was full (the producer's)
    uint32_t sample           # 1 in `sample` queries
    uint32_t countdown
    uint8_t kinds             # DT_QUERY | DT_RESPONSE
    uint8_t proto             # DT_UDP, DT_TCP
    uint8_t srv_family        # 4 or 6 (0: unknown)
    uint16_t srv_port
    uint8_t srv_addr[16]

# ---------------------------------------------------------------------------------------------
# Per-worker counters (plain C, summed by the control plane on scrape).
# ---------------------------------------------------------------------------------------------
cdef struct stats_t:
    uint64_t queries
    uint64_t udp
    uint64_t tcp
    uint64_t replies
    uint64_t dropped
    uint64_t truncated
    uint64_t control
    uint64_t bytes_in
    uint64_t bytes_out
    uint64_t batches
    uint64_t send_errors
    uint64_t recv_errors
    uint64_t rrl_dropped      # responses dropped by rate limiting
    uint64_t rrl_slipped      # responses sent truncated (TC=1) by rate limiting
    uint64_t cookies_valid    # queries with a valid server cookie of ours
    uint64_t cookies_new      # queries with a client cookie only, or a server cookie not ours
    uint64_t mapped[4]        # mapped replies by client key: 0 ECS, 1 source address,
                              # 2 none (the map's default region), 3 ECS not trusted (source)
    uint64_t rcode[24]        # index: rcode (0..23), BADVERS at 16
    uint64_t qtype[257]       # index: qtype for 0..255, 256 = other
    uint64_t lat[22]          # LAT_N answer-latency buckets (per batch, zstats.pxi)
    uint64_t lat_sum_ns
    uint64_t* zs              # per-zone counters, ZS_WIDTH per slot (zstats.pxi); NULL: off
    uint32_t zs_cap           # slots in zs
    dt_ring_t* dt             # dnstap (dnstap.pxi); NULL: off
    uint64_t klat[22]         # LAT_N buckets from each query's kernel receive stamp
    uint64_t klat_sum_ns      # (SO_TIMESTAMPNS) to its batch's send: queue included (zstats.pxi)


# ---------------------------------------------------------------------------------------------
# Query scoring (scoring.pxi): the known-resolver table every worker reads, the settings shared
# by the workers of a server, and each worker's own sketch, controller and counters.
# ---------------------------------------------------------------------------------------------
cdef enum:
    SC_TOP = 0                # a known resolver's prefix, or a valid server cookie of ours
    SC_NORMAL = 1             # an unknown source, nothing odd
    SC_ODD = 2                # header oddities (RD, QR, TC, Z, counts a resolver never sends)
    SC_FLOOD = 3              # the source prefix is over its rate in this window
    SC_CLASSES = 4
    SC_ONE = 1024             # a class's admission share: SC_ONE = everything
    SC_COLS = 4096            # count-min sketch: 2 rows of SC_COLS saturating counters

cdef extern from *:
    """#define SC_V6_TAG (1ULL << 63)"""
    const uint64_t SC_V6_TAG

cdef struct known_t:          # immutable once published; freed after every worker passed a batch
    const uint8_t* v4         # 1 << 21 bytes, one bit per IPv4 /24: set = known
    const uint64_t* v6        # open addressing over IPv6 /56 keys (the first 7 address bytes,
                              # big-endian) with SC_V6_TAG set; 0 = empty; linear probing
    uint64_t v6_mask          # slots - 1 (a power of two; at least one slot is empty)
    uint64_t n_v6
    const uint64_t* v6f       # the filter in front of v6 (sc_v6_filter): two bits of one word per
    uint32_t v6f_shift        # key; 64 - log2(words); NULL when v6 has no key

cdef enum:
    SC_SEEN6 = 65536          # learning: IPv6 /56s remembered per window (open addressing)

cdef struct seen_t:           # learning: the sources answered in this window, written by workers
    uint8_t* v4               # 1 << 21 bytes: one bit per IPv4 /24
    uint64_t* v6              # SC_SEEN6 slots: /56 key | SC_V6_TAG, 0 = empty

cdef struct sc_cfg_t:
    uint32_t source_rate      # queries per source prefix per window before SC_FLOOD
    uint32_t known_rate       # the same for a known prefix (spoofed known sources fall to NORMAL)
    uint32_t window_ms        # the sketch's window
    uint32_t tick_ms          # the controller's period
    uint32_t full_run         # consecutive full batches that mean "overloaded"
    uint32_t recover          # share regained per calm tick (of SC_ONE), best class first
    bint rd_odd               # RD=1 counts as an oddity (resolvers send RD=0 to authorities)
    uint32_t delay_target_us  # queue delay (sc_batch) meaning overload
    uint32_t nx_rate          # NXDOMAINs per zone per window above which the zone is under pressure
    uint32_t known_addr_rate  # the per-address count (asketch, halved per window) above which
                              # a known address is over its rate: twice its queries per window
    uint32_t trust_after_ms   # a known address is trusted once seen this long into a calm stretch
    uint32_t known_nx_share   # of 1024: a known address whose answers are more NXDOMAINs is demoted
    bint yield_cut            # sched_yield after each normal batch while a class is cut (sc_yield)
    bint kstamps              # the queue delay from kernel receive stamps; else the worker's clock

cdef enum:
    SC_SUB_BATCH = 16         # the normal socket's batch while a class is cut (sc_normal_batch)
    SC_TOP_HOLD_MS = 1000     # known resolvers count as present this long after their last query
    SC_RISK_RUN_MS = 250      # at risk with every class but top cut this long: trusted relays go
    SC_FRESH_RUN = 128        # NXDOMAINs to untrusted known addresses from a priority queue that
                              # never emptied that start the overflow deadline (sc_prio_fresh)
    SC_FILL_PART = 4          # a priority queue fuller than 1/4 of its room (PRIORITY_MS of work)
                              # at a full batch starts the overflow deadline (sc_prio_full)
    SC_QD_BUCKETS = 18        # queue-delay histogram: < 16 us << b for b < 17, then the rest
    SC_NX_SLOTS = 1024        # per-zone NXDOMAIN counters (by apex hash; collisions share)
    SC_NXZ = 4                # zones under pressure a worker checks before the lookup
    SC_TRUST_SHIFT = 12       # address trust bits: (key * golden) >> 12, 1 << 20 bits
    SC_STRICT_SHIFT = 14      # prefixes over their rate: (key * golden) >> 14, 1 << 18 bits
    SC_TRUST_WORDS = 16384    # u64 words of address trust bits; the strict bits follow
    SC_COOKIE_BASE = 20480    # then the cookie bits: one per address slot (sc_trust_proven)
    SC_OVERFLOW_WORD = 36864  # then one word: until when (CLOCK_MONOTONIC_COARSE ns) only trusted
                              # addresses are steered to the priority socket (sc_prio_overflow)
    SC_RELAY_BASE = 36865     # then the relay bits: one per address slot, a trusted address
                              # relaying water torture (sc_relay_class; scoring/ebpf_relay.py)
    SC_ALL_WORDS = 53249      # the whole (the kernel stage's array map, scoring/ebpf.py)
    NF_SHIFT = 24             # the name filter (scoring_names.pxi): 1 << 24 bits a half,
    NF_HALF_WORDS = 262144    # so many u64 words; word 0 says which half is live
    NF_WORDS = 524289

cdef struct sc_state_t:       # one per worker, written by that worker only
    uint16_t sketch[2][4096]
    uint64_t window_start     # ms, CLOCK_MONOTONIC_COARSE
    uint64_t tick_start
    uint32_t allow[4]         # admission share per class (SC_ONE = all)
    uint32_t acc[4]           # fractional admission accumulators (no random numbers)
    uint32_t run              # consecutive full batches now
    uint32_t run_max          # the longest run in this tick
    uint32_t ovfl_last        # the kernel's drop counter at the last look (SO_MEMINFO)
    uint32_t drops_tick       # kernel drops seen in this tick
    uint64_t admitted[4]
    uint64_t dropped[4]
    uint64_t mark[4]          # admitted + dropped per class at the last tick
    uint64_t lifted           # queries a valid cookie lifted to SC_TOP under overload
    uint64_t kernel_drops     # datagrams the kernel dropped on this socket (its sk_drops)
    uint64_t overload_ticks
    uint64_t ticks
    seen_t* seen              # learning: the window's seen set (loaded per batch), or NULL
    uint32_t ovfl_last_p      # the priority socket's drop counter at the last look
    uint64_t kernel_drops_p   # the same on the priority socket
    uint64_t prio_rx          # datagrams received from the priority socket
    uint64_t qd_hist[18]      # queue delay per batch with a stamp (SC_QD_BUCKETS, sc_batch)
    uint64_t qd_min           # the smallest queue delay in this tick (ns); UINT64_MAX: none yet
    uint64_t qd_last          # the last batch's (ns)
    uint64_t delay_ticks      # ticks overloaded by queue delay
    uint64_t cost_ps          # measured work per query (picoseconds, EWMA over full batches)
    uint16_t nx[1024]         # NXDOMAINs per zone in this window (SC_NX_SLOTS, by apex hash)
    uint32_t nx_allow         # share of a known resolver's NXDOMAINs for zones under pressure
    uint32_t nx_acc
    uint64_t nx_dropped[4]    # NXDOMAIN answers dropped after the answer, per class
    uint64_t nxz_hash[4]      # zones over nx_rate in this window or the last (SC_NXZ): apex
    uint16_t nxz_len[4]       # hash, apex length in wire bytes (sc_nx_zone_hit, pre-lookup),
    uint8_t nxz_now[4]        # and whether it went over in this window
    uint32_t nxz_n
    uint64_t nx_spared        # relaying addresses' queries kept top: not for a zone under pressure
    uint64_t prio_risk_ms     # ms of the last tick at risk past SC_RISK_RUN_MS with all cut
    uint64_t risk_run_ms      # since when every tick was at risk with every class but top cut
    uint16_t asketch[2][4096] # queries per known source ADDRESS in this window
    uint16_t nxsrc[2][4096]   # NXDOMAIN answers per source address in this window
    uint64_t now_ms           # this batch's clock (sc_observe)
    uint64_t last_over        # ms of the last overload tick (a calm stretch starts there)
    uint64_t* trust           # address trust + strict prefix bits (loaded per batch), or NULL
    uint32_t* trust_first     # per trust slot: the low 32 bits of the first calm sighting's ms
    uint64_t* demoted         # per trust slot, one bit: trusted until a flood of its own demoted
                              # it as a whole (sc_relay_class); shared by the workers, or NULL
    uint64_t regained         # demoted addresses that got their trust back (sc_trust_back)
    uint64_t untrusted        # known-prefix queries classed normal: prefix over rate, untrusted
    uint64_t nx_demoted       # known-prefix queries classed normal: mostly NXDOMAIN (relaying)
    uint64_t trusted_marks    # addresses this worker marked trusted
    bint last_known           # the query just scored came from a known prefix (sc_nx_drop)
    uint64_t pw_hist[18]      # priority batches: the oldest datagram's wait (stamp to batch)
    uint64_t pl_hist[18]      # priority replies: kernel receive stamp to send (SC_QD_BUCKETS)
    uint32_t run_q            # datagrams of full short batches not yet a whole run step
    uint64_t yields           # sched_yield calls while cut (sc_yield)
    uint64_t prio_ms          # ms of the last priority batch: known resolvers being served
    uint64_t top_shared_ms    # ms of the last tick with known queries from the normal socket
    uint64_t pq_min           # the least priority-batch wait in this tick (ns); SC_NONE_YET: none
    uint32_t drops_tick_p     # the priority socket's kernel drops in this tick
    uint64_t prio_mark        # prio_rx at the last tick
    uint64_t lift_mark        # lifted at the last tick
    uint64_t risk_ticks       # ticks the known resolvers were at risk (only then is normal cut)
    uint64_t overflow_ticks   # ticks whose priority socket dropped (SC_OVERFLOW_WORD)
    bint last_full            # the last normal batch was full: a backlog (sc_protecting)
    uint64_t pq_max           # the longest priority-batch wait in this tick (ns)
    bint drops_known          # ovfl_last(_p) hold a first reading (sc_drops)
    uint64_t redirected       # known datagrams the steering program sent to the normal socket
                              # while the worker waited there (the wake words, udp_recv.pxi)
    uint64_t redir_mark       # redirected at the last tick
    uint64_t redir_carry      # ... that no known query of that tick matched (sc_tick)
    const image_t* img        # the batch's image, set by the worker loop (NULL: no name probe)
    bint in_prio              # the batch came from the priority socket (sc_observe)
    bint purge                # ... while the overflow deadline holds: below top is backlog
                              # the kernel stage queued there before it (sc_admit drops it)
    uint64_t purged           # priority-socket queries below top dropped so (sc_admit)
    uint32_t fresh_run        # NXDOMAINs answered to untrusted known addresses from the priority
                              # socket since it last emptied (sc_prio_fresh)
    bint last_fresh           # the query just scored: such an address, from the priority socket
    uint64_t fresh_floods     # times they reached SC_FRESH_RUN: the deadline set before a drop
    uint64_t prio_filled      # full priority batches that found its queue past SC_FILL_PART
    uint32_t held_tick        # untrusted known queries classed normal by the deadline, this tick
    uint64_t overflow_held    # ticks that renewed the deadline (sc_overflow_hold)

# ---------------------------------------------------------------------------------------------
# Clocks (the worker loop's RRL second, the C benchmarks)
# ---------------------------------------------------------------------------------------------
cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC
    int CLOCK_MONOTONIC_COARSE
    int CLOCK_REALTIME_COARSE


# ---------------------------------------------------------------------------------------------
# Mapped answers (mapping.pxi; built by pop53/mapping/snapshot.py).  A mapping snapshot is
# immutable and published apart from the zone image (Shared.publish_maps): maps and liveness
# change without recompiling zones.  Offsets are from the snapshot blob's start; 0 = none.
# ---------------------------------------------------------------------------------------------
cdef enum:
    MAP_ADDR = 1              # map_res_t.kind: A and/or AAAA (flags MAPF_A, MAPF_AAAA)
    MAP_CNAME = 2
    MAP_NS = 3                # a mapped referral at and below the name
    MAPF_A = 0x01
    MAPF_AAAA = 0x02
    ANS_SERVFAIL = 0x0001     # map_ans_t.flags: every target down and the resource says so
    ANS_PICK = 0x0002         # sticky/weighted: glue_off is a map_pick_t; the client block's
                              # bucket names the answer (another entry of the same view)
    PICK_BITS_MAX = 12
    SUB6 = 0x8000             # map_view_t.val6: an IPv6 sub-table's index follows
    GLUE_REQUIRED = 0x0001    # map_glue_t.flags: the host is below the cut (RFC 9471)
    KEY_ECS_THEN_SOURCE = 0   # map_keycfg_t.mode
    KEY_SOURCE_ONLY = 1
    KEY_ECS_ONLY = 2
    MAP_TRUST_MAX = 32

cdef packed struct map_res_t:
    uint32_t name_off         # lowercased wire name
    uint8_t name_len
    uint8_t labels
    uint8_t kind              # MAP_*
    uint8_t flags             # MAPF_*
    uint32_t hash             # name_hash(name, snapshot seed)
    uint32_t keycfg           # index into the key configurations (one per map)
    int32_t view_a            # the view answering A (CNAME, NS: the only view); -1 = none
    int32_t view_aaaa         # the view answering AAAA; -1 = none

cdef packed struct map_ans_t:
    uint32_t rs_off           # rrset_t (A, AAAA, CNAME in answer; NS in authority); 0 = NODATA
    uint32_t glue_off         # map_glue_t[glue_count] (NS)
    uint16_t glue_count
    uint16_t flags            # ANS_*

cdef packed struct map_pick_t:
    # followed by uint16_t answer[1 << bits]: the entry (same view) a client block's bucket gets
    uint8_t g4                # the IPv4 block a choice is stable on (the shortest scope claimed)
    uint8_t g6                # the IPv6 block (of the 64-bit key)
    uint16_t bits             # log2 of the bucket count
    uint32_t pad
    uint64_t salt             # the resource's own hash salt (fleet-wide stable: from its name)

cdef packed struct map_glue_t:
    uint32_t name_off
    uint32_t a_off            # rrset_t or 0
    uint32_t aaaa_off
    uint32_t flags            # GLUE_*

cdef packed struct map_keycfg_t:
    uint8_t mode              # KEY_*
    uint8_t max4              # longest ECS source used (RFC 7871 §11.1 privacy; default 24)
    uint8_t max6              # (default 56)
    uint8_t n_trust           # 0: every resolver's ECS is used
    uint8_t trust_len[32]
    uint8_t trust_fam[32]     # 4 or 16: address bytes
    uint8_t trust_addr[512]   # 16 bytes per entry

cdef struct map_view_t:
    # one final-answer function over one map: disjoint ranges sorted by start (lo[0] = 0),
    # adjacent ranges with the same answer merged; val = answer index.  IPv4 keys are the
    # address, IPv6 keys its top 64 bits.  idx (optional): for each value of the key's top B
    # bits, the first range whose
    # start has these top bits (2**B + 1 entries, B sized to the table, at most 20).
    const uint32_t* lo4
    const uint16_t* val4
    const uint32_t* idx4
    uint32_t n4
    uint32_t shift4           # 32 - B
    const uint64_t* lo6
    const uint16_t* val6
    const uint32_t* idx6
    uint32_t n6
    uint32_t shift6           # 64 - B
    const map_ans_t* ans
    uint32_t n_ans
    uint32_t dflt             # answer index without a client address (the map's default)
    # IPv6 /64s holding longer prefixes: a val6 with SUB6 set names sub-table j, ranges over
    # the low 64 bits sub_lo/sub_val[sub_off[j]:sub_off[j + 1]] (starting at 0)
    const uint64_t* sub_lo
    const uint16_t* sub_val
    const uint32_t* sub_off
    uint32_t n_sub
    # large IPv4 tables (maptable.pxi): a direct index over the top B bits whose slot holds
    # the answer and scope of a uniform block, else the block's ranges in cell4; lo4/val4 NULL
    const uint32_t* dir4
    const uint32_t* cell4
    uint32_t dshift4          # 32 - B

cdef struct map_snap_t:
    const uint8_t* base
    uint64_t size
    const map_res_t* res
    uint32_t n_res
    const uint32_t* rtab      # open addressing by hash: resource index + 1, 0 = empty
    uint32_t rtab_mask
    uint32_t seed
    uint64_t label_mask       # bit L: some resource name has L labels
    const map_view_t* views
    uint32_t n_views
    const map_keycfg_t* keys
    uint32_t n_keys
    uint32_t n_pf             # views with an IPv4 index (direct or not): map_prefetch helps
