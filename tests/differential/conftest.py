"""Fixtures of the differential suite: the query corpus and every implementation's replies
to it, each collected once per session (one reference server start per implementation)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
# tests.support (the reference-server launcher) lives under the repository root; the harness
# modules sit beside this file.
for p in (str(_HERE.parents[1]), str(_HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import dnsdiff  # noqa: E402


@pytest.fixture(scope="session")
def corpus() -> list[dnsdiff.Case]:
    return dnsdiff.build_corpus()


@pytest.fixture(scope="session")
def knot_replies(corpus):
    return dnsdiff.query_reference("knot", corpus)


@pytest.fixture(scope="session")
def nsd_replies(corpus):
    return dnsdiff.query_reference("nsd", corpus)


@pytest.fixture(scope="session")
def pop53_replies(corpus):
    return dnsdiff.query_pop53(corpus)
