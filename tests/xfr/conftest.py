"""Fixtures for the xfr tests; every daemon, primary and engine a test starts is stopped."""
from __future__ import annotations

import pytest

from bind_support import Bind
from xfr_support import FakePrimary, Knot


def _daemons(cls, tmp_path, default: str):
    """make(name) starts nothing by itself: it builds the launcher; all are stopped at the end."""
    started = []

    def make(name: str = default):
        d = cls(tmp_path, name)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def knot_factory(tmp_path):
    yield from _daemons(Knot, tmp_path, "knot")


@pytest.fixture
def bind_factory(tmp_path):
    yield from _daemons(Bind, tmp_path, "bind")


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

