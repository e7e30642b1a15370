"""`pop53 publish`: sign and publish to the metadata feed (NATS JetStream).

    pop53 publish --server nats://HOST:PORT --key DIR/NAME.key target NAME up|down
    pop53 publish --server ... --key ... map NAME FILE [-c pop53.toml] [--delta-max N]
    pop53 publish --server ... --key ... resolvers FILE [--name known]
    pop53 publish --server ... --key ... heartbeat [--every SECONDS --count N]
"""
from __future__ import annotations

import asyncio
import socket


def add_parser(sub) -> None:
    p = sub.add_parser("publish", help="sign and publish liveness or heartbeats to the feed")
    p.add_argument("--server", action="append", required=True, metavar="URL")
    p.add_argument("--key", required=True, metavar="FILE")
    p.add_argument("--sender", default=socket.gethostname())
    p.add_argument("--stream", default="pop53", help="the stream name subscribers follow")
    p.add_argument("--prefix", default="pop53", help="NATS subject prefix")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    t = what.add_parser("target", help="a target's liveness")
    t.add_argument("name")
    t.add_argument("state", choices=("up", "down"))
    m = what.add_parser("map", help="a map (checked here as the servers will check it): a "
                        "delta against the current snapshot when the change is small")
    m.add_argument("name")
    m.add_argument("file")
    m.add_argument("--delta-max", type=int, default=1000, metavar="N",
                   help="send a delta when at most N prefixes change (0: always the full map)")
    m.add_argument("-c", "--config", metavar="FILE", help="a server config: check the map "
                   "against its [[map]] (default region, declared regions) as well")
    r = what.add_parser("resolvers", help="the fleet's known-resolver table (the format of "
                        "[scoring] known_resolvers; checked here as the servers will)")
    r.add_argument("file")
    r.add_argument("--name", default="known", help="the table's name (one per name)")
    h = what.add_parser("heartbeat", help="the feed's heartbeat (subscribers go stale without it)")
    h.add_argument("--every", type=float, default=0.0, metavar="SECONDS")
    h.add_argument("--count", type=int, default=1)
    p.set_defaults(func=run)


def run(args) -> int:
    from pop53.feed.message import NAME_RE, read_private
    from pop53.feed.publisher import Publisher, target_payload
    from pop53.errors import ConfigError

    pub = Publisher(args.server, read_private(args.key), stream=args.stream, prefix=args.prefix,
                    sender=args.sender)
    if args.what == "target":
        if not NAME_RE.match(args.name):
            raise ConfigError(f"invalid target name {args.name!r}")
        seq = pub.send_sync("target", args.name, target_payload(args.state == "up"))
        print(f"published target {args.name} {args.state} (stream sequence {seq})")
        return 0

    async def beats():
        for i in range(args.count):
            await pub.send("heartbeat", "")
            if i + 1 < args.count:
                await asyncio.sleep(args.every)

    if args.what == "map":
        data = check_map(args.name, args.file, args.config)
        kind, size, seq = asyncio.run(pub.send_map(args.name, data, max_changes=args.delta_max))
        what = "map" if kind == "map" else "map delta"
        print(f"published {what} {args.name} ({size} bytes, stream sequence {seq})")
        return 0
    if args.what == "resolvers":
        from pop53.scoring.known import read_known
        if not NAME_RE.match(args.name):
            raise ConfigError(f"invalid name {args.name!r}")
        known = read_known(args.file)
        with open(args.file, "rb") as f:
            data = f.read()
        seq = pub.send_sync("resolvers", args.name, data)
        print(f"published known resolvers {args.name} ({len(known.v4)} IPv4 /24s, "
              f"{len(known.v6)} IPv6 /56s; stream sequence {seq})")
        return 0
    asyncio.run(beats())
    print(f"published {args.count} heartbeat(s)")
    return 0


def check_map(name: str, path: str, config: str | None) -> bytes:
    """The map file's bytes, parsed and swept exactly as a server will (errors name
    file:line); with a server config, also against that [[map]]'s default and regions."""
    from pop53.errors import ConfigError
    from pop53.feed.message import NAME_RE
    from pop53.mapping.mapfile import compile_map_bytes

    if not NAME_RE.match(name):
        raise ConfigError(f"invalid map name {name!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    default, declared = "default", None
    if config:
        from pop53 import config as cfgmod
        mcfg = cfgmod.load(config).mapping
        m = mcfg.maps.get(name) if mcfg is not None else None
        if m is None:
            raise ConfigError(f"no [[map]] named {name!r}", file=config)
        default, declared = m.default, m.regions
    compile_map_bytes(data, path, default, declared)
    return data
