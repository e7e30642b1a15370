"""`pop53 lab`: a PoP in network namespaces, the §4.1 failover experiment and failure scenarios.

Every action builds the lab, runs, and tears it down (namespaces deleted, every process stopped
by PID), also on errors and Ctrl-C.  Needs root.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("lab", help="PoP lab in network namespaces (root)",
                              description="A PoP (router + machines + clients) in network "
                              "namespaces; anycast failover experiments (paper §4.1, §4.2).")
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    u = sub.add_parser("up", help="build a PoP, show who answers, keep it for --duration s")
    u.add_argument("--machines", type=int, default=3)
    u.add_argument("--clients", type=int, default=2)
    u.add_argument("--duration", type=float, default=0.0)
    u.add_argument("--signal", choices=("route", "address"), default="route")
    u.add_argument("--service", action="append", default=[], metavar="PREFIX",
                   help="a further anycast prefix (another cloud) every machine announces")
    u.add_argument("--plan", metavar="FILE", help="cloud plan (clouds.toml): refuse a PoP that "
                   "would advertise more clouds than its max_per_pop")
    u.add_argument("--pop", default="lab", help="this PoP's name in the plan")
    u.set_defaults(func=_up)

    f = sub.add_parser("failover", help="§4.1: withdraw/announce machines in turn; CSV + CDF")
    f.add_argument("--machines", type=int, default=2)
    f.add_argument("--rounds", type=int, default=3)
    f.add_argument("--out", type=Path, required=True, help="directory for failover.csv/.png")
    f.add_argument("--clients", type=int, default=4)
    f.add_argument("--hold", type=float, default=3.0, help="seconds between events")
    f.add_argument("--signal", choices=("route", "address"), default="address",
                   help="address: withdraw removes the address (queries in flight are lost, like "
                   "the paper's withdraw); route: only the signal route goes")
    f.add_argument("--no-bfd", action="store_true")
    f.set_defaults(func=_failover)

    k = sub.add_parser("kill-server", help="kill a machine's DNS server; the agent withdraws it")
    k.add_argument("--machines", type=int, default=3)
    k.set_defaults(func=_kill)

    z = sub.add_parser("freeze-bird", help="SIGSTOP a machine's BIRD (and server); BFD or the "
                       "hold timer bounds the outage")
    z.add_argument("--machines", type=int, default=2)
    z.add_argument("--no-bfd", action="store_true", help="rely on the BGP hold timer only")
    z.add_argument("--hold-time", type=int, default=3)
    z.set_defaults(func=_freeze)

    m = sub.add_parser("mass-failure", help="fail many machines at once; only K suspend")
    m.add_argument("--machines", type=int, default=12)
    m.add_argument("--fail", type=int, default=10)
    m.add_argument("--slots", type=int, default=3, help="K, concurrent suspensions allowed")
    m.set_defaults(func=_mass)


def _need_root() -> None:
    from pop53.lab.process import LabError

    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces: run as root")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _report(checks: dict[str, bool]) -> int:
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


def _up(args) -> int:
    from pop53.lab.pop import Lab, LabConfig
    from pop53.lab.process import SERVICE4, SERVICE6

    _need_root()
    cfg = LabConfig(machines=args.machines, clients=args.clients, signal=args.signal,
                    agents=False, etcd=False, services=tuple(args.service),
                    plan=args.plan, pop=args.pop)
    with Lab(cfg) as lab:
        fib = lab.wait_fib(lambda ms: len(ms) == args.machines, timeout=60)
        _log(f"lab {lab.tag} up (server={lab.server}); router FIB {SERVICE4}: {fib}, "
             f"{SERVICE6}: {lab.machines_in_fib(SERVICE6)}")
        for c in lab.clients:
            seen = sorted({lab.identity_in(c, SERVICE4.split('/')[0]) or "-" for _ in range(8)})
            _log(f"client {c}: answered by {seen}")
        if args.duration > 0:
            _log(f"keeping the lab for {args.duration:g}s (namespaces {lab.router_ns} ...)")
            time.sleep(args.duration)
    _log("lab torn down")
    return 0


def _failover(args) -> int:
    from pop53.lab.experiments import run_failover

    _need_root()
    res = run_failover(machines=args.machines, rounds=args.rounds, out=args.out,
                       clients=args.clients, hold=args.hold, signal_mode=args.signal,
                       bfd=not args.no_bfd, log=_log)
    for kind, s in res["summary"].items():
        print(f"{kind:9s} n={s['n']:4d}  median {s['median_ms']:.0f} ms  p90 {s['p90_ms']:.0f} ms"
              f"  max {s['max_ms']:.0f} ms  <1s {s['under_1s'] * 100:.0f}%  lost queries "
              f"{s['lost']}")
    print(f"wrote {args.out / 'failover.csv'} and {args.out / 'failover.png'}")
    return 0


def _kill(args) -> int:
    from pop53.lab.experiments import run_kill_server

    _need_root()
    return _report(run_kill_server(machines=args.machines, log=_log)["checks"])


def _freeze(args) -> int:
    from pop53.lab.experiments import run_freeze_bird

    _need_root()
    return _report(run_freeze_bird(machines=args.machines, bfd=not args.no_bfd,
                                   hold_time=args.hold_time, log=_log)["checks"])


def _mass(args) -> int:
    from pop53.lab.experiments import run_mass_failure

    _need_root()
    return _report(run_mass_failure(machines=args.machines, fail=args.fail, slots=args.slots,
                                    log=_log)["checks"])
