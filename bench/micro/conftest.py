"""Fixtures for the in-process micro benchmarks (pytest-benchmark).  Outside the default test
paths on purpose (pyproject: testpaths = ["tests"]): run them with ``python -m bench.micro.run``
or ``python -m pytest bench/micro``.  They report numbers; they assert only that the thing
measured worked (answers are answers), never a speed."""
from __future__ import annotations

import os
import random

import pytest

from bench import data

# 1,000,000 A records by default (issue 2's image measurement); POP53_BENCH_RECORDS overrides
# it for a quick smoke run.
RECORDS = int(os.environ.get("POP53_BENCH_RECORDS", "1000000"))
BATCH = 1000


def _pop53():
    try:
        import pop53
    except ImportError as exc:
        pytest.skip(f"pop53 is not importable ({exc}); run scripts/setup.sh")
    return pop53


@pytest.fixture(scope="session")
def pop53():
    return _pop53()


@pytest.fixture(scope="session")
def small(pop53):
    """The 1,000-name benchmark zone (the one bench.peers serves), compiled."""
    ds = data.dataset(1000)
    return ds, pop53.compile_zones([str(ds.zone)])


@pytest.fixture(scope="session")
def a_queries():
    """A batch of typical A queries for names of the small zone: EDNS0 with a 1232-byte
    payload (what resolvers send since DNS Flag Day 2020), RD clear, distinct names and ids."""
    import dns.message
    import dns.rdatatype

    names = data.zone_names(1000).hosts
    rnd = random.Random(53)
    wires = []
    for _ in range(BATCH):
        q = dns.message.make_query(f"{rnd.choice(names)}.{data.ORIGIN}", dns.rdatatype.A,
                                   use_edns=0, payload=1232)
        q.flags = 0
        wires.append(q.to_wire())
    return wires


@pytest.fixture(scope="session")
def big_zone():
    """RECORDS hosts with one A record each, plus 8 apex records."""
    return data.a_only_zone(RECORDS)


@pytest.fixture(scope="session")
def big_image(pop53, big_zone):
    return pop53.compile_zones([str(big_zone)])
