# zonetok.pxi: the master-file tokenizer ZoneScanner (zonescan.pxi) reads through: tokens,
# parentheses, the line count and the errors that name file:line (dns.tokenizer.Tokenizer.get
# is the reference).  Split from the scanner so that each holds one concern.

cdef class ZoneTokenizer:
    """Tokens of one buffer at a time (p..end); `files` and `file_idx` name the file in errors."""
    cdef const unsigned char* p
    cdef const unsigned char* end
    cdef int line
    cdef int multiline
    cdef int rec_line
    cdef int kind
    cdef const unsigned char* ts
    cdef Py_ssize_t tl
    cdef bint tesc
    cdef bint pending
    cdef int file_idx
    cdef public list files

    # -- errors -----------------------------------------------------------------------------
    cdef int fail(self, msg, owner=None) except -1:
        raise ZoneScanError(msg, self.files[self.file_idx], self.rec_line, owner)

    cdef int nul(self) except -1:
        """A raw NUL octet in a token is an error unless written \\000 (RFC 1035 §5.1; NSD cuts
        the name there, Knot rejects the file).  The line is the token's own."""
        raise ZoneScanError("a raw NUL octet; write it as \\000 (RFC 1035 §5.1)",
                            self.files[self.file_idx], self.line, None)

    cdef str tok_text(self):
        return (<const char*>self.ts)[:self.tl].decode("ascii")

    # -- tokenizer (dns.tokenizer.Tokenizer.get) ----------------------------------------------
    cdef inline void skip_ws(self) noexcept:
        cdef int c
        while self.p < self.end:
            c = self.p[0]
            if c == 32 or c == 9:
                self.p += 1
            elif c == 10 and self.multiline:
                self.p += 1
                self.line += 1
            else:
                return

    cdef int tok(self, bint want_leading=False) except -1:
        """Next token into (kind, ts, tl, tesc); returns its kind."""
        cdef const unsigned char* start
        cdef int c
        if self.pending:
            self.pending = False
            if self.kind != ZT_WS or want_leading:
                return self.kind
        start = self.p
        self.skip_ws()
        if want_leading and self.p != start:
            self.kind = ZT_WS
            return ZT_WS
        self.tesc = False
        while True:
            if self.p >= self.end:
                if self.multiline:
                    self.fail("unbalanced parentheses")
                self.kind = ZT_EOF
                self.tl = 0
                return ZT_EOF
            c = self.p[0]
            if c == 40:                              # '('
                self.multiline += 1
                self.p += 1
                self.skip_ws()
                continue
            if c == 41:                              # ')'
                if self.multiline <= 0:
                    self.fail("unbalanced parentheses")
                self.multiline -= 1
                self.p += 1
                self.skip_ws()
                continue
            if c == 10:
                self.p += 1
                self.line += 1
                self.kind = ZT_EOL
                self.tl = 0
                return ZT_EOL
            if c == 59:                              # ';' to the end of the line
                while self.p < self.end and self.p[0] != 10:
                    self.p += 1
                if self.p >= self.end:
                    if self.multiline:
                        self.fail("unbalanced parentheses")
                    self.kind = ZT_EOF
                    self.tl = 0
                    return ZT_EOF
                self.p += 1
                self.line += 1
                if self.multiline:
                    self.skip_ws()
                    continue
                self.kind = ZT_EOL
                self.tl = 0
                return ZT_EOL
            if c == 34:                              # '"'
                self.p += 1
                self.ts = self.p
                while True:
                    if self.p >= self.end:
                        self.fail("unexpected end of input")
                    c = self.p[0]
                    if c == 34:
                        break
                    if c == 10:
                        self.fail("newline in quoted string")
                    if c >= 0x80:
                        raise ZoneScanFallback("non-ASCII text")
                    if c == 0:
                        self.nul()
                    if c == 92:
                        self.tesc = True
                        self.p += 1
                        if self.p >= self.end:
                            self.fail("unexpected end of input")
                        if self.p[0] == 10:
                            self.line += 1
                        elif self.p[0] >= 0x80:
                            raise ZoneScanFallback("non-ASCII text")
                    self.p += 1
                self.tl = self.p - self.ts
                self.p += 1
                self.skip_ws()
                self.kind = ZT_QSTR
                return ZT_QSTR
            self.ts = self.p
            while self.p < self.end:
                c = self.p[0]
                if c == 32 or c == 9 or c == 10 or c == 59 or c == 40 or c == 41 or c == 34:
                    break
                if c >= 0x80:       # dnspython decodes UTF-8 and applies IDNA to names
                    raise ZoneScanFallback("non-ASCII text")
                if c == 0:
                    self.nul()
                if c == 92:
                    self.tesc = True
                    self.p += 1
                    if self.p >= self.end or self.p[0] == 10:
                        self.fail("unexpected end of input")
                    if self.p[0] >= 0x80:
                        raise ZoneScanFallback("non-ASCII text")
                self.p += 1
            self.tl = self.p - self.ts
            self.kind = ZT_WORD
            return ZT_WORD

    cdef int ident(self) except -1:
        if self.tok() != ZT_WORD:
            self.fail("expecting an identifier")
        return 0

    cdef int want_eol(self) except -1:
        cdef int k = self.tok()
        if k != ZT_EOL and k != ZT_EOF:
            self.fail("expected EOL or EOF, got " + self.tok_text())
        return 0
