"""The agent's decisions, one log line each (issue 14 point 10): a failed probe round, every
state change (suspend, resume, degraded, drained...), a suspension slot taken, refused, lost or
given back, and a route change or route error.  Logger "pop53.agent"; with [log] format "json"
(pop53.logs) each line also carries the fields ``event`` = "agent", ``agent``, ``decision`` and
the decision's facts, so a fleet's log shipper can count suspensions without parsing text.

Levels: WARNING for what takes a machine out of service or stops it from leaving it (failures,
suspension, slots refused or lost, route errors), INFO for the way back."""
from __future__ import annotations

import logging

log = logging.getLogger("pop53.agent")

# states in which the machine is out of service or failing
_BAD = {"degraded", "wants-suspend", "suspended"}


class DecisionLog:
    def __init__(self, name: str):
        self.name = name

    def _emit(self, level: int, decision: str, msg: str, *args, **facts) -> None:
        log.log(level, "agent %s: " + msg, self.name, *args,
                extra={"fields": {"event": "agent", "agent": self.name, "decision": decision,
                                  **facts}})

    def probe_failed(self, fails: int, fail_after: int, why: str) -> None:
        self._emit(logging.WARNING, "probe-failed",
                   "probe round failed (%d in a row, fail_after %d): %s", fails, fail_after, why,
                   consecutive=fails, fail_after=fail_after, why=why)

    def transition(self, old: str, new: str, reason: str) -> None:
        decision = {"suspended": "suspend", "drained": "drain"}.get(new, new)
        if old in ("suspended", "drained") and new not in ("suspended", "drained"):
            decision = "resume"
        self._emit(logging.WARNING if new in _BAD else logging.INFO, decision, "%s -> %s: %s",
                   old, new, reason, old=old, new=new, reason=reason)

    def slot_taken(self, slot: int, k: int | None) -> None:
        self._emit(logging.WARNING, "slot-taken", "suspension slot %d taken (K=%s)", slot, k,
                   slot=slot, k=k)

    def slot_refused(self, why: str) -> None:
        self._emit(logging.WARNING, "slot-refused", "suspension slot refused: %s", why, why=why)

    def slot_lost(self, why: str) -> None:
        self._emit(logging.WARNING, "slot-lost", "suspension slot lost: %s", why, why=why)

    def slot_released(self, slot: int) -> None:
        self._emit(logging.INFO, "slot-released", "suspension slot %d given back", slot,
                   slot=slot)

    def routes(self, action: str, changes) -> None:
        self._emit(logging.INFO, action, "service routes: %s %s", action, changes or "",
                   changes=[str(c) for c in changes or ()])

    def route_error(self, action: str, error: str) -> None:
        self._emit(logging.ERROR, "route-error", "service routes: %s failed: %s", action, error,
                   action=action, error=error)

    def lifecycle(self, decision: str, text: str) -> None:
        self._emit(logging.INFO, decision, "%s", text)
