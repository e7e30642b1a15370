"""The paper's failover experiment (§4.1) and the failure scenarios run in the lab: events,
the gaps clients saw, CSV and CDF plots, summaries."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pop53.errors import Pop53Error
from pop53.lab.pop import Lab, LabConfig
from pop53.lab.probe import read_client_log
from pop53.lab.process import SERVICE4, SERVICE6, LabError, Proc, dns_server_command


@dataclass
class Event:
    t: float
    kind: str        # "withdraw" | "announce"
    machine: str
    round: int


def measure_gaps(events: list[Event], logs: dict[str, list[tuple[float, bool, str]]],
                 end: float) -> list[dict]:
    """One row per client per event.

    withdraw of X at t: like §4.1 (Figure 7b) the gap runs from the first query that got no
    answer (t_0) to the next answered query (t_Y); 0 if no query was lost (instantly rerouted).
    `shift_ms` is when this client's traffic last reached X after t.
    announce of X at t: like Figure 7a, the gap is t_X - t, the time until this client's first
    answer from X; empty if X never answered this client before the next event.
    """
    rows = []
    for k, ev in enumerate(events):
        t_end = events[k + 1].t if k + 1 < len(events) else end
        for client, log in logs.items():
            win = [q for q in log if ev.t <= q[0] < t_end]
            lost = [q for q in win if not q[1]]
            row = {"event": ev.kind, "machine": ev.machine, "client": client, "round": ev.round,
                   "t_event": f"{ev.t:.6f}", "queries": len(win), "lost": len(lost)}
            if ev.kind == "withdraw":
                if lost:
                    t0 = lost[0][0]
                    after = [q for q in win if q[0] > t0 and q[1]]
                    gap = ((after[0][0] - t0) * 1000) if after else (t_end - t0) * 1000
                    row["gap_start"] = f"{t0:.6f}"
                    row["gap_end"] = f"{after[0][0]:.6f}" if after else f"{t_end:.6f}"
                else:
                    gap = 0.0
                    row["gap_start"] = row["gap_end"] = ""
                hits = [q for q in win if q[1] and q[2] == ev.machine]
                row["shift_ms"] = f"{(hits[-1][0] - ev.t) * 1000:.1f}" if hits else "0.0"
                row["gap_ms"] = f"{gap:.1f}"
            else:
                hits = [q for q in win if q[1] and q[2] == ev.machine]
                row["gap_ms"] = f"{(hits[0][0] - ev.t) * 1000:.1f}" if hits else ""
                row["gap_start"] = row["gap_end"] = ""
                row["shift_ms"] = ""
            rows.append(row)
    return rows


CSV_FIELDS = ["event", "machine", "gap_ms", "client", "round", "t_event", "queries", "lost",
              "shift_ms", "gap_start", "gap_end"]


def write_failover_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def plot_failover_cdf(rows: list[dict], path: Path, title: str) -> None:
    """CDF of failover time per event kind, like the paper's Figure 8."""
    try:
        import matplotlib
    except ImportError:
        # the runtime install leaves the charting library out (the `bench` extra has it)
        raise Pop53Error("the failover chart needs matplotlib: pip install 'pop53[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("announce", "-"), ("withdraw", "--")):
        vals = sorted(float(r["gap_ms"]) / 1000 for r in rows
                      if r["event"] == kind and r["gap_ms"] != "")
        if not vals:
            continue
        ys = [(i + 1) / len(vals) for i in range(len(vals))]
        ax.step([0.0] + vals, [0.0] + ys, style, where="post", label=f"{kind} (n={len(vals)})")
    ax.set_xlabel("failover time (s)")
    ax.set_ylabel("CDF of measurements")
    ax.set_ylim(0, 1.02)
    # A little room left of 0 so an all-zero CDF (no query lost) stays visible.
    ax.set_xlim(left=-0.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for kind in ("withdraw", "announce"):
        vals = sorted(float(r["gap_ms"]) for r in rows if r["event"] == kind and r["gap_ms"] != "")
        if not vals:
            continue

        def pct(p: float) -> float:
            return vals[min(len(vals) - 1, max(0, math.ceil(p * len(vals)) - 1))]

        out[kind] = {"n": len(vals), "median_ms": pct(0.5), "p90_ms": pct(0.9),
                     "max_ms": vals[-1], "under_1s": sum(v < 1000 for v in vals) / len(vals),
                     "lost": sum(int(r["lost"]) for r in rows if r["event"] == kind)}
    return out


def run_failover(*, machines: int, rounds: int, out: Path, clients: int = 2,
                 hold: float = 2.5, signal_mode: str = "address", bfd: bool = True,
                 interval: float = 0.1, log=print, workdir: str | None = None) -> dict:
    """Withdraw and re-announce every machine in turn (through its agent's drain switch), while
    clients query the anycast address every `interval` s; write failover.csv and failover.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if machines < 2:
        raise LabError("failover needs at least 2 machines (someone must keep answering)")
    cfg = LabConfig(machines=machines, clients=clients, signal=signal_mode, bfd=bfd,
                    agents=True, etcd=False, agent_interval=0.2, pass_after=1, fail_after=3)
    events: list[Event] = []
    with Lab(cfg, workdir) as lab:
        log(f"lab {lab.tag}: {machines} machines, {clients} clients, server={lab.server}, "
            f"signal={signal_mode}, bfd={bfd}")
        lab.wait_fib(lambda ms: len(ms) == machines, timeout=30)
        duration = rounds * machines * 2 * hold + 3 * hold + 5
        cl = lab.start_clients(duration=duration, interval=interval)
        try:
            time.sleep(hold)
            for rnd in range(1, rounds + 1):
                for m in lab.machines:
                    for kind in ("withdraw", "announce"):
                        before = time.time()
                        lab.drain(m, kind == "withdraw")
                        want = "drained" if kind == "withdraw" else "serving"
                        st = lab.wait_agent(m, lambda s: s["state"] == want and
                                            s.get("last_change", {}).get("time", 0) >= before,
                                            timeout=10)
                        t_ev = st["last_change"]["time"]
                        events.append(Event(t_ev, kind, m.name, rnd))
                        log(f"round {rnd}: {kind} {m.name} at +{t_ev - before:.3f}s")
                        time.sleep(hold)
            end = time.time()
            time.sleep(1.5)
        finally:
            _stop_clients(cl)
        logs = _client_logs(cl)
    rows = measure_gaps(events, logs, end)
    write_failover_csv(rows, out / "failover.csv")
    plot_failover_cdf(rows, out / "failover.png",
                      f"pop53 lab failover: {machines} machines, {rounds} rounds, {signal_mode}")
    with open(out / "queries.json", "w") as f:
        json.dump({"events": [e.__dict__ for e in events],
                   "clients": {n: l for n, l in logs.items()}}, f)
    return {"rows": rows, "events": events, "logs": logs, "summary": summarize(rows)}


# -- scenarios ---------------------------------------------------------------------------------

def _stop_clients(clients) -> None:
    for _n, p, _f in clients:
        p.stop(timeout=10)


def _client_logs(clients) -> dict[str, list[tuple[float, bool, str]]]:
    """What each probe client (name, Proc, log file) saw, read after it stopped."""
    return {n: read_client_log(f) for n, _p, f in clients}


def _losses(logs: dict[str, list[tuple[float, bool, str]]], t_from: float, t_to: float
            ) -> list[tuple[str, float]]:
    return [(c, q[0]) for c, log in logs.items() for q in log if t_from <= q[0] < t_to and not q[1]]


def _answered_by(logs: dict[str, list[tuple[float, bool, str]]], t_from: float, t_to: float
                 ) -> dict[str, int]:
    out: dict[str, int] = {}
    for log in logs.values():
        for t, ok, nsid in log:
            if ok and t_from <= t < t_to:
                out[nsid] = out.get(nsid, 0) + 1
    return dict(sorted(out.items()))


def run_kill_server(*, machines: int = 3, clients: int = 2, log=print,
                    workdir: str | None = None) -> dict:
    """Kill one machine's DNS server: its agent fails N rounds, takes a slot and withdraws; the
    router drops it; clients lose only the queries hashed to it before that.  Then restart the
    server: after M passes the agent announces again."""
    cfg = LabConfig(machines=machines, clients=clients, signal="route", agents=True, etcd=True,
                    slots=1, agent_interval=0.3, fail_after=3, pass_after=3)
    checks: dict[str, bool] = {}
    with Lab(cfg, workdir) as lab:
        log(f"lab {lab.tag}: {machines} machines, server={lab.server}, agents with K=1")
        lab.wait_fib(lambda ms: len(ms) == machines, timeout=30)
        for m in lab.machines:
            lab.wait_agent(m, lambda s: s["state"] == "serving")
        victim = lab.machines[0]
        cl = lab.start_clients(duration=60)
        try:
            time.sleep(2)
            t_kill = time.time()
            victim.procs["dns"].signal(signal.SIGKILL)
            log(f"killed {victim.name}'s DNS server (pid {victim.procs['dns'].pid})")
            st = lab.wait_agent(victim, lambda s: s["state"] == "suspended", timeout=15)
            t_susp = st["last_change"]["time"]
            lab.wait_fib(lambda ms: victim.name not in ms, timeout=10)
            t_fib = time.time()
            log(f"agent {victim.name}: suspended after {t_susp - t_kill:.2f}s "
                f"(slot {st['slot']}): {st['reason']}")
            log(f"router FIB without {victim.name} after {t_fib - t_kill:.2f}s")
            time.sleep(2)
            t_restart = time.time()
            victim.procs["dns"] = Proc("dns", dns_server_command(
                lab.server, zone=lab.zone, listens=[SERVICE4.split("/")[0],
                                                    SERVICE6.split("/")[0], "127.0.0.1"],
                identity=victim.name, workdir=victim.workdir), log=victim.workdir / "dns2.log",
                netns=victim.ns)
            st2 = lab.wait_agent(victim, lambda s: s["state"] == "serving", timeout=20)
            lab.wait_fib(lambda ms: victim.name in ms, timeout=10)
            log(f"server restarted; agent announced again after "
                f"{st2['last_change']['time'] - t_restart:.2f}s: {st2['reason']}")
            time.sleep(1.5)
            t_end = time.time()
        finally:
            _stop_clients(cl)
        logs = _client_logs(cl)
    lost_before = _losses(logs, 0, t_kill)
    lost_outage = _losses(logs, t_kill, t_susp + 1.0)
    lost_after = _losses(logs, t_susp + 1.0, t_end)
    # A round costs at most interval + one timeout per transport (missing -> rest skipped).
    bound = cfg.fail_after * (cfg.agent_interval + 2 * 0.5) + 1.0
    checks[f"agent suspended within N rounds (+1s): {bound:.1f}s"] = t_susp - t_kill <= bound
    checks["no lost query before the kill"] = not lost_before
    checks["no lost query once withdrawn (+1s)"] = not lost_after
    checks["victim answers again after restart"] = \
        _answered_by(logs, t_restart, t_end).get(victim.name, 0) > 0
    log(f"lost queries: {len(lost_outage)} between kill and withdrawal, {len(lost_after)} after")
    return {"checks": checks, "t_detect": t_susp - t_kill, "t_fib": t_fib - t_kill,
            "lost": len(lost_outage)}


def run_freeze_bird(*, machines: int = 2, clients: int = 2, bfd: bool = True, log=print,
                    workdir: str | None = None, hold_time: int = 3) -> dict:
    """Freeze a machine (SIGSTOP its BIRD and its DNS server: a hung machine).  The router can
    only notice through BGP: BFD (3 x 100 ms) or the hold timer (`hold_time` s) bounds how long
    it keeps sending queries there."""
    cfg = LabConfig(machines=machines, clients=clients, signal="route", agents=False, etcd=False,
                    bfd=bfd, hold_time=hold_time)
    bound = 0.3 if bfd else float(hold_time)
    with Lab(cfg, workdir) as lab:
        log(f"lab {lab.tag}: {machines} machines, server={lab.server}, "
            f"{'BFD 3x100ms' if bfd else f'no BFD, hold time {hold_time}s'}")
        lab.wait_fib(lambda ms: len(ms) == machines, timeout=30)
        victim = lab.machines[0]
        cl = lab.start_clients(duration=60)
        try:
            time.sleep(2)
            t_freeze = time.time()
            victim.bird.signal(signal.SIGSTOP)
            victim.procs["dns"].signal(signal.SIGSTOP)
            lab.wait_fib(lambda ms: victim.name not in ms, timeout=hold_time + 10)
            t_fib = time.time()
            log(f"froze {victim.name} (BIRD pid {victim.bird.pid}, DNS pid "
                f"{victim.procs['dns'].pid}); router dropped it after {t_fib - t_freeze:.2f}s")
            time.sleep(1.5)
            victim.bird.signal(signal.SIGCONT)
            victim.procs["dns"].signal(signal.SIGCONT)
            t_thaw = time.time()
            lab.wait_fib(lambda ms: victim.name in ms, timeout=30)
            log(f"thawed; back in the FIB after {time.time() - t_thaw:.2f}s")
            time.sleep(1)
        finally:
            _stop_clients(cl)
        logs = _client_logs(cl)
    lost = _losses(logs, t_freeze, t_thaw)
    last_lost = max((t for _c, t in lost), default=t_freeze) - t_freeze
    slack = 1.0
    checks = {f"router dropped the frozen machine within {bound:g}s + {slack:g}s":
              t_fib - t_freeze <= bound + slack,
              f"clients' last lost query within {bound:g}s + {slack:g}s of the freeze":
              last_lost <= bound + slack,
              "no lost query before the freeze": not _losses(logs, 0, t_freeze)}
    log(f"lost {len(lost)} queries; last one sent {last_lost:.2f}s after the freeze")
    return {"checks": checks, "t_fib": t_fib - t_freeze, "last_lost": last_lost,
            "lost": len(lost), "bound": bound}


def run_mass_failure(*, machines: int = 12, fail: int = 10, slots: int = 3, clients: int = 3,
                     settle: float = 6.0, log=print, workdir: str | None = None) -> dict:
    """Fail `fail` machines at once while only K=`slots` may suspend.  The failure is stale
    metadata (§4.2.2): the lab stops refreshing their zone stamps.  Exactly K withdraw; the rest
    report that they want to suspend and keep answering (§4.2.1: "always return an answer")."""
    import threading

    if not 0 < fail <= machines:
        raise LabError("--fail must be between 1 and --machines")
    max_age = 3.0
    cfg = LabConfig(machines=machines, clients=clients, signal="route", agents=True, etcd=True,
                    slots=slots, agent_interval=0.5, fail_after=3, pass_after=3,
                    max_zone_age=max_age, lease_ttl=3)
    stop = threading.Event()
    failed: set[int] = set()
    result: dict = {}
    with Lab(cfg, workdir) as lab:
        def refresh() -> None:  # the metadata pipeline, delivering to healthy machines only
            while not stop.wait(0.5):
                for m in lab.machines:
                    if m.index not in failed:
                        os.utime(m.workdir / "zone-stamp")
        th = threading.Thread(target=refresh, daemon=True)
        th.start()
        try:
            log(f"lab {lab.tag}: {machines} machines, server={lab.server}, K={slots}")
            lab.wait_fib(lambda ms: len(ms) == machines, timeout=60)
            for m in lab.machines:
                lab.wait_agent(m, lambda s: s["state"] == "serving", timeout=30)
            cl = lab.start_clients(duration=120)
            try:
                time.sleep(2)
                victims = lab.machines[:fail]
                t_fail = time.time()
                failed.update(m.index for m in victims)
                log(f"metadata stops reaching {', '.join(m.name for m in victims)}")
                deadline = time.monotonic() + max_age + 3 * 0.5 + 15
                while time.monotonic() < deadline:
                    states = {m.name: (lab.agent_state(m) or {}).get("state") for m in lab.machines}
                    if sum(s == "suspended" for s in states.values()) == min(slots, fail) and \
                            sum(s == "wants-suspend" for s in states.values()) == fail - min(slots, fail):
                        break
                    time.sleep(0.1)
                t_settled = time.time()
                # Hold: the number withdrawn must stay exactly K the whole time.
                fib_counts = []
                susp_counts = []
                t_hold_end = time.monotonic() + settle
                while time.monotonic() < t_hold_end:
                    fib_counts.append(len(lab.machines_in_fib()))
                    sts = [lab.agent_state(m) or {} for m in lab.machines]
                    susp_counts.append(sum(s.get("state") == "suspended" for s in sts))
                    time.sleep(0.2)
                t_end = time.time()
                sts = {m.name: lab.agent_state(m) or {} for m in lab.machines}
                fib = lab.machines_in_fib()
                holders = {}
                for n, s in sts.items():
                    if s.get("slot") is not None:
                        holders[s["slot"]] = n
            finally:
                _stop_clients(cl)
            logs = _client_logs(cl)
        finally:
            stop.set()
            th.join(2)
    k = min(slots, fail)
    suspended = sorted(n for n, s in sts.items() if s.get("state") == "suspended")
    wanting = sorted(n for n, s in sts.items() if s.get("state") == "wants-suspend")
    answered = _answered_by(logs, t_settled, t_end)
    lost = _losses(logs, t_fail, t_end)
    for n in sorted(sts, key=lambda x: int(x[1:])):
        log(f"  {n}: {sts[n].get('state'):14s} slot={sts[n].get('slot')} "
            f"{'in FIB' if n in fib else 'withdrawn'}; {sts[n].get('reason', '')[:110]}")
    log(f"suspended: {suspended}; slots: {holders}; want to suspend but may not: {wanting}")
    log(f"router FIB: {len(fib)} machines; answered clients while settled: {answered}")
    checks = {
        f"exactly {k} suspended": len(suspended) == k,
        f"exactly {k} withdrawn from the router FIB": len(fib) == machines - k,
        f"withdrawn count stayed {k} for {settle:g}s": set(fib_counts) == {machines - k}
        and set(susp_counts) == {k},
        f"{fail - k} failed machines want to suspend and keep answering":
            len(wanting) == fail - k and all(answered.get(n, 0) > 0 for n in wanting),
        "no query lost": not lost,
    }
    result.update(checks=checks, suspended=suspended, wanting=wanting, fib=fib,
                  answered=answered, lost=len(lost), holders=holders)
    return result


