"""A big master file's passes a window at a time (pop53.zone.bigfile; issue 12): the CR check,
the SHA-256 and the line-starting "$" of a mapping give what the same passes over its bytes
give, wherever the windows are cut, and a mapped load finds $ORIGIN and $INCLUDE across them."""
from __future__ import annotations

import hashlib
import mmap

import dns.name
import pytest

from pop53.zone import bigfile, zonefile

PAGE = mmap.PAGESIZE


def _text(cr: bool) -> bytes:
    lines = [b"; a comment with a $ inside", b"$TTL 300"]
    lines += [b"h%d A 192.0.2.%d" % (i, i % 250) for i in range(2000)]
    lines += [b'x TXT "$ORIGIN not.test."', b"$ORIGIN late.test.", b"y A 192.0.2.9"]
    return b"\r\n".join(lines) + b"\r\n" if cr else b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("cr", [False, True])
@pytest.mark.parametrize("window", [PAGE, 2 * PAGE, 1 << 24])
def test_windowed_passes_match_the_bytes(tmp_path, monkeypatch, cr, window):
    monkeypatch.setattr(bigfile, "WINDOW", window)
    raw = _text(cr)
    assert len(raw) > 4 * PAGE
    path = tmp_path / "z"
    path.write_bytes(raw)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert bigfile.has_cr(m) == cr
        assert bigfile.sha256(m) == hashlib.sha256(raw).hexdigest()
        want = [i for i, c in enumerate(raw) if c == 36 and (i == 0 or raw[i - 1] == 10)]
        assert list(bigfile.line_dollars(m)) == want == list(bigfile.line_dollars(raw))
        assert len(want) == 2


def test_mapped_load_reads_directives_across_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(bigfile, "WINDOW", PAGE)
    monkeypatch.setattr(zonefile, "_MAP_AT_LEAST", 1)           # map_big_files(), undone after
    inc = tmp_path / "inc.zone"
    inc.write_text("included A 192.0.2.7\n")
    body = ["$ORIGIN big.test.", "$TTL 300", "@ SOA ns h 1 1 1 1 1", "@ NS ns", "ns A 192.0.2.1"]
    body += [f"h{i} A 192.0.2.{i % 250}" for i in range(3000)] + [f"$INCLUDE {inc}"]
    path = tmp_path / "big.zone"
    path.write_text("\n".join(body) + "\n")
    z = zonefile.load_zone_file(path)
    assert not isinstance(zonefile._read(str(path)), bytes)
    assert z.origin == dns.name.from_text("big.test.")
    assert set(z.files) == {str(path), str(inc)}
    assert z.files[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert zonefile._guess_origin(zonefile._read(str(path)), str(path)) == z.origin


def test_big_rdata_column_handed_over_in_parts():
    """The scanner hands a column of 32 MiB or more over 16 MiB at a time, giving back the
    copied pages as it goes (zonelex.pxi zsb_take): every record's RDATA is intact."""
    from pop53.zone.records import scan_bytes
    n = 20_000
    chars = b"abcdefghijklmnopqrstuvwxyz"
    lines = ["$ORIGIN big.test.", "$TTL 300", "@ SOA ns h 1 1 1 1 1", "@ NS ns"]
    lines += [f"t{i} TXT " + " ".join([chr(chars[i % 26]) * 255] * 8) for i in range(n)]
    r = scan_bytes(("\n".join(lines) + "\n").encode(), dns.name.from_text("big.test."), "big")
    assert len(r.rdata) > 32 << 20        # three parts of 16 MiB
    txt = [i for i in range(len(r)) if r.type[i] == 16]
    assert len(txt) == n
    for k, i in enumerate(txt):
        assert r.rdata_of(i) == (b"\xff" + bytes([chars[k % 26]]) * 255) * 8, k
