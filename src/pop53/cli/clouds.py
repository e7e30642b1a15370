"""`pop53 clouds`: unique delegation sets and the cloud plan's checks (see pop53.clouds)."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("clouds", help="delegation sets: allocate, check zones and PoPs, show")
    csub = p.add_subparsers(dest="clouds_cmd", metavar="ACTION", required=True)
    for name, helptext in (("allocate", "give enterprises without one a unique delegation set"),
                           ("check", "check allocations, zones' apex NS and PoPs against the plan"),
                           ("show", "print each enterprise's set, its NS records and cloud usage")):
        c = csub.add_parser(name, help=helptext)
        c.add_argument("-p", "--plan", required=True, metavar="FILE", help="clouds.toml")
        c.add_argument("-s", "--state", required=True, metavar="FILE",
                       help="allocation state (enterprise<TAB>clouds), kept across runs")
        c.set_defaults(func=run)
        if name == "allocate":
            c.add_argument("names", nargs="*", metavar="ENTERPRISE",
                           help="default: every enterprise of the plan")
        if name == "check":
            c.add_argument("-c", "--config", metavar="FILE",
                           help="pop53 config whose zones are checked")
            c.add_argument("--zone", action="append", default=[], metavar="FILE")


def run(args) -> int:
    from pop53.clouds import allocate as al
    from pop53.clouds.plan import load_plan

    plan = load_plan(args.plan)
    state = al.read_state(plan, args.state)
    if args.clouds_cmd == "allocate":
        names = args.names or [e.name for e in plan.enterprises]
        new = al.allocate(plan, state, names)
        state.update(new)
        al.write_state(plan, args.state, state)
        for name, s in new.items():
            print(f"{name}: " + " ".join(plan.clouds[i].ns.to_text() for i in s))
        print(f"{len(new)} new, {len(state)} allocated")
        return 0
    if args.clouds_cmd == "show":
        usage = [0] * len(plan.clouds)
        for name, s in state.items():
            for i in s:
                usage[i] += 1
            print(f"{name}\t" + " ".join(plan.clouds[i].ns.to_text() for i in s))
        print("usage: " + " ".join(f"{c.name}={u}" for c, u in zip(plan.clouds, usage)))
        return 0
    return _check(args, plan, state)


def _check(args, plan, state) -> int:
    from pop53 import config as cfgmod
    from pop53.clouds import check
    from pop53.zone.zonefile import load_zone_file

    targets = [(z, None) for z in args.zone]
    if args.config:
        targets += [(z.file, z.name) for z in cfgmod.load(args.config).zones if z.file]
    zones = [load_zone_file(path, origin) for path, origin in targets]
    problems = (check.check_allocations(plan, state) + check.check_zones(plan, state, zones)
                + check.check_pops(plan))
    for p in problems:
        print(f"pop53 clouds: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {len(state)} delegation sets, {len(zones)} zones, {len(plan.pops)} PoPs")
    return 0
