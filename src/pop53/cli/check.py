"""`pop53 check -c FILE`: validate the configuration and every zone, compile them, and exit
non-zero with messages naming the file, line, key or owner."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="validate configuration and zones")
    p.add_argument("-c", "--config", metavar="FILE")
    p.add_argument("--zone", action="append", default=[], metavar="FILE")
    p.set_defaults(func=run)


def run(args) -> int:
    from pop53 import config as cfgmod
    from pop53.zone.compiler import compile_zone_data
    from pop53.errors import Pop53Error
    from pop53.zone.zonefile import load_zone_file

    errors = 0
    zones = []
    if args.config:
        try:
            cfg = cfgmod.load(args.config)
        except Pop53Error as exc:
            print(f"pop53 check: {exc}", file=sys.stderr)
            return 1
        try:
            from pop53.xfr.config import parse_xfr_config
            parse_xfr_config(cfg.doc, args.config)
        except Pop53Error as exc:
            print(f"pop53 check: {exc}", file=sys.stderr)
            errors += 1
        targets = [(z.file, z.name) for z in cfg.zones if z.file]
        include_dir = cfg.zone_dir
    else:
        targets = [(z, None) for z in args.zone]
        include_dir = None
    if not targets and not args.config:
        print("pop53 check: give -c FILE or --zone FILE", file=sys.stderr)
        return 2
    for path, origin in targets:
        try:
            zones.append(load_zone_file(path, origin, include_dir))
            print(f"ok: {path}: zone {zones[-1].origin} serial {zones[-1].serial}")
        except Pop53Error as exc:
            print(f"pop53 check: {exc}", file=sys.stderr)
            errors += 1
    if not errors and zones:
        try:
            image = compile_zone_data(zones)
            print(f"ok: {len(zones)} zone(s) compile to {len(image)} bytes")
        except Pop53Error as exc:
            print(f"pop53 check: {exc}", file=sys.stderr)
            errors += 1
    return 1 if errors else 0
