"""`pop53 ctl COMMAND`: drive a running server through its control socket."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    from pop53.serve.control import COMMANDS

    p = sub.add_parser("ctl", help="control a running server (reload [ZONE], status, zones, "
                                   "stats, zone-status [ZONE], zone-reload ZONE, zone-notify "
                                   "ZONE, zone-refresh ZONE, zone-retransfer ZONE, zone-flush "
                                   "[ZONE] [-o DIR], xfr, stop, target NAME up|down, mapping)")
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("zone", nargs="*", help="the zone, for the zone-* commands and reload; "
                                           "NAME up|down for target")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="zone-flush: write the zone files here (default <[server] state>/zone)")
    p.add_argument("-s", "--socket", default="/run/pop53.sock", help="control socket path")
    p.add_argument("--json", action="store_true", help="the server's JSON reply (for scripts)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pop53.serve.control import format_reply, send
    from pop53.errors import Pop53Error

    try:
        command = " ".join([args.command, *args.zone])
        if args.command == "zone-flush":
            from pop53.xfr.flush import command
            command = command(args.zone, args.output)
        reply = send(args.socket, command)
    except OSError as exc:
        raise Pop53Error(f"cannot reach the control socket {args.socket}: {exc.strerror or exc}") from None
    if args.json:
        json.dump(reply, sys.stdout, indent=2)
        print()
    else:
        print(format_reply(command, reply), file=sys.stdout if reply.get("ok") else sys.stderr)
    return 0 if reply.get("ok") else 1
