"""Learning known resolvers (issue 13): a source prefix is known when the workers answered it
in at least `need` of the last `windows` windows (days in production, fractions of a second in
tests).  A spoofed flood marks random prefixes in a window or two; a resolver comes back every
window.  Learning freezes under overload twice over: the workers mark nothing while any class
is cut, and a window in which the controller found a worker overloaded is not counted.

The workers write the current window's `_core.SeenSet` (one bit per IPv4 /24, a small table of
IPv6 /56s); at the window's end a fresh one is published with one atomic store, and the old one
is read only after every worker has passed a batch boundary (as images are retired)."""
from __future__ import annotations

import collections
import time

from pop53 import _core
from pop53.scoring.known import KnownPrefixes


class Learner:
    def __init__(self, scorer: _core.Scorer, window: float, windows: int, need: int):
        if not 1 <= need <= windows:
            raise ValueError("need within 1..windows")
        self.scorer, self.window, self.need = scorer, window, need
        self.history: collections.deque = collections.deque(maxlen=windows)
        self.frozen = 0                 # windows not counted: overloaded
        self.closed = 0                 # windows finished (counted or frozen): the saver's cue
        self._pending = None            # (old SeenSet, worker epochs, overloaded)
        self._started = None
        self._overload_mark = 0

    def step(self, workers, now: float | None = None) -> KnownPrefixes | None:
        """Called often (the server's housekeeping): rotates the window when due and, once the
        workers have left the old set, returns the learned prefixes (None: nothing new)."""
        now = time.monotonic() if now is None else now
        if self._started is None:
            self.scorer.swap_seen(_core.SeenSet())
            self._started = now
            self._overload_mark = sum(w.scoring_stats()["overload_ticks"] for w in workers)
            return None
        if self._pending is None and now - self._started >= self.window:
            ticks = sum(w.scoring_stats()["overload_ticks"] for w in workers)
            old = self.scorer.swap_seen(_core.SeenSet())
            self._pending = (old, {id(w): w.epoch for w in workers}, ticks != self._overload_mark)
            self._overload_mark = ticks
            self._started = now
        if self._pending is not None:
            old, epochs, overloaded = self._pending
            if not all(not w.running or w.epoch >= epochs.get(id(w), 0) + 2 for w in workers):
                return None
            self._pending = None
            return self.close(old, overloaded)
        return None

    def close(self, seen: _core.SeenSet, overloaded: bool) -> KnownPrefixes | None:
        """Count one finished window (unless overloaded: frozen) and return what is known."""
        self.closed += 1
        if overloaded:
            self.frozen += 1
            return None
        v4, v6 = seen.keys()
        self.history.append((frozenset(v4), frozenset(v6)))
        return self.learned()

    def learned(self) -> KnownPrefixes:
        c4: collections.Counter = collections.Counter()
        c6: collections.Counter = collections.Counter()
        for v4, v6 in self.history:
            c4.update(v4)
            c6.update(v6)
        return KnownPrefixes(frozenset(k for k, n in c4.items() if n >= self.need),
                             frozenset(k for k, n in c6.items() if n >= self.need))
