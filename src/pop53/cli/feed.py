"""`pop53 feed keygen --out DIR NAME`: an Ed25519 signing key pair for the metadata feed."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("feed", help="metadata feed keys (keygen)")
    fsub = p.add_subparsers(dest="feed_cmd", metavar="ACTION", required=True)
    k = fsub.add_parser("keygen", help="make DIR/NAME.key (private, 0600) and DIR/NAME.pub")
    k.add_argument("--out", required=True, metavar="DIR")
    k.add_argument("name", metavar="NAME")
    k.set_defaults(func=run)


def run(args) -> int:
    from pop53.feed.message import keygen

    priv, pub, kid = keygen(args.out, args.name)
    print(f"{priv}\n{pub}\nkey id {kid} (list {pub} in [feed] trusted_keys; revoke by this id)")
    return 0
