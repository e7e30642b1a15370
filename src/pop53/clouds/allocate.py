"""Unique delegation sets: allocation and the allocation state file.

Every enterprise gets its own `set_size`-subset of the clouds (§3.1: 6 of 24, so at most
C(24,6) = 134,596 enterprises).  Because every set has the same size and no two are equal, an
attack that saturates all of one enterprise's clouds leaves every other enterprise at least one
cloud (§4.3.1).

The order in which sets are handed out is fixed: the i-th candidate is the combination of
lexicographic rank (i * stride) mod C(n, k), with `stride` the integer nearest C(n,k)/phi that is
coprime with C(n,k).  That is a permutation of all combinations (so refusing happens only when
every one is taken), and a golden-ratio stride spreads consecutive sets over the whole rank space,
which keeps the clouds' usage even.  Existing allocations never move.

The state file is one line per enterprise, ``NAME<TAB>cloud,cloud,...``, '#' comments; it is the
record of what each enterprise has published in its parent zone, so it is kept, not recomputed.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from pop53.clouds.plan import Plan
from pop53.errors import ConfigError, Pop53Error


class Exhausted(Pop53Error):
    """Every distinct delegation set is taken."""


def unrank(rank: int, n: int, k: int) -> tuple[int, ...]:
    """The k-subset of range(n) with lexicographic rank `rank` (0 <= rank < C(n, k))."""
    out = []
    x = 0
    for i in range(k):
        while True:
            count = math.comb(n - x - 1, k - i - 1)
            if rank < count:
                break
            rank -= count
            x += 1
        out.append(x)
        x += 1
    return tuple(out)


def rank_of(subset, n: int, k: int) -> int:
    """Inverse of unrank."""
    r, prev = 0, -1
    for i, x in enumerate(sorted(subset)):
        for y in range(prev + 1, x):
            r += math.comb(n - y - 1, k - i - 1)
        prev = x
    return r


def stride(total: int) -> int:
    s = max(1, round(total / ((1 + 5 ** 0.5) / 2)))
    for d in range(total):
        for c in (s + d, s - d):
            if 0 < c < total and math.gcd(c, total) == 1:
                return c
    return 1


def candidates(n: int, k: int):
    """Every k-subset of range(n), each once, in allocation order."""
    total = math.comb(n, k)
    st = stride(total)
    for i in range(total):
        yield unrank(i * st % total, n, k)


def allocate(plan: Plan, state: dict[str, tuple[int, ...]], names) -> dict[str, tuple[int, ...]]:
    """Sets for the `names` that have none yet; `state` (enterprise -> cloud indexes) is kept.
    Raises Exhausted, naming the first enterprise left without a set."""
    n, k = len(plan.clouds), plan.set_size
    taken = {tuple(sorted(s)) for s in state.values()}
    todo = [x for x in names if x not in state]
    new: dict[str, tuple[int, ...]] = {}
    if not todo:
        return new
    it = candidates(n, k)
    for name in todo:
        for cand in it:
            if cand not in taken:
                taken.add(cand)
                new[name] = cand
                break
        else:
            raise Exhausted(f"no delegation set left for {name!r}: all C({n},{k}) = "
                            f"{math.comb(n, k):,} sets of {k} of the {n} clouds are taken "
                            f"(add clouds to allocate more)")
    return new


def read_state(plan: Plan, path: str | Path) -> dict[str, tuple[int, ...]]:
    """enterprise -> sorted cloud indexes, validated: known clouds, the plan's set size, no set
    twice, no enterprise twice.  A missing file is an empty state.  Errors name file:line."""
    path = str(path)
    if not os.path.exists(path):
        return {}
    state: dict[str, tuple[int, ...]] = {}
    owner: dict[tuple[int, ...], str] = {}
    with open(path, encoding="utf-8") as f:
        for no, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, rest = line.partition("\t")
            if not sep:
                raise ConfigError(f"{path}:{no}: expected NAME<TAB>cloud,cloud,...")
            if name in state:
                raise ConfigError(f"{path}:{no}: enterprise {name!r} allocated twice")
            idx = []
            for c in rest.split(","):
                c = c.strip()
                try:
                    idx.append(plan.index(c))
                except KeyError:
                    raise ConfigError(f"{path}:{no}: unknown cloud {c!r}") from None
            s = tuple(sorted(set(idx)))
            if len(s) != plan.set_size or len(idx) != len(s):
                raise ConfigError(f"{path}:{no}: {name!r} has {len(s)} distinct clouds, "
                                  f"the plan says {plan.set_size}")
            if s in owner:
                raise ConfigError(f"{path}:{no}: {name!r} has the same delegation set as "
                                  f"{owner[s]!r}: sets must be unique")
            owner[s] = name
            state[name] = s
    return state


def write_state(plan: Plan, path: str | Path, state: dict[str, tuple[int, ...]]) -> None:
    """Atomically (write + rename) and durably (fsync) replace the state file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("# pop53 delegation sets: enterprise<TAB>clouds (kept; never reallocated)\n")
        for name, s in state.items():
            f.write(name + "\t" + ",".join(plan.clouds[i].name for i in s) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
