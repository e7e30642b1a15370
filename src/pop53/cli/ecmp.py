"""``pop53 ecmp``: check the ECMP / reuseport emulator against the running kernel
(pop53.ecmp.verify), and print what the models predict (pop53.ecmp.compare)."""
from __future__ import annotations

import argparse

from pop53.ecmp.verify import DEFAULT_FIELDS, DEFAULT_SEED


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ecmp", help="ECMP hash emulator: verify against the kernel, "
                                           "simulate load and disruption")
    sub = p.add_subparsers(dest="ecmp_command", metavar="ACTION")
    v = sub.add_parser("verify", help="build a namespace lab and compare the emulator's "
                                      "predictions with the kernel's choices")
    v.add_argument("--flows", type=int, default=10000, help="random flows per check "
                   "(default 10000)")
    v.add_argument("--machines", type=int, default=4, help="machines behind the router")
    v.add_argument("--workers", type=int, default=4, help="reuseport sockets per machine")
    v.add_argument("--policy", type=int, action="append", choices=[0, 1, 2, 3],
                   help="hash policy to check (repeatable; default 0, 1 and 3)")
    v.add_argument("--family", type=int, action="append", choices=[4, 6],
                   help="address family (repeatable; default both)")
    v.add_argument("--fields", type=lambda s: int(s, 0), default=DEFAULT_FIELDS,
                   help="fib_multipath_hash_fields for policy 3 (default 0x37)")
    v.add_argument("--seed", type=lambda s: int(s, 0), default=DEFAULT_SEED,
                   help="fib_multipath_hash_seed (non-zero)")
    v.add_argument("--weights", type=lambda s: [int(x) for x in s.split(",")],
                   help="comma-separated next-hop weights, one per machine; 0 withdraws "
                        "that machine's route (default all 1)")
    v.add_argument("--server", choices=["standin", "pop53"], default="standin",
                   help="who answers in the machines: the stand-in (names machine and "
                        "worker; default) or `pop53 serve --identity` (names the machine)")
    v.add_argument("--no-packets", action="store_true", help="only `ip route get`")
    v.add_argument("--rng", type=int, default=None, help="seed for the random flows")
    v.set_defaults(func=cmd_verify)
    s = sub.add_parser("simulate", help="load, imbalance and moved share of the models")
    s.add_argument("--flows", type=int, default=1_000_000)
    s.add_argument("--machines", type=int, default=8)
    s.add_argument("--policy", type=int, default=1, choices=[0, 1, 3])
    s.add_argument("--seed", type=lambda x: int(x, 0), default=DEFAULT_SEED)
    s.add_argument("--fixed-share", type=float, default=0.1,
                   help="share of resolvers with a fixed source port")
    s.add_argument("--rng", type=int, default=1)
    s.set_defaults(func=cmd_simulate)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])



def cmd_verify(args: argparse.Namespace) -> int:
    from pop53.ecmp.verify import verify

    agree, total = verify(flows=args.flows, machines=args.machines, workers=args.workers,
                          policies=tuple(args.policy or (0, 1, 3)),
                          families=tuple(args.family or (4, 6)), fields=args.fields,
                          seed=args.seed, packets=not args.no_packets, weights=args.weights,
                          server=args.server, rng=args.rng)
    print(f"{agree} of {total} flows agree")
    return 0 if agree == total else 1




def cmd_simulate(args: argparse.Namespace) -> int:
    from pop53.ecmp.compare import compare_models

    compare_models(machines=args.machines, flows=args.flows, policy=args.policy, seed=args.seed,
                   fixed_share=args.fixed_share, rng=args.rng)
    return 0
