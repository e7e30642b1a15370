"""The flat record form of a zone, and the zone-file scanner that produces it (issue 15).

`Records` holds a zone as columns rather than objects: every distinct owner name once (wire
form, as written; nodes are found case-insensitively), and per record its node, type, TTL,
RDATA (uncompressed wire form), file and line.  The class is always IN (the reader rejects any
other).  The compiler (pop53.zone.compiler) and the checks (pop53.zone.checks) read these
columns; a dnspython zone is built from them only when something asks for one (transfers out).

`scan_file` runs the Cython scanner (ext/zonescan.pxi); whatever it is not sure of it hands to
dnspython one record at a time (`_Hooks.rdata`), so the two accept the same text.
"""
from __future__ import annotations

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.RRSIG  # noqa: F401  (the RRSIG class: covers())
import numpy as np

from pop53 import _core

ZoneScanError = _core.ZoneScanError
ZoneScanFallback = _core.ZoneScanFallback

_IN = dns.rdataclass.IN


class _Hooks:
    """What the scanner asks the control plane (only off its common path)."""

    def __init__(self, zone_origin: dns.name.Name, include_dir: str | None = None):
        self.zone_origin = zone_origin
        self.include_dir = include_dir
        self._names: dict[bytes, dns.name.Name] = {}
        self._types: dict[str, int] = {}

    def _name(self, wire: bytes) -> dns.name.Name:
        n = self._names.get(wire)
        if n is None:
            n = self._names[wire] = dns.name.from_wire(wire, 0)[0]
        return n

    def rdata(self, rdtype: int, text: str, origin_wire: bytes) -> bytes:
        # dns.zonefile.Reader._rr_line: any exception from an rdata parser is a syntax error
        try:
            rd = dns.rdata.from_text(_IN, rdtype, text, self._name(origin_wire), False,
                                     self.zone_origin)
            return rd.to_wire()
        except dns.exception.SyntaxError as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 (the reader's own rule, see above)
            raise ValueError(f"caught exception {type(exc)}: {exc}") from None

    def rdtype(self, text: str) -> int:
        t = self._types.get(text)
        if t is None:
            try:
                t = int(dns.rdatatype.from_text(text))
            except Exception:  # noqa: BLE001
                t = -1
            self._types[text] = t
        return t

    def rdclass(self, text: str) -> int:
        try:
            return int(dns.rdataclass.from_text(text))
        except dns.exception.SyntaxError:
            raise
        except Exception:  # noqa: BLE001  (not a class: dnspython reads it as TTL or type)
            return -1

    def name_error(self, text: bytes, origin_wire: bytes) -> str:
        try:
            dns.name.from_text(text.decode("ascii"), self._name(origin_wire) if origin_wire else None)
        except Exception as exc:  # noqa: BLE001
            return str(exc) or type(exc).__name__
        return "bad name"

    def generate(self, toks: list, implicit_ttl: int) -> tuple[bytes, bool]:
        """$GENERATE range lhs [ttl] [class] type rhs, expanded as dns.zonefile.Reader does
        (dns.grange, its _generate_text for $ and ${offset,width,base}) into master-file lines
        with the TTL written out.  Returns (text, whether the directive gave a TTL)."""
        import dns.grange
        import dns.ttl
        import dns.zonefile

        malformed = "Text input is malformed."
        toks = list(toks) + [(False, "")]        # the end of the line: not an identifier
        try:
            start, stop, step = dns.grange.from_text(toks[0][1])
        except Exception:  # noqa: BLE001  (the reader turns any of these into one error)
            raise ValueError(malformed) from None
        if not toks[1][0]:
            raise ValueError(malformed)
        lhs, i = toks[1][1], 2
        if not toks[i][0]:
            raise ValueError(malformed)
        explicit = True
        try:
            ttl = dns.ttl.from_text(toks[i][1])
            i += 1
            if not toks[i][0]:
                raise ValueError(malformed)
        except dns.ttl.BadTTL:
            explicit = False
            ttl = implicit_ttl
            if ttl < 0:
                raise ValueError("Missing default TTL value") from None
        try:
            cls = dns.rdataclass.from_text(toks[i][1])
            i += 1
            if not toks[i][0]:
                raise ValueError(malformed)
        except dns.exception.SyntaxError:
            raise ValueError(malformed) from None
        except ValueError:
            raise
        except Exception:  # noqa: BLE001  (not a class: the type follows)
            cls = _IN
        if cls != _IN:
            raise ValueError("RR class is not zone's class")
        rdtype = toks[i][1]
        if self.rdtype(rdtype) < 0:
            raise ValueError(f"unknown rdatatype '{rdtype}'")
        if not toks[i + 1][0]:
            # dns.zonefile names the token after the type here
            raise ValueError(f"unknown rdatatype '{toks[i + 1][1]}'")
        rhs = toks[i + 1][1]
        out = []
        try:
            for n in range(start, stop + 1, step):
                name = dns.zonefile._generate_text(lhs, n)
                rdata = dns.zonefile._generate_text(rhs, n)
                out.append(f"{name} {ttl} IN {rdtype} {rdata}\n")
        except dns.exception.SyntaxError as exc:
            raise ValueError(str(exc)) from None
        return "".join(out).encode("ascii"), explicit

    def include_path(self, name: str) -> str:
        """$INCLUDE names resolve against the zone directory ([server] zone_dir), else the
        working directory (as pop53.zone.zonefile does for dnspython's reader)."""
        import os
        return os.path.join(self.include_dir, name) if self.include_dir else name

    def name_text(self, wire: bytes) -> str:
        return dns.name.from_wire(wire, 0)[0].to_text()

    def is_generic(self, rdtype: int) -> bool:
        return dns.rdata.get_rdata_class(_IN, rdtype) is dns.rdata.GenericRdata


class Records:
    """A zone's records as columns (see the module docstring).  Arrays are numpy views over
    the scanner's buffers; `files[file[i]]` is the file record i came from."""

    __slots__ = ("names", "node_off", "node_len", "node", "type", "ttl", "rdoff", "rdlen", "line",
                 "file", "rdata", "files", "_keys")

    def __init__(self, cols: dict):
        self.names: bytes = cols["names"]
        self.node_off = np.frombuffer(cols["node_off"], dtype=np.uint32)
        self.node_len = np.frombuffer(cols["node_len"], dtype=np.uint8)
        self.node = np.frombuffer(cols["node"], dtype=np.uint32)
        self.type = np.frombuffer(cols["type"], dtype=np.uint16)
        self.ttl = np.frombuffer(cols["ttl"], dtype=np.uint32)
        self.rdoff = np.frombuffer(cols["rdoff"], dtype=np.uint32)
        self.rdlen = np.frombuffer(cols["rdlen"], dtype=np.uint16)
        self.line = np.frombuffer(cols["line"], dtype=np.uint32)
        self.file = np.frombuffer(cols["file"], dtype=np.uint16)
        self.rdata: bytes = cols["rdata"]
        self.files: list[str] = cols["files"]
        self._keys = None

    def __len__(self) -> int:
        return len(self.type)

    @property
    def n_nodes(self) -> int:
        return len(self.node_off)

    def owner_wire(self, node: int) -> bytes:
        o = int(self.node_off[node])
        return self.names[o:o + int(self.node_len[node])]

    def owner_name(self, node: int) -> dns.name.Name:
        return dns.name.from_wire(self.owner_wire(node), 0)[0]

    def keys(self) -> list[bytes]:
        """Every node's lowercased wire name (the compiler's lookup key), by node index."""
        if self._keys is None:
            names = self.names.lower()    # label lengths are < 64, below 'A' (65): untouched
            offs, lens = self.node_off.tolist(), self.node_len.tolist()
            self._keys = [names[o:o + n] for o, n in zip(offs, lens)]
        return self._keys

    def owner_key(self, node: int) -> bytes:
        """One node's lowercased wire name (keys()[node] without making them all)."""
        return self.owner_wire(node).lower()

    def find(self, key: bytes) -> int:
        """The node whose lowercased wire name is `key`, or -1; without a Python object per
        name (the apex is looked up on every load: it is almost always among the first)."""
        cand = np.nonzero(self.node_len == len(key))[0]
        for start in range(0, len(cand), 1024):
            for nd in cand[start:start + 1024].tolist():
                if self.owner_key(nd) == key:
                    return nd
        return -1

    def rdata_of(self, i: int) -> bytes:
        o = int(self.rdoff[i])
        return self.rdata[o:o + int(self.rdlen[i])]

    def covers(self) -> np.ndarray:
        """Per record: the type an RRSIG covers (its first two RDATA bytes), else 0."""
        out = np.zeros(len(self), dtype=np.uint16)
        sig = np.nonzero(self.type == 46)[0]
        if len(sig):
            rd = np.frombuffer(self.rdata, dtype=np.uint8)
            off = self.rdoff[sig].astype(np.int64)
            out[sig] = (rd[off].astype(np.uint16) << 8) | rd[off + 1]
        return out

    def order(self, cov: np.ndarray) -> np.ndarray:
        """Record indices by name, type, covered type (`cov`, covers()) and file order: what
        np.lexsort((np.arange(n), cov, type, node)) gives, without its temporaries the size of
        the zone (ext/zonestream.pxi flat_order)."""
        return np.frombuffer(_core.flat_order(self.node, self.type, cov, self.n_nodes),
                             dtype=np.uint32)

    def drop_locations(self) -> None:
        """Free the file and line columns once the checks are done (a compile that only
        writes the image needs neither; where() cannot answer after this)."""
        self.line = self.file = None

    def drop_build_inputs(self) -> None:
        """Free what a built FlatZone no longer reads (it keeps names, rdata, rdoff, rdlen):
        node, type, TTL, node offsets and lengths, and the file and line columns.  Nothing
        but those four columns answers after this."""
        self.node = self.type = self.ttl = self.node_off = self.node_len = None
        self.drop_locations()

    def where(self, i: int) -> tuple[str, int]:
        return self.files[int(self.file[i])], int(self.line[i])

    def iter_records(self):
        """(owner wire, type, ttl, rdata wire) per record, in file order (tests, transfers)."""
        names = [self.owner_wire(n) for n in range(self.n_nodes)]
        rd = self.rdata
        for node, t, ttl, off, ln in zip(self.node.tolist(), self.type.tolist(), self.ttl.tolist(),
                                         self.rdoff.tolist(), self.rdlen.tolist()):
            yield names[node], t, ttl, rd[off:off + ln]

    def to_dnspython(self, origin: dns.name.Name):
        """A dnspython zone of these records (absolute names), for the code that needs one."""
        import dns.zone

        zone = dns.zone.Zone(origin, _IN, relativize=False)
        names = [self.owner_name(n) for n in range(self.n_nodes)]
        rd = self.rdata
        with zone.writer(True) as txn:
            for node, t, ttl, off, ln in zip(self.node.tolist(), self.type.tolist(),
                                             self.ttl.tolist(), self.rdoff.tolist(),
                                             self.rdlen.tolist()):
                r = dns.rdata.from_wire(_IN, t, rd, off, ln, None)
                txn.add(names[node], ttl, r)
        return zone


def scan_bytes(data: bytes, origin: dns.name.Name, source: str,
               include_dir: str | None = None) -> Records:
    """Scan master-file bytes for zone `origin`.  Raises ZoneScanError (message, file, line,
    owner) or ZoneScanFallback (the caller uses dnspython's reader for this file)."""
    scanner = _core.ZoneScanner(origin.to_wire(), _Hooks(origin, include_dir))
    try:
        scanner.scan(data, source)
    except ZoneScanError as exc:
        # the records before the error: dnspython would have refused one of them first
        exc.records = Records(scanner.result())
        raise
    return Records(scanner.result())
