"""Zone versions in the records form (issue 15 point 3): a transferred zone kept as the column
form the zone-file scanner and the wire reader make (`ZoneData.columns`, pop53.zone.records),
never as a dnspython object per record.

- `WireStep`: one IXFR step (RFC 1995 §4) with its RRs in wire form, as `_core.XfrReader` read
  them (`split_steps`) or converted from a journal `Diff` (`from_diff`).
- `apply_steps`: a new version = the base's columns with the records of the changed names
  replaced (numpy over the columns; Python only for the records of the changed names); plus a
  small dnspython view of the changed names, their ancestors and the apex, which is all the
  incremental checks (pop53.zone.incremental.validate_changes) and the image patcher read.
- `soa_of`, `count`, `wire_rrs`: what the engine asks of a version.
- `save` / `load`: the snapshot as the columns' raw buffers (milliseconds for a million names,
  where zone text needs a dnspython object per record both ways).

Rdata are compared as sent (octet for octet): a primary deletes exactly what it sent (Knot, NSD
and BIND do); dnspython's path compares canonical forms (names in RDATA case-folded)."""
from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import dns.name
import dns.node
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.zone
import numpy as np

from pop53.errors import ZoneError
from pop53.xfr import journal as jr
from pop53.zone.records import Records
from pop53.zone.zonefile import ZoneData

IN = dns.rdataclass.IN
_SOA, _RRSIG = 6, 46
_SINGLETONS = (5, 39, 6)        # CNAME, DNAME, SOA (RFC 2181 §10.1, RFC 6672 §2.4)

# owner wire (as sent), type, TTL, RDATA wire (uncompressed)
WireRR = tuple[bytes, int, int, bytes]


def _serial(rr: WireRR) -> int:
    return int.from_bytes(rr[3][-20:-16], "big")


@dataclasses.dataclass(frozen=True)
class WireStep:
    """One IXFR step with wire RRs (jr.Diff's shape; SOAs not in the two lists)."""

    old_soa: WireRR
    new_soa: WireRR
    deleted: tuple[WireRR, ...]
    added: tuple[WireRR, ...]

    @property
    def old_serial(self) -> int:
        return _serial(self.old_soa)

    @property
    def new_serial(self) -> int:
        return _serial(self.new_soa)


def is_records(version) -> bool:
    """Whether an engine version is in the records form (else a dnspython zone)."""
    return isinstance(version, ZoneData)


def dns_zone(version) -> dns.zone.Zone:
    """The dnspython zone of a version (built on demand for the records form: small zones only,
    catalogs and operator commands)."""
    return version.zone if isinstance(version, ZoneData) else version


# ------------------------------------------------------------------------------- reading
def _rdata(rr: WireRR) -> dns.rdata.Rdata:
    return dns.rdata.from_wire(IN, rr[1], rr[3], 0, len(rr[3]))


def _rr(rr: WireRR) -> jr.RR:
    return (dns.name.from_wire(rr[0], 0)[0], rr[2], _rdata(rr))


def soa_of(data: ZoneData) -> jr.RR:
    soa = getattr(data, "_soa_rr", None)
    if soa is None:
        r = data.columns
        apex = r.find(data.origin.to_wire().lower())
        hits = np.nonzero((r.node == apex) & (r.type == _SOA))[0] if apex >= 0 else ()
        if len(hits) != 1:
            raise jr.DiffError(f"zone {data.origin} has no single SOA at the apex")
        i = int(hits[0])
        soa = (data.origin, int(r.ttl[i]),
               dns.rdata.from_wire(IN, _SOA, r.rdata, int(r.rdoff[i]), int(r.rdlen[i])))
        data._soa_rr = soa
    return soa


def count(data: ZoneData) -> int:
    return len(data.columns)


def wire_rrs(data: ZoneData, skip_soa: bool = True):
    """(owner wire, type, ttl, rdata) of every record (outbound AXFR)."""
    r = data.columns
    names = [r.owner_wire(n) for n in range(r.n_nodes)]
    rd = r.rdata
    for node, t, ttl, off, ln in zip(r.node.tolist(), r.type.tolist(), r.ttl.tolist(),
                                     r.rdoff.tolist(), r.rdlen.tolist()):
        if skip_soa and t == _SOA:
            continue
        yield names[node], t, ttl, rd[off:off + ln]


def iter_rrs(data: ZoneData):
    """jr.iter_rrs of the records form (dnspython objects: tests and small zones)."""
    for rr in wire_rrs(data, skip_soa=False):
        yield _rr(rr)


# ------------------------------------------------------------------------------- steps
def split_steps(records: Records, origin: dns.name.Name) -> tuple[WireStep, ...]:
    """An incremental IXFR answer's records (XfrReader, style 2: the first SOA, then per step
    the old SOA, deletions, the new SOA, additions; the closing SOA already dropped) as steps."""
    okey = origin.to_wire().lower()
    steps: list[WireStep] = []
    old = new = None
    dels: list = []
    adds: list = []
    for i, rr in enumerate(_records_wire(records)):
        if i == 0:
            continue                    # the primary's current SOA (it closes the answer too)
        if rr[1] == _SOA and rr[0].lower() == okey:
            if old is not None and new is None:         # opens the additions
                new = rr
            else:                                       # opens the next step's deletions
                if old is not None:
                    steps.append(WireStep(old, new, tuple(dels), tuple(adds)))
                old, new, dels, adds = rr, None, [], []
            continue
        (adds if new is not None else dels).append(rr)
    if old is None or new is None:
        raise jr.DiffError("IXFR without a complete step")
    steps.append(WireStep(old, new, tuple(dels), tuple(adds)))
    return tuple(steps)


def _records_wire(r: Records):
    for node, t, ttl, off, ln in zip(r.node.tolist(), r.type.tolist(), r.ttl.tolist(),
                                     r.rdoff.tolist(), r.rdlen.tolist()):
        yield r.owner_wire(node), t, ttl, r.rdata[off:off + ln]


def from_diff(d: jr.Diff) -> WireStep:
    def w(rr):
        name, ttl, rd = rr
        return (name.to_wire(), int(rd.rdtype), int(ttl), rd.to_wire())
    return WireStep(w(d.old_soa), w(d.new_soa), tuple(w(x) for x in d.deleted),
                    tuple(w(x) for x in d.added))


def to_diff(s: WireStep) -> jr.Diff:
    """The journal's form of a step (dnspython objects for the changed RRs only)."""
    return jr.Diff(_rr(s.old_soa), _rr(s.new_soa), tuple(_rr(x) for x in s.deleted),
                   tuple(_rr(x) for x in s.added))


def _covers(t: int, rd: bytes) -> int:
    return int.from_bytes(rd[:2], "big") if t == _RRSIG and len(rd) >= 2 else 0


def _is_below(key: bytes, okey: bytes) -> bool:
    """key (lowercased wire) is okey or a name below it."""
    if key == okey:
        return True
    p = 0
    while p < len(key) and key[p]:
        p += key[p] + 1
        if key[p:] == okey:
            return True
    return False


def _parent(key: bytes) -> bytes:
    return key[key[0] + 1:]


def find_many(r: Records, keys) -> dict[bytes, int]:
    """{lowercased wire name: node} of those of `keys` that are nodes of `r`: numpy over the
    names of each length asked (no Python object per name of the zone)."""
    out: dict[bytes, int] = {}
    by_len: dict[int, set] = {}
    for k in keys:
        by_len.setdefault(len(k), set()).add(k)
    names = np.frombuffer(r.names, dtype=np.uint8)
    for n, want in by_len.items():
        targets = np.array([np.frombuffer(k, dtype=np.uint8) for k in want]).view(f"V{n}").ravel()
        cands = np.nonzero(r.node_len == n)[0]
        for a in range(0, len(cands), _SLICE):      # bounded temporaries (8 octets per index)
            cand = cands[a:a + _SLICE]
            rows = names[r.node_off[cand].astype(np.int64)[:, None] + np.arange(n)]
            rows += ((rows >= 65) & (rows <= 90)).astype(np.uint8) * 32   # label lengths < 64
            flat = np.ascontiguousarray(rows).view(f"V{n}").ravel()
            for i in np.nonzero(np.isin(flat, targets))[0].tolist():
                out[bytes(flat[i])] = int(cand[i])
    return out


_SLICE = 1 << 16


def apply_steps(base: ZoneData, steps, source: str):
    """Apply IXFR steps (WireStep, or jr.Diff) to a records-form version without changing it.
    Returns (new version, changed owner names, net change in RRs, view): `view` is a ZoneData
    holding a dnspython zone of the changed names, their ancestors and the apex only (for the
    incremental checks and the image patcher).  Raises jr.DiffError (a step that does not fit)
    or jr.BadData, as jr.apply_steps does."""
    steps = [from_diff(s) if isinstance(s, jr.Diff) else s for s in steps]
    r = base.columns
    origin = base.origin
    okey = origin.to_wire().lower()
    owners: dict[bytes, bytes] = {okey: origin.to_wire()}     # key -> owner as first sent
    for s in steps:
        for rr in s.deleted + s.added + (s.new_soa,):
            key = rr[0].lower()
            if key not in owners:
                if not _is_below(key, okey):
                    raise jr.DiffError(f"{dns.name.from_wire(rr[0], 0)[0]} is not in zone {origin}")
                owners[key] = rr[0]
    ancestors = set()
    for key in owners:
        while key != okey:
            key = _parent(key)
            if key not in owners:
                ancestors.add(key)
    found = find_many(r, set(owners) | ancestors)
    sel, read = _read(r, found)
    model: dict[bytes, dict] = {k: read.get(k, {}) for k in list(owners) + list(ancestors)}
    for key, nd in found.items():
        if key in owners:
            owners[key] = r.owner_wire(nd)          # the name as the zone has it
    serial = soa_serial_rr(model[okey])
    delta = 0
    for s in steps:
        if s.old_serial != serial:
            raise jr.DiffError(f"diff from serial {s.old_serial} does not fit serial {serial}")
        for owner, t, ttl, rd in s.deleted:
            rs = model[owner.lower()].get((t, _covers(t, rd)))
            if rs is None or rd not in rs[1]:
                raise jr.DiffError(f"diff {s.old_serial}->{s.new_serial} deletes "
                                   f"{dns.name.from_wire(owner, 0)[0]} "
                                   f"{dns.rdatatype.to_text(t)} {_rdata((owner, t, ttl, rd))}, "
                                   "which is not there")
            rs[1].remove(rd)
            delta -= 1
            if not rs[1]:
                del model[owner.lower()][(t, _covers(t, rd))]
        for owner, t, ttl, rd in s.added:
            rs = model[owner.lower()].setdefault((t, _covers(t, rd)), [ttl, []])
            if t in _SINGLETONS and rs[1] and rd not in rs[1]:
                raise jr.BadData(f"diff {s.old_serial}->{s.new_serial} gives "
                                 f"{dns.name.from_wire(owner, 0)[0]} two "
                                 f"{dns.rdatatype.to_text(t)} records (RFC 2181 §10.1 allows one)")
            if rd not in rs[1]:
                rs[1].append(rd)
                delta += 1
            rs[0] = ttl       # RFC 2181 §5.2: one TTL per RRset, the last one sent wins
        if s.new_soa[0].lower() != okey:
            raise jr.DiffError(f"SOA owner {dns.name.from_wire(s.new_soa[0], 0)[0]} is not the "
                               f"zone apex {origin}")
        model[okey][(_SOA, 0)] = [s.new_soa[2], [s.new_soa[3]]]
        serial = s.new_serial
    changed_keys = [k for k in owners]
    new = ZoneData(origin=origin, source=source,
                   columns=_rebuild(r, sel, found, owners, model, changed_keys))
    view = _view(origin, source, owners, model)
    changed = {dns.name.from_wire(owners[k], 0)[0] for k in changed_keys}
    return new, changed, delta, view


def soa_serial_rr(node: dict) -> int:
    rs = node.get((_SOA, 0))
    if not rs or len(rs[1]) != 1:
        raise jr.DiffError("the base version has no single SOA at the apex")
    return int.from_bytes(rs[1][0][-20:-16], "big")


def _rebuild(r: Records, sel, found, owners, model, changed_keys) -> Records:
    """The base's columns without the changed names' records, plus their new records (new
    names appended to the name table; names left without records dropped from it)."""
    keep = np.ones(len(r), dtype=bool)
    drop_sel = np.isin(r.node[sel], np.array([found[k] for k in changed_keys if k in found],
                                             dtype=np.uint32))
    keep[sel[drop_sel]] = False
    n_nodes = r.n_nodes
    extra_names = []
    names_len = len(r.names)
    new_off, new_len = [], []
    a_node, a_type, a_ttl, a_rdoff, a_rdlen = [], [], [], [], []
    rd_parts = []
    rd_len = len(r.rdata)
    for key in changed_keys:
        rrsets = model[key]
        if not rrsets:
            continue
        nd = found.get(key)
        if nd is None:
            nd = n_nodes
            n_nodes += 1
            w = owners[key]
            new_off.append(names_len)
            new_len.append(len(w))
            extra_names.append(w)
            names_len += len(w)
        for (t, _c), (ttl, rds) in sorted(rrsets.items()):
            for rd in rds:
                a_node.append(nd)
                a_type.append(t)
                a_ttl.append(ttl)
                a_rdoff.append(rd_len)
                a_rdlen.append(len(rd))
                rd_parts.append(rd)
                rd_len += len(rd)
    node = np.concatenate([r.node[keep], np.array(a_node, dtype=np.uint32)])
    node_off = np.concatenate([r.node_off, np.array(new_off, dtype=np.uint32)])
    node_len = np.concatenate([r.node_len, np.array(new_len, dtype=np.uint8)])
    used = np.zeros(n_nodes, dtype=bool)
    used[node] = True
    if not used.all():      # a name without records is not a node of the zone
        remap = (np.cumsum(used) - 1).astype(np.uint32)
        node = remap[node]
        node_off, node_len = node_off[used], node_len[used]
    cols = {
        "names": r.names + b"".join(extra_names),
        "node_off": node_off.astype(np.uint32).tobytes(),
        "node_len": node_len.astype(np.uint8).tobytes(),
        "node": node.astype(np.uint32).tobytes(),
        "type": np.concatenate([r.type[keep], np.array(a_type, dtype=np.uint16)]).tobytes(),
        "ttl": np.concatenate([r.ttl[keep], np.array(a_ttl, dtype=np.uint32)]).tobytes(),
        "rdoff": np.concatenate([r.rdoff[keep], _offsets(a_rdoff)]).tobytes(),
        "rdlen": np.concatenate([r.rdlen[keep], np.array(a_rdlen, dtype=np.uint16)]).tobytes(),
        "line": np.concatenate([r.line[keep], np.zeros(len(a_node), dtype=np.uint32)]).tobytes(),
        "file": np.concatenate([r.file[keep], np.zeros(len(a_node), dtype=np.uint16)]).tobytes(),
        "rdata": r.rdata + b"".join(rd_parts),
        "files": list(r.files),
    }
    out = Records(cols)
    if len(out.rdata) > 2 * max(1 << 20, int(out.rdlen.sum(dtype=np.int64))):
        out = compact(out)      # the replaced records' RDATA is garbage: drop it
    return out


def _offsets(values) -> np.ndarray:
    """RDATA offsets in the records' own width (u32, as the scanner's and the image's)."""
    a = np.asarray(values, dtype=np.int64)
    if len(a) and int(a.max()) > 0xFFFFFFFF:
        raise ZoneError("too much RDATA for one zone (over 4 GiB)")
    return a.astype(np.uint32)


def compact(r: Records) -> Records:
    """The same records with the RDATA buffer holding only theirs (in record order)."""
    lens = r.rdlen.astype(np.int64)
    offs = r.rdoff.astype(np.int64)
    src = np.frombuffer(r.rdata, dtype=np.uint8)
    parts = []
    step = 1 << 16
    for a in range(0, len(r), step):     # in slices: the index array is 8 octets per octet
        ln, of = lens[a:a + step], offs[a:a + step]
        total = int(ln.sum())
        if total:
            start = np.cumsum(ln) - ln
            parts.append(src[np.repeat(of - start, ln) + np.arange(total)].tobytes())
    new_off = _offsets(np.cumsum(lens) - lens)
    cols = _cols(r)
    cols["rdata"] = b"".join(parts)
    cols["rdoff"] = new_off.tobytes()
    return Records(cols)


def _cols(r: Records) -> dict:
    return {"names": r.names, "node_off": r.node_off.tobytes(), "node_len": r.node_len.tobytes(),
            "node": r.node.tobytes(), "type": r.type.tobytes(), "ttl": r.ttl.tobytes(),
            "rdoff": r.rdoff.tobytes(), "rdlen": r.rdlen.tobytes(), "line": r.line.tobytes(),
            "file": r.file.tobytes(), "rdata": r.rdata, "files": list(r.files)}


def _view(origin, source, owners, model) -> ZoneData:
    zone = dns.zone.Zone(origin, IN, relativize=False)
    for key, rrsets in model.items():
        if not rrsets:
            continue
        owner = owners.get(key, key)
        node = dns.node.Node()
        for (t, c), (ttl, rds) in rrsets.items():
            rdset = dns.rdataset.Rdataset(IN, t, c, ttl)
            for rd in rds:
                rdset.add(dns.rdata.from_wire(IN, t, rd, 0, len(rd)), ttl)
            node.rdatasets.append(rdset)
        zone.nodes[dns.name.from_wire(owner, 0)[0]] = node
    return ZoneData(origin=origin, zone=zone, source=source)


def view_of(data: ZoneData, names) -> ZoneData:
    """The view (see apply_steps) of `names` in a records-form version."""
    r, origin = data.columns, data.origin
    okey = origin.to_wire().lower()
    keys = {okey}
    for n in names:
        k = n.to_wire().lower()
        while len(k) > len(okey):
            keys.add(k)
            k = _parent(k)
    found = find_many(r, keys)
    owners = {k: r.owner_wire(nd) for k, nd in found.items()}
    return _view(origin, data.source, owners, _read(r, found)[1])


def _read(r: Records, found: dict[bytes, int]):
    """(indexes of the records of the nodes in `found`, {key: {(type, covers): [ttl, [rdata]]}})."""
    node_key = {v: k for k, v in found.items()}
    sel = np.nonzero(np.isin(r.node, np.array(sorted(found.values()), dtype=np.uint32)))[0]
    model: dict[bytes, dict] = {}
    for i in sel.tolist():
        t, rd = int(r.type[i]), r.rdata_of(i)
        rs = model.setdefault(node_key[int(r.node[i])], {}).setdefault((t, _covers(t, rd)),
                                                                       [int(r.ttl[i]), []])
        rs[1].append(rd)
    return sel, model


def validate_applied(new: ZoneData, view: ZoneData, changed) -> list[str]:
    """The checks of an IXFR applied in the records form: the changed names (and their
    ancestors) on the view, as the dnspython path checks a diff; a DNAME among them (whose rule
    needs the descendants) gets the full check of the columns.  Raises ZoneError; returns the
    warnings."""
    from pop53.zone.checks import validate_records
    from pop53.zone.incremental import validate_changes

    nodes = view.zone.nodes
    if any(rds.rdtype == dns.rdatatype.DNAME for n in changed if n in nodes
           for rds in nodes[n].rdatasets):
        validate_records(new)
        return new.warnings
    validate_changes(view, changed)
    return view.warnings


# ------------------------------------------------------------------------------- snapshot
_MAGIC = b"POP53REC1\n"
_FIELDS = ("names", "node_off", "node_len", "node", "type", "ttl", "rdoff", "rdlen", "line",
           "file", "rdata")


def save(data: ZoneData, f) -> None:
    """The columns' raw buffers after a JSON header of their lengths (binary file `f`)."""
    r = data.columns
    if len(r.rdata) > int(r.rdlen.sum(dtype=np.int64)) + (1 << 20):
        r = compact(r)
    bufs = [memoryview(getattr(r, k)).cast("B") for k in _FIELDS]     # no copies
    head = {"origin": data.origin.to_text(), "files": list(r.files),
            "lengths": [len(b) for b in bufs]}
    h = json.dumps(head).encode()
    f.write(_MAGIC + struct.pack("!I", len(h)) + h)
    for b in bufs:
        f.write(b)


def load(path: Path, origin: dns.name.Name) -> ZoneData:
    """A snapshot `save` wrote; raises jr.JournalError when it is not one (or torn)."""
    try:
        raw = path.read_bytes()
        if not raw.startswith(_MAGIC):
            raise ValueError("not a records snapshot")
        p = len(_MAGIC)
        (hl,) = struct.unpack_from("!I", raw, p)
        head = json.loads(raw[p + 4:p + 4 + hl])
        p += 4 + hl
        if dns.name.from_text(head["origin"]) != origin:
            raise ValueError(f"snapshot of {head['origin']}")
        cols = {"files": head["files"]}
        for k, n in zip(_FIELDS, head["lengths"]):
            cols[k] = raw[p:p + n]
            if len(cols[k]) != n:
                raise ValueError("torn snapshot")
            p += n
        return ZoneData(origin=origin, source=str(path), columns=Records(cols))
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise jr.JournalError(f"{path}: {exc}") from None


DIFF_RECORDS = 50_000


def diff(old, new) -> jr.Diff | None:
    """The single IXFR step from `old` to `new` (either form), as jr.diff_zones makes it, for
    versions of up to DIFF_RECORDS records each (one Python tuple per record); None beyond
    (the new version then starts a new chain: IXFR-out answers older serials with an AXFR)."""
    if not is_records(old) and not is_records(new):
        return jr.diff_zones(old, new)
    if jr.count_records(old) > DIFF_RECORDS or jr.count_records(new) > DIFF_RECORDS:
        return None
    a, b = _rrsets(old), _rrsets(new)
    deleted, added = [], []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if x is not None and y is not None and x[0] == y[0] and set(x[1]) == set(y[1]):
            continue
        if x is not None:
            deleted.extend(x[1])
        if y is not None:
            added.extend(y[1])
    return to_diff(WireStep(_soa_wire(old), _soa_wire(new), tuple(deleted), tuple(added)))


def _rrsets(version) -> dict:
    """{(owner key, type, covers): (ttl, [wire RR])} without the SOA."""
    rrs = wire_rrs(version) if is_records(version) else (
        (name.to_wire(), int(rd.rdtype), int(ttl), rd.to_wire())
        for name, ttl, rd in jr.iter_rrs(version) if rd.rdtype != _SOA)
    out: dict = {}
    for rr in rrs:
        key = (rr[0].lower(), rr[1], _covers(rr[1], rr[3]))
        out.setdefault(key, (rr[2], []))[1].append(rr)
    return out


def _soa_wire(version) -> WireRR:
    name, ttl, rd = jr.soa_of(version)
    return (name.to_wire(), _SOA, int(ttl), rd.to_wire())


# ------------------------------------------------------------------------------- the engine's
def apply_any(base, steps, source: str):
    """Steps applied to a version of either form: (new, changed names, delta, view or None)."""
    if is_records(base):
        return apply_steps(base, steps, source)
    diffs = tuple(to_diff(s) if isinstance(s, WireStep) else s for s in steps)
    new, changed, delta = jr.apply_steps(base, diffs)
    return new, changed, delta, None


def journal_steps(steps) -> tuple:
    """The steps as the journal and IXFR-out keep them (jr.Diff)."""
    return tuple(to_diff(s) if isinstance(s, WireStep) else s for s in steps)


def check_full(version, source: str, records: int, max_records: int):
    """validate_version for a version of either form; returns its validated ZoneData."""
    from pop53.errors import ZoneError
    from pop53.xfr.versions import UpdateRejected, validate_version
    from pop53.zone.checks import validate_records

    if not is_records(version):
        return validate_version(version, source, records, max_records)
    if records > max_records:
        raise UpdateRejected(f"{source}: {records} records exceed the limit of {max_records} "
                             "([xfr] max_records)")
    try:
        validate_records(version)
    except ZoneError as exc:
        raise UpdateRejected(str(exc)) from None
    return version


def check_changes(new, view, changed, source: str, records: int, max_records: int):
    """The check of a version made by applying steps to a checked one (records form)."""
    import logging

    from pop53.errors import ZoneError
    from pop53.xfr.versions import UpdateRejected

    if records > max_records:
        raise UpdateRejected(f"{source}: {records} records exceed the limit of {max_records} "
                             "([xfr] max_records)")
    try:
        warnings = validate_applied(new, view, changed)
    except ZoneError as exc:
        raise UpdateRejected(str(exc)) from None
    for w in warnings[:10]:
        logging.getLogger("pop53.xfr").warning("%s", w)
    return new
