"""The monitoring agent: probe the local nameserver, self-suspend on failure, within limits.

Paper §4.2.1: "an on-machine monitoring agent continually runs a suite of tests against the
nameserver" (a query per zone plus regression tests for known failure cases) and detects missing,
slow and incorrect answers, including answers from stale data (§4.2.2).  On failure it
self-suspends: it makes the BGP speaker withdraw the anycast prefix (here: `pop53.anycast.routes`, which
BIRD follows).  Mass suspension is prevented by a cluster-wide limit (`pop53.anycast.coord`: K slots in
etcd) and by machines that never self-suspend (the input-delayed ones, §4.2.3).

State machine (one `tick` per probe interval)::

    starting --pass--> serving --fail--> degraded --N fails--+--slot--> suspended
                          ^                  |               |            |
                          +------pass--------+               +-no slot--> wants-suspend
                          +------------------- M passes (slot released) --+   (announced)
    any --drain file--> drained --drain removed--> serving

Invariant: the routes are withdrawn only in `suspended` (while a slot is held, or no
coordination is configured) and in `drained` (an operator's explicit decision).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

from pop53.anycast.agent_config import AgentConfig, AgentError, parse_hostport
from pop53.anycast.agent_log import DecisionLog
from pop53.anycast.probe import FAILURE_KINDS, ProbeResult, Prober, StalenessSource


STATES = ("starting", "serving", "degraded", "wants-suspend", "suspended", "drained")


# -- metrics -----------------------------------------------------------------------------------

class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.state = Gauge("pop53_agent_state", "1 for the agent's current state", ["state"],
                           registry=self.registry)
        self.announced = Gauge("pop53_agent_announced", "1 if the service routes are announced",
                               registry=self.registry)
        self.slot = Gauge("pop53_agent_slot", "suspension slot held (-1: none)",
                          registry=self.registry)
        self.wants = Gauge("pop53_agent_wants_suspend",
                           "1 if the agent would suspend but may not (no slot, etcd down, "
                           "never-suspend)", registry=self.registry)
        self.fails = Gauge("pop53_agent_consecutive_failures", "consecutive failed probe rounds",
                           registry=self.registry)
        self.passes = Gauge("pop53_agent_consecutive_passes", "consecutive passed probe rounds",
                            registry=self.registry)
        self.rounds = Counter("pop53_agent_probe_rounds", "probe rounds by result", ["result"],
                              registry=self.registry)
        self.failures = Counter("pop53_agent_probe_failures", "failed checks by kind", ["kind"],
                                registry=self.registry)
        self.transitions = Counter("pop53_agent_transitions", "state changes by target state",
                                   ["to"], registry=self.registry)
        self.rtt = Gauge("pop53_agent_probe_max_rtt_seconds", "slowest answer of the last round",
                         registry=self.registry)
        for s in STATES:
            self.state.labels(s).set(0)
        for k in FAILURE_KINDS:
            self.failures.labels(k)
        self.slot.set(-1)

    def serve(self, hostport: str) -> None:
        from prometheus_client import start_http_server

        host, port = parse_hostport(hostport, 9154, key="metrics")
        start_http_server(port, addr=host, registry=self.registry)

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


# -- the agent ---------------------------------------------------------------------------------

class Agent:
    """The state machine.  `routes` (pop53.anycast.routes.ServiceRoutes-like: announce/withdraw) and
    `slots` (pop53.anycast.coord.SlotClient-like) are injectable; None means "not configured"."""

    def __init__(self, cfg: AgentConfig, *, routes=None, slots=None, prober: Prober | None = None,
                 staleness: StalenessSource | None = None, metrics: Metrics | None = None):
        self.cfg = cfg
        if routes is None and cfg.routes is not None:
            from pop53.anycast.routes import ServiceRoutes

            routes = ServiceRoutes(cfg.routes.addresses, mode=cfg.routes.mode,
                                   interface=cfg.routes.interface, table=cfg.routes.table,
                                   netns=cfg.routes.netns)
        if slots is None and cfg.etcd is not None:
            from pop53.anycast.coord import SlotClient

            slots = SlotClient(cfg.etcd.endpoints, holder=cfg.name, slots=cfg.etcd.slots,
                               prefix=cfg.etcd.prefix, ttl=cfg.etcd.lease_ttl,
                               timeout=cfg.etcd.timeout)
        self.routes = routes
        self.slots = slots
        self.prober = prober or Prober(cfg, staleness)
        self.metrics = metrics or Metrics()
        self.state = "starting"
        self.reason = "agent started; waiting for the first probe round"
        self.announced: bool | None = None
        self.fails = 0
        self.passes = 0
        self.wants_suspend = False
        self.last: ProbeResult | None = None
        self.last_change: dict | None = None
        self.history: list[dict] = []
        self.route_error: str | None = None
        self.log = DecisionLog(cfg.name)
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)

    # routes
    def _set_routes(self, announce: bool) -> bool:
        if self.routes is None:
            if self.announced != announce:
                self.last_change = {"time": time.time(), "done": time.time(),
                                    "action": "announce" if announce else "withdraw",
                                    "changes": []}
            self.announced = announce
            return True
        from pop53.errors import RouteError

        t0 = time.time()  # the event time is when the change was started (paper §4.1: t_L)
        try:
            changed = self.routes.announce() if announce else self.routes.withdraw()
            self.route_error = None
        except RouteError as exc:
            self.route_error = str(exc)
            self.log.route_error("announce" if announce else "withdraw", self.route_error)
            return False
        if changed or self.announced is None or self.announced != announce:
            self.announced = announce
            self.log.routes("announce" if announce else "withdraw", changed)
            self.last_change = {"time": t0, "done": time.time(),
                                "action": "announce" if announce else "withdraw",
                                "changes": changed}
        return True

    def _transition(self, to: str, reason: str) -> None:
        if to != self.state:
            self.log.transition(self.state, to, reason)
            self.history.append({"time": time.time(), "from": self.state, "to": to,
                                 "reason": reason})
            del self.history[:-50]
            self.metrics.transitions.labels(to).inc()
        self.state = to
        self.reason = reason

    def _slot_held(self) -> int | None:
        return self.slots.held if self.slots is not None else None

    def _release_slot(self) -> None:
        if self.slots is not None:
            held = self.slots.held
            self.slots.release()  # also drops a lease whose slot already expired
            if held is not None:
                self.log.slot_released(held)

    def draining(self) -> bool:
        return self.cfg.drain_file.exists()

    def tick(self, result: ProbeResult | None = None) -> None:
        """One probe round and the transitions it causes."""
        res = result if result is not None else self.prober.run()
        self.last = res
        self.metrics.rounds.labels("pass" if res.ok else "fail").inc()
        for f in res.failures:
            self.metrics.failures.labels(f.kind).inc()
        self.metrics.rtt.set(res.max_rtt_ms / 1000)
        if res.ok:
            self.passes += 1
            self.fails = 0
        else:
            self.fails += 1
            self.passes = 0
            self.log.probe_failed(self.fails, self.cfg.fail_after, self._why(res))
        self.step_drain()
        if self.state != "drained":
            self._step(res)
        self._publish()

    def step_drain(self) -> bool:
        """Apply the maintenance switch; True if it changed something.  Cheap: the run loop
        calls it between probe rounds so a drain takes effect within ~50 ms."""
        if self.draining():
            if self.state != "drained":
                why = (self.cfg.drain_file.read_text(errors="replace").strip()
                       if self.cfg.drain_file.exists() else "")
                self._set_routes(False)
                # A drain is an operator's decision, not a self-suspension: it needs no slot,
                # and we give back any slot we held so another machine may use it.
                self._release_slot()
                self.wants_suspend = False
                self._transition("drained", f"maintenance drain ({self.cfg.drain_file}"
                                 + (f": {why}" if why else "") + ")")
                self._publish()
                return True
            return False
        if self.state == "drained":
            self._set_routes(True)
            self.fails = 0
            self._transition("serving", "drain switch removed; announced again")
            self._publish()
            return True
        return False

    def _why(self, res: ProbeResult) -> str:
        first = "; ".join(str(f) for f in res.failures[:3])
        more = f" (+{len(res.failures) - 3} more)" if len(res.failures) > 3 else ""
        return first + more

    def _step(self, res: ProbeResult) -> None:
        cfg = self.cfg
        if self.state == "suspended":
            held = self._slot_held()
            if self.slots is not None:
                if held is not None:
                    self.slots.keepalive()
                    held = self._slot_held()
                if held is None:
                    # Without a slot we may not stay withdrawn: another machine may hold it.
                    self._set_routes(True)
                    self.wants_suspend = not res.ok
                    err = self.slots.last_error or "slot lost"
                    self.log.slot_lost(err)
                    self._transition("wants-suspend" if not res.ok else "serving",
                                     f"announced again: {err}")
                    return
            if self.passes >= cfg.pass_after:
                self._set_routes(True)
                self._release_slot()
                self.wants_suspend = False
                self._transition("serving", f"{self.passes} consecutive passes; announced again")
                return
            self._set_routes(False)
            if not res.ok:
                self.reason = f"suspended (slot {held}): {self._why(res)}"
            return
        # starting / serving / degraded / wants-suspend: we are (or become) announced
        if res.ok:
            self.wants_suspend = False
            self._set_routes(True)
            if self.state != "serving":
                self._transition("serving", "probes pass")
            return
        if self.fails < cfg.fail_after:
            if self.state == "starting":
                # Not announced yet and failing: nothing to withdraw, nothing to suspend.
                self.reason = f"starting; failing ({self.fails}/{cfg.fail_after}): {self._why(res)}"
                return
            self._set_routes(True)
            self._transition("degraded", f"{self.fails}/{cfg.fail_after} failed rounds: "
                             f"{self._why(res)}")
            return
        # N consecutive failures: we want to self-suspend.
        self.wants_suspend = True
        why = f"{self.fails} consecutive failed rounds: {self._why(res)}"
        if cfg.never_suspend:
            self._set_routes(True)
            self._transition("wants-suspend", f"never-suspend machine, keeps answering; {why}")
            return
        slot = None
        if self.slots is not None:
            from pop53.anycast.coord import CoordUnavailable

            try:
                slot = self.slots.acquire()
            except CoordUnavailable as exc:
                return self._slot_refused(f"etcd unreachable, may not suspend ({exc})", why)
            if slot is None:
                return self._slot_refused(f"no free suspension slot ({self.slots.last_error})",
                                          why)
            self.log.slot_taken(slot, self.cfg.etcd.slots if self.cfg.etcd else None)
        if not self._set_routes(False):
            self._release_slot()
            self._transition("wants-suspend", f"withdraw failed ({self.route_error}); {why}")
            return
        self.wants_suspend = False
        self._transition("suspended", "self-suspended" +
                         (f" holding slot {slot}" if slot is not None else
                          " (no cluster limit configured)") + f": {why}")

    def _slot_refused(self, what: str, why: str) -> None:
        """No slot to suspend with: stay announced and say why (the cluster limit, §4.2.1)."""
        self.log.slot_refused(what)
        self._set_routes(True)
        self._transition("wants-suspend", f"{what}; {why}")

    # status
    def status(self) -> dict:
        held = self._slot_held()
        return {
            "name": self.cfg.name,
            "pid": os.getpid(),
            "updated": time.time(),
            "state": self.state,
            "reason": self.reason,
            "announced": self.announced,
            "wants_suspend": self.wants_suspend,
            "never_suspend": self.cfg.never_suspend,
            "draining": self.draining(),
            "slot": held,
            "slots": ({"endpoints": self.cfg.etcd.endpoints, "k": self.cfg.etcd.slots,
                       "last_error": self.slots.last_error}
                      if self.cfg.etcd and self.slots is not None else None),
            "consecutive_failures": self.fails,
            "consecutive_passes": self.passes,
            "fail_after": self.cfg.fail_after,
            "pass_after": self.cfg.pass_after,
            "route_error": self.route_error,
            "last_probe": ({"time": self.last.time, "ok": self.last.ok,
                            "queries": self.last.queries, "max_rtt_ms": round(self.last.max_rtt_ms, 2),
                            "failures": [asdict(f) for f in self.last.failures]}
                           if self.last else None),
            "last_change": self.last_change,
            "history": self.history[-10:],
        }

    def _publish(self) -> None:
        m = self.metrics
        for s in STATES:
            m.state.labels(s).set(1 if s == self.state else 0)
        m.announced.set(1 if self.announced else 0)
        held = self._slot_held()
        m.slot.set(held if held is not None else -1)
        m.wants.set(1 if self.wants_suspend else 0)
        m.fails.set(self.fails)
        m.passes.set(self.passes)
        path = self.cfg.state_file
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.status(), indent=1))
            os.replace(tmp, path)  # atomic: `status` never reads half a file
        except OSError as exc:
            raise AgentError(f"cannot write agent state {path}: {exc}") from None

    def run(self, stop: threading.Event, max_rounds: int | None = None) -> None:
        rounds = 0
        if self.slots is not None:
            self.slots.keepalive_forever(stop)
        while not stop.is_set():
            t0 = time.monotonic()
            self.tick()
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                return
            while not stop.is_set():
                left = self.cfg.interval - (time.monotonic() - t0)
                if left <= 0:
                    break
                if self.step_drain():
                    break
                stop.wait(min(left, 0.05))


def run_agent(cfg: AgentConfig, *, max_rounds: int | None = None) -> int:
    """`pop53 agent run`: run until SIGTERM/SIGINT.  The routes stay as they are on exit (a
    suspended machine's slot frees when its lease expires, §4.2.1 via pop53.anycast.coord)."""
    from pop53 import __version__, logs

    logs.configure(cfg.log_format)
    agent = Agent(cfg)
    if cfg.metrics:
        agent.metrics.serve(cfg.metrics)
    stop = threading.Event()

    def _stop(*_a):
        # not stop.set() here: the handler runs in the main thread between two bytecodes,
        # possibly inside stop.wait() holding the Event's lock, and would wait for it for ever
        # (pop53 serve hung that way once, session 15); a thread sets it once the wait lets go
        threading.Thread(target=stop.set, name="pop53-agent-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.log.lifecycle("start", f"pop53 {__version__} agent starting, pid {os.getpid()}")
    agent.run(stop, max_rounds=max_rounds)
    agent.log.lifecycle("stop", f"stopped in state {agent.state}")
    return 0


def read_status(state_dir: str | os.PathLike) -> dict:
    path = Path(state_dir) / "state.json"
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise AgentError(f"no agent state at {path} ({exc.strerror}); is the agent running "
                         f"with state_dir = {state_dir!r}?") from None
    except ValueError as exc:
        raise AgentError(f"{path}: unreadable agent state ({exc})") from None


def format_status(st: dict) -> str:
    lines = [f"agent {st['name']} (pid {st.get('pid')}), updated "
             f"{time.time() - st.get('updated', 0):.1f}s ago",
             f"  state:      {st['state']}",
             f"  why:        {st['reason']}",
             f"  announced:  {st['announced']}",
             f"  slot held:  {st['slot'] if st['slot'] is not None else 'none'}"
             + (f" (K={st['slots']['k']})" if st.get("slots") else " (no cluster limit)"),
             f"  wants to suspend: {st['wants_suspend']}; never-suspend: {st['never_suspend']};"
             f" draining: {st['draining']}",
             f"  consecutive failures {st['consecutive_failures']}/{st['fail_after']}, "
             f"passes {st['consecutive_passes']}/{st['pass_after']}"]
    if st.get("slots") and st["slots"].get("last_error"):
        lines.append(f"  slots:      {st['slots']['last_error']}")
    if st.get("route_error"):
        lines.append(f"  route error: {st['route_error']}")
    lp = st.get("last_probe")
    if lp:
        lines.append(f"  last probe: {'pass' if lp['ok'] else 'FAIL'}, {lp['queries']} queries, "
                     f"slowest {lp['max_rtt_ms']} ms")
        for f in lp["failures"][:10]:
            lines.append(f"    {f['kind']}: {f['what']}: {f['detail']}")
    for h in st.get("history", [])[-5:]:
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(h['time']))} "
                     f"{h['from']} -> {h['to']}: {h['reason']}")
    return "\n".join(lines)
