"""`pop53 query`: answer one query in-process from zone files (no sockets), printed like dig."""
from __future__ import annotations

import importlib.resources


def add_parser(sub) -> None:
    p = sub.add_parser("query", help="answer one query in-process from zone files")
    p.add_argument("name")
    p.add_argument("type", nargs="?", default="A")
    p.add_argument("--zone", action="append", default=[], metavar="FILE", help="zone file (repeatable)")
    p.add_argument("--example", action="store_true", help="use the embedded example zone")
    p.add_argument("--class", dest="qclass", default="IN")
    p.add_argument("--identity", default="", help="NSID / id.server identity")
    p.add_argument("--no-edns", action="store_true")
    p.add_argument("--tcp", action="store_true", help="answer as over TCP (no truncation)")
    p.set_defaults(func=run)


def example_zone_path() -> str:
    return str(importlib.resources.files("pop53") / "data" / "example.com.zone")


def run(args) -> int:
    import dns.message
    import dns.rcode

    from pop53 import Responder
    from pop53 import answer
    from pop53 import compile_zones
    from pop53.errors import Pop53Error

    zones = list(args.zone) + ([example_zone_path()] if args.example else [])
    if not zones:
        raise Pop53Error("give --zone FILE or --example")
    image = compile_zones(zones)
    q = dns.message.make_query(args.name, args.type, rdclass=args.qclass,
                               use_edns=False if args.no_edns else 0)
    wire = answer(image, q.to_wire(), ("127.0.0.1", 0), tcp=args.tcp,
                  responder=Responder(identity=args.identity))
    if wire is None:
        print(";; dropped")
        return 1
    print(dns.message.from_wire(wire).to_text())
    return 0
