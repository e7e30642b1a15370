"""`pop53 ctl COMMAND`: drive a running server through its control socket.  The usual forms
never come here: `python3 -m pop53 ctl` and `pop53-ctl` take the lean path
(pop53.serve.ctlclient.main), which hands over help, bad options and zone-flush."""
from __future__ import annotations



def add_parser(sub) -> None:
    from pop53.serve.ctlclient import COMMANDS

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
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a reply (reload waits until it is done)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pop53.serve.ctlclient import RELOADS, NoReply, emit, send
    from pop53.errors import Pop53Error

    command = " ".join([args.command, *args.zone])
    try:
        if args.command == "zone-flush":
            from pop53.xfr.flush import command as flush_command
            command = flush_command(args.zone, args.output)
        # a reload replies when it is done (a big zone compiles for minutes; `ctl status`
        # shows its progress meanwhile); anything else answers at once
        reply = send(args.socket, command, None if args.command in RELOADS else args.timeout)
    except NoReply as exc:
        raise Pop53Error(f"{exc} from {args.socket}; the server is up (`pop53 ctl status` "
                         "shows what it is doing)") from None
    except OSError as exc:
        raise Pop53Error(f"cannot reach the control socket {args.socket}: {exc.strerror or exc}") from None
    emit(command, reply, args.json)
    return 0 if reply.get("ok") else 1
