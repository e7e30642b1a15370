"""ECMP hash emulator: which next hop (machine) a router picks for a flow.

The Akamai DNS paper (§3.1, ../shared/docs/akamai-dns.md) puts several machines behind one
PoP router that spreads an anycast prefix over them with an ECMP hash of
(source IP/port, destination IP/port).  This module answers, for millions of flows at once
(numpy, no Python loop per flow):

* which next hop each flow gets under several router models:
  - modulo-N (``hash % N``), the naive model whose remapping on a change is ~(N-1)/N;
  - hash-threshold (RFC 2992 §2: the hash space is cut into N contiguous regions), which is
    what the Linux FIB does for a multipath route;
  - resilient buckets (a fixed table of buckets, as in Linux ``nexthop`` groups of type
    ``resilient``) and rendezvous / highest-random-weight hashing (consistent hashing),
    which both move only the flows of the next hop that went away;
  - the Linux kernel's own multipath hash (``fib_multipath_hash`` / ``rt6_multipath_hash``,
    policies 0, 1, 2 and 3 with a fixed ``net.ipv4.fib_multipath_hash_seed``), reproduced
    bit for bit, so the emulator predicts the kernel's choice (verified in a namespace lab:
    ``pop53 ecmp verify``; see docs/ecmp.md);
* load per next hop and imbalance, the share of flows that move when a next hop is added or
  removed (what a self-suspension costs in-flight resolvers, paper §4.1/§4.2), and the skew
  caused by resolvers that do not randomize their source port (paper §3.1).

How the kernel hash is reproduced (Linux 6.x, read from net/ipv4/route.c,
net/ipv6/route.c, net/core/flow_dissector.c, include/net/ip_fib.h and
net/ipv4/fib_semantics.c):

1. A zeroed ``struct flow_keys`` is filled with the fields the policy uses
   (policy 0: addresses, plus flow label and next header for IPv6; policy 1: addresses,
   ports, protocol; policy 3: the fields of ``fib_multipath_hash_fields``).
2. ``__flow_hash_consistentify`` sorts the two addresses and the two ports (so both
   directions of a flow hash alike), comparing the raw big-endian words as host
   (little-endian) integers for IPv4 and ports, and with memcmp for IPv6 addresses.
3. SipHash-2-4 runs over the struct from ``basic`` (offset 8) for 48 bytes (IPv4) or 72
   bytes (IPv6) with the key ``k0 = k1 = seed << 32 | seed``; the low 32 bits are kept,
   0 becomes 1.
4. Policy 3 on a forwarded packet mixes the outer hash with the (absent) inner hash:
   ``jhash_2words(outer, 0, 0)``.
5. The result is shifted right by one (a 31-bit hash), and the first next hop whose upper
   bound ``round(w_cum * 2**31 / w_total) - 1`` is >= the hash is chosen (fib_rebalance /
   fib_select_multipath, RFC 2992 hash-threshold).

The flows themselves are `pop53.ecmp.flows`; the namespace lab that checks this module against
the kernel is `pop53.ecmp.verify`.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from pop53.ecmp.flows import (DEFAULT_FIELDS, FIELD_DST_IP, FIELD_DST_PORT, FIELD_FLOWLABEL,
                              FIELD_IP_PROTO, FIELD_OUTER_MASK, FIELD_SRC_IP, FIELD_SRC_PORT,
                              EcmpError, Flows, random_flows)




# Layout of struct flow_keys from FLOW_KEYS_HASH_START_FIELD (basic), offsets relative to it:
#   0 basic.n_proto(2) 2 basic.ip_proto(1) 3 pad   4 tags.flow_label(4)
#   8 vlan(8) 16 cvlan(8) 24 keyid(4) 28 ports.src(2) 30 ports.dst(2) 32 icmp(4)
#   36 addrs: v4 src(4) dst(4) | v6 src(16) dst(16)
# flow_keys_hash_length(): sizeof(flow_keys)=80, minus offset 8, minus the unused part of
# the address union -> 48 bytes for IPv4, 72 for IPv6 (tail padding included, zero).
_OFF_PROTO = 2
_OFF_LABEL = 4
_OFF_PORTS = 28
_OFF_ADDRS = 36
_HASH_LEN = {4: 48, 6: 72}





# --------------------------------------------------------------------------------------
# Hash primitives
# --------------------------------------------------------------------------------------

def _rotl64(x: np.ndarray, b: int) -> np.ndarray:
    return (x << np.uint64(b)) | (x >> np.uint64(64 - b))


def siphash24(words: np.ndarray, length: int, k0: int, k1: int) -> np.ndarray:
    """SipHash-2-4 (Aumasson & Bernstein; lib/siphash.c) of ``length`` bytes given as
    ``(n, length // 8)`` little-endian uint64 words (``length`` a multiple of 8, as the
    flow-key lengths are).  Returns uint64 per row."""
    if length % 8:
        raise EcmpError("siphash24 here takes whole 64-bit words")
    n = words.shape[0]
    v0 = np.full(n, np.uint64(k0 ^ 0x736F6D6570736575), np.uint64)
    v1 = np.full(n, np.uint64(k1 ^ 0x646F72616E646F6D), np.uint64)
    v2 = np.full(n, np.uint64(k0 ^ 0x6C7967656E657261), np.uint64)
    v3 = np.full(n, np.uint64(k1 ^ 0x7465646279746573), np.uint64)

    def sipround():
        nonlocal v0, v1, v2, v3
        v0 = v0 + v1; v1 = _rotl64(v1, 13); v1 ^= v0; v0 = _rotl64(v0, 32)  # noqa: E702
        v2 = v2 + v3; v3 = _rotl64(v3, 16); v3 ^= v2                        # noqa: E702
        v0 = v0 + v3; v3 = _rotl64(v3, 21); v3 ^= v0                        # noqa: E702
        v2 = v2 + v1; v1 = _rotl64(v1, 17); v1 ^= v2; v2 = _rotl64(v2, 32)  # noqa: E702

    with np.errstate(over="ignore"):
        for i in range(length // 8):
            m = words[:, i]
            v3 ^= m
            sipround()
            sipround()
            v0 ^= m
        b = np.uint64((length & 0xFF) << 56)
        v3 ^= b
        sipround()
        sipround()
        v0 ^= b
        v2 ^= np.uint64(0xFF)
        for _ in range(4):
            sipround()
    return v0 ^ v1 ^ v2 ^ v3


def _rol32(x: np.ndarray, b: int) -> np.ndarray:
    return ((x << np.uint32(b)) | (x >> np.uint32(32 - b))).astype(np.uint32)


def jhash_2words(a, b, initval: int = 0) -> np.ndarray:
    """include/linux/jhash.h: ``__jhash_nwords(a, b, 0, initval + JHASH_INITVAL + (2<<2))``
    followed by ``__jhash_final``."""
    a = np.asarray(a, dtype=np.uint32)
    b = np.asarray(b, dtype=np.uint32)
    iv = np.uint32((initval + 0xDEADBEEF + (2 << 2)) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        a = a + iv
        b = b + iv
        c = np.zeros_like(a) + iv
        c ^= b; c = c - _rol32(b, 14)   # noqa: E702
        a ^= c; a = a - _rol32(c, 11)   # noqa: E702
        b ^= a; b = b - _rol32(a, 25)   # noqa: E702
        c ^= b; c = c - _rol32(b, 16)   # noqa: E702
        a ^= c; a = a - _rol32(c, 4)    # noqa: E702
        b ^= a; b = b - _rol32(a, 14)   # noqa: E702
        c ^= b; c = c - _rol32(b, 24)   # noqa: E702
    return c.astype(np.uint32)


# --------------------------------------------------------------------------------------
# The Linux multipath hash
# --------------------------------------------------------------------------------------

def _flow_keys(flows: Flows, *, addrs_src: bool, addrs_dst: bool, proto: bool, label: bool,
               sport: bool, dport: bool) -> np.ndarray:
    """The hashed part of ``struct flow_keys`` for each flow, consistentified, as bytes."""
    fam = flows.family
    n = len(flows)
    width = 4 if fam == 4 else 16
    buf = np.zeros((n, _HASH_LEN[fam]), np.uint8)
    src = flows.src if addrs_src else np.zeros((n, width), np.uint8)
    dst = flows.dst if addrs_dst else np.zeros((n, width), np.uint8)
    # __flow_hash_consistentify: order the addresses ...
    if fam == 4:
        # (__force u32) compare of the big-endian words: little-endian reading on x86.
        s_le = src.view("<u4").ravel()
        d_le = dst.view("<u4").ravel()
        swap = d_le < s_le
    else:
        # memcmp(dst, src) < 0: lexicographic byte order.
        swap = np.zeros(n, bool)
        undecided = np.ones(n, bool)
        for i in range(16):
            lt = undecided & (dst[:, i] < src[:, i])
            gt = undecided & (dst[:, i] > src[:, i])
            swap |= lt
            undecided &= ~(lt | gt)
    lo = np.where(swap[:, None], dst, src)
    hi = np.where(swap[:, None], src, dst)
    buf[:, _OFF_ADDRS:_OFF_ADDRS + width] = lo
    buf[:, _OFF_ADDRS + width:_OFF_ADDRS + 2 * width] = hi
    # ... and the ports, independently, again as (__force u16) of big-endian values.
    sp = flows.sport if sport else np.zeros(n, np.uint16)
    dp = flows.dport if dport else np.zeros(n, np.uint16)
    sp_be = sp.astype(">u2").view(np.uint8).reshape(n, 2)
    dp_be = dp.astype(">u2").view(np.uint8).reshape(n, 2)
    swp = dp_be.view("<u2").ravel() < sp_be.view("<u2").ravel()
    buf[:, _OFF_PORTS:_OFF_PORTS + 2] = np.where(swp[:, None], dp_be, sp_be)
    buf[:, _OFF_PORTS + 2:_OFF_PORTS + 4] = np.where(swp[:, None], sp_be, dp_be)
    if proto:
        buf[:, _OFF_PROTO] = flows.proto
    if label:
        buf[:, _OFF_LABEL:_OFF_LABEL + 4] = (flows.flowlabel & 0xFFFFF).astype(">u4") \
            .view(np.uint8).reshape(n, 4)
    return buf


def _flow_hash(flows: Flows, seed: int, **fields) -> np.ndarray:
    """``fib_multipath_hash_from_keys``: 32-bit siphash of the keys, 0 mapped to 1."""
    buf = _flow_keys(flows, **fields)
    length = buf.shape[1]
    words = buf.view("<u8")
    key = ((seed & 0xFFFFFFFF) << 32) | (seed & 0xFFFFFFFF)
    h = (siphash24(words, length, key, key) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    h[h == 0] = 1
    return h


def kernel_hash(flows: Flows, *, policy: int = 0, seed: int, fields: int = DEFAULT_FIELDS,
                forwarded: bool = True) -> np.ndarray:
    """The 31-bit multipath hash Linux computes for each flow.

    ``policy`` is ``net.ipv4.fib_multipath_hash_policy`` (IPv4 flows) or
    ``net.ipv6.fib_multipath_hash_policy`` (IPv6); ``seed`` is
    ``net.ipv4.fib_multipath_hash_seed`` (must be non-zero: 0 means a random seed that
    cannot be known from user space); ``fields`` is ``fib_multipath_hash_fields`` (policy
    3).  ``forwarded`` is True for the hash of a packet the router forwards (the skb path,
    also taken by ``ip route get ... iif DEV`` for IPv4) and False for the flow-based path
    (locally generated traffic, and ``ip -6 route get ... iif DEV``, which looks the route up
    without an skb).  The two differ only for policy 3, where a packet's hash is mixed with
    the absent inner-header hash by ``jhash_2words``.

    Not modelled (documented in docs/ecmp.md): encapsulated packets (policy 2 and the inner
    fields of policy 3 use the inner headers), ICMP errors (hashed on the embedded header),
    and a forwarded packet that already carries an L4 hash under policy 1 (the kernel then
    reuses ``skb->hash``).
    """
    if not seed or not 0 < seed <= 0xFFFFFFFF:
        raise EcmpError("fib_multipath_hash_seed must be a non-zero 32-bit value; with 0 the "
                        "kernel uses a random seed and the hash cannot be reproduced")
    v6 = flows.family == 6
    if policy in (0, 2):
        # Policy 2 hashes the inner header of an encapsulated packet; for plain packets it
        # is policy 0.  IPv6 policy 0 includes the flow label and next header
        # (rt6_multipath_hash), IPv4 only the addresses.
        h = _flow_hash(flows, seed, addrs_src=True, addrs_dst=True, proto=v6, label=v6,
                       sport=False, dport=False)
    elif policy == 1:
        h = _flow_hash(flows, seed, addrs_src=True, addrs_dst=True, proto=True, label=False,
                       sport=True, dport=True)
    elif policy == 3:
        if not 0 <= fields <= 0xFFF:
            raise EcmpError(f"fib_multipath_hash_fields {fields:#x} has unknown bits")
        if fields & FIELD_OUTER_MASK:
            h = _flow_hash(flows, seed, addrs_src=bool(fields & FIELD_SRC_IP),
                           addrs_dst=bool(fields & FIELD_DST_IP),
                           proto=bool(fields & FIELD_IP_PROTO),
                           label=v6 and bool(fields & FIELD_FLOWLABEL),
                           sport=bool(fields & FIELD_SRC_PORT),
                           dport=bool(fields & FIELD_DST_PORT))
        else:
            h = np.zeros(len(flows), np.uint32)
        if forwarded:
            h = jhash_2words(h, np.zeros_like(h), 0)
    else:
        raise EcmpError(f"fib_multipath_hash_policy {policy!r} is not one of 0, 1, 2, 3")
    return (h >> np.uint32(1)).astype(np.uint32)


# --------------------------------------------------------------------------------------
# Next-hop selection models
# --------------------------------------------------------------------------------------

def _weights(nexthops) -> np.ndarray:
    if isinstance(nexthops, (int, np.integer)):
        if nexthops <= 0:
            raise EcmpError("a multipath route needs at least one next hop")
        return np.ones(int(nexthops), np.int64)
    w = np.asarray(list(nexthops), dtype=np.int64)
    if w.size == 0:
        raise EcmpError("a multipath route needs at least one next hop")
    if (w < 0).any():
        raise EcmpError("next-hop weights must not be negative")
    if not (w > 0).any():
        raise EcmpError("all next hops are down")
    return w


def upper_bounds(weights) -> np.ndarray:
    """fib_rebalance(): cumulative upper bounds of the 31-bit hash space per next hop;
    a next hop of weight 0 (dead / link down) gets -1 and is never chosen."""
    w = _weights(weights)
    total = int(w.sum())
    cum = np.cumsum(w)
    # DIV_ROUND_CLOSEST_ULL((u64)w << 31, total) - 1, in exact integers.
    ub = np.array([((int(c) << 31) + total // 2) // total - 1 for c in cum], np.int64)
    ub[w == 0] = -1
    return ub


def select_hash_threshold(hashes: np.ndarray, weights) -> np.ndarray:
    """RFC 2992 hash-threshold as fib_select_multipath does it for a forwarded packet:
    the first live next hop whose upper bound is >= the 31-bit hash."""
    ub = upper_bounds(weights)
    live = ub >= 0
    idx_live = np.nonzero(live)[0]
    pos = np.searchsorted(ub[live], np.asarray(hashes, np.int64), side="left")
    pos = np.minimum(pos, len(idx_live) - 1)
    return idx_live[pos]


def kernel_select(flows: Flows, weights, *, policy: int = 0, seed: int,
                  fields: int = DEFAULT_FIELDS, forwarded: bool = True) -> np.ndarray:
    """Index (in route order) of the next hop Linux forwards each flow to."""
    return select_hash_threshold(kernel_hash(flows, policy=policy, seed=seed, fields=fields,
                                             forwarded=forwarded), weights)


def select_modulo(hashes: np.ndarray, n: int) -> np.ndarray:
    """Modulo-N: ``hash % N`` (remaps almost every flow when N changes)."""
    if n <= 0:
        raise EcmpError("modulo-N needs N >= 1")
    return (np.asarray(hashes, np.uint64) % np.uint64(n)).astype(np.int64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a cheap, well-mixing 64-bit permutation."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def select_rendezvous(hashes: np.ndarray, nexthop_ids: Sequence[int]) -> np.ndarray:
    """Rendezvous (highest-random-weight) hashing over stable next-hop ids: each flow goes
    to the id with the largest mix(hash, id).  Removing an id moves only that id's flows;
    adding one takes ~1/N of the flows.  Returns positions in ``nexthop_ids``."""
    ids = np.asarray(list(nexthop_ids), np.uint64)
    if ids.size == 0:
        raise EcmpError("rendezvous hashing needs at least one next hop")
    h = np.asarray(hashes, np.uint64)
    best = np.zeros(h.shape, np.int64)
    best_score = np.zeros(h.shape, np.uint64)
    with np.errstate(over="ignore"):
        for i, nid in enumerate(ids):
            score = _mix64(h * np.uint64(0x9E3779B97F4A7C15) ^ _mix64(nid + np.uint64(1)))
            take = (score > best_score) | (i == 0)
            best = np.where(take, i, best)
            best_score = np.where(take, score, best_score)
    return best


class ResilientTable:
    """A resilient next-hop group: a fixed number of buckets each owned by a next hop; a
    flow uses ``bucket[hash % n_buckets]`` (as Linux ``nexthop ... type resilient`` does).

    When a next hop leaves only its buckets are reassigned, spread over the remaining next
    hops; when one joins it takes buckets from the over-full ones (Linux also waits for idle
    buckets; this model migrates at once, the upper bound of what can move)."""

    def __init__(self, nexthop_ids: Sequence[int], n_buckets: int = 128):
        ids = list(nexthop_ids)
        if not ids:
            raise EcmpError("a resilient group needs at least one next hop")
        if len(set(ids)) != len(ids):
            raise EcmpError("next-hop ids must be unique")
        if n_buckets < len(ids):
            raise EcmpError("need at least one bucket per next hop")
        self.n_buckets = n_buckets
        self.ids = ids
        self.buckets = np.array([ids[i % len(ids)] for i in range(n_buckets)], np.int64)

    def _rebalance(self) -> None:
        n = len(self.ids)
        want = {nid: self.n_buckets // n + (1 if k < self.n_buckets % n else 0)
                for k, nid in enumerate(self.ids)}
        have = {nid: int((self.buckets == nid).sum()) for nid in self.ids}
        free = [b for b in range(self.n_buckets) if self.buckets[b] not in want]
        for nid in self.ids:  # take buckets from over-full next hops, in bucket order
            excess = have[nid] - want[nid]
            if excess > 0:
                mine = np.nonzero(self.buckets == nid)[0][-excess:]
                free.extend(int(b) for b in mine)
        free.sort()
        for nid in self.ids:
            while have[nid] < want[nid]:
                b = free.pop(0)
                self.buckets[b] = nid
                have[nid] += 1

    def remove(self, nexthop_id: int) -> None:
        if nexthop_id not in self.ids:
            raise EcmpError(f"next hop {nexthop_id} is not in the group")
        if len(self.ids) == 1:
            raise EcmpError("cannot remove the last next hop")
        self.ids.remove(nexthop_id)
        self._rebalance()

    def add(self, nexthop_id: int) -> None:
        if nexthop_id in self.ids:
            raise EcmpError(f"next hop {nexthop_id} is already in the group")
        if len(self.ids) + 1 > self.n_buckets:
            raise EcmpError("more next hops than buckets")
        self.ids.append(nexthop_id)
        self._rebalance()

    def select(self, hashes: np.ndarray) -> np.ndarray:
        """Next-hop id per flow."""
        return self.buckets[(np.asarray(hashes, np.uint64) %
                             np.uint64(self.n_buckets)).astype(np.int64)]


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------

def load(choice: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Flows (or summed ``weights``, e.g. queries) per next hop 0..n-1."""
    return np.bincount(np.asarray(choice, np.int64), weights=weights, minlength=n)[:n]


def imbalance(counts: np.ndarray) -> float:
    """Max load over mean load (1.0 = perfectly even), over the next hops that exist."""
    counts = np.asarray(counts, float)
    mean = counts.mean()
    return float(counts.max() / mean) if mean > 0 else 0.0


def moved_share(before: np.ndarray, after: np.ndarray,
                removed: Iterable[int] = ()) -> tuple[float, float]:
    """(share of all flows whose next hop changed, share of flows that did NOT use a
    removed next hop but moved anyway -- the avoidable disruption)."""
    before = np.asarray(before)
    after = np.asarray(after)
    moved = before != after
    gone = np.isin(before, list(removed))
    innocent = ~gone
    extra = float((moved & innocent).sum() / max(int(innocent.sum()), 1))
    return float(moved.mean()), extra


def fixed_port_skew(*, machines: int, resolvers: int = 20000, queries: int = 2_000_000,
                    fixed_share: float = 0.1, zipf: float = 1.1, policy: int = 1,
                    seed: int = 0x53, rng: int | np.random.Generator | None = 1,
                    family: int = 4) -> dict:
    """Per-machine query load when a share of resolvers keep one source port (paper §3.1).

    Resolver query volumes follow a Zipf law (a few resolvers send most queries).  A
    resolver with a fixed source port sends every query down the same ECMP path; the others
    pick a fresh random port per query.  Returns the imbalance (max/mean machine load) with
    the given fixed share and with every resolver randomizing, and the loads themselves."""
    if not 0.0 <= fixed_share <= 1.0:
        raise EcmpError("fixed_share must be within [0, 1]")
    rng = np.random.default_rng(rng)
    ranks = np.arange(1, resolvers + 1, dtype=float)
    p = ranks ** -zipf
    p /= p.sum()
    resolver_of_query = rng.choice(resolvers, size=queries, p=p)
    base = random_flows(resolvers, family=family, rng=rng)
    fixed = rng.random(resolvers) < fixed_share
    weights = np.ones(machines, np.int64)

    def run(fixed_mask: np.ndarray) -> np.ndarray:
        q = base.subset(resolver_of_query)
        random_ports = rng.integers(1024, 65536, size=queries)
        q.sport = np.where(fixed_mask[resolver_of_query], q.sport, random_ports) \
            .astype(np.uint16)
        return load(kernel_select(q, weights, policy=policy, seed=seed), machines)

    with_fixed = run(fixed)
    all_random = run(np.zeros(resolvers, bool))
    top = int(np.argmax(p))
    return {
        "machines": machines, "resolvers": resolvers, "queries": queries,
        "fixed_share": fixed_share, "policy": policy,
        "load_with_fixed": with_fixed, "load_all_random": all_random,
        "imbalance_with_fixed": imbalance(with_fixed),
        "imbalance_all_random": imbalance(all_random),
        "top_resolver_query_share": float(p[top]),
        "top_resolver_fixed": bool(fixed[top]),
    }
