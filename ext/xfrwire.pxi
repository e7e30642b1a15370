# xfrwire.pxi: AXFR responses (RFC 5936) parsed from wire straight into the scanner's record
# columns (pop53.zone.records.Records), issue 15 point 3: no dnspython object per record.  Names
# are decompressed (RFC 1035 §4.1.4) in owners and in the RDATA of the types RFC 3597 §4 lets a
# sender compress; RDATA of the common types is checked here as dnspython's parsers check it; any
# other type goes to a hook (dnspython, one record at a time), as the zone-file scanner does.
# TSIG is verified by the caller (pop53.xfr.records) over the raw messages: this only finds it.

class XfrWireError(Exception):
    """A malformed transfer message (the caller's FormError)."""


cdef int xw_name(const uint8_t* m, Py_ssize_t mlen, Py_ssize_t* pos, uint8_t* out) except -1:
    """Read a (possibly compressed) name at *pos into out (uncompressed wire form, case kept);
    *pos moves past it.  Returns its length.  Pointers must point backwards (no loops)."""
    cdef Py_ssize_t p = pos[0], lim = p, n = 0, q
    cdef bint jumped = False
    cdef uint8_t c
    while True:
        if p >= mlen:
            raise XfrWireError("name past the end of the message")
        c = m[p]
        if c & 0xC0 == 0xC0:
            if p + 1 >= mlen:
                raise XfrWireError("bad compression pointer")
            if not jumped:
                pos[0] = p + 2
                jumped = True
            q = ((c & 0x3F) << 8) | m[p + 1]
            if q >= lim:
                raise XfrWireError("bad compression pointer")
            lim = q
            p = q
            continue
        if c & 0xC0:
            raise XfrWireError("unknown label type")
        if n + c + 1 > 255:
            raise XfrWireError("name too long")
        if p + 1 + c > mlen:
            raise XfrWireError("name past the end of the message")
        memcpy(out + n, m + p, c + 1)
        n += c + 1
        p += c + 1
        if c == 0:
            if not jumped:
                pos[0] = p
            return <int>n


cdef inline bint xw_same_name(const uint8_t* a, int an, const uint8_t* b, int bn) noexcept:
    cdef int i
    if an != bn:
        return False
    for i in range(an):
        if zs_lower(a[i]) != zs_lower(b[i]):
            return False
    return True


cdef class XfrReader:
    """One AXFR's records, message by message: feed(msg) parses a response message of the
    transfer and returns a dict of what the caller checks (header, question, TSIG place, whether
    the closing SOA came).  result() gives the columns (ZoneScanner.result's form)."""
    cdef ZoneScanner out
    cdef object hooks
    cdef uint8_t zone[256]
    cdef int zone_len
    cdef bint started, done
    cdef uint32_t serial
    cdef readonly uint64_t records
    # IXFR (RFC 1995 §4): ixfr set; client serial; style 0 undecided, 1 AXFR-style, 2
    # incremental, 3 up to date; step_new: the serial the current step ends at
    cdef bint ixfr
    cdef uint32_t client, step_new
    cdef readonly int style
    cdef int phase              # incremental: 0 deletions, 1 additions
    # the previous record's owner as sent and its node: a transfer sends a name's records
    # together, so most owners skip the name table
    cdef uint8_t prev[256]
    cdef int prev_len
    cdef uint32_t prev_node

    def __init__(self, bytes origin_wire, str source, object hooks, client_serial=None):
        """client_serial: None for an AXFR; the serial of our version for an IXFR, whose every
        record (the SOAs that open each step's deletions and additions too) is kept in
        arrival order; the caller splits them into steps (pop53.xfr.ixfr_records)."""
        self.ixfr = client_serial is not None
        self.client = <uint32_t>(client_serial or 0)
        self.out = ZoneScanner(origin_wire, hooks)
        self.out.files.append(source)
        self.hooks = hooks
        self.zone_len = len(origin_wire)
        memcpy(self.zone, PyBytes_AS_STRING(origin_wire), self.zone_len)

    def result(self):
        return self.out.result()

    cdef int _rdata(self, const uint8_t* m, Py_ssize_t mlen, Py_ssize_t p, int rdlen,
                    int rtype) except -1:
        """This record's RDATA, uncompressed and checked, into out.rd."""
        cdef zs_buf_t* rd = &self.out.rd
        cdef Py_ssize_t end = p + rdlen, q
        cdef uint8_t nm[256]
        cdef int n, i, fixed = -1
        rd.len = 0
        if rtype == 1 or rtype == 28:               # A, AAAA (RFC 1035 §3.4.1, RFC 3596)
            if rdlen != (4 if rtype == 1 else 16):
                raise XfrWireError(f"bad {'A' if rtype == 1 else 'AAAA'} RDATA length {rdlen}")
            zsb_put(rd, m + p, rdlen)
            return 0
        if rtype in (2, 3, 4, 5, 7, 8, 9, 12, 39):  # one name (DNAME: decompressed if sent so)
            q = p
            n = xw_name(m, mlen, &q, nm)
            if q != end:
                raise XfrWireError("RDATA length mismatch")
            zsb_put(rd, nm, n)
            return 0
        if rtype in (15, 18, 21, 36):               # MX, AFSDB, RT, KX: u16 + name
            fixed = 2
        elif rtype == 33:                           # SRV: 3 x u16 + name (RFC 2782)
            fixed = 6
        if fixed >= 0:
            if rdlen < fixed + 1:
                raise XfrWireError("RDATA too short")
            zsb_put(rd, m + p, fixed)
            q = p + fixed
            n = xw_name(m, mlen, &q, nm)
            if q != end:
                raise XfrWireError("RDATA length mismatch")
            zsb_put(rd, nm, n)
            return 0
        if rtype == 6:                              # SOA: two names + 5 x u32
            q = p
            for i in range(2):
                n = xw_name(m, mlen, &q, nm)
                zsb_put(rd, nm, n)
            if end - q != 20:
                raise XfrWireError("bad SOA RDATA length")
            zsb_put(rd, m + q, 20)
            return 0
        if rtype == 16:                             # TXT: one or more <character-string>s
            q = p
            if rdlen == 0:
                raise XfrWireError("empty TXT RDATA")
            while q < end:
                q += 1 + m[q]
            if q != end:
                raise XfrWireError("TXT string past its RDATA")
            zsb_put(rd, m + p, rdlen)
            return 0
        # anything else: dnspython's parser (it decompresses what it may and checks the rest)
        try:
            w = self.hooks.wire_rdata(rtype, PyBytes_FromStringAndSize(<const char*>m, mlen), p, rdlen)
        except Exception as exc:  # noqa  (dnspython raises many kinds: all are a bad record)
            raise XfrWireError(f"bad {rtype} RDATA: {exc}") from None
        zsb_put(rd, PyBytes_AS_STRING(w), len(w))
        return 0

    cdef bint _ixfr_soa(self, uint32_t serial) except -1:
        """An SOA of the zone after the first one in an incremental answer (RFC 1995 §4): the
        old SOA opening a step's deletions, the new SOA opening its additions, or the closing
        SOA.  Returns True when it ends the transfer (it is then not kept)."""
        if self.style == 0:
            if serial != self.client:
                raise XfrWireError(f"IXFR starts at serial {serial}, ours is {self.client}")
            self.style, self.phase = 2, 0
        elif self.phase == 0:
            self.phase = 1
            self.step_new = serial
        elif serial == self.serial and self.step_new == self.serial:
            self.done = True
            return True
        elif serial != self.step_new:
            raise XfrWireError(f"IXFR step starts at serial {serial} after a step to "
                               f"{self.step_new}")
        else:
            self.phase = 0
        return False

    def feed(self, bytes msg):
        """Parse one response message.  Returns {"id", "flags", "qname" (wire or None), "qtype",
        "qclass", "tsig" (start of the TSIG RR or -1), "tsig_owner_end", "done"}."""
        cdef const uint8_t* m = <const uint8_t*>PyBytes_AS_STRING(msg)
        cdef Py_ssize_t mlen = len(msg), p = 12, rstart, tsig = -1
        cdef int qd, an, ns, ar, i, n, rtype, rclass, rdlen, sec
        cdef uint32_t ttl, serial
        cdef uint8_t nm[256]
        cdef object qname = None
        cdef int qtype = -1, qclass = -1
        if mlen < 12:
            raise XfrWireError("short header")
        qd, an = (m[4] << 8) | m[5], (m[6] << 8) | m[7]
        ns, ar = (m[8] << 8) | m[9], (m[10] << 8) | m[11]
        for i in range(qd):
            n = xw_name(m, mlen, &p, nm)
            if p + 4 > mlen:
                raise XfrWireError("short question")
            if i == 0:
                qname = PyBytes_FromStringAndSize(<const char*>nm, n)
                qtype, qclass = (m[p] << 8) | m[p + 1], (m[p + 2] << 8) | m[p + 3]
            p += 4
        for sec in range(3):
            for i in range((an, ns, ar)[sec]):
                rstart = p
                n = xw_name(m, mlen, &p, nm)
                if p + 10 > mlen:
                    raise XfrWireError("short record")
                rtype, rclass = (m[p] << 8) | m[p + 1], (m[p + 2] << 8) | m[p + 3]
                ttl = rd32(m + p + 4)
                rdlen = (m[p + 8] << 8) | m[p + 9]
                p += 10
                if p + rdlen > mlen:
                    raise XfrWireError("RDATA past the end of the message")
                if sec == 2:
                    if rtype == 250:
                        if i != ar - 1:
                            raise XfrWireError("TSIG is not the last record")
                        tsig = rstart
                    p += rdlen
                    continue
                if sec == 1:                        # authority: nothing of the zone's (RFC 5936)
                    p += rdlen
                    continue
                if self.done:
                    raise XfrWireError("records after the closing SOA")
                if rclass != 1:
                    raise XfrWireError(f"class {rclass} RR in transfer")
                if rtype in (41, 250, 251, 252, 255):
                    raise XfrWireError(f"meta type {rtype} in transfer")
                if ttl > 0x7FFFFFFF:                # RFC 2181 §8 (dnspython reads it as 0)
                    ttl = 0
                self._rdata(m, mlen, p, rdlen, rtype)
                p += rdlen
                if rtype == 6 and xw_same_name(nm, n, self.zone, self.zone_len):
                    serial = rd32(self.out.rd.data + self.out.rd.len - 20)
                    if not self.started:
                        self.started = True
                        self.serial = serial
                        if self.ixfr and not xw_serial_gt(serial, self.client):
                            self.style = 3              # up to date: our SOA alone
                            self.done = True
                            continue
                    elif self.ixfr and self.style != 1:
                        if self._ixfr_soa(serial):
                            continue
                    else:
                        if serial != self.serial:    # an IXFR-style answer, or a broken stream
                            raise XfrWireError("unexpected SOA in AXFR (serial "
                                               f"{serial}, started with {self.serial})")
                        self.done = True            # the closing SOA is not a record of the zone
                        continue
                elif not self.started:
                    raise XfrWireError("first record of an AXFR is not the zone's SOA")
                elif self.ixfr and self.style == 0:
                    self.style = 1                      # AXFR-style answer (RFC 1995 §4)
                if not xw_is_sub(nm, n, self.zone, self.zone_len):
                    raise XfrWireError("out-of-zone data in transfer: "
                                       + self.hooks.name_text(PyBytes_FromStringAndSize(<const char*>nm, n)))
                if n != self.prev_len or memcmp(nm, self.prev, n) != 0:
                    self.prev_node = self.out.node_of(nm, n)
                    memcpy(self.prev, nm, n)
                    self.prev_len = n
                self.out.emit_at(self.prev_node, rtype, ttl)
                self.records += 1
        if p != mlen:
            raise XfrWireError("trailing junk after the message")
        return {"id": (m[0] << 8) | m[1], "flags": (m[2] << 8) | m[3], "qname": qname,
                "qtype": qtype, "qclass": qclass, "tsig": tsig, "done": self.done}


cdef inline bint xw_serial_gt(uint32_t a, uint32_t b) noexcept:
    """a > b in RFC 1982 serial arithmetic."""
    return a != b and <uint32_t>(a - b) < 0x80000000u


cdef bint xw_is_sub(const uint8_t* nm, int n, const uint8_t* z, int zn) noexcept:
    """Whether nm is zn's name or below it (label-aligned suffix, case-insensitive)."""
    cdef int p = 0
    while p < n:
        if n - p == zn and xw_same_name(nm + p, zn, z, zn):
            return True
        if nm[p] == 0:
            return False
        p += nm[p] + 1
    return False
