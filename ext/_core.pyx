# cython: language_level=3, embedsignature=True
"""pop53._core: the data plane.

Parses DNS queries and answers them from an immutable compiled image, without the GIL.  The
Python side uses a handful of entry points: ImageView (open/validate an image buffer),
Responder (identity and limits), answer() (one packet; tests and TCP), the worker loop
(udp_loop.pxi) and counters (io.pxi), and two compiler helpers (name_hash, fill_table).
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy, memcmp, memset
from libc.stdlib cimport malloc, calloc, free

from p53 cimport *

include "wire.pxi"
include "image.pxi"
include "answer.pxi"
include "cookie.pxi"
include "zstats.pxi"
include "dnstap.pxi"
include "query.pxi"
include "dnssec.pxi"
include "maptable.pxi"
include "mapping.pxi"
include "mapsnap.pxi"
include "mapbuild.pxi"
include "rrl.pxi"
include "scoring.pxi"
include "scoring_ctl.pxi"
include "scoring_trust.pxi"
include "scoring_api.pxi"
include "scoring_names.pxi"
include "kstamp.pxi"
include "io.pxi"
include "udp_recv.pxi"
include "udp_loop.pxi"
include "xdp.pxi"
include "tcp.pxi"
include "patch.pxi"
include "splice.pxi"
include "zonescan.pxi"
include "layout.pxi"
include "observe.pxi"
include "dnstap_out.pxi"
include "zonebuild.pxi"
include "zonebuild_dsec.pxi"
include "zonestream.pxi"
include "xfrwire.pxi"

import sys as _sys
from socket import AF_INET as _AF_INET, AF_INET6 as _AF_INET6, inet_pton as _inet_pton

if _sys.byteorder != "little":
    raise ImportError("pop53._core: the image format is little-endian; this host is not")

DEBUG_BUILD = bool(P53_DEBUG_BUILD)
ACTION_DROP = ACT_DROP
ACTION_REPLY = ACT_REPLY
ACTION_CONTROL = ACT_CONTROL
IMAGE_VERSION = IMG_VERSION
HEADER_SIZE = IMG_HEADER_SIZE
SIZEOF = {
    "header": sizeof(img_header_t), "zone": sizeof(zone_t), "node": sizeof(node_t),
    "rrset": sizeof(rrset_t),
}
ZONE_FLAGS = {"SIGNED": Z_SIGNED, "EXPIRED": Z_EXPIRED}
FLAGS = {
    "APEX": N_APEX, "CUT": N_CUT, "BELOW_CUT": N_BELOW_CUT, "ENT": N_ENT,
    "WILDCARD_CHILD": N_WILDCARD_CHILD, "WILDCARD": N_WILDCARD, "CNAME": N_CNAME,
    "DNAME": N_DNAME, "NSEC": N_NSEC,
}


cdef class ImageView:
    """A validated, read-only view of a compiled image held in any buffer (bytes, mmap).  full:
    the check level (image_open: 1 every record, 0 tables and checksum, 2 header and zones)."""
    cdef image_t img
    cdef Py_buffer view
    cdef bint has_view
    cdef readonly object owner
    cdef object zslots             # img.zslot's storage (observe.pxi: ZoneStats.label)

    def __cinit__(self, object data, int full=1):
        cdef int rc
        self.has_view = False
        PyObject_GetBuffer(data, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        self.owner = data
        with nogil:
            rc = image_open(&self.img, <const uint8_t*>self.view.buf, <uint64_t>self.view.len, full)
        if rc != 0:
            raise ValueError(f"corrupt or incompatible image (check {-rc} failed)")

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)

    @property
    def size(self):
        return self.img.size

    @property
    def n_zones(self):
        return self.img.n_zones

    @property
    def seed(self):
        """The name hash seed (mapping snapshots hash their names with it)."""
        return self.img.seed

    cdef const image_t* ptr(self):
        return &self.img


cdef class Responder:
    """Per-server answer settings: identity (NSID, id.server), version.bind, limits."""
    cdef rcfg_t cfg

    def __cinit__(self, identity=b"", version=b"pop53", bint chaos=True, bint nsid=True,
                  int edns_max=1232, bint lenient_trailing=False, cookie_secret=None,
                  cookie_secret_previous=None):
        if isinstance(identity, str):
            identity = identity.encode()
        if isinstance(version, str):
            version = version.encode()
        if len(identity) > 255 or len(version) > 255:
            raise ValueError("identity and version are at most 255 bytes")
        if not 512 <= edns_max <= 65535:
            raise ValueError("edns_max must be within 512..65535")
        memset(&self.cfg, 0, sizeof(rcfg_t))
        memcpy(self.cfg.identity, <const char*>identity, len(identity))
        self.cfg.identity_len = len(identity)
        memcpy(self.cfg.version, <const char*>version, len(version))
        self.cfg.version_len = len(version)
        self.cfg.chaos = chaos
        self.cfg.nsid = nsid
        self.cfg.edns_max = edns_max
        self.cfg.lenient_trailing = lenient_trailing
        # DNS COOKIEs (cookie.pxi): on when a 16-byte server secret is given
        for s in (cookie_secret, cookie_secret_previous):
            if s is not None and (not isinstance(s, bytes) or len(s) != 16):
                raise ValueError("a cookie secret is 16 bytes")
        if cookie_secret is not None:
            self.cfg.cookies = True
            memcpy(self.cfg.cookie_secret, <const char*>cookie_secret, 16)
            if cookie_secret_previous is not None:
                self.cfg.cookie_has_prev = True
                memcpy(self.cfg.cookie_prev, <const char*>cookie_secret_previous, 16)
        elif cookie_secret_previous is not None:
            raise ValueError("a previous cookie secret needs a current one")

    @property
    def identity(self):
        return PyBytes_FromStringAndSize(<const char*>self.cfg.identity, self.cfg.identity_len)

    @property
    def edns_max(self):
        return self.cfg.edns_max

    @property
    def cookies(self):
        return bool(self.cfg.cookies)


def server_cookie(bytes secret not None, bytes client_cookie not None, bytes client not None,
                  uint32_t timestamp):
    """The RFC 9018 server cookie (16 bytes) pop53 gives this client cookie at this address
    (4 or 16 bytes) and time; for tests against RFC 9018 Appendix A and for tools."""
    cdef uint8_t out[16]
    if len(secret) != 16 or len(client_cookie) != 8 or len(client) not in (4, 16):
        raise ValueError("a 16-byte secret, an 8-byte client cookie, a 4- or 16-byte address")
    cookie_make(<const uint8_t*>(<char*>secret), <const uint8_t*>(<char*>client_cookie),
                <const uint8_t*>(<char*>client), len(client), timestamp, out)
    return PyBytes_FromStringAndSize(<const char*>out, 16)


def cookie_check(Responder responder not None, bytes cookie not None, bytes client not None,
                 uint32_t now):
    """Whether `cookie` (client + server cookie, as a query carries it) is a valid cookie of
    this responder's for this address at time `now` (the window of RFC 9018 §4.3)."""
    if len(client) not in (4, 16):
        raise ValueError("a 4- or 16-byte address")
    return bool(responder.cfg.cookies) and bool(cookie_valid(
        &responder.cfg, <const uint8_t*>(<char*>cookie), len(cookie),
        <const uint8_t*>(<char*>client), len(client), now))


cdef stats_t _scratch_stats
cdef uint8_t _answer_out[65535]


cdef bytes _packed_client(object client):
    """(address, port) or a packed address -> 4 or 16 bytes, or None (for server cookies)."""
    if client is None:
        return None
    if isinstance(client, bytes):
        return client if len(client) in (4, 16) else None
    host = client[0]
    try:
        return _inet_pton(_AF_INET6 if ":" in host else _AF_INET, host.split("%")[0])
    except (OSError, TypeError, AttributeError):
        return None


cdef object _answer_ptr(const image_t* img, const uint8_t* p, Py_ssize_t n, Responder responder,
                        bint tcp, object client=None, MapSnapshot maps=None):
    # Runs with the GIL held: a single answer costs less than releasing and retaking it.
    cdef uint32_t outlen = 0
    cdef query_t q
    cdef int act
    cdef bytes cl = _packed_client(client) if responder.cfg.cookies or maps is not None else None
    if n > 65535:
        return ACT_DROP, None
    act = core_answer(img, &responder.cfg, p, <uint32_t>n, _answer_out, sizeof(_answer_out), tcp,
                      &outlen, &q, &_scratch_stats,
                      <const uint8_t*>(<char*>cl) if cl is not None else NULL,
                      len(cl) if cl is not None else 0, maps.ptr() if maps is not None else NULL)
    if act == ACT_DROP:
        return act, None
    return act, PyBytes_FromStringAndSize(<const char*>_answer_out, outlen)


def answer(ImageView image, object wire, Responder responder not None, bint tcp=False,
           object client=None, MapSnapshot maps=None):
    """Answer one packet.  Returns (action, reply bytes or None).  Never raises on any bytes.
    client: (address, port) or the packed address, for server cookies and mapping.
    maps: a mapping snapshot (mapped names), or None."""
    cdef Py_buffer buf
    cdef const image_t* img = image.ptr() if image is not None else NULL
    if type(wire) is bytes:
        return _answer_ptr(img, <const uint8_t*>PyBytes_AS_STRING(wire), PyBytes_GET_SIZE(wire),
                           responder, tcp, client, maps)
    PyObject_GetBuffer(wire, &buf, PyBUF_SIMPLE)
    try:
        return _answer_ptr(img, <const uint8_t*>buf.buf, buf.len, responder, tcp, client, maps)
    finally:
        PyBuffer_Release(&buf)


cdef Responder _default_responder = Responder()


def answer_image(object image, object wire, object client, bint tcp=False,
                 Responder responder=None):
    """pop53.answer(): the public entry point, kept thin (no Python work per call beyond the
    argument handling).  image: a pop53.Image or None.  Returns reply bytes or None (drop)."""
    cdef Py_buffer buf
    cdef ImageView view = image.view if image is not None else None
    cdef const image_t* img = view.ptr() if view is not None else NULL
    if responder is None:
        responder = _default_responder
    if type(wire) is bytes:
        return _answer_ptr(img, <const uint8_t*>PyBytes_AS_STRING(wire), PyBytes_GET_SIZE(wire),
                           responder, tcp, client)[1]
    PyObject_GetBuffer(wire, &buf, PyBUF_SIMPLE)
    try:
        return _answer_ptr(img, <const uint8_t*>buf.buf, buf.len, responder, tcp, client)[1]
    finally:
        PyBuffer_Release(&buf)


def bench_answer_batch(ImageView image, list wires, int repeat=100, Responder responder=None,
                       bytes client=None, MapSnapshot maps=None):
    """Time the C loop alone: parse + lookup + write for every packet, `repeat` times.
    Returns nanoseconds per query (monotonic clock).  client: a packed address (server
    cookies are made for it).  For bench/ only."""
    cdef int n = len(wires), i, r
    cdef const uint8_t** bufs = <const uint8_t**>malloc(n * sizeof(uint8_t*))
    cdef uint32_t* lens = <uint32_t*>malloc(n * sizeof(uint32_t))
    cdef uint8_t out[4096]
    cdef uint32_t outlen
    cdef query_t q
    cdef stats_t st
    cdef timespec t0, t1
    cdef rcfg_t* cfg
    cdef const image_t* img = image.ptr()
    cdef const uint8_t* cl = <const uint8_t*>(<char*>client) if client is not None else NULL
    cdef uint32_t cl_len = len(client) if client is not None else 0
    cdef const map_snap_t* mp = maps.ptr() if maps is not None else NULL
    if responder is None:
        responder = Responder()
    cfg = &responder.cfg
    keep = [bytes(w) for w in wires]
    for i in range(n):
        bufs[i] = <const uint8_t*>(<bytes>keep[i])
        lens[i] = len(keep[i])
    memset(&st, 0, sizeof(st))
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for r in range(repeat):
            for i in range(n):
                core_answer(img, cfg, bufs[i], lens[i], out, sizeof(out), False,
                            &outlen, &q, &st, cl, cl_len, mp)
        clock_gettime(CLOCK_MONOTONIC, &t1)
    free(bufs)
    free(lens)
    return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (<double>n * repeat)


def checksum(const uint8_t[::1] buf not None):
    """The image checksum (the header's checksum field counted as zero), for the compiler."""
    cdef uint32_t r
    with nogil:
        r = image_checksum(&buf[0], buf.shape[0])
    return r


def hash_name(const uint8_t[::1] name not None, uint32_t seed):
    """The image's name hash (reverse FNV-1a) of a lowercased wire name, for the compiler."""
    return name_hash(&name[0], <uint32_t>name.shape[0], seed) if name.shape[0] else 0


def fill_table(uint8_t[::1] buf not None, uint32_t table_off, uint32_t mask,
               const uint32_t[::1] offsets not None):
    """Insert nodes (by offset; each node_t carries its hash) into an open-addressing table at
    table_off with mask + 1 slots, linear probing.  For the compiler."""
    cdef uint32_t i, slot, off
    cdef uint32_t* tab = <uint32_t*>(&buf[0] + table_off)
    cdef const node_t* node
    if <uint64_t>table_off + (<uint64_t>mask + 1) * 4 > <uint64_t>buf.shape[0]:
        raise ValueError("table out of bounds")
    if offsets.shape[0] > mask:
        raise ValueError("table too small")
    for i in range(offsets.shape[0]):
        if offsets[i] == 0 or <uint64_t>offsets[i] + sizeof(node_t) > <uint64_t>buf.shape[0]:
            raise ValueError("node offset out of bounds")
    with nogil:
        for i in range(offsets.shape[0]):
            off = offsets[i]
            node = <const node_t*>(&buf[0] + off)
            slot = node.hash & mask
            while tab[slot] != 0:
                slot = (slot + 1) & mask
            tab[slot] = off
