"""`pop53 agent`: the monitoring agent (run, check, status, drain, undrain)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("agent", help="monitoring agent: probe, self-suspend, status",
                              description="The on-machine monitoring agent (paper §4.2.1).")
    sub = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    r = sub.add_parser("run", help="run the agent until SIGTERM")
    r.add_argument("--config", required=True, type=Path, help="agent TOML configuration")
    r.add_argument("--rounds", type=int, default=None, help="stop after N probe rounds")
    r.set_defaults(func=_run)

    c = sub.add_parser("check", help="validate the config and run one probe round (no changes)")
    c.add_argument("--config", required=True, type=Path)
    c.set_defaults(func=_check)

    s = sub.add_parser("status", help="show the state machine, the slot held and why")
    _where(s)
    s.add_argument("--json", action="store_true", help="print the raw state as JSON")
    s.set_defaults(func=_status)

    d = sub.add_parser("drain", help="maintenance: withdraw on purpose (needs no slot)")
    _where(d)
    d.add_argument("--reason", default="operator", help="recorded in the status")
    d.add_argument("--wait", type=float, default=0.0,
                   help="wait up to this many seconds until the agent reports drained")
    d.set_defaults(func=_drain, drain=True)

    u = sub.add_parser("undrain", help="end maintenance: announce again")
    _where(u)
    u.add_argument("--wait", type=float, default=0.0)
    u.set_defaults(func=_drain, drain=False)


def _where(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", type=Path, help="agent TOML configuration (for its state_dir)")
    g.add_argument("--state-dir", type=Path, help="the agent's state directory")


def _state_dir(args) -> Path:
    if args.state_dir:
        return args.state_dir
    from pop53.anycast.agent_config import load_config

    return Path(load_config(args.config).state_dir)


def _run(args) -> int:
    from pop53.anycast.agent import run_agent
    from pop53.anycast.agent_config import load_config

    return run_agent(load_config(args.config), max_rounds=args.rounds)


def _check(args) -> int:
    from pop53.anycast.agent_config import load_config
    from pop53.anycast.probe import Prober

    cfg = load_config(args.config)
    res = Prober(cfg).run()
    print(f"{cfg.name}: {'pass' if res.ok else 'FAIL'} ({res.queries} queries to {cfg.server}, "
          f"slowest {res.max_rtt_ms:.1f} ms)")
    for f in res.failures:
        print(f"  {f}")
    return 0 if res.ok else 1


def _status(args) -> int:
    from pop53.anycast.agent import format_status, read_status

    st = read_status(_state_dir(args))
    if args.json:
        json.dump(st, sys.stdout, indent=1)
        print()
    else:
        print(format_status(st))
    return 0


def _drain(args) -> int:
    from pop53.anycast.agent import read_status

    d = _state_dir(args)
    f = d / "drain"
    before = time.time()
    if args.drain:
        d.mkdir(parents=True, exist_ok=True)
        f.write_text(args.reason + "\n")
    else:
        f.unlink(missing_ok=True)
    if args.wait > 0:
        want = "drained" if args.drain else "serving"
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            try:
                st = read_status(d)
            except Exception:  # noqa: BLE001 - keep waiting for the agent to write
                st = None
            if st and st.get("updated", 0) >= before and (
                    st["state"] == want or (not args.drain and st["state"] != "drained")):
                print(f"{st['name']}: {st['state']} ({st['reason']})")
                return 0
            time.sleep(0.05)
        print(f"pop53: agent did not report {want} within {args.wait}s", file=sys.stderr)
        return 1
    print(f"{'drain requested' if args.drain else 'drain removed'}: {f}")
    return 0
