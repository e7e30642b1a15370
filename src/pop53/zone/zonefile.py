"""Zone loading and validation.

Master files are read by the Cython scanner (ext/zonescan.pxi via pop53.zone.records, checks in
pop53.zone.checks), with dnspython's reader as the reference and the fallback (this module's
`zone_from_text`); this module adds the checks an authoritative server needs before a zone may
be compiled, and makes every error name the file, the line and the owner.  The same checks run
on zones that arrive by transfer (`zone_from_dnspython`), so a bad update is rejected exactly
like a bad file.
"""
from __future__ import annotations

import builtins
import hashlib
import os
import re
import threading
import time

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.zone
import dns.zonefile

from pop53.errors import ZoneError
from pop53.zone import bigfile

# Types that may sit at a delegation point beside NS (RFC 4035 §2.4: DS, RRSIG, NSEC); A/AAAA
# there are glue when the cut's own name is a name server target.
_AT_CUT_OK = {dns.rdatatype.NS, dns.rdatatype.DS, dns.rdatatype.RRSIG, dns.rdatatype.NSEC,
              dns.rdatatype.A, dns.rdatatype.AAAA}
_GLUE = {dns.rdatatype.A, dns.rdatatype.AAAA}
# DNSSEC records allowed beside a CNAME (RFC 2181 §10.1, RFC 4035 §2.5).
_WITH_CNAME_OK = {dns.rdatatype.CNAME, dns.rdatatype.RRSIG, dns.rdatatype.NSEC}

_SINGLETONS = {dns.rdatatype.CNAME, dns.rdatatype.DNAME, dns.rdatatype.SOA}

_ORIGIN_RE = re.compile(r"^\$ORIGIN\s+(\S+)", re.MULTILINE | re.IGNORECASE)
_SOA_RE = re.compile(r"^(\S+\.)\s+(?:[^;\n]*\s)?SOA\s", re.MULTILINE | re.IGNORECASE)
_INCLUDE_RE = re.compile(r'^\$INCLUDE\s+("[^"\n]*"|\S+)', re.MULTILINE | re.IGNORECASE)
# the same on the file's bytes (no decoded copy of a 50 MB file just to look for these)
_ORIGIN_RE_B = re.compile(_ORIGIN_RE.pattern.encode(), re.MULTILINE | re.IGNORECASE)
_SOA_RE_B = re.compile(_SOA_RE.pattern.encode(), re.MULTILINE | re.IGNORECASE)
_INCLUDE_RE_B = re.compile(_INCLUDE_RE.pattern.encode(), re.MULTILINE | re.IGNORECASE)


def _searchable(data: bytes):
    """What the regexes above search: the bytes, or with a CR in them the text as read in text
    mode (universal newlines)."""
    if not isinstance(data, bytes):   # a mapping: _read found no CR in it
        return data
    if data.find(b"\r") >= 0:       # find: `in` walks an mmap item by item
        return data.decode("utf-8", "surrogateescape").replace("\r\n", "\n").replace("\r", "\n")
    return data


def _as_text(b) -> str:
    return b if isinstance(b, str) else b.decode("utf-8", "surrogateescape")


class _OutOfZone(Exception):
    pass


# $INCLUDE names resolve against the zone directory ([server] zone_dir; issue 14 point 9), not
# the working directory.  dnspython opens included files with the builtin open(), its module's
# only use of it, so that name is pointed at a resolver that reads the load in progress in this
# thread (loads run in several threads: reloads, transfers).
_include = threading.local()


def _open_include(name, *args, **kwargs):
    return builtins.open(_resolve(name, getattr(_include, "dir", None)), *args, **kwargs)


def _resolve(name: str, include_dir: str | None) -> str:
    return os.path.join(include_dir, name) if include_dir else name


dns.zonefile.open = _open_include


class _RawNul(Exception):
    """A raw NUL octet at file:line."""

    def __init__(self, file: str, line: int):
        super().__init__(file, line)
        self.file, self.line = file, line


class _Reader(dns.zonefile.Reader):
    """dnspython's reader, except that out-of-zone records are an error instead of being
    skipped in silence (the reader "eats" the line only in that case), and so is a raw NUL."""

    start_line = None
    nul_at = None

    @property
    def tok(self):
        return self._tok

    @tok.setter
    def tok(self, tok):
        # Every tokenizer the reader uses, $INCLUDEd files' too.  dnspython keeps a raw NUL
        # octet as a label or string octet (NSD cuts the name there, Knot rejects the file):
        # it is an error unless written \000 (RFC 1035 §5.1), found by the token that holds it.
        get = tok.get

        def get_checked(*args, **kwargs):
            token = get(*args, **kwargs)
            if "\x00" in token.value and not token.is_comment():
                # the newline that ended the token is read (counted) and put back; remembered
                # because dnspython rewrites exceptions inside RDATA into a SyntaxError
                self.nul_at = (tok.filename, tok.line_number - (tok.ungotten_char == "\n"))
                raise _RawNul(*self.nul_at)
            return token

        tok.get = get_checked
        self._tok = tok

    def _eat_line(self):
        raise _OutOfZone(self.last_name)

    def _rr_line(self):
        # the line a record starts on (the tokenizer is past its end when errors surface)
        self.start_line = self.tok.line_number
        return super()._rr_line()

    def where(self):
        fname, line = self.tok.where()
        return fname, self.start_line or line


class ZoneData:
    """A validated zone: its records, as a dnspython zone (absolute names) and/or in the flat
    form the scanner makes (`columns`, pop53.zone.records), plus where each RRset came from.
    A zone read by the scanner builds its dnspython zone only when something asks for it
    (transfers out, incremental updates): the compiler reads `columns`."""

    def __init__(self, origin: dns.name.Name, zone: dns.zone.Zone | None = None,
                 source: str = "<string>", lines: dict | None = None,
                 warnings: list | None = None, files: dict | None = None,
                 seconds: float = 0.0, columns=None):
        self.origin = origin
        self._zone = zone
        self.source = source
        self.lines = lines if lines is not None else {}  # (Name, rdatatype) -> line in `source`
        self.warnings = warnings if warnings is not None else []
        # every file read for it (the master file and its $INCLUDEs) -> SHA-256 of its content:
        # the saved image is reused only while all of them are unchanged (issue 14 point 9)
        self.files = files if files is not None else {}
        self.seconds = seconds     # how long reading and checking the file took
        self.columns = columns     # pop53.zone.records.Records, when the scanner read it

    def __repr__(self) -> str:
        return f"ZoneData({self.origin}, {self.source!r})"

    @property
    def zone(self) -> dns.zone.Zone:
        if self._zone is None and self.columns is not None:
            self._zone = self.columns.to_dnspython(self.origin)
        return self._zone

    @property
    def records(self) -> int:
        if self._zone is None and self.columns is not None:
            return len(self.columns)
        return sum(len(rds) for node in self.zone.nodes.values() for rds in node.rdatasets)

    def summary(self) -> dict:
        """What a load log line and the serial check need (JSON-able: the compiler child
        reports it)."""
        return {"serial": self.serial, "records": self.records, "seconds": self.seconds,
                "files": self.files}

    @property
    def serial(self) -> int:
        if self._zone is None and self.columns is not None:
            from pop53.zone.checks import soa_serial
            return soa_serial(self.columns, self.origin)
        return self.zone.get_soa().serial

    def where(self, name: dns.name.Name, rdtype: int | None = None) -> int | None:
        if rdtype is not None and (name, rdtype) in self.lines:
            return self.lines[(name, rdtype)]
        for (n, _t), line in self.lines.items():
            if n == name:
                return line
        return None


def guess_file_origin(path: str, chunk: int = 1 << 20) -> dns.name.Name:
    """_guess_origin of the file at path (as text mode reads it), a chunk of lines at a time:
    the first $ORIGIN, else the first SOA with an absolute owner.  A big file is never held
    whole (`pop53 serve --zone FILE` held a million-name signed zone twice, as bytes and as
    text, before its compile: issue 12)."""
    soa = None
    carry = ""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        while True:
            block = f.read(chunk)
            text = carry + block
            end = text.rfind("\n") + 1 if block else len(text)     # whole lines, all at EOF
            pos = text.find("$", 0, end)     # find: memchr speed; the regex tries every line
            while pos != -1:
                m = _ORIGIN_RE.match(text, pos, end) if pos == 0 or text[pos - 1] == "\n" \
                    else None
                if m:
                    return dns.name.from_text(m.group(1))
                pos = text.find("$", pos + 1, end)
            if soa is None:
                soa = _SOA_RE.search(text, 0, end)
                soa = soa and soa.group(1)
            if not block:
                break
            # the last whole line again with the rest: a match that spans the cut is found
            carry = text[text.rfind("\n", 0, max(end - 1, 0)) + 1:]
    if soa:
        return dns.name.from_text(soa)
    return _guess_origin("", path)       # its error


def _guess_origin(text, path: str) -> dns.name.Name:
    """From $ORIGIN or an absolute SOA owner; `text` is str or (no CR in it) the file's bytes."""
    b = not isinstance(text, str)
    if b:                           # from each line-starting "$" (a mapping: a window at a time)
        m = next(filter(None, (_ORIGIN_RE_B.match(text, p) for p in bigfile.line_dollars(text))),
                 None)
    else:
        m = _ORIGIN_RE.search(text)
    if m:
        return dns.name.from_text(_as_text(m.group(1)))
    m = (_SOA_RE_B if b else _SOA_RE).search(text)
    if m:
        return dns.name.from_text(_as_text(m.group(1)))
    raise ZoneError("cannot tell the zone's origin: no $ORIGIN and no SOA with an absolute owner; "
                    "give the zone name explicitly", file=path)


def _digest(data) -> str:
    return hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else bigfile.sha256(data)


def _included(text, out: dict, include_dir: str | None, depth: int = 0) -> None:
    """Add the files `text` $INCLUDEs, recursively, to out {absolute path: SHA-256, or None
    when unreadable}.  Relative names resolve against include_dir (else the working directory).
    `text` is str or (no CR in it) the file's bytes."""
    for m in _include_matches(text):
        path = os.path.abspath(_resolve(_as_text(m.group(1)).strip('"'), include_dir))
        if path in out or depth > 16:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            out[path] = None
            continue
        out[path] = _digest(data)
        _included(_searchable(data), out, include_dir, depth + 1)


def _include_matches(text):
    """The $INCLUDE lines of `text`.  On bytes, found from each "$" (memchr speed) rather than a
    multi-line regex over the whole file: 0.6 s for a 25 MB zone, paid by every reload that
    hashes it (issue 14 point 2)."""
    if isinstance(text, str):
        yield from _INCLUDE_RE.finditer(text)
        return
    for pos in bigfile.line_dollars(text):
        if text[pos:pos + 8].lower() == b"$include":
            m = _INCLUDE_RE_B.match(text, pos)
            if m:
                yield m


def file_digests(path: str | os.PathLike, include_dir: str | None = None) -> dict:
    """{absolute path: SHA-256 or None} of a master file and everything it $INCLUDEs: what a
    load of it reads, for the saved-image check (also for a file that does not load)."""
    out: dict = {}
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {path: None}
    out[path] = _digest(data)
    _included(_searchable(data), out, include_dir)
    return out


_MAP_AT_LEAST = None       # off unless map_big_files() (see there)


def map_big_files(at_least: int = 1 << 20) -> None:
    """Read master files of `at_least` bytes through a mapping (see _read).  Only for processes
    that may die of a file truncated while it is read (SIGBUS): the compiler child (its parent
    then compiles in-process) and `pop53 check`; never the server."""
    global _MAP_AT_LEAST
    _MAP_AT_LEAST = at_least


def _read(path: str):
    """A master file's content: bytes, or for a big file without CR octets a read-only mmap
    when map_big_files() is on (the scanner drops its pages as it passes them, so a 50 MB file
    is not held whole while its records are made; issue 15)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if _MAP_AT_LEAST is not None and size >= _MAP_AT_LEAST:
            import mmap
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if not bigfile.has_cr(m):
                return m
            m.close()
        return f.read()


def _drop_pages(raw) -> None:
    """Drop a mapped file's pages from this process after a pass over it (the digest, the
    searches): they are read again from the page cache when the scanner gets there."""
    if not isinstance(raw, bytes):
        import mmap
        raw.madvise(mmap.MADV_DONTNEED)


def load_zone_file(path: str | os.PathLike, origin: str | dns.name.Name | None = None,
                   include_dir: str | None = None) -> ZoneData:
    """Read and validate one master file.  Raises ZoneError naming file, line and owner.
    Relative $INCLUDE names resolve against include_dir (else the working directory)."""
    path = os.fspath(path)
    t0 = time.monotonic()
    try:
        raw = _read(path)
    except OSError as exc:
        raise ZoneError(f"cannot read zone file: {exc.strerror}", file=path) from None
    # as text mode reads it (universal newlines); the digest is of the bytes that were parsed.
    # Without a CR the bytes themselves are searched: no decoded copies of a big file (issue 15)
    text = _searchable(raw)
    files = {os.path.abspath(path): _digest(raw)}
    _included(text, files, include_dir)
    if origin is None:
        origin = _guess_origin(text, path)
    elif isinstance(origin, str):
        try:
            origin = dns.name.from_text(origin)
        except dns.exception.DNSException as exc:
            raise ZoneError(f"bad zone name {origin!r}: {exc}", file=path) from None
    del text
    _drop_pages(raw)
    recs = _scan(raw, origin, path, include_dir)
    if recs is not None:
        del raw         # not held while the checks and the compile run (issue 15)
        data = _validated(recs, origin, path)
    else:
        data = zone_from_text(_universal(raw), origin, path, include_dir=include_dir)
    data.files = files
    data.seconds = time.monotonic() - t0
    return data


def zone_from_bytes(raw: bytes, origin: dns.name.Name, source: str = "<string>",
                    include_dir: str | None = None) -> ZoneData:
    """Parse master-file bytes: the Cython scanner (pop53.zone.records), or dnspython's reader
    for the files the scanner hands back (non-ASCII text, $UNICODE) and when
    POP53_ZONE_PARSER=dnspython (the reference path the differential tests compare with).
    Relative $INCLUDE names resolve against include_dir (else the working directory)."""
    recs = _scan(raw, origin, source, include_dir)
    if recs is not None:
        return _validated(recs, origin, source)
    return zone_from_text(_universal(raw), origin, source, include_dir=include_dir)


def _scan(raw: bytes, origin: dns.name.Name, source: str, include_dir: str | None):
    """The scanner's records, or None when dnspython reads this file (see zone_from_bytes).
    Raises ZoneError."""
    if os.environ.get("POP53_ZONE_PARSER") == "dnspython":
        return None
    from pop53.zone import records as _records
    try:
        return _records.scan_bytes(raw, origin, source, include_dir)
    except _records.ZoneScanFallback:
        return None
    except _records.ZoneScanError as exc:
        from pop53.zone.checks import check_reading
        check_reading(ZoneData(origin=origin, source=source, columns=exc.records))
        msg, fname, line, owner = exc.args
        raise ZoneError(msg, file=fname, line=line, owner=owner, zone=str(origin)) from None


def _validated(recs, origin: dns.name.Name, source: str) -> ZoneData:
    from pop53.zone.checks import validate_records
    data = ZoneData(origin=origin, source=source, columns=recs)
    validate_records(data)
    return data


def _universal(raw: bytes) -> str:
    """What open() in text mode gave dnspython: universal newlines."""
    raw = raw if isinstance(raw, bytes) else raw[:]       # a mapped file
    return raw.decode("utf-8", "surrogateescape").replace("\r\n", "\n").replace("\r", "\n")


def zone_from_text(text: str, origin: dns.name.Name, source: str = "<string>",
                   include_dir: str | None = None) -> ZoneData:
    """Parse master-file text with dnspython, recording the line of every RRset."""
    zone = dns.zone.Zone(origin, dns.rdataclass.IN, relativize=False)
    lines: dict = {}
    try:
        with zone.writer(True) as txn:
            tok = dns.tokenizer.Tokenizer(text, source)
            reader = _Reader(tok, dns.rdataclass.IN, txn, allow_include=True)

            def _remember(_txn, name, rdataset):
                # The reader's current tokenizer (it changes inside $INCLUDE) knows the line.
                fname, line = reader.where()
                key = (name, rdataset.rdtype)
                if key in lines and rdataset.rdtype in _SINGLETONS:
                    # dnspython would silently keep only the last one
                    raise ZoneError(f"a second {dns.rdatatype.to_text(rdataset.rdtype)} record at one "
                                    "name; only one is allowed (RFC 2181 §10.1, RFC 6672 §2.4)",
                                    file=fname, line=line, owner=name.to_text(), zone=str(origin))
                lines.setdefault(key, line if fname == source else None)

            txn.check_put_rdataset(_remember)
            saved, _include.dir = getattr(_include, "dir", None), include_dir
            try:
                reader.read()
            except dns.exception.DNSException:
                if reader.nul_at:
                    raise _RawNul(*reader.nul_at) from None
                raise
            finally:
                _include.dir = saved
    except dns.exception.SyntaxError as exc:
        # dnspython's message already reads "file:line: detail".
        m = re.match(r"^(.*?):(\d+): (.*)$", str(exc), re.S)
        if m:
            line = int(m.group(2))
            if "reader" in locals() and reader.start_line and m.group(1) == reader.tok.where()[0]:
                line = reader.start_line
            raise ZoneError(m.group(3), file=m.group(1), line=line, zone=str(origin)) from None
        raise ZoneError(str(exc), file=source, zone=str(origin)) from None
    except _RawNul as exc:
        raise ZoneError("a raw NUL octet; write it as \\000 (RFC 1035 §5.1)", file=exc.file,
                        line=exc.line, zone=str(origin)) from None
    except _OutOfZone as exc:
        fname, line = reader.where()
        raise ZoneError("out-of-zone data (the zone is " + origin.to_text() + ")", file=fname,
                        line=line, owner=exc.args[0].to_text() if exc.args[0] else None,
                        zone=str(origin)) from None
    except OSError as exc:
        # $INCLUDE of something that cannot be read
        # the directive's line has been read to its end when the file is opened
        fname, line = reader.tok.where() if "reader" in locals() else (source, None)
        line = line - 1 if line and line > 1 else line
        raise ZoneError(f"cannot read included file: {exc.strerror}: {exc.filename}", file=fname,
                        line=line, zone=str(origin)) from None
    except dns.exception.DNSException as exc:
        line = reader.where()[1] if "reader" in locals() else None
        raise ZoneError(str(exc) or type(exc).__name__, file=source, line=line,
                        zone=str(origin)) from None
    except (ValueError, KeyError, UnicodeError) as exc:
        line = reader.where()[1] if "reader" in locals() else None
        raise ZoneError(f"{type(exc).__name__}: {exc}", file=source, line=line,
                        zone=str(origin)) from None
    # The reader, its transaction and the _remember closure form a reference cycle that holds
    # the whole zone; break it, so that a replaced zone is freed by reference counting, not by
    # a full garbage collection that walks millions of objects (see xfr.settle_heap).
    reader = None
    data = ZoneData(origin=origin, zone=zone, source=source, lines=lines)
    validate(data)
    return data


def zone_from_dnspython(zone: dns.zone.Zone, source: str = "<transfer>") -> ZoneData:
    """Validate a zone that arrived some other way (AXFR/IXFR, API).  Names must be absolute or
    relative to the zone's origin; the result always has absolute names."""
    if zone.relativize:
        absolute = dns.zone.Zone(zone.origin, zone.rdclass, relativize=False)
        with absolute.writer(True) as txn:
            for name, node in zone.nodes.items():
                for rds in node.rdatasets:
                    txn.add(name.derelativize(zone.origin), rds)
        zone = absolute
    data = ZoneData(origin=zone.origin, zone=zone, source=source, lines={})
    validate(data)
    return data


def failer(data: ZoneData):
    """A function raising ZoneError for `data`, naming file, line and owner."""
    def fail(msg: str, name: dns.name.Name | None = None, rdtype: int | None = None):
        raise ZoneError(msg, file=data.source, line=data.where(name, rdtype) if name else None,
                        owner=name.to_text() if name is not None else None,
                        zone=data.origin.to_text())
    return fail


def check_apex(data: ZoneData, fail) -> None:
    """Class IN, one SOA and some NS at the apex."""
    zone, origin = data.zone, data.origin
    if zone.rdclass != dns.rdataclass.IN:
        fail(f"class {dns.rdataclass.to_text(zone.rdclass)} is not served (IN only)")
    apex = zone.nodes.get(origin)
    if apex is None:
        fail("no data at the zone apex")
    soa = apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA)
    if soa is None:
        fail("no SOA record at the zone apex", origin)
    if len(soa) != 1:
        fail(f"{len(soa)} SOA records at the apex; exactly one is allowed", origin, dns.rdatatype.SOA)
    if apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) is None:
        fail("no NS records at the zone apex", origin)


def check_node(data: ZoneData, name: dns.name.Name, node, fail) -> set:
    """The rules local to one name (in zone, class, singletons, CNAME and other data).
    Returns the set of its types."""
    origin = data.origin
    if not name.is_subdomain(origin):
        fail("out-of-zone data", name)
    types = {rds.rdtype for rds in node.rdatasets}
    for rds in node.rdatasets:
        if rds.rdclass != dns.rdataclass.IN:
            fail(f"class {dns.rdataclass.to_text(rds.rdclass)} record in an IN zone", name, rds.rdtype)
        if rds.rdtype == dns.rdatatype.SOA and name != origin:
            fail("SOA record below the zone apex", name, rds.rdtype)
        if rds.rdtype in (dns.rdatatype.CNAME, dns.rdatatype.DNAME) and len(rds) > 1:
            fail(f"{len(rds)} {dns.rdatatype.to_text(rds.rdtype)} records at one name; "
                 "only one is allowed (RFC 2181 §10.1, RFC 6672 §2.4)", name, rds.rdtype)
    if dns.rdatatype.CNAME in types:
        if name == origin:
            fail("CNAME at the zone apex (it cannot coexist with SOA and NS)", name, dns.rdatatype.CNAME)
        other = types - _WITH_CNAME_OK
        if other:
            fail("CNAME and other data at one name: "
                 + ", ".join(sorted(dns.rdatatype.to_text(t) for t in other)), name, dns.rdatatype.CNAME)
    return types


def occluded(data: "ZoneData", name: dns.name.Name, types, where: str) -> str:
    """The warning for records of `types` at `name` that a delegation occludes (`where`: "below
    the delegation at X" or "at a delegation point"): loaded and not served, as BIND and Knot."""
    return (f"{data.source}:{data.where(name) or '?'}: owner {name}: "
            f"{', '.join(sorted(dns.rdatatype.to_text(t) for t in types))} {where} is occluded "
            "and will not be served")


def validate(data: ZoneData) -> None:
    """The checks of an authoritative server, beyond what the parser does.  Raises ZoneError."""
    zone, origin = data.zone, data.origin
    fail = failer(data)
    check_apex(data, fail)

    cuts = set()
    dnames = set()
    for name, node in zone.nodes.items():
        types = check_node(data, name, node, fail)
        if dns.rdatatype.DNAME in types:
            dnames.add(name)
        if dns.rdatatype.NS in types and name != origin:
            cuts.add(name)

    # Data below a DNAME is an error (RFC 6672 §2.4).  Data below a zone cut other than glue,
    # and data at a cut other than NS/DS/glue, is occluded: like BIND and Knot we load it with a
    # warning and never serve it (the answer there is a referral).
    for name, node in zone.nodes.items():
        if name == origin:
            continue
        parent = name.parent()
        while parent != origin and len(parent) >= len(origin):
            if parent in dnames and parent not in cuts:   # a DNAME at a cut is occluded
                fail(f"data below the DNAME at {parent} (RFC 6672 §2.4)", name)
            if parent in cuts:
                bad = {rds.rdtype for rds in node.rdatasets} - _GLUE
                if bad:
                    data.warnings.append(
                        occluded(data, name, bad, f"below the delegation at {parent}"))
            parent = parent.parent()
        if name in cuts:
            bad = {rds.rdtype for rds in node.rdatasets} - _AT_CUT_OK
            if bad:
                data.warnings.append(occluded(data, name, bad, "at a delegation point"))
