"""Passes over a big master file's read-only mapping (zonefile.map_big_files) that never hold
it whole: the CR check, the SHA-256 and the search for "$" directives walk it a window at a
time and drop each window's pages behind them (MADV_DONTNEED; the scanner reads them again from
the page cache).  One pass over a 555 MB signed zone used to map all of it into the compiler
child at once, its largest moment in a cold load (issue 12; issue 15: at most 2x the image).
"""
from __future__ import annotations

import hashlib
import mmap

WINDOW = 16 << 20          # a multiple of the page size


def windows(m: mmap.mmap, size: int | None = None):
    """(start, end) of each window of m, its pages dropped once the caller asks for the next."""
    size = size or WINDOW
    for start in range(0, len(m), size):
        end = min(start + size, len(m))
        yield start, end
        m.madvise(mmap.MADV_DONTNEED, start, end - start)


def has_cr(m: mmap.mmap) -> bool:
    return any(m.find(b"\r", s, e) >= 0 for s, e in windows(m))


def sha256(m: mmap.mmap) -> str:
    h = hashlib.sha256()
    with memoryview(m) as view:         # released: the mapping can be closed after
        for s, e in windows(m):
            with view[s:e] as part:
                h.update(part)
    return h.hexdigest()


def line_dollars(data):
    """Offsets of the "$" octets that start a line (a directive: $ORIGIN, $INCLUDE, $TTL) of
    bytes or a mapping, found at memchr speed; a mapping a window at a time."""
    spans = windows(data) if isinstance(data, mmap.mmap) else ((0, len(data)),)
    for start, end in spans:
        pos = data.find(b"$", start, end)
        while pos != -1:
            if pos == 0 or data[pos - 1] == 10:
                yield pos
            pos = data.find(b"$", pos + 1, end)
