"""`pop53 check -c FILE`: validate the configuration and every zone, compile them, and exit
non-zero with messages naming the file, line, key or owner."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="validate configuration and zones")
    p.add_argument("-c", "--config", metavar="FILE")
    p.add_argument("--zone", action="append", default=[], metavar="FILE")
    p.add_argument("--dnssec-window", type=float, default=7.0, metavar="DAYS",
                   help="warn about signatures that expire within DAYS (default 7)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pop53 import config as cfgmod
    from pop53.errors import Pop53Error
    from pop53.zone.zonefile import load_zone_file, map_big_files
    from pop53.dnssec.check import check_signatures
    from pop53.dnssec.sigcols import check_columns

    from pop53.zone.imagefile import fixed_mmap_threshold
    fixed_mmap_threshold()      # a big zone's phases take turns in memory (issue 15)
    map_big_files()             # and its file is not held whole while it is scanned
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
            from pop53.serve.dnstap import parse as parse_dnstap
            parse_dnstap(cfg.doc, args.config, cfg.identity)
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
            z = zones[-1]
            # a scanner-read zone is checked on its record columns, never as a dnspython zone
            # (a 1M-name signed zone: seconds, not minutes and gigabytes; issue 12)
            found = (check_columns(z.columns, z.origin, window_days=args.dnssec_window)
                     if z.columns is not None else
                     check_signatures(z.zone, z.origin, window_days=args.dnssec_window))
            for finding in found:
                print(f"pop53 check: {path}: {finding}", file=sys.stderr)
                errors += finding.level == "error"
        except Pop53Error as exc:
            print(f"pop53 check: {exc}", file=sys.stderr)
            errors += 1
    z = None        # the last zone is not held through the compile but by `zones` (issue 15)
    image = None
    if not errors and zones:
        try:
            n = len(zones)
            image = _compile(zones, keep=bool(args.config and cfg.mapping is not None))
            print(f"ok: {n} zone(s) compile to {len(image)} bytes")
        except Pop53Error as exc:
            print(f"pop53 check: {exc}", file=sys.stderr)
            errors += 1
    if args.config and cfg.mapping is not None:
        errors += _check_mapping(cfg, zones if not errors else [], image if not errors else None)
    return 1 if errors else 0


def _compile(zones: list, keep: bool):
    """The image of `zones`, mapped: compiled straight to a temp file, never held in memory
    beside the arrays it is made from (issue 15), then checked in full (every node, name and
    RDATA) as an in-memory compile is.  Unless `keep` (the mapping checks read them), the
    zones' records are freed as the build reads them and the list is emptied before the image
    is mapped."""
    import os
    import tempfile
    from pop53.zone.imagefile import compile_to_file
    from pop53.zone.images import load_image

    fd, path = tempfile.mkstemp(prefix="pop53-check-", suffix=".img")
    os.close(fd)
    try:
        compile_to_file(zones, path, consume=not keep)
        if not keep:
            zones.clear()
        return load_image(path, full_check=True)
    finally:
        os.unlink(path)


def _check_mapping(cfg, zones, image) -> int:
    """Map files (file:line errors), region coverage, static data at mapped names, and for
    zones signed online (dnssec_keys) the key files and the mapped names' chain entries."""
    from pop53.dnssec import online
    from pop53.errors import Pop53Error
    from pop53.mapping.config import check_zones
    from pop53.mapping.service import load_tables
    from pop53.mapping.snapshot import SnapshotBuilder

    mcfg = cfg.mapping
    try:
        signer = online.from_config(cfg, image)     # keys chosen from the zone served
        tables = load_tables(mcfg)
        SnapshotBuilder(mcfg, tables).build(lambda t: mcfg.targets[t].up, 0, signer)
        check_zones(mcfg, zones, {z.origin for z in signer.zones} if signer else ())
        if signer is not None and image is not None:
            online.check_mapped_names(image, mcfg, signer)
    except Pop53Error as exc:
        print(f"pop53 check: {exc}", file=sys.stderr)
        return 1
    for name, t in tables.items():
        print(f"ok: map {name}: {t.prefixes} prefixes, {len(t.lo4)} + {len(t.lo6)} ranges")
    print(f"ok: {len(mcfg.mapped)} mapped name(s), {len(mcfg.targets)} target(s)")
    return 0
