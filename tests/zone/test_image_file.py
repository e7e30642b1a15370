"""The cold load's memory-lean paths (issue 15): the image written straight to its file
(ext/zonestream.pxi, pop53.zone.imagefile) against the in-memory compile, byte for byte; a big
zone file scanned from a mapping against the same bytes scanned whole; the C record order
against numpy's lexsort; `pop53 check` through the file path."""
from __future__ import annotations

import os
import subprocess
import sys

import dns.name
import numpy as np
import pytest

from pop53.zone import compiler, imagefile, zonefile
from pop53.zone.images import load_image

from tests.zone.test_flat_compile import CHILD, OTHER, PARENT


def _zones():
    return [zonefile.zone_from_bytes(t.encode(), dns.name.from_text(o), o)
            for t, o in ((PARENT, "ex.test."), (CHILD, "child.ex.test."), (OTHER, "other.test."))]


@pytest.mark.parametrize("expired", [(), ("child.ex.test.",)])
def test_image_written_to_file_is_the_in_memory_image(tmp_path, expired):
    ref = compiler.compile_zone_data(_zones(), seed=99, expired=expired)
    out = tmp_path / "z.img"
    size = imagefile.compile_to_file(_zones(), out, seed=99, expired=expired, consume=True)
    assert size == len(ref) == out.stat().st_size
    assert out.read_bytes() == bytes(ref._data)
    assert load_image(out, full_check=True).zones() == ref.zones()     # checksum and nodes
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".pop53-img-")]


def _big_zone(names: int) -> bytes:
    # over zonefile._MAP_AT_LEAST and several of the scanner's 8 MiB page drops; a name with
    # more records than the C order's insertion sort takes (qsort), RRSIGs (covers)
    lines = ["$ORIGIN big.test.", "$TTL 300", "@ SOA ns h 1 1 1 1 1", "@ NS ns", "ns A 192.0.2.1"]
    lines += [f"many TXT \"r{i}\"" for i in range(40, 0, -1)]
    lines += [f"many RRSIG {t} 8 3 300 20300101000000 20200101000000 1 big.test. AAAA"
              for t in ("TXT", "A", "TXT")]
    lines += [f"h{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n"
              f"h{i} AAAA fd00::{i >> 16:x}:{i & 0xffff:x}\n"
              f"h{i} TXT \"{'x' * 80}\"" for i in range(names)]
    return ("\n".join(lines) + "\n").encode()


def test_mapped_scan_and_c_order_match(tmp_path, monkeypatch):
    monkeypatch.setattr(zonefile, "_MAP_AT_LEAST", 1 << 20)     # map_big_files(), undone after
    raw = _big_zone(130_000)
    path = tmp_path / "big.zone"
    path.write_bytes(raw)
    assert len(raw) > (16 << 20)       # two page drops
    mapped = zonefile.load_zone_file(path)
    assert not isinstance(zonefile._read(str(path)), bytes)
    whole = zonefile.zone_from_bytes(raw, mapped.origin, str(path))
    a, b = mapped.columns, whole.columns
    for col in ("names", "rdata"):
        assert getattr(a, col) == getattr(b, col)
    for col in ("node_off", "node_len", "node", "type", "ttl", "rdoff", "rdlen", "line"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    cov = a.covers()
    assert cov.any()
    ref = np.lexsort((np.arange(len(a)), cov, a.type, a.node))
    assert np.array_equal(a.order(cov), ref)


def test_check_compiles_through_a_file(tmp_path):
    path = tmp_path / "ex.zone"
    path.write_text(PARENT)
    r = subprocess.run([sys.executable, "-m", "pop53", "check", "--zone", str(path)],
                       capture_output=True, text=True, timeout=120)
    ref = compiler.compile_zone_data([zonefile.load_zone_file(path)])
    assert r.returncode == 0, r.stderr
    assert f"compile to {len(ref)} bytes" in r.stdout
