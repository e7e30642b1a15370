"""The DNSSEC block of a signed zone in the compiled image (ext/p53.pxd: dsec_t).

Everything a denial of existence needs that can be known at load time is found here once
(RFC 4035 §3.1.3, RFC 5155 §7.2), so the data plane only reads:
- NSEC zones: the NSEC owners in canonical order (RFC 4034 §6.1), searched by binary search for
  the NSEC covering a query name; per name, the NSEC that proves its types (its own, or for an
  empty non-terminal the one covering it) and the NSEC covering "*.<name>" (the wildcard proof
  of an NXDOMAIN whose closest encloser is that name).
- NSEC3 zones: the NSEC3 owners sorted by hash (so the only hashing per query is the next-closer
  name's, RFC 5155 §7.2.1); per name, its matching NSEC3, the NSEC3 covering the hash of
  "*.<name>", and for a name opt-out left without an NSEC3 (a delegation, or an ENT above only
  such, RFC 5155 §7.2.3-4) the closest provable encloser's NSEC3 and the NSEC3 covering the
  next closer name.
NSEC3 owner names are not names of the zone (RFC 5155 §7.1): the compiler keeps their nodes out
of the zone's lookup table, so a query for one is NXDOMAIN.
This is the node compile's block; the C compile of scanner records writes the same bytes
(ext/zonebuild_dsec.pxi, tests/zone/test_flat_compile_signed.py): a rule changed here changes there.
"""
from __future__ import annotations

import base64
import bisect
import hashlib
import struct

T_RRSIG, T_NSEC, T_NSEC3, T_NSEC3PARAM = 46, 47, 50, 51
MODE_NSEC, MODE_NSEC3 = 1, 2

# dsec_t, n3ent_t, dinfo_t of ext/p53.pxd
DSEC = struct.Struct("<BBHIIII255sB")
N3ENT = struct.Struct("<20sI")
DINFO = struct.Struct("<IIII")


def nsec3_hash(key: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5155 §5: IH(salt, owner, iterations) of a lowercased wire name."""
    h = hashlib.sha1(key + salt).digest()
    for _ in range(iterations):
        h = hashlib.sha1(h + salt).digest()
    return h


def canonical_key(key: bytes) -> tuple:
    """A sort key equal to RFC 4034 §6.1's canonical order of lowercased wire names: labels
    compared right to left as octet strings (a shorter label that is a prefix sorts first)."""
    labels = []
    p = 0
    while key[p]:
        labels.append(key[p + 1:p + 1 + key[p]])
        p += key[p] + 1
    labels.reverse()
    return tuple(labels)


def _parent(key: bytes) -> bytes:
    return key[key[0] + 1:]


def _types(node) -> set:
    return {rr[0] for rr in node.rrsets}


def split_nsec3_owners(nodes: dict, flag: int) -> dict:
    """Remove the nodes that hold only NSEC3 records (and their RRSIGs) from `nodes` and return
    them: hashed owner names are not names of the zone (RFC 5155 §7.1)."""
    out = {}
    for key, n in nodes.items():
        if n.rrsets and any(rr[0] == T_NSEC3 for rr in n.rrsets) and \
                all(rr[0] in (T_NSEC3, T_RRSIG) for rr in n.rrsets):
            out[key] = n
    for key, n in out.items():
        del nodes[key]
        n.flags |= flag
    return out


def _nsec3_params(apex) -> tuple | None:
    """(iterations, salt) of the apex NSEC3PARAM with SHA-1 and flags 0 (RFC 5155 §4)."""
    for rr in apex.rrsets:
        if rr[0] != T_NSEC3PARAM:
            continue
        for w in rr[2]:
            if len(w) >= 5 and w[0] == 1 and w[1] == 0 and len(w) == 5 + w[4]:
                return int.from_bytes(w[2:4], "big"), bytes(w[5:])
    return None


class Plan:
    """The DNSSEC block of one zone, laid out after the node offsets are known."""

    def __init__(self, mode: int, iterations: int, salt: bytes, chain: list, info: list):
        self.mode = mode
        self.iterations = iterations
        self.salt = salt
        self.chain = chain          # NSEC: node offsets; NSEC3: (hash, node offset)
        self.info = info            # (node offset, match, wild, next closer cover)
        entry = 4 if mode == MODE_NSEC else N3ENT.size
        self.chain_rel = DSEC.size
        self.info_rel = DSEC.size + entry * len(chain)
        self.size = (self.info_rel + DINFO.size * len(info) + 3) & ~3

    def write(self, buf, off: int) -> None:
        DSEC.pack_into(buf, off, self.mode, len(self.salt), self.iterations, len(self.chain),
                       off + self.chain_rel, len(self.info), off + self.info_rel, self.salt, 0)
        p = off + self.chain_rel
        if self.mode == MODE_NSEC:
            struct.pack_into(f"<{len(self.chain)}I", buf, p, *self.chain)
        else:
            for h, node_off in self.chain:
                N3ENT.pack_into(buf, p, h, node_off)
                p += N3ENT.size
        p = off + self.info_rel
        for rec in self.info:
            DINFO.pack_into(buf, p, *rec)
            p += DINFO.size


def plan(nodes: dict, apex, nsec3_nodes: dict, below_cut: int) -> Plan | None:
    """The DNSSEC block of a zone (its nodes already have offsets), or None when the zone has
    no NSEC or NSEC3 chain to prove denials with (it is then served as unsigned for denials;
    RRSIGs present still go out with their RRsets)."""
    auth = [n for n in nodes.values() if not n.flags & below_cut]
    apex_types = _types(apex)
    params = _nsec3_params(apex) if T_NSEC3PARAM in apex_types else None
    if params is not None:
        return _plan_nsec3(auth, nsec3_nodes, params)
    if T_NSEC in apex_types:
        return _plan_nsec(auth)
    return None


def _plan_nsec(auth: list) -> Plan:
    chain = sorted((n for n in auth if T_NSEC in _types(n)), key=lambda n: canonical_key(n.key))
    keys = [canonical_key(n.key) for n in chain]

    def cover(key: bytes) -> int:
        # the last owner strictly before `key`; before the first, the last one (the chain wraps)
        return chain[bisect.bisect_left(keys, canonical_key(key)) - 1].off

    info = []
    for n in auth:
        match = n.off if T_NSEC in _types(n) else cover(n.key)
        info.append((n.off, match, cover(b"\x01*" + n.key), 0))
    info.sort()
    return Plan(MODE_NSEC, 0, b"", [n.off for n in chain], info)


def _plan_nsec3(auth: list, nsec3_nodes: dict, params: tuple) -> Plan:
    iterations, salt = params
    chain = []
    for key, n in nsec3_nodes.items():
        rr = next(rr for rr in n.rrsets if rr[0] == T_NSEC3)
        w = rr[2][0]
        # NSEC3 RDATA: alg, flags, iterations(2), salt length, salt, ...  (RFC 5155 §3.2)
        if w[0] != 1 or int.from_bytes(w[2:4], "big") != iterations or bytes(w[5:5 + w[4]]) != salt:
            continue            # another chain's record (a chain being replaced)
        try:
            h = base64.b32hexdecode(key[1:1 + key[0]].upper())
        except ValueError:
            continue
        if len(h) == 20:
            chain.append((h, n.off))
    chain.sort()
    hashes = [h for h, _ in chain]
    by_hash = dict(chain)
    if not chain:
        return Plan(MODE_NSEC3, iterations, salt, [], [])

    def cover(h: bytes) -> int:
        return chain[bisect.bisect_left(hashes, h) - 1][1]

    def hash_of(key: bytes) -> bytes:
        return nsec3_hash(key, salt, iterations)

    info = []
    for n in auth:
        match = by_hash.get(hash_of(n.key), 0)
        nc = 0
        wild = cover(hash_of(b"\x01*" + n.key))
        if not match:
            # opt-out left this name without an NSEC3 (an insecure delegation, or an empty
            # non-terminal above only such): the closest provable encloser and the next
            # closer's cover prove NODATA here (RFC 5155 §7.2.3, §7.2.4).  A name error below
            # it is proven against that encloser too, so its wildcard proof is the one of
            # "*.<closest provable encloser>" (§7.2.2; the validator's §8.4 checks exactly it)
            child, anc = n.key, _parent(n.key)
            while anc:
                m = by_hash.get(hash_of(anc))
                if m:
                    match, nc = m, cover(hash_of(child))
                    wild = cover(hash_of(b"\x01*" + anc))
                    break
                child, anc = anc, _parent(anc)
        info.append((n.off, match, wild, nc))
    info.sort()
    return Plan(MODE_NSEC3, iterations, salt, chain, info)
