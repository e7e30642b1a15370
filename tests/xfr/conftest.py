"""Fixtures for the xfr tests; every daemon, primary and engine a test starts is stopped."""
from __future__ import annotations

import pytest

from xfr_support import FakePrimary, Knot


@pytest.fixture
def knot_factory(tmp_path):
    started: list[Knot] = []

    def make(name: str = "knot") -> Knot:
        k = Knot(tmp_path, name)
        started.append(k)
        return k

    yield make
    for k in started:
        k.stop()


@pytest.fixture
def engines():
    """Every XfrService a test starts is stopped at the end."""
    started = []
    yield started
    for e in started:
        e.stop()


@pytest.fixture
def fake_primary():
    made = []

    def make(key=None):
        p = FakePrimary(key)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()

