"""The learner's history on disk, so that a restart does not forget which resolvers came back
day after day (issue 13's learning: "seen on enough of the last days").

With `[server] state`, every finished window is saved to `STATE/learned-resolvers` (written to a
temporary file, fsynced and renamed: a crash leaves the previous file).  At start the history is
read back; windows that ended while the server was down count as empty (a server down for a day
with one-day windows has missed one), and history older than `learn_windows` windows is dropped.
A file written with another `learn_window` is ignored (its windows mean something else); a
smaller `learn_windows` keeps the newest.  The window in progress at a stop is not saved.

The format: one JSON line (magic, window, saved at (Unix time), frozen windows, per window its
IPv4 and IPv6 key counts), then per window its IPv4 /24 keys as little-endian uint32 and its
IPv6 /56 keys as little-endian uint64, oldest window first."""
from __future__ import annotations

import array
import json
import logging
import os
import sys
import time

log = logging.getLogger("pop53.scoring")

FILE = "learned-resolvers"
MAGIC = "pop53-learned-resolvers 1"


def _le(a: array.array) -> bytes:
    if sys.byteorder != "little":
        a = array.array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def save(path: str, learner, now: float | None = None) -> None:
    """Write the learner's finished windows to `path` (atomically)."""
    now = time.time() if now is None else now
    windows = list(learner.history)
    head = {"magic": MAGIC, "window": learner.window, "saved": now, "frozen": learner.frozen,
            "counts": [[len(v4), len(v6)] for v4, v6 in windows]}
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps(head).encode() + b"\n")
        for v4, v6 in windows:
            f.write(_le(array.array("I", sorted(v4))))
            f.write(_le(array.array("Q", sorted(v6))))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _array(kind: str, data: bytes) -> array.array:
    a = array.array(kind)
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def load(path: str, learner, now: float | None = None) -> int:
    """Restore `path` into the learner's history; the number of windows restored (0: no file,
    an unusable one, or all of it too old).  A damaged file is logged and ignored: learning
    starts over, as it would without the file."""
    now = time.time() if now is None else now
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.error("%s: cannot read the learned resolvers (%s); learning starts over", path, exc)
        return 0
    try:
        nl = raw.index(b"\n")
        head = json.loads(raw[:nl])
        if head.get("magic") != MAGIC:
            raise ValueError("not a learned-resolvers file")
        counts = [(int(a), int(b)) for a, b in head["counts"]]
        if nl + 1 + sum(4 * a + 8 * b for a, b in counts) != len(raw):
            raise ValueError("truncated or padded")
        windows, off = [], nl + 1
        for n4, n6 in counts:
            v4 = _array("I", raw[off:off + 4 * n4])
            off += 4 * n4
            v6 = _array("Q", raw[off:off + 8 * n6])
            off += 8 * n6
            windows.append((frozenset(v4), frozenset(v6)))
        window, saved = float(head["window"]), float(head["saved"])
    except (ValueError, KeyError, TypeError) as exc:
        log.error("%s: not a usable learned-resolvers file (%s); learning starts over", path, exc)
        return 0
    if window != learner.window:
        log.info("%s: saved with learn_window %g, not %g; learning starts over", path, window,
                 learner.window)
        return 0
    missed = max(0, int((now - saved) // window))      # windows that ended while we were down
    windows += [(frozenset(), frozenset())] * min(missed, learner.history.maxlen or 0)
    learner.history.clear()
    learner.history.extend(windows)                    # the deque keeps the newest windows
    learner.frozen = int(head.get("frozen", 0))
    kept = sum(1 for v4, v6 in learner.history if v4 or v6)
    log.info("learned resolvers: %d window(s) of history restored from %s (%d missed while "
             "stopped)", kept, path, missed)
    return kept
