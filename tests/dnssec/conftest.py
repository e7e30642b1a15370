"""Fixtures of the DNSSEC suite: the test zone signed once per session in each variant (NSEC,
NSEC3, NSEC3 opt-out) by dnssec-signzone, and the same image compiled in process."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for p in (str(_HERE.parents[1]), str(_HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import signing  # noqa: E402


@pytest.fixture(scope="session")
def signed(tmp_path_factory) -> dict[str, "signing.Signed"]:
    if not shutil.which("dnssec-signzone"):
        pytest.fail("dnssec-signzone not found (Debian bind9-utils; scripts/setup.sh installs it)")
    return signing.sign_all(tmp_path_factory.mktemp("signed"))


@pytest.fixture(scope="session")
def images(signed):
    from pop53 import compile_zones
    return {v: compile_zones([(str(s.path), s.origin)]) for v, s in signed.items()}
