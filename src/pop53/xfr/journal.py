"""Zone versions, diffs and their persistence (the IXFR journal and the zone snapshot).

A zone version is an immutable `dns.zone.Zone` with absolute names (`relativize=False`, the form
`pop53.zone.zonefile.ZoneData` uses).  "Immutable" is a convention this module keeps: a new version is
made by copying the name -> node dict (O(names), pointer copies only) and copying just the nodes a
diff touches, so older versions that readers or the journal still hold never change underneath
them (the copy-on-write idea of dnspython's versioned zones and Knot's zone_update).

A `Diff` is one IXFR step (RFC 1995 §4): the old SOA, the deleted RRs, the new SOA, the added RRs.
A `Record` is what one transfer or one local change delivered: one or more steps, applied and
published as one unit.

On disk, under `<state>/<zone>/`:
  snapshot.zone   the zone text of one applied version (written atomically: tmp, fsync, rename);
  snapshot.rec    instead, for a version in the records form: its columns (xfr/recversion.py)
  journal         one line per Record: "<crc32 hex> <json>\\n"; a torn or corrupt tail is cut off
                  on load (the primary is then asked for what is missing)
  meta.json       serial of the snapshot, time of the last successful check with the primary
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import dns.exception
import dns.name
import dns.node
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.serial
import dns.zone

from pop53.errors import Pop53Error
from pop53.xfr.isolate import run_in_fork

log = logging.getLogger("pop53.xfr")

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA


class DiffError(Pop53Error):
    """A diff does not fit the version it is applied to (deletes an RR that is not there, or its
    base serial is not the version's serial).  The update is rejected; AXFR can repair it."""


class BadData(Pop53Error):
    """A diff that fits but whose content is invalid whatever it is applied to (two CNAMEs at
    one name).  Rejected like a zone that fails validation; AXFR would not repair it."""


class JournalError(Pop53Error):
    """The saved state of a zone cannot be read."""


# One RR: owner (absolute), TTL, rdata.
RR = tuple[dns.name.Name, int, dns.rdata.Rdata]


@dataclasses.dataclass(frozen=True)
class Diff:
    """One IXFR step (RFC 1995 §4): delete `deleted` from the version with SOA `old_soa`, add
    `added`, and the result has SOA `new_soa`.  SOA RRs are not in the two lists."""

    old_soa: RR
    new_soa: RR
    deleted: tuple[RR, ...]
    added: tuple[RR, ...]

    @property
    def old_serial(self) -> int:
        return self.old_soa[2].serial

    @property
    def new_serial(self) -> int:
        return self.new_soa[2].serial


@dataclasses.dataclass(frozen=True)
class Record:
    """What one transfer (or one local change) delivered: one or more steps, applied as a unit.
    `received` is the wall-clock time it arrived (the input-delayed role applies it at
    `received + delay`).  `full` is set when the record came from a full transfer: its single
    step was computed by comparing the two versions."""

    steps: tuple[Diff, ...]
    received: float
    full: bool = False

    @property
    def old_serial(self) -> int:
        return self.steps[0].old_serial

    @property
    def new_serial(self) -> int:
        return self.steps[-1].new_serial

    @property
    def size(self) -> int:
        return sum(len(s.deleted) + len(s.added) for s in self.steps)


def soa_of(zone) -> RR:
    """The apex SOA of a version: a dnspython zone, or a ZoneData in the records form."""
    if not isinstance(zone, dns.zone.Zone):
        from pop53.xfr import recversion
        return recversion.soa_of(zone)
    node = zone.nodes.get(zone.origin)
    rds = node.get_rdataset(IN, SOA) if node is not None else None
    if rds is None or len(rds) != 1:
        raise DiffError(f"zone {zone.origin} has no single SOA at the apex")
    return (zone.origin, rds.ttl, next(iter(rds)))


def serial_of(zone) -> int:
    return soa_of(zone)[2].serial


def count_records(zone) -> int:
    if not isinstance(zone, dns.zone.Zone):
        return len(zone.columns)
    return sum(len(rds) for node in zone.nodes.values() for rds in node.rdatasets)


def iter_rrs(zone) -> Iterator[RR]:
    if not isinstance(zone, dns.zone.Zone):
        from pop53.xfr import recversion
        yield from recversion.iter_rrs(zone)
        return
    for name, node in zone.nodes.items():
        for rds in node.rdatasets:
            for rd in rds:
                yield (name, rds.ttl, rd)


def _copy_node(node: dns.node.Node | None) -> dns.node.Node:
    new = dns.node.Node()
    if node is not None:
        new.rdatasets.extend(rds.copy() for rds in node.rdatasets)
    return new


def rdataset_for(node: dns.node.Node, rdtype, covers) -> dns.rdataset.Rdataset:
    """The node's rdataset of this type, created if missing.  Unlike dnspython's
    `Node.find_rdataset(create=True)` this never drops other data: dnspython silently removes
    the A records when a CNAME is added (and the reverse), which would turn an invalid update
    into a different, valid-looking zone.  We keep what the primary sent and let validation
    reject it (RFC 2181 §10.1)."""
    for rds in node.rdatasets:
        if rds.rdtype == rdtype and rds.covers == covers:
            return rds
    rds = dns.rdataset.Rdataset(IN, rdtype, covers)
    node.rdatasets.append(rds)
    return rds


def plain_rdataset(rds: dns.rdataset.Rdataset) -> dns.rdataset.Rdataset:
    """A plain Rdataset copy (messages hand out RRset subclasses, which zone code must not
    store: their to_text/to_styled_text signatures differ)."""
    out = dns.rdataset.Rdataset(rds.rdclass, rds.rdtype, rds.covers, rds.ttl)
    for rd in rds:
        out.add(rd)
    return out


def put_rdataset(node: dns.node.Node, rds: dns.rdataset.Rdataset) -> None:
    """Replace the node's rdataset of that type, without dnspython's CNAME coercion."""
    node.rdatasets[:] = [r for r in node.rdatasets
                         if not (r.rdtype == rds.rdtype and r.covers == rds.covers)]
    node.rdatasets.append(rds)


def new_zone_like(zone: dns.zone.Zone) -> dns.zone.Zone:
    return dns.zone.Zone(zone.origin, zone.rdclass, relativize=False)


def apply_steps(base: dns.zone.Zone, steps: Iterable[Diff]) -> tuple[dns.zone.Zone, set, int]:
    """Apply IXFR steps to `base` without changing it.  Returns (new version, owner names that
    changed, net change in the number of RRs).  Raises DiffError when a step does not fit:
    RFC 1995 says nothing about a diff that deletes what is not there, and applying half of it
    would serve data the primary never had, so the whole update is refused."""
    new = new_zone_like(base)
    new.nodes = dict(base.nodes)  # pointer copy; nodes are copied on first touch below
    touched: dict[dns.name.Name, dns.node.Node] = {}
    delta = 0
    origin = base.origin

    def node_for(name: dns.name.Name) -> dns.node.Node:
        node = touched.get(name)
        if node is None:
            if not name.is_subdomain(origin):
                raise DiffError(f"{name} is not in zone {origin}")
            node = _copy_node(new.nodes.get(name))
            touched[name] = node
            new.nodes[name] = node
        return node

    serial = serial_of(base)
    for step in steps:
        if step.old_serial != serial:
            raise DiffError(f"diff from serial {step.old_serial} does not fit serial {serial}")
        for name, _ttl, rd in step.deleted:
            node = node_for(name)
            rds = node.get_rdataset(IN, rd.rdtype, rd.covers())
            if rds is None or rd not in rds:
                raise DiffError(f"diff {step.old_serial}->{step.new_serial} deletes "
                                f"{name} {dns.rdatatype.to_text(rd.rdtype)} {rd}, which is not there")
            rds.remove(rd)
            delta -= 1
            if len(rds) == 0:
                node.delete_rdataset(IN, rd.rdtype, rd.covers())
        for name, ttl, rd in step.added:
            node = node_for(name)
            rds = rdataset_for(node, rd.rdtype, rd.covers())
            if dns.rdatatype.is_singleton(rd.rdtype) and len(rds) and rd not in rds:
                # dnspython would silently keep only the last; the primary sent two.
                raise BadData(f"diff {step.old_serial}->{step.new_serial} gives {name} two "
                                f"{dns.rdatatype.to_text(rd.rdtype)} records "
                                "(RFC 2181 §10.1 allows one)")
            if rd not in rds:
                delta += 1
            rds.add(rd)
            # RFC 2181 §5.2: one TTL per RRset; the primary sends the RRset's TTL with each
            # added RR, so the last one wins (dnspython would keep the minimum).
            rds.ttl = ttl
        name, ttl, rd = step.new_soa
        if name != origin:
            raise DiffError(f"SOA owner {name} is not the zone apex {origin}")
        apex = node_for(origin)
        soa = dns.rdataset.Rdataset(IN, SOA, ttl=ttl)
        soa.add(rd, ttl)
        put_rdataset(apex, soa)
        serial = rd.serial
    for name, node in touched.items():
        if not node.rdatasets:
            del new.nodes[name]
    return new, set(touched), delta


def diff_zones(old: dns.zone.Zone, new: dns.zone.Zone) -> Diff:
    """The single IXFR step that turns `old` into `new` (used after a full transfer, so that the
    journal and our own IXFR service cover it too).  O(names)."""
    deleted: list[RR] = []
    added: list[RR] = []
    origin = old.origin

    def rrsets(node):
        out = {}
        if node is not None:
            for rds in node.rdatasets:
                if rds.rdtype != SOA:
                    out[(rds.rdtype, rds.covers)] = rds
        return out

    for name in set(old.nodes) | set(new.nodes):
        a, b = old.nodes.get(name), new.nodes.get(name)
        if a is b:
            continue
        ra, rb = rrsets(a), rrsets(b)
        for key in set(ra) | set(rb):
            x, y = ra.get(key), rb.get(key)
            if x is not None and y is not None and x.ttl == y.ttl and x == y:
                continue
            if x is not None:
                deleted.extend((name, x.ttl, rd) for rd in x)
            if y is not None:
                added.extend((name, y.ttl, rd) for rd in y)
    _ = origin
    return Diff(soa_of(old), soa_of(new), tuple(deleted), tuple(added))


# --- text form (journal lines) ------------------------------------------------------------------

def _rr_to_json(origin: dns.name.Name, rr: RR) -> list:
    name, ttl, rd = rr
    return [name.to_text(), ttl, dns.rdatatype.to_text(rd.rdtype),
            rd.to_text(origin=origin, relativize=False)]


def _rr_from_json(origin: dns.name.Name, item) -> RR:
    if not (isinstance(item, list) and len(item) == 4):
        raise JournalError(f"bad RR entry {item!r}")
    name, ttl, rdtype, text = item
    if not (isinstance(name, str) and isinstance(ttl, int) and isinstance(rdtype, str)
            and isinstance(text, str)):
        raise JournalError(f"bad RR entry {item!r}")
    rd = dns.rdata.from_text(IN, dns.rdatatype.from_text(rdtype), text, origin=origin,
                             relativize=False)
    return (dns.name.from_text(name), ttl, rd)


def record_to_json(origin: dns.name.Name, rec: Record) -> dict:
    return {
        "received": rec.received,
        "full": rec.full,
        "steps": [{
            "old": _rr_to_json(origin, s.old_soa),
            "new": _rr_to_json(origin, s.new_soa),
            "del": [_rr_to_json(origin, rr) for rr in s.deleted],
            "add": [_rr_to_json(origin, rr) for rr in s.added],
        } for s in rec.steps],
    }


def record_from_json(origin: dns.name.Name, obj) -> Record:
    try:
        steps = tuple(
            Diff(_rr_from_json(origin, s["old"]), _rr_from_json(origin, s["new"]),
                 tuple(_rr_from_json(origin, x) for x in s["del"]),
                 tuple(_rr_from_json(origin, x) for x in s["add"]))
            for s in obj["steps"])
        if not steps:
            raise JournalError("record without steps")
        return Record(steps, float(obj["received"]), bool(obj.get("full", False)))
    except (KeyError, TypeError, ValueError, dns.exception.DNSException) as exc:
        raise JournalError(f"bad journal record: {type(exc).__name__}: {exc}") from None


# --- the files ----------------------------------------------------------------------------------

def file_label(origin: dns.name.Name) -> str:
    """A zone's name as a file or directory name.  Zone names are case-insensitive and may hold
    any octet: keep it unambiguous and safe (only letters, digits, "-_." and %xx escapes)."""
    label = origin.to_text(omit_final_dot=True) or "root"
    return "".join(c if (c.isalnum() or c in "-_.") else f"%{ord(c):02x}" for c in label.lower())


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """Write `path` through `write(file)` so that readers see the old file or the whole new one,
    also after a crash (write a temporary file, fsync it, rename it over, fsync the directory)."""
    tmp = path.with_name(path.name + ".tmp")
    with (open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8")) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ZoneStore:
    """The saved state of one zone under `<state>/<zone name>/`.  Single writer (the xfr
    engine); all writes are atomic renames or appends of whole checksummed lines."""

    def __init__(self, state_dir: str | os.PathLike, origin: dns.name.Name):
        self.origin = origin
        self.dir = Path(state_dir) / file_label(origin)
        self.snapshot = self.dir / "snapshot.zone"
        self.snapshot_rec = self.dir / "snapshot.rec"
        self.journal = self.dir / "journal"
        self.meta = self.dir / "meta.json"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    # snapshot: zone text of a dnspython version, or (snapshot.rec) the raw columns of a version
    # in the records form (pop53.xfr.recversion: no dnspython object per record either way)
    def save_snapshot(self, zone) -> None:
        self.ensure()
        if isinstance(zone, dns.zone.Zone):
            atomic_write(self.snapshot, lambda f: zone.to_file(f, sorted=True, relativize=False,
                                                              want_origin=True))
            stale = self.snapshot_rec
        else:
            from pop53.xfr import recversion
            atomic_write(self.snapshot_rec, lambda f: recversion.save(zone, f), binary=True)
            stale = self.snapshot
        try:
            stale.unlink()
        except FileNotFoundError:
            pass

    def save_snapshot_isolated(self, zone, timeout: float = 900.0) -> None:
        """save_snapshot() in a forked child (pop53.xfr.isolate): the child inherits the zone
        copy-on-write and writes it while the engine keeps the GIL.  A records-form version is
        written in place (its buffers go out in well under a second)."""
        self.ensure()
        if not isinstance(zone, dns.zone.Zone):
            self.save_snapshot(zone)
            return
        run_in_fork(lambda: self.save_snapshot(zone), f"{self.snapshot}: snapshot writer", timeout)

    def load_snapshot(self):
        if self.snapshot_rec.exists():
            from pop53.xfr import recversion
            return recversion.load(self.snapshot_rec, self.origin)
        if not self.snapshot.exists():
            return None
        try:
            return dns.zone.from_file(str(self.snapshot), origin=self.origin, relativize=False,
                                      check_origin=True)
        except (OSError, dns.exception.DNSException) as exc:
            raise JournalError(f"{self.snapshot}: {exc}") from None

    # journal
    def append(self, rec: Record) -> None:
        self.ensure()
        body = json.dumps(record_to_json(self.origin, rec), separators=(",", ":"))
        line = f"{zlib.crc32(body.encode()):08x} {body}\n"
        with open(self.journal, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rewrite_journal(self, recs: list[Record]) -> None:
        self.ensure()

        def write(f):
            for rec in recs:
                body = json.dumps(record_to_json(self.origin, rec), separators=(",", ":"))
                f.write(f"{zlib.crc32(body.encode()):08x} {body}\n")
        atomic_write(self.journal, write)

    def load_journal(self) -> list[Record]:
        """Every intact record, in order.  Stops at the first damaged line (a crash mid-append
        leaves a torn last line; anything after damage cannot be trusted to chain)."""
        if not self.journal.exists():
            return []
        out = []
        with open(self.journal, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                crc, _, body = line.rstrip("\n").partition(" ")
                try:
                    ok = line.endswith("\n") and int(crc, 16) == zlib.crc32(body.encode())
                except ValueError:
                    ok = False
                if not ok:
                    log.warning("%s:%d: damaged journal line; replay stops here", self.journal, lineno)
                    break
                try:
                    out.append(record_from_json(self.origin, json.loads(body)))
                except (JournalError, ValueError) as exc:
                    log.warning("%s:%d: %s; replay stops here", self.journal, lineno, exc)
                    break
        return out

    # meta
    def save_meta(self, meta: dict) -> None:
        self.ensure()
        atomic_write(self.meta, lambda f: json.dump(meta, f))

    def load_meta(self) -> dict:
        try:
            with open(self.meta, encoding="utf-8") as f:
                meta = json.load(f)
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}


def serial_gt(a: int, b: int) -> bool:
    """a > b in RFC 1982 serial number arithmetic."""
    return dns.serial.Serial(a) > dns.serial.Serial(b)


def now() -> float:
    return time.time()
