"""`pop53 health -c FILE`: probe targets and publish their liveness to the feed."""
from __future__ import annotations

import asyncio
import logging


def add_parser(sub) -> None:
    p = sub.add_parser("health", help="probe targets (tcp, http, dns) and publish liveness")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--rounds", type=int, default=None, help="stop after N probe rounds")
    p.set_defaults(func=run)


def run(args) -> int:
    from pop53.feed.health import load_config, run as run_health

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.config)
    states = asyncio.run(run_health(cfg, rounds=args.rounds))
    print(" ".join(f"{t}={'up' if up else 'down'}" for t, up in sorted(states.items())))
    return 0
