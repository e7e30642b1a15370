"""`pop53 ctl COMMAND`: drive a running server through its control socket."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    from pop53.serve.control import COMMANDS

    p = sub.add_parser("ctl", help="control a running server (reload, status, zones, stats, "
                                   "xfr, refresh ZONE, retransfer ZONE, target NAME up|down, "
                                   "mapping)")
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("zone", nargs="*", help="the zone, for refresh and retransfer; "
                                           "NAME up|down for target")
    p.add_argument("-s", "--socket", default="/run/pop53.sock", help="control socket path")
    p.add_argument("--json", action="store_true", help="the server's JSON reply (for scripts)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pop53.serve.control import format_reply, send
    from pop53.errors import Pop53Error

    try:
        reply = send(args.socket, " ".join([args.command, *args.zone]))
    except OSError as exc:
        raise Pop53Error(f"cannot reach the control socket {args.socket}: {exc.strerror or exc}") from None
    command = f"{args.command} {args.zone}" if args.zone else args.command
    if args.json:
        json.dump(reply, sys.stdout, indent=2)
        print()
    else:
        print(format_reply(command, reply), file=sys.stdout if reply.get("ok") else sys.stderr)
    return 0 if reply.get("ok") else 1
