"""Properties of the ECMP / reuseport emulator that hold without a kernel (pop53.ecmp,
pop53.ecmp.reuseport).  Agreement with the running kernel is tested in
tests/ecmp/test_ecmp_kernel.py."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pop53.ecmp.flows import (FIELD_DST_IP, FIELD_DST_PORT, FIELD_SRC_IP, FIELD_SRC_PORT, EcmpError,
                              Flows, random_flows)
from pop53.ecmp.model import (ResilientTable, fixed_port_skew, imbalance, kernel_hash, kernel_select,
                              load, moved_share, select_hash_threshold, select_modulo,
                              select_rendezvous, siphash24, upper_bounds)
from pop53.ecmp import reuseport
from pop53.errors import Pop53Error

SEED = 0x5053E


@pytest.fixture(scope="module")
def flows():
    return random_flows(400_000, rng=11)


@pytest.fixture(scope="module")
def hashes(flows):
    return kernel_hash(flows, policy=1, seed=SEED)


# -- primitives -------------------------------------------------------------------------

def test_siphash_reference_vectors():
    # SipHash-2-4 paper, key 00..0f, messages 00..07 and 00..0f.
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    w8 = np.frombuffer(bytes(range(8)), "<u8").reshape(1, 1)
    w16 = np.frombuffer(bytes(range(16)), "<u8").reshape(1, 2)
    assert int(siphash24(w8, 8, k0, k1)[0]) == 0x93F5F5799A932462
    assert int(siphash24(w16, 16, k0, k1)[0]) == 0x3F2ACC7F57C29BDB


def test_upper_bounds_follow_fib_rebalance():
    assert upper_bounds(2).tolist() == [2**30 - 1, 2**31 - 1]
    assert upper_bounds([1, 0, 3]).tolist() == [2**29 - 1, -1, 2**31 - 1]
    # DIV_ROUND_CLOSEST: 2**31 / 3 = 715827882.67 -> 715827883 - 1
    assert upper_bounds(3).tolist()[0] == 715827882


def test_hash_threshold_picks_first_bound_at_or_above():
    ub = upper_bounds(4)
    h = np.array([0, ub[0], ub[0] + 1, ub[2], ub[2] + 1, 2**31 - 1])
    assert select_hash_threshold(h, 4).tolist() == [0, 0, 1, 2, 3, 3]
    # A withdrawn next hop (weight 0) is never chosen.
    assert 1 not in select_hash_threshold(np.arange(0, 2**31, 2**20), [1, 0, 1, 1])


# -- the kernel hash --------------------------------------------------------------------

def test_kernel_hash_is_31_bits_and_depends_on_the_seed(flows):
    a = kernel_hash(flows, policy=1, seed=SEED)
    b = kernel_hash(flows, policy=1, seed=SEED + 1)
    assert a.max() < 2**31
    assert (a != b).mean() > 0.99


def test_seed_zero_is_refused(flows):
    with pytest.raises(EcmpError, match="random seed"):
        kernel_hash(flows, policy=0, seed=0)


def test_unknown_policy_is_refused(flows):
    with pytest.raises(EcmpError, match="policy"):
        kernel_hash(flows, policy=7, seed=SEED)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("policy", [0, 1, 3])
def test_kernel_hash_is_symmetric(family, policy):
    # __flow_hash_consistentify: both directions of a flow hash alike.
    f = random_flows(5000, family=family, rng=3, dport=None)
    rev = Flows(family, f.dst, f.src, f.dport, f.sport, f.proto, f.flowlabel)
    fields = FIELD_SRC_IP | FIELD_DST_IP | FIELD_SRC_PORT | FIELD_DST_PORT
    assert (kernel_hash(f, policy=policy, seed=SEED, fields=fields)
            == kernel_hash(rev, policy=policy, seed=SEED, fields=fields)).all()


def test_policy0_ignores_ports_policy1_uses_them():
    f = random_flows(20000, rng=5)
    g = Flows(4, f.src, f.dst, (f.sport.astype(int) + 1) % 65536, f.dport, f.proto,
              f.flowlabel)
    assert (kernel_hash(f, policy=0, seed=SEED)
            == kernel_hash(g, policy=0, seed=SEED)).all()
    assert (kernel_hash(f, policy=1, seed=SEED)
            != kernel_hash(g, policy=1, seed=SEED)).mean() > 0.99


def test_ipv6_policy0_includes_the_flow_label():
    f = random_flows(5000, family=6, rng=8)
    g = Flows(6, f.src, f.dst, f.sport, f.dport, f.proto, np.full(len(f), 0x12345))
    assert (kernel_hash(f, policy=0, seed=SEED)
            != kernel_hash(g, policy=0, seed=SEED)).mean() > 0.99


def test_policy3_packet_and_flow_paths_differ_only_by_jhash():
    f = random_flows(5000, rng=9)
    fw = kernel_hash(f, policy=3, seed=SEED, fields=0x37, forwarded=True)
    fl = kernel_hash(f, policy=3, seed=SEED, fields=0x37, forwarded=False)
    assert (fw != fl).mean() > 0.99
    # Policy 3 with the same fields as policy 1, on the flow path, is policy 1.
    assert (fl == kernel_hash(f, policy=1, seed=SEED)).all()


def test_flows_validation():
    with pytest.raises(EcmpError):
        Flows.from_tuples([("10.0.0.1", 1, "fd53::1", 53)])
    with pytest.raises(EcmpError):
        Flows.from_tuples([("10.0.0.1", 70000, "10.0.0.2", 53)])
    with pytest.raises(EcmpError):
        Flows(5, np.zeros((1, 4)), np.zeros((1, 4)), [1], [2], [17], [0])
    assert issubclass(EcmpError, Pop53Error)


# -- models: load and disruption --------------------------------------------------------

def test_hash_threshold_spreads_evenly(hashes):
    counts = load(select_hash_threshold(hashes, 8), 8)
    assert counts.sum() == len(hashes)
    assert imbalance(counts) < 1.02


def test_weights_shape_the_load(hashes):
    counts = load(select_hash_threshold(hashes, [1, 3]), 2)
    assert abs(counts[1] / counts.sum() - 0.75) < 0.005


def _hash_threshold_moved_share(n: int, removed: int) -> Fraction:
    """Exact share of the hash space whose next hop changes when next hop ``removed`` of
    ``n`` equal ones is withdrawn (RFC 2992 §4: disruption of hash-threshold)."""
    survivors = [i for i in range(n) if i != removed]
    stay = Fraction(0)
    for new_pos, hop in enumerate(survivors):
        lo = max(Fraction(hop, n), Fraction(new_pos, n - 1))
        hi = min(Fraction(hop + 1, n), Fraction(new_pos + 1, n - 1))
        stay += max(Fraction(0), hi - lo)
    return 1 - stay


@pytest.mark.parametrize("n,removed", [(8, 7), (8, 0), (8, 3), (4, 1)])
def test_hash_threshold_moved_share_matches_rfc2992_geometry(hashes, n, removed):
    w = np.ones(n, np.int64)
    after_w = w.copy()
    after_w[removed] = 0
    before = select_hash_threshold(hashes, w)
    after = select_hash_threshold(hashes, after_w)
    moved, avoidable = moved_share(before, after, [removed])
    expected = float(_hash_threshold_moved_share(n, removed))
    assert abs(moved - expected) < 0.005
    # More than the withdrawn machine's own flows move: the surviving regions shift too.
    assert moved > 1 / n + 0.05
    assert avoidable > 0.05


def test_modulo_n_moves_almost_everything(hashes):
    moved, avoidable = moved_share(select_modulo(hashes, 8),
                                   select_modulo(hashes, 7), [7])
    assert moved > 0.8 and avoidable > 0.8


@pytest.mark.parametrize("n", [4, 8, 16])
def test_rendezvous_moves_only_the_removed_next_hops_flows(hashes, n):
    ids = list(range(100, 100 + n))
    before = np.asarray(ids)[select_rendezvous(hashes, ids)]
    gone = ids[n // 2]
    rest = [i for i in ids if i != gone]
    after = np.asarray(rest)[select_rendezvous(hashes, rest)]
    moved, avoidable = moved_share(before, after, [gone])
    assert avoidable == 0.0
    assert abs(moved - 1 / n) < 0.01
    # Adding one takes ~1/(n+1) of the flows, all of them to the new next hop.
    more = ids + [999]
    after_add = np.asarray(more)[select_rendezvous(hashes, more)]
    changed = before != after_add
    assert abs(changed.mean() - 1 / (n + 1)) < 0.01
    assert (after_add[changed] == 999).all()


def test_resilient_table_moves_only_the_removed_buckets(hashes):
    t = ResilientTable(range(8), n_buckets=128)
    before = t.select(hashes)
    t.remove(3)
    after = t.select(hashes)
    moved, avoidable = moved_share(before, after, [3])
    assert avoidable == 0.0
    assert abs(moved - 1 / 8) < 0.01
    counts = np.bincount(t.buckets, minlength=8)
    assert counts[3] == 0 and counts.max() - counts[counts > 0].min() <= 1
    t.add(42)
    assert abs((np.bincount(t.buckets)[42]) - 128 / 8) <= 1
    with pytest.raises(EcmpError):
        t.remove(3)


def test_fixed_source_ports_skew_the_load():
    skew = fixed_port_skew(machines=8, resolvers=2000, queries=400_000,
                           fixed_share=0.5, zipf=1.2, rng=4)
    assert skew["load_with_fixed"].sum() == skew["load_all_random"].sum() == 400_000
    # Randomizing resolvers spread evenly; fixed ports pin whole resolvers to one machine.
    assert skew["imbalance_all_random"] < 1.02
    assert skew["imbalance_with_fixed"] > skew["imbalance_all_random"] + 0.05


def test_fixed_port_resolver_always_reaches_one_machine():
    f = random_flows(1, rng=2)
    many = f.subset(np.zeros(10000, np.int64))
    assert len(set(kernel_select(many, 8, policy=1, seed=SEED).tolist())) == 1
    many.sport = np.random.default_rng(1).integers(1024, 65536, 10000).astype(np.uint16)
    assert len(set(kernel_select(many, 8, policy=1, seed=SEED).tolist())) == 8


# -- reuseport emulator -----------------------------------------------------------------

def test_predict_socket_scalar_and_vector_agree():
    f = random_flows(2000, rng=12)
    vec = reuseport.predict_socket_flows(f, 6)
    src, dst = f.addresses("src"), f.addresses("dst")
    assert vec.min() >= 0 and vec.max() <= 5
    for i in range(0, 2000, 199):
        assert reuseport.predict_socket(src[i], int(f.sport[i]), dst[i], int(f.dport[i]), 6) \
            == vec[i]
    assert (reuseport.predict_socket(src, f.sport, dst, f.dport, 6) == vec).all()


def test_predict_socket_spreads_evenly():
    f = random_flows(200_000, family=6, rng=13)
    assert imbalance(load(reuseport.predict_socket_flows(f, 8), 8)) < 1.03


def test_reuseport_program_is_bounded_and_checked():
    for n in (1, 2, 64, 65535):
        prog = reuseport.build_program(n)
        assert 0 < len(prog) <= 4096
        assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in prog)
    for bad in (0, -1, 65536, 2.5):
        with pytest.raises(reuseport.ReuseportError):
            reuseport.build_program(bad)
