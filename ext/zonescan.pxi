# zonescan.pxi: an RFC 1035 §5 master-file scanner (issue 15 point 2).
#
# It reads the bytes of a zone file and writes records straight into flat buffers: the owner
# names (one copy per distinct name, found through a C hash table on the lowercased wire name),
# and per record its node index, type, TTL, line, file and RDATA (wire form).  No Python object
# is made per record on the common path; the control plane turns the buffers into numpy arrays
# (pop53.zone.records).  dnspython is the reference: the tokenizer follows dns.tokenizer (and
# dns.zonefile.Reader for directives, TTL and class rules) so the two accept the same text.
# Whatever the fast path is not sure of goes to dnspython record by record (hooks.rdata), and
# whatever changes the meaning of the whole file (non-ASCII text in a token, $UNICODE) raises
# ZoneScanFallback so the caller parses the file with dnspython.  RDATA parsers: zonerdata.pxi.


from posix.mman cimport madvise, MADV_DONTNEED

include "zonelex.pxi"
include "zonetok.pxi"

cdef class ZoneScanner(ZoneTokenizer):
    """Scan master-file bytes for one zone into flat record buffers.

    `hooks` is a control-plane object (pop53.zone.records._Hooks) with: rdata(rdtype, text,
    origin_wire) -> bytes (dnspython for one record; raises ValueError(message)), rdtype(text) ->
    int (-1 unknown), rdclass(text) -> int (-1 not a class), name_error(text, origin_wire) -> str
    (dnspython's reason), name_text(wire) -> str, is_generic(rdtype) -> bool, include_path(name)
    -> str, generate(tokens, implicit_ttl) -> (bytes, bool)."""
    # reader state (dns.zonefile.Reader)
    cdef unsigned char origin[256]
    cdef int origin_len
    cdef unsigned char zorigin[256]
    cdef int zorigin_len
    cdef unsigned char last[256]
    cdef int last_len
    cdef unsigned char nbuf[256]
    cdef long long default_ttl, last_ttl
    cdef bint default_known, default_from_soa, last_known
    cdef int depth, pin_line
    cdef object hooks
    # outputs
    cdef zs_buf_t names, node_off, node_len, r_node, r_type, r_ttl, r_rdoff, r_rdlen, r_line, r_file
    cdef zs_buf_t rdata, rd
    cdef uint64_t* htab      # (hash << 32) | (node index + 1), 0 empty
    cdef size_t hcap, nodes
    cdef size_t count

    def __cinit__(self, bytes origin_wire, object hooks):
        self.zorigin_len = len(origin_wire)
        memcpy(self.zorigin, <const char*>origin_wire, self.zorigin_len)
        memcpy(self.origin, <const char*>origin_wire, self.zorigin_len)
        self.origin_len = self.zorigin_len
        memcpy(self.last, <const char*>origin_wire, self.zorigin_len)   # as dns.zonefile.Reader
        self.last_len = self.zorigin_len
        self.hooks = hooks
        self.files = []

    def __dealloc__(self):
        cdef zs_buf_t* bufs[13]
        bufs[:] = [&self.names, &self.node_off, &self.node_len, &self.r_node, &self.r_type,
                   &self.r_ttl, &self.r_rdoff, &self.r_rdlen, &self.r_line, &self.r_file,
                   &self.rdata, &self.rd, &self.rd]
        for i in range(12):
            free(bufs[i].data)
        free(self.htab)

    # -- output -----------------------------------------------------------------------------
    def result(self):
        """The buffers as bytes: dict of names, node_off (u32), node_len (u8), node (u32),
        type (u16), ttl (u32), rdoff (u32), rdlen (u16), line (u32), file (u16), rdata.
        Called once, after the scan: each buffer is freed as soon as it is copied, so a big
        zone is not held twice at the load's peak (issue 15)."""
        free(self.htab)
        self.htab, self.hcap = NULL, 0
        return {"names": zsb_take(&self.names), "node_off": zsb_take(&self.node_off),
                "node_len": zsb_take(&self.node_len), "node": zsb_take(&self.r_node),
                "type": zsb_take(&self.r_type), "ttl": zsb_take(&self.r_ttl),
                "rdoff": zsb_take(&self.r_rdoff), "rdlen": zsb_take(&self.r_rdlen),
                "line": zsb_take(&self.r_line), "file": zsb_take(&self.r_file),
                "rdata": zsb_take(&self.rdata), "files": list(self.files)}

    cdef uint32_t node_of(self, const unsigned char* w, int n) except 0xFFFFFFFFLL:
        """The node index of wire name w (case-insensitive), adding it when new.  A table slot
        holds the name's hash (high 32 bits) and its index + 1: a probe compares names only on
        equal hashes, and growing the table never hashes a name again (a million-name AXFR
        spent 60% of its parse in this function when the slots held the index alone)."""
        cdef uint32_t h = 2166136261u
        cdef size_t i, slot, cap
        cdef uint32_t idx
        cdef uint64_t e
        cdef uint64_t* nt
        cdef const uint32_t* offs
        cdef const uint8_t* lens
        for i in range(n):
            h = (h ^ <uint32_t>zs_lower(w[i])) * 16777619u
        h = zs_fmix(h)
        if 2 * (self.nodes + 1) > self.hcap:
            cap = self.hcap * 2 if self.hcap else 1024
            nt = <uint64_t*>calloc(cap, sizeof(uint64_t))
            if nt == NULL:
                raise MemoryError()
            for i in range(self.hcap):
                e = self.htab[i]
                if e:
                    slot = <size_t>(e >> 32) & (cap - 1)
                    while nt[slot]:
                        slot = (slot + 1) & (cap - 1)
                    nt[slot] = e
            free(self.htab)
            self.htab = nt
            self.hcap = cap
        offs = <const uint32_t*>self.node_off.data
        lens = <const uint8_t*>self.node_len.data
        slot = h & (self.hcap - 1)
        while self.htab[slot]:
            e = self.htab[slot]
            if <uint32_t>(e >> 32) == h:
                idx = <uint32_t>(e & 0xFFFFFFFFu) - 1
                if lens[idx] == n and zs_name_ieq(self.names.data + offs[idx], w, n):
                    return idx
            slot = (slot + 1) & (self.hcap - 1)
        idx = <uint32_t>self.nodes
        self.htab[slot] = (<uint64_t>h << 32) | (idx + 1)
        if self.names.len > 0xFFFFFF00LL:
            raise ZoneScanError("too many names for one zone", None, self.rec_line, None)
        cdef uint32_t off = <uint32_t>self.names.len
        cdef uint8_t ln = <uint8_t>n
        zsb_put(&self.node_off, &off, 4)
        zsb_put(&self.node_len, &ln, 1)
        zsb_put(&self.names, w, n)
        self.nodes += 1
        return idx

    cdef int emit(self, const unsigned char* owner, int olen, int rtype, long long ttl) except -1:
        return self.emit_at(self.node_of(owner, olen), rtype, ttl)

    cdef int emit_at(self, uint32_t node, int rtype, long long ttl) except -1:
        cdef uint16_t t = <uint16_t>rtype
        cdef uint32_t tt = <uint32_t>ttl
        cdef uint32_t off = <uint32_t>self.rdata.len
        cdef uint16_t rl
        cdef uint32_t ln = <uint32_t>self.rec_line
        cdef uint16_t f = <uint16_t>self.file_idx
        if self.rd.len > 65535:
            self.fail("RDATA too large for the wire format (over 65535 bytes)")
        if self.rdata.len + self.rd.len > 0xFFFFFFFFLL:     # offsets are 32-bit, as the image's
            raise ZoneScanError("too much RDATA for one zone (over 4 GiB)", None, self.rec_line, None)
        rl = <uint16_t>self.rd.len
        zsb_put(&self.r_node, &node, 4)
        zsb_put(&self.r_type, &t, 2)
        zsb_put(&self.r_ttl, &tt, 4)
        zsb_put(&self.r_rdoff, &off, 4)
        zsb_put(&self.r_rdlen, &rl, 2)
        zsb_put(&self.r_line, &ln, 4)
        zsb_put(&self.r_file, &f, 2)
        zsb_put(&self.rdata, self.rd.data, self.rd.len)
        self.count += 1
        return 0

    cdef int name_here(self, const unsigned char* org, int olen, bint owner) except -1:
        """The current token as a name into nbuf; returns its length or raises."""
        cdef int n = zs_name(self.ts, self.tl, org, olen, self.nbuf)
        if n > 0:
            return n
        if n == -2:
            raise ZoneScanFallback("non-ASCII name")
        if n == -3:
            self.fail("a raw NUL byte in " + ("an owner name" if owner else "a name")
                      + "; write it as \\000")
        if n == -4:
            self.fail("no current origin")
        self.fail(self.hooks.name_error((<const char*>self.ts)[:self.tl],
                                        (<const char*>org)[:olen]))

    # -- the reader ---------------------------------------------------------------------------
    def scan(self, data, str filename):
        """Scan one file's bytes (the zone's own file): bytes, or a read-only mmap of a file
        without CR octets, whose pages are dropped from this process as the scan passes them
        (a big file is not held whole while its records are made; issue 15).  Raises
        ZoneScanError or ZoneScanFallback."""
        cdef const unsigned char[::1] view
        cdef Py_ssize_t at = 0, w
        self.files.append(filename)
        self.file_idx = 0
        if isinstance(data, bytes):
            self._scan_buffer(data)
        else:
            view = data
            # checked 16 MiB at a time, each window's pages dropped after: one memchr over a
            # 555 MB signed zone mapped all of it at once (issue 12)
            while at < view.shape[0]:
                w = min(view.shape[0] - at, <Py_ssize_t>16 << 20)
                if memchr(&view[at], 13, w) != NULL:
                    raise ValueError("a mapped zone file must not hold CR octets")
                madvise(<void*>&view[at], w, MADV_DONTNEED)     # at: page-aligned
                at += w
            if view.shape[0]:
                self._scan_text(&view[0], view.shape[0], True)
        return self.count

    cdef int _scan_buffer(self, bytes data) except -1:
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        # CR: Python's universal newlines rewrite CRLF and CR before dnspython sees the text
        if memchr(b, 13, n) != NULL:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            b = <const unsigned char*>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        return self._scan_text(b, n, False)

    cdef int _scan_text(self, const unsigned char* b, Py_ssize_t n, bint mapped) except -1:
        """The reader over b[:n].  mapped: b is the page-aligned start of a file mapping; every
        8 MiB the pages before the current record are dropped (MADV_DONTNEED: a later touch
        would read them again from the page cache; the scan never goes back before a record)."""
        cdef int k
        cdef const unsigned char* dropped = b
        cdef size_t cut
        self.p = b
        self.end = b + n
        self.line = 1
        self.multiline = 0
        self.pending = False
        while True:
            self.rec_line = self.line
            if mapped and self.p - dropped > (8 << 20):
                cut = <size_t>(self.p - dropped) & ~(<size_t>0xFFFF)
                madvise(<void*>dropped, cut, MADV_DONTNEED)
                dropped += cut
            k = self.tok(True)
            if k == ZT_EOF:
                return 0
            if k == ZT_EOL:
                continue
            if k == ZT_WORD and self.ts[0] == 36:       # '$'
                self.directive()
                continue
            self.rr_line()

    cdef int directive(self) except -1:
        cdef int n
        if zs_ieq(self.ts, self.tl, b"$TTL"):
            if self.tok() != ZT_WORD:
                self.fail("bad $TTL")
            self.default_ttl = zs_ttl(self.ts, self.tl)
            if self.default_ttl < 0:
                self.fail("bad TTL " + self.tok_text())
            self.default_known = True
            self.default_from_soa = False
            self.want_eol()
        elif zs_ieq(self.ts, self.tl, b"$ORIGIN"):
            self.ident()
            n = self.name_here(self.origin, self.origin_len, False)
            memcpy(self.origin, self.nbuf, n)
            self.origin_len = n
            self.want_eol()
        elif zs_ieq(self.ts, self.tl, b"$INCLUDE"):
            self.do_include()
        elif zs_ieq(self.ts, self.tl, b"$GENERATE"):
            self.generate()
        elif zs_ieq(self.ts, self.tl, b"$UNICODE"):
            raise ZoneScanFallback(self.tok_text())
        else:
            self.fail(f"zone file directive '{self.tok_text().upper()}' is not allowed")
        return 0

    cdef int do_include(self) except -1:
        """$INCLUDE file [origin] (RFC 1035 §5.1): the included text starts with the given origin
        (default: the current one); the reader's state is restored after it, as dnspython does.
        The file name is taken relative to the working directory, as dnspython does."""
        cdef unsigned char saved_origin[256]
        cdef unsigned char saved_last[256]
        cdef int so_len = self.origin_len, sl_len = self.last_len
        cdef const unsigned char* sp
        cdef const unsigned char* se
        cdef int sline, smulti, sfile, k, line = self.rec_line
        cdef long long sdt = self.default_ttl, slt = self.last_ttl
        cdef int n = 0
        cdef bint sdk = self.default_known, sds = self.default_from_soa, slk = self.last_known
        k = self.tok()
        fname = self.tok_text() if k == ZT_WORD or k == ZT_QSTR else "\n"
        memcpy(saved_origin, self.origin, so_len)
        memcpy(saved_last, self.last, sl_len)
        k = self.tok()
        if k == ZT_WORD:
            n = self.name_here(self.origin, self.origin_len, False)
            self.want_eol()
        elif k != ZT_EOL and k != ZT_EOF:
            self.fail("bad origin in $INCLUDE")
        if self.depth >= ZS_MAX_INCLUDE:
            self.fail("$INCLUDE nested too deep")
        try:
            with open(self.hooks.include_path(fname), "rb") as f:
                text = f.read()
        except OSError as exc:
            raise ZoneScanError(f"cannot read included file: {exc.strerror}: {exc.filename}",
                                self.files[self.file_idx], line, None) from None
        try:
            text.decode("utf-8")        # dnspython reads an included file as strict UTF-8
        except UnicodeDecodeError:
            raise ZoneScanFallback("included file is not UTF-8") from None
        if n:
            memcpy(self.origin, self.nbuf, n)
            self.origin_len = n
        sp, se, sline, smulti, sfile = self.p, self.end, self.line, self.multiline, self.file_idx
        self.files.append(fname)
        self.file_idx = len(self.files) - 1
        self.depth += 1
        self._scan_buffer(text)
        self.depth -= 1
        self.p, self.end, self.line, self.multiline, self.file_idx = sp, se, sline, smulti, sfile
        self.pending = False
        memcpy(self.origin, saved_origin, so_len)
        self.origin_len = so_len
        memcpy(self.last, saved_last, sl_len)
        self.last_len = sl_len
        self.default_ttl, self.default_known, self.default_from_soa = sdt, sdk, sds
        self.last_ttl, self.last_known = slt, slk
        return 0

    cdef int generate(self) except -1:
        """$GENERATE range lhs [ttl] [class] type rhs (BIND; as dns.zonefile.Reader does it): the
        control plane expands the templates into plain records, which are scanned here with the
        directive's line; last name and TTL carry on as dnspython's reader leaves them."""
        cdef list toks = []
        cdef int k, dk, line = self.rec_line
        cdef const unsigned char* sp
        cdef const unsigned char* se
        cdef int sline, smulti
        cdef long long slt = self.last_ttl
        cdef bint slk = self.last_known
        while True:
            k = self.tok()
            if k == ZT_EOL or k == ZT_EOF:
                break
            toks.append((k == ZT_WORD, self.tok_text()))
        dk = k
        try:
            text, explicit_ttl = self.hooks.generate(toks, self.implicit_ttl())
        except ValueError as exc:
            self.fail(str(exc))
        sp, se, sline, smulti = self.p, self.end, self.line, self.multiline
        self.pin_line = line
        try:
            self.p = <const unsigned char*>PyBytes_AS_STRING(text)
            self.end = self.p + PyBytes_GET_SIZE(text)
            self.multiline = 0
            while True:
                k = self.tok(True)
                if k == ZT_EOF:
                    break
                if k != ZT_EOL:
                    self.rr_line()
        finally:
            self.pin_line = 0
        self.p, self.end, self.line, self.multiline = sp, se, sline, smulti
        self.pending = dk == ZT_EOF        # the directive's own line ended the file
        if not explicit_ttl:
            self.last_ttl, self.last_known = slt, slk
        return 0

    cdef long long implicit_ttl(self):
        if self.last_known and (not self.default_known or self.default_from_soa):
            return self.last_ttl
        if self.default_known:
            return self.default_ttl
        return -1

    cdef int rr_line(self) except -1:
        """One record (dns.zonefile.Reader._rr_line): [owner] [ttl] [class] type rdata."""
        cdef int k, n, rtype, cls
        cdef long long ttl = -1, t
        cdef const unsigned char* rd_p
        cdef int rd_line, rd_multi, rc
        if self.pin_line:
            self.rec_line = self.pin_line
        if self.kind == ZT_WS:
            k = self.tok()
            if k == ZT_EOL or k == ZT_EOF:
                if k == ZT_EOF:
                    self.pending = True
                return 0
            self.pending = True
            if self.last_len == 0:
                self.fail("the last used name is undefined")
        else:
            if self.kind != ZT_WORD:
                self.fail("expecting an identifier")
            n = self.name_here(self.origin, self.origin_len, True)
            memcpy(self.last, self.nbuf, n)
            self.last_len = n
        if not zs_name_under(self.last, self.last_len, self.zorigin, self.zorigin_len):
            zone = self.hooks.name_text((<const char*>self.zorigin)[:self.zorigin_len])
            self.fail("out-of-zone data (the zone is " + zone + ")",
                      self.hooks.name_text((<const char*>self.last)[:self.last_len]))
        self.ident()
        t = zs_ttl(self.ts, self.tl)
        if t >= 0:
            ttl = self.last_ttl = t
            self.last_known = True
            self.ident()
        cls = self.rdclass()
        if cls >= 0:
            if cls != 1:
                self.fail("RR class is not zone's class")
            self.ident()
        if ttl < 0:
            t = zs_ttl(self.ts, self.tl)
            if t >= 0:
                ttl = self.last_ttl = t
                self.last_known = True
                self.ident()
            else:
                ttl = self.implicit_ttl()
        rtype = zs_type_fast(self.ts, self.tl)
        if rtype < 0:
            rtype = self.hooks.rdtype(self.tok_text())
            if rtype < 0:
                self.fail(f"unknown rdatatype '{self.tok_text()}'")
        rd_p, rd_line, rd_multi = self.p, self.line, self.multiline
        self.rd.len = 0
        rc = zr_rdata(self, rtype)
        if rc != 0:
            # not sure: dnspython parses this record's text (and gives its error message)
            self.p, self.line, self.multiline, self.pending = rd_p, rd_line, rd_multi, False
            self.rdata_fallback(rtype, rd_multi)
        if rtype == 6 and not self.default_known:
            # pre-RFC 2308 files: the SOA MINIMUM is the default TTL (dnspython does the same)
            self.default_ttl = zr_u32_at(self.rd.data + self.rd.len - 4)
            self.default_known = True
            self.default_from_soa = True
            if ttl < 0:
                ttl = self.implicit_ttl()
        if ttl < 0:
            self.fail("Missing default TTL value")
        self.emit(self.last, self.last_len, rtype, ttl)
        return 0

    cdef int rdclass(self) except -2:
        """The current token as a class: 1 for IN, another value for another class, -1 when it
        is not a class (dnspython then reads it as the TTL or the type)."""
        if zs_ieq(self.ts, self.tl, b"IN"):
            return 1
        if ((self.tl > 5 and zs_ieq(self.ts, 5, b"CLASS")) or zs_ieq(self.ts, self.tl, b"CH")
                or zs_ieq(self.ts, self.tl, b"CHAOS") or zs_ieq(self.ts, self.tl, b"HS")
                or zs_ieq(self.ts, self.tl, b"HESIOD") or zs_ieq(self.ts, self.tl, b"NONE")
                or zs_ieq(self.ts, self.tl, b"ANY") or zs_ieq(self.ts, self.tl, b"INTERNET")
                or zs_ieq(self.ts, self.tl, b"RESERVED0")):
            return self.hooks.rdclass(self.tok_text())
        return -1

    cdef int rdata_fallback(self, int rtype, int multi) except -1:
        """Hand this record's RDATA text (up to the end of the record) to dnspython."""
        cdef const unsigned char* start = self.p
        cdef const unsigned char* stop
        cdef int k
        while True:
            k = self.tok()
            if k == ZT_EOL or k == ZT_EOF:
                break
        stop = self.p - 1 if k == ZT_EOL else self.p      # up to the newline (a comment is fine)
        if k == ZT_EOF:
            self.pending = True
        text = "(" * multi + (<const char*>start)[:stop - start].decode("ascii")
        try:
            wire = self.hooks.rdata(rtype, text, (<const char*>self.origin)[:self.origin_len])
        except ValueError as exc:
            self.fail(str(exc.args[0]) if exc.args else "syntax error")
        self.rd.len = 0
        zsb_put(&self.rd, <const char*>wire, len(wire))
        return 0


include "zonerdata.pxi"
