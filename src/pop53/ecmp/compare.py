"""What the router models predict for one PoP (``pop53 ecmp simulate``): load, imbalance and the
share of flows that move when a next hop goes or comes, for modulo-N, hash-threshold (the
kernel), rendezvous and resilient buckets, and the skew of resolvers with a fixed source port."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pop53.ecmp import model as ecmp
from pop53.ecmp.flows import EcmpError, random_flows


def compare_models(*, machines: int, flows: int, policy: int, seed: int, fixed_share: float,
                   rng, out: Callable[[str], None] = print) -> None:
    """Print (through `out`) one line per model; raises EcmpError on bad arguments."""
    n, m = machines, flows
    if n < 2 or m <= 0:
        raise EcmpError("need --machines >= 2 and --flows > 0")
    sample = random_flows(m, rng=rng)
    h = ecmp.kernel_hash(sample, policy=policy, seed=seed)
    out(f"{m} random UDP flows to one anycast address, {n} machines, "
          f"policy {policy}, seed {seed:#x}")
    out(f"{'model':<22}{'imbalance':>10}{'moved(-1)':>11}{'avoidable':>11}"
          f"{'moved(+1)':>11}")
    removed = n - 1
    models = {
        "modulo-N": lambda k: ecmp.select_modulo(h, k),
        "hash-threshold": lambda k: ecmp.select_hash_threshold(h, k),
        "rendezvous": lambda k: ecmp.select_rendezvous(h, range(k)),
    }
    for name, sel in models.items():
        base = sel(n)
        after_rm = sel(n - 1)   # next hop n-1 withdrawn (the last in route order)
        after_add = sel(n + 1)
        moved, extra = ecmp.moved_share(base, after_rm, [removed])
        out(f"{name:<22}{ecmp.imbalance(ecmp.load(base, n)):>10.3f}{moved:>11.3f}"
              f"{extra:>11.3f}{ecmp.moved_share(base, after_add)[0]:>11.3f}")
    # Withdraw the first next hop from the kernel's route: every boundary shifts.
    w = np.ones(n, np.int64)
    w0 = w.copy()
    w0[0] = 0
    base = ecmp.select_hash_threshold(h, w)
    moved, extra = ecmp.moved_share(base, ecmp.select_hash_threshold(h, w0), [0])
    out(f"{'hash-threshold(-m0)':<22}{'':>10}{moved:>11.3f}{extra:>11.3f}")
    table = ecmp.ResilientTable(list(range(n)), n_buckets=max(128, 16 * n))
    base = table.select(h)
    table.remove(0)
    moved, extra = ecmp.moved_share(base, table.select(h), [0])
    table2 = ecmp.ResilientTable(list(range(n)), n_buckets=max(128, 16 * n))
    table2.add(n)
    out(f"{'resilient(-m0)':<22}{ecmp.imbalance(ecmp.load(base, n)):>10.3f}{moved:>11.3f}"
          f"{extra:>11.3f}{ecmp.moved_share(base, table2.select(h))[0]:>11.3f}")
    skew = ecmp.fixed_port_skew(machines=n, fixed_share=fixed_share, policy=policy,
                                seed=seed, rng=rng)
    out(f"fixed source ports: {fixed_share:.0%} of {skew['resolvers']} Zipf resolvers, "
          f"{skew['queries']} queries: imbalance {skew['imbalance_with_fixed']:.3f} "
          f"(all randomizing: {skew['imbalance_all_random']:.3f}; busiest resolver sends "
          f"{skew['top_resolver_query_share']:.1%} of queries"
          f"{', fixed port' if skew['top_resolver_fixed'] else ''})")
