"""Map deltas: a small change to a map sent as the prefixes added, removed and changed against
a base snapshot, instead of the whole file.

Deltas are cumulative against the last full snapshot of the map (subject ``PREFIX.map.NAME``)
and travel on their own subject (``PREFIX.mapdelta.NAME``).  The stream keeps the last message
of every subject, so a server that starts or reconnects receives the current snapshot and the
current delta, and the delta always applies on top of that snapshot: no chain of deltas to
replay, no gap to fill.  The payload is strict text::

    base VERSION SHA256        the snapshot this applies to: its version and payload digest
    + PREFIX REGION            added or changed (every line of the base with PREFIX goes)
    - PREFIX                   removed (the base must have it)

A server applies a delta only on top of exactly that base (same version, same bytes); anything
else is refused with reason ``base`` and the server keeps serving what it has until the next
snapshot (it never guesses).  The resulting map is then checked exactly as a full map file.

A large snapshot travels gzip-compressed (a map file never starts with the gzip magic, a
control character): a 1,000,000-prefix map is ~18 MB of text, and every byte is stored on each
NATS node and sent to each server.  It is inflated only after its signature is checked, and
never beyond MAX_MAP bytes.
"""
from __future__ import annotations

import hashlib
import re
import zlib

from pop53.errors import Pop53Error

_HEAD = re.compile(rb"^base ([1-9][0-9]{0,18}) ([0-9a-f]{64})$")
_KEY = re.compile(rb"^[0-9A-Fa-f:.]{2,45}/[0-9]{1,3}$")
_FEW = 32             # up to this many changed prefixes, find them with bytes.find (fast, in C)
GZIP = b"\x1f\x8b"
MAX_MAP = 256 << 20   # inflated: ten times the largest map we know of
COMPRESS_FROM = 1 << 20


class DeltaError(Pop53Error):
    """A delta that is malformed (reason `content`) or not on top of our base (`base`)."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


def deflate(data: bytes) -> bytes:
    """A map's payload on the wire: gzip (level 1: the fastest) from COMPRESS_FROM bytes."""
    if len(data) < COMPRESS_FROM:
        return data
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def inflate(payload: bytes, limit: int = MAX_MAP) -> bytes:
    """The map text of a payload (compressed or not).  Raises DeltaError('content') for a
    broken stream, trailing bytes, or more than `limit` bytes of text (a bomb)."""
    if not payload.startswith(GZIP):
        return payload
    d = zlib.decompressobj(31)
    parts, total, data = [], 0, payload
    try:
        # in 4 MiB pieces: one growing buffer would peak at several times the text
        while True:
            part = d.decompress(data, 4 << 20)
            total += len(part)
            if total > limit:
                raise DeltaError("content", f"inflates to more than {limit} bytes")
            parts.append(part)
            data = d.unconsumed_tail
            if d.eof or (not data and not part):     # (no input left: flush what zlib holds)
                break
    except zlib.error as exc:
        raise DeltaError("content", f"broken gzip payload: {exc}") from None
    if not d.eof or d.unused_data:
        raise DeltaError("content", "gzip payload truncated or followed by other bytes")
    return b"".join(parts)


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def entries(text: bytes) -> dict[bytes, bytes] | None:
    """PREFIX -> REGION of a map file's text (comments and blanks dropped); None when a prefix
    is written twice (a delta could not say which line it changes: send a snapshot)."""
    out: dict[bytes, bytes] = {}
    for raw in text.split(b"\n"):
        i = raw.find(b"#")
        parts = (raw if i < 0 else raw[:i]).split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] in out:
            return None
        out[parts[0]] = parts[1]
    return out


def make(base_version: int, base: bytes, new: bytes, max_changes: int) -> bytes | None:
    """The delta taking `base` to `new`, or None when a full snapshot is the better message
    (more than `max_changes` prefixes change, or either side is not one line per prefix)."""
    old, cur = entries(base), entries(new)
    if old is None or cur is None:
        return None
    plus = [k for k, v in cur.items() if old.get(k) != v]
    minus = [k for k in old if k not in cur]
    if len(plus) + len(minus) > max_changes:
        return None
    lines = [b"base %d %s" % (base_version, digest(base).encode())]
    lines += [b"+ " + k + b" " + cur[k] for k in plus]
    lines += [b"- " + k for k in minus]
    return b"\n".join(lines) + b"\n"


def parse(payload: bytes) -> tuple[int, str, dict[bytes, bytes | None]]:
    """(base version, base digest, PREFIX -> REGION or None for a removal).  Strict: every line
    is one of the three forms, no prefix twice.  Raises DeltaError('content')."""
    lines = payload.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    m = _HEAD.match(lines[0]) if lines else None
    if m is None:
        raise DeltaError("content", "line 1: expected 'base VERSION SHA256'")
    changes: dict[bytes, bytes | None] = {}
    for no, line in enumerate(lines[1:], 2):
        parts = line.split(b" ")
        if len(parts) == 3 and parts[0] == b"+" and parts[2]:
            key, val = parts[1], parts[2]
        elif len(parts) == 2 and parts[0] == b"-":
            key, val = parts[1], None
        else:
            raise DeltaError("content", f"line {no}: expected '+ PREFIX REGION' or '- PREFIX'")
        if not _KEY.match(key):
            raise DeltaError("content", f"line {no}: {key[:60]!r} is not a prefix")
        if key in changes:
            raise DeltaError("content", f"line {no}: {key.decode()} changed twice")
        changes[key] = val
    return int(m.group(1)), m.group(2).decode(), changes


def _is_key_at(base: bytes, i: int, key: bytes) -> bool:
    """Is base[i:] the PREFIX field of a map line (only blanks before it on its line, a blank,
    a comment or the end of the line after it)?"""
    j = i - 1
    while j >= 0 and base[j] in b" \t\r":
        j -= 1
    if j >= 0 and base[j] != 0x0A:
        return False
    end = i + len(key)
    return end == len(base) or base[end] in b" \t\r\n#"


def _drop(base: bytes, keys: set[bytes]) -> tuple[bytes, set[bytes]]:
    """`base` without the lines whose PREFIX is in `keys`; and the keys that were found."""
    found: set[bytes] = set()
    if len(keys) <= _FEW:
        spans = []
        for key in keys:
            i = base.find(key)
            while i >= 0:
                if _is_key_at(base, i, key):
                    start = base.rfind(b"\n", 0, i) + 1
                    end = base.find(b"\n", i)
                    spans.append((start, len(base) if end < 0 else end + 1))
                    found.add(key)
                i = base.find(key, i + 1)
        spans.sort()
        out, at = [], 0
        for start, end in spans:
            out.append(base[at:start])
            at = end
        out.append(base[at:])
        kept = b"".join(out)
    else:
        lines = []
        for raw in base.split(b"\n"):
            parts = raw.split(None, 1)
            if parts and parts[0] in keys:
                found.add(parts[0])
                continue
            lines.append(raw)
        kept = b"\n".join(lines)
    if kept and not kept.endswith(b"\n"):
        kept += b"\n"
    return kept, found


def apply(base_version: int, base: bytes, payload: bytes) -> bytes:
    """The full map text after the delta, which must name exactly this base.  The caller then
    checks the result as it checks any map file.  Raises DeltaError ('base' or 'content')."""
    want_version, want_digest, changes = parse(payload)
    if want_version != base_version:
        raise DeltaError("base", f"delta on top of version {want_version}; this server has "
                                 f"version {base_version} (waiting for a snapshot)")
    if want_digest != digest(base):
        raise DeltaError("base", f"delta on top of a version {want_version} whose content "
                                 "differs from ours (waiting for a snapshot)")
    kept, found = _drop(base, set(changes))
    missing = [k for k, v in changes.items() if v is None and k not in found]
    if missing:
        raise DeltaError("content", f"removes {missing[0].decode()}, which the base does not have")
    added = b"".join(k + b" " + v + b"\n" for k, v in changes.items() if v is not None)
    return kept + added
