"""Aging of the per-address trust and the strict prefixes (docs/scoring.md, "Aging").

A resolver that stops asking loses its trust `trust_ttl` seconds after its last query (a
renumbered or retired resolver's address is otherwise trusted for ever, and whoever spoofs it
later shares that trust); a prefix marked strict (only its trusted addresses steered to the
priority socket) relaxes after `strict_calm` seconds without overload in any worker.  Relaxing
is safe: a strict prefix whose trusted address still asks is strict again at that address's
next query (ext/scoring_trust.pxi, sc_trust_seen), and one flooded again is strict again at the
flood's first queries over its rate.  Run by the server's housekeeping thread; the sweep is C
without the GIL over the 128 KiB of trust bits."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("pop53.scoring")


class TrustAging:
    def __init__(self, scorer, trust_ttl: float, strict_calm: float, clock=time.monotonic):
        self.scorer = scorer
        self.trust_ttl = trust_ttl
        self.strict_calm = strict_calm
        self.clock = clock
        # sweep a few times per ttl (a bit of lateness is fine), at most once a second
        self.every = max(1.0, min(trust_ttl / 4, 60.0))
        self._next_sweep = clock() + self.every
        self._overloads = -1              # the workers' overload ticks at the last look
        self._calm_since = clock()
        self.aged = 0                     # trust slots cleared so far
        self.relaxed = 0                  # strict relaxations so far

    def step(self, overload_ticks: int) -> None:
        """One housekeeping step; `overload_ticks`: the workers' overload ticks, summed."""
        now = self.clock()
        if overload_ticks != self._overloads:
            self._overloads, self._calm_since = overload_ticks, now
        elif now - self._calm_since >= self.strict_calm:
            if self.scorer.clear_strict():
                self.relaxed += 1
                log.info("strict known prefixes relaxed after %.0f s of calm", now - self._calm_since)
            self._calm_since = now        # and again after the next calm stretch
        if now >= self._next_sweep:
            self._next_sweep = now + self.every
            n = self.scorer.age(self.trust_ttl)
            if n:
                self.aged += n
                log.info("%d known resolver address(es) lost their trust (not seen for %.0f s)",
                         n, self.trust_ttl)
