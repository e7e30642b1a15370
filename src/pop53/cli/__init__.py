"""The `pop53` command line: argument parsing only; each subcommand calls into its package.

Every subcommand lives in its own module in this package and exposes
`add_parser(subparsers)` (which registers the subcommand and sets `func`) so that
subcommands can be added without touching this file.
"""
from __future__ import annotations

import sys


def build_parser(argv: list[str] | None = None):
    import argparse
    import importlib
    import pkgutil

    from pop53 import __version__

    parser = argparse.ArgumentParser(prog="pop53", description="anycast authoritative DNS server")
    parser.add_argument("--version", action="version", version=f"pop53 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    if argv and argv[0] in names:
        # each module registers the command of its name: import that one only (`pop53 ctl`
        # starts in a fraction of the time; a reload's command-to-visible time includes it)
        names = [argv[0]]
    for name in names:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        # `pop53 ctl`: the lean client (it hands help and bad options back to full_main)
        from pop53.serve.ctlclient import main as ctl_main
        return ctl_main(argv[1:])
    return full_main(argv)


def full_main(argv: list[str]) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from pop53.errors import Pop53Error

    try:
        rc = args.func(args)
    except Pop53Error as exc:
        print(f"pop53: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
