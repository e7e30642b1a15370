"""Build the immutable mapping snapshot the data plane reads (ext/mapping.pxi).

For every mapped resource and query family (a "view") the final answer of each region is
computed from the targets' liveness, the fallback regions and `all_down`; the map's ranges are
then merged wherever that final answer is equal, so the range holding a client key is exactly
the run of addresses with its answer and its bounds give the maximal ECS scope (RFC 7871).
Views with one answer function over one map share their tables.  A liveness change rebuilds
only the merged tables (one numpy pass per affected function), never the maps or the zones.
"""
from __future__ import annotations

import hashlib
import ipaddress
import struct

import dns.name
import numpy as np

from pop53 import _core
from pop53.errors import ConfigError
from pop53.mapping.config import MappedConfig, MappingConfig
from pop53.mapping.mapfile import RegionTable

_RRSET = struct.Struct("<HHIIIIHH")
_RES = struct.Struct("<IBBBBIIii")
_ANS = struct.Struct("<IIHH")
_GLUE = struct.Struct("<IIII")
_KEY = struct.Struct("<BBBB32s32s512s")
_PICK = struct.Struct("<BBHIQ")
assert (_RES.size, _ANS.size, _GLUE.size, _KEY.size, _PICK.size) == tuple(
    _core.MAP_SIZEOF[k] for k in ("res", "ans", "glue", "keycfg", "pick"))
T_A, T_NS, T_CNAME, T_AAAA, T_RRSIG = 1, 2, 5, 28, 46
MAPF_A, MAPF_AAAA = 1, 2
ANS_SERVFAIL, ANS_PICK, GLUE_REQUIRED = 1, 2, 1
PICK_BITS = 10           # 1,024 buckets per sticky/weighted answer: weights to about 0.1%
KEY_MODE = {"ecs_then_source": 0, "source_only": 1, "ecs_only": 2}
SUB6 = 0x8000           # val6 flag: the rest is an IPv6 sub-table's index (ext/mapping.pxi)
V6_LAST = (1 << 64) - 1
INDEX_MIN = 64           # smaller tables are searched without an index
INDEX_MAX_BITS = 18      # measured: 1M prefixes, random keys: 20-28 ns at 18 bits, 27-39 at 16
# From this many IPv4 ranges on, a direct index (ext/maptable.pxi: one index word, and one
# run of cells unless the block is uniform, in huge pages) replaces the indexed search, whose
# three dependent misses cost +0.7 us per query at 1M prefixes under dnsperf
DIR_MIN = 1 << 16
DIR_BITS = (16, 20)      # about two ranges per index slot, at most 4 MiB of index
SERVFAIL, NODATA = "servfail", "nodata"


def final_targets(res: MappedConfig, region: str, live) -> tuple | str | None:
    """The targets answering `region`: its targets that are up, else those of the fallback
    regions in order; every one down: the configured set anyway ("always return an answer"),
    or SERVFAIL / NODATA when the resource says so.  None: the region has no targets at all."""
    rt = res.region_targets
    chain = [region] + [f for f in res.fallback if f != region]
    for reg in chain:
        up = [t for t in rt.get(reg, ()) if live(t)]
        if up:
            return _choose(res, up)
    configured = next((rt[reg] for reg in chain if reg in rt), None)
    if configured is None:
        return None
    if res.all_down == "servfail":
        return SERVFAIL
    if res.all_down == "nodata":
        return NODATA
    return _choose(res, configured)


class Pick(tuple):
    """The candidates a sticky/weighted resource chooses `select` targets from, per client
    block (the data plane hashes the block to a bucket; see pick_table)."""


def _choose(res: MappedConfig, targets) -> tuple:
    if res.selection != "ordered" and len(targets) > res.select:
        return Pick(targets)
    return tuple(targets[:res.select] if res.select else targets)


def _h64(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest(),
                          "little")


def bucket_scores(res: MappedConfig, targets: dict) -> tuple[list, np.ndarray]:
    """Rendezvous (highest random weight) scores of every target of `res` in every bucket: the
    smallest score wins.  -ln(u) / weight makes a target win with probability weight / sum of
    the candidates' weights, and taking a target away moves only the buckets it held.  The
    hash depends on names only, so every machine of the fleet chooses alike."""
    names = sorted({t for _, ts in res.regions for t in ts})
    n = 1 << PICK_BITS
    b = np.arange(n, dtype=np.uint64)
    cols = []
    for t in names:
        x = b * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(_h64(res.name, t))
        for sh, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):   # splitmix64
            x = (x ^ (x >> np.uint64(sh))) * np.uint64(mul)
        x ^= x >> np.uint64(31)
        u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
        w = targets[t].weight if res.selection == "weighted" else 1
        cols.append(-np.log(u) / w)
    return names, np.stack(cols, axis=1)


def pick_buckets(res: MappedConfig, cand: Pick, scores: tuple) -> list[tuple]:
    """For every bucket, the `select` candidates with the best scores, in configured order."""
    names, mat = scores
    col = [names.index(t) for t in cand]
    best = np.argsort(mat[:, col], axis=1, kind="stable")[:, :res.select]
    best.sort(axis=1)
    return [tuple(cand[i] for i in row) for row in best.tolist()]


def check_coverage(mcfg: MappingConfig, tables: dict) -> None:
    """Every region a map can produce must give every resource on it some targets."""
    for i, res in enumerate(mcfg.mapped):
        table = tables[res.map]
        for region in table.regions:
            if final_targets(res, region, lambda t: True) is None:
                raise ConfigError(
                    f"region {region!r} of map {res.map!r} has no targets for {res.name} "
                    f"(add it to regions or give a fallback)", file=mcfg.source,
                    key=f"mapped[{i}].regions")


def index_bits(n: int) -> int:
    """Bits of the top-of-key index for a table of n ranges: about four ranges per slot (two
    search steps), at most 18 (a 1 MiB index, for the million-prefix maps)."""
    return max(1, min(INDEX_MAX_BITS, (n // 4).bit_length()))


def _merge(lo: np.ndarray, val: np.ndarray) -> tuple:
    keep = np.empty(len(val), dtype=bool)
    keep[0] = True
    np.not_equal(val[1:], val[:-1], out=keep[1:])
    return np.ascontiguousarray(lo[keep]), np.ascontiguousarray(val[keep])


def _sub_view(table: RegionTable, fn: np.ndarray, lo6: np.ndarray, val6: np.ndarray):
    """The /64s with longer prefixes: each one's low-64 ranges with answers applied and
    merged.  A /64 whose answers came out equal is folded into the main table; the others get
    their own range there, valued SUB6 | their sub-table's index.  -> (lo6, val6, sub)."""
    if not len(table.sub_key):
        return lo6, val6, None
    los, vals, off, mark = [], [], [0], []
    for j in range(len(table.sub_key)):
        a, b = int(table.sub_off[j]), int(table.sub_off[j + 1])
        lo, val = _merge(table.sub_lo[a:b], fn[table.sub_reg[a:b]])
        if len(lo) == 1:
            mark.append(int(val[0]))
        else:
            mark.append(SUB6 | len(off) - 1)
            los.append(lo)
            vals.append(val)
            off.append(off[-1] + len(lo))
    keys = table.sub_key
    after = keys[keys < np.uint64(V6_LAST)] + np.uint64(1)
    pts = np.union1d(lo6, np.concatenate([keys, after]))
    v = val6[np.searchsorted(lo6, pts, side="right") - 1]
    v[np.searchsorted(pts, keys)] = np.array(mark, dtype=np.uint16)
    lo6, val6 = _merge(pts, v)
    if len(off) == 1:
        return lo6, val6, None
    return lo6, val6, (np.concatenate(los), np.concatenate(vals), np.array(off, dtype=np.uint32))


def merged_view(table: RegionTable, fn: np.ndarray) -> tuple:
    """Ranges of `table` with region -> answer index `fn` applied, adjacent equal answers
    merged, plus the top-bits indexes and the IPv6 sub-tables:
    (lo4, val4, idx4, lo6, val6, idx6, sub or None)."""
    out = []
    for lo, reg, width in ((table.lo4, table.reg4, 32), (table.lo6, table.reg6, 64)):
        val = fn[reg]
        sub = None
        if width == 64:
            lo, val, sub = _sub_view(table, fn, lo, val)
        lo, val = _merge(lo, val)
        if width == 32 and len(lo) >= DIR_MIN:
            b = min(DIR_BITS[1], max(DIR_BITS[0], len(lo).bit_length() - 1))
            out += [None, None, _core.MapDir4(lo, val, b)]
            continue
        idx = None
        if sub is not None and len(fn) and int(fn.max()) >= SUB6:
            raise ValueError("more than 32,767 answers beside IPv6 sub-tables")
        if len(lo) >= INDEX_MIN:
            b = index_bits(len(lo))
            idx = np.searchsorted(lo >> lo.dtype.type(width - b),
                                  np.arange((1 << b) + 1, dtype=lo.dtype), side="left").astype(np.uint32)
        out += [lo, val, idx]
    return tuple(out) + (sub,)


class _Blob:
    """The snapshot's byte arena: names, RRsets, answers, glue.  Offset 0 means none.
    With a signer (pop53.dnssec.online), an answer RRset of a zone signed online carries its
    RRSIG RRset: rrset_t.add_off points at it (mapping RRsets have no additional targets)."""

    def __init__(self, signer=None):
        self.buf = bytearray(8)
        self.names: dict[bytes, int] = {}
        self.signer = signer

    def add(self, data: bytes, align: int = 4) -> int:
        self.buf += b"\0" * (-len(self.buf) % align)
        off = len(self.buf)
        self.buf += data
        return off

    def name(self, wire: bytes) -> int:
        off = self.names.get(wire)
        if off is None:
            off = self.names[wire] = self.add(wire, 1)
        return off

    def rrset(self, rtype: int, ttl: int, rdatas: list[bytes], owner: bytes | None = None) -> int:
        """An RRset; `owner` (wire) given: an answer, signed when its zone is signed online."""
        if not rdatas:
            return 0
        sig_off = 0
        if owner is not None and self.signer is not None:
            sigs = self.signer.sign(owner, rtype, ttl, rdatas)
            if sigs:
                # RFC 4034 §3: the RRSIG RRset of the answer; aux = the type covered
                sdata = b"".join(struct.pack(">H", len(r)) + r for r in sigs)
                soff = self.add(sdata, 1)
                sig_off = self.add(_RRSET.pack(T_RRSIG, len(sigs), ttl, soff, len(sdata), 0, 0,
                                               rtype))
        data = b"".join(struct.pack(">H", len(r)) + r for r in rdatas)
        rdata_off = self.add(data, 1)
        return self.add(_RRSET.pack(rtype, len(rdatas), ttl, rdata_off, len(data), sig_off, 0, 0))


def _wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire()


class SnapshotBuilder:
    """Holds the compiled maps and the shared merged tables; builds snapshots on demand."""

    def __init__(self, mcfg: MappingConfig, tables: dict[str, RegionTable]):
        check_coverage(mcfg, tables)
        self.cfg = mcfg
        self.tables = tables
        self._views: dict = {}          # (map, fn bytes) -> merged arrays (shared, reused)
        self._score_cache: dict = {}    # sticky/weighted resources' bucket scores

    def _content(self, res: MappedConfig, family: str, final) -> object:
        """What an answer of this view holds (hashable; equal contents = one answer)."""
        if isinstance(final, Pick):
            return ("pick", tuple(final))
        if final in (SERVFAIL, NODATA):
            return final
        tg = [self.cfg.targets[t] for t in final]
        if family in ("A", "AAAA"):
            ver = 4 if family == "A" else 6
            seen = dict.fromkeys(a for t in tg for a in t.addresses
                                 if ipaddress.ip_address(a).version == ver)
            return tuple(seen)
        if family == "CNAME":
            return tg[0].host
        return tuple(dict.fromkeys((t.host, t.addresses) for t in tg))

    def _encode(self, blob: _Blob, res: MappedConfig, family: str, content) -> bytes:
        if content == SERVFAIL:
            return _ANS.pack(0, 0, 0, ANS_SERVFAIL)
        if content == NODATA or content == ():
            return _ANS.pack(0, 0, 0, 0)
        ttl = res.ttl
        if family in ("A", "AAAA"):
            rs = blob.rrset(T_A if family == "A" else T_AAAA, ttl,
                            [ipaddress.ip_address(a).packed for a in content], _wire(res.name))
            return _ANS.pack(rs, 0, 0, 0)
        if family == "CNAME":
            return _ANS.pack(blob.rrset(T_CNAME, ttl, [_wire(content)], _wire(res.name)), 0, 0, 0)
        rs = blob.rrset(T_NS, ttl, [_wire(h) for h, _ in content])
        owner = dns.name.from_text(res.name)
        glue = b""
        for host, addrs in content:
            v4 = [ipaddress.ip_address(a).packed for a in addrs if ":" not in a]
            v6 = [ipaddress.ip_address(a).packed for a in addrs if ":" in a]
            req = GLUE_REQUIRED if dns.name.from_text(host).is_subdomain(owner) else 0
            glue += _GLUE.pack(blob.name(_wire(host)), blob.rrset(T_A, ttl, v4),
                               blob.rrset(T_AAAA, ttl, v6), req)
        goff = blob.add(glue) if glue else 0
        return _ANS.pack(rs, goff, len(content), 0)

    def _answers(self, blob: _Blob, res: MappedConfig, family: str, uniq: list) -> bytes:
        """The view's answer entries: one per distinct content, in `uniq` order (the merged
        tables' values), then the variants sticky/weighted heads choose between."""
        every = {c: i for i, c in enumerate(uniq)}
        heads = {}
        for c in uniq:
            if isinstance(c, tuple) and c[:1] == ("pick",):
                variants = pick_buckets(res, Pick(c[1]), self._scores(res))
                heads[c] = [every.setdefault(self._content(res, family, v), len(every))
                            for v in variants]
        if len(every) > 0xFFFF:
            raise ConfigError(f"{res.name}: more than 65,535 distinct answers",
                              file=self.cfg.source)
        out = []
        for c in every:
            if c in heads:
                pick = _PICK.pack(res.sticky_v4, res.sticky_v6, PICK_BITS, 0, _h64("salt", res.name))
                off = blob.add(pick + np.array(heads[c], dtype="<u2").tobytes(), 8)
                out.append(_ANS.pack(0, off, 0, ANS_PICK))
            else:
                out.append(self._encode(blob, res, family, c))
        return b"".join(out)

    def _scores(self, res: MappedConfig):
        key = (res.name, res.selection, tuple(sorted((t, self.cfg.targets[t].weight)
                                                     for _, ts in res.regions for t in ts)))
        got = self._score_cache.get(key)
        if got is None:
            got = self._score_cache[key] = bucket_scores(res, self.cfg.targets)
        return got

    def build(self, live, seed: int, signer=None) -> _core.MapSnapshot:
        """A snapshot for the liveness function `live(target) -> bool`, hashing names with the
        zone image's seed; `signer` (pop53.dnssec.online.OnlineSigner) signs the answers of
        zones signed online, so an answer and its RRSIG always come from one snapshot."""
        blob = _Blob(signer)
        if signer is not None:
            signer.begin()
        map_index = {name: i for i, name in enumerate(self.cfg.maps)}
        keys = b"".join(self._keycfg(m) for m in self.cfg.maps.values())
        views: list = []
        res_bytes = b""
        label_mask = 0
        hashes = []
        used = set()
        for res in self.cfg.mapped:
            table = self.tables[res.map]
            fams = {None: ("A", "AAAA"), "A": ("A",), "AAAA": ("AAAA",), "CNAME": ("CNAME",),
                    "NS": ("NS",)}[res.type]
            finals = [final_targets(res, region, live) for region in table.regions]
            vidx = {}
            for fam in fams:
                contents = [self._content(res, fam, f) for f in finals]
                pos = {c: i for i, c in enumerate(dict.fromkeys(contents))}
                uniq = list(pos)
                fn = np.array([pos[c] for c in contents], dtype=np.uint16)
                ck = (res.map, fn.tobytes())
                arrays = self._views.get(ck)
                if arrays is None:
                    arrays = self._views[ck] = merged_view(table, fn)
                used.add(ck)
                answers = self._answers(blob, res, fam, uniq)
                ans_off = blob.add(answers)
                vidx[fam] = len(views)
                views.append(arrays[:6] + (ans_off, len(answers) // _ANS.size,
                                           int(fn[table.default]), arrays[6]))
            wire = _wire(res.name)
            labels = len(dns.name.from_text(res.name).labels) - 1
            label_mask |= 1 << labels
            h = _core.hash_name(wire, seed)
            hashes.append(h)
            kind = _core.MAP_KIND["ADDR" if res.type in (None, "A", "AAAA") else res.type]
            flags = (MAPF_A if "A" in fams else 0) | (MAPF_AAAA if "AAAA" in fams else 0)
            va = vidx.get("A", vidx.get("CNAME", vidx.get("NS", -1)))
            res_bytes += _RES.pack(blob.name(wire), len(wire), labels, kind, flags, h,
                                   map_index[res.map], va, vidx.get("AAAA", -1))
        if signer is not None:
            signer.end()       # signatures of answers no longer given are dropped
        # tables no view uses any more (an old liveness) are dropped
        self._views = {k: v for k, v in self._views.items() if k in used}
        size = 8
        while size <= 2 * len(hashes):
            size *= 2
        rtab = [0] * size
        for i, h in enumerate(hashes):
            slot = h & (size - 1)
            while rtab[slot]:
                slot = (slot + 1) & (size - 1)
            rtab[slot] = i + 1
        return _core.MapSnapshot(bytes(blob.buf), res_bytes, struct.pack(f"<{size}I", *rtab),
                                 seed, label_mask, keys, views)

    @staticmethod
    def _keycfg(m) -> bytes:
        lens, fams, addrs = bytearray(32), bytearray(32), bytearray(512)
        for i, p in enumerate(m.ecs_trust):
            net = ipaddress.ip_network(p)
            lens[i] = net.prefixlen
            fams[i] = 4 if net.version == 4 else 16
            addrs[16 * i:16 * i + len(net.network_address.packed)] = net.network_address.packed
        return _KEY.pack(KEY_MODE[m.key], m.ecs_max_v4, m.ecs_max_v6, len(m.ecs_trust),
                         bytes(lens), bytes(fams), bytes(addrs))
