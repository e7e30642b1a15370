"""Subcommands of `pop53`: one module each, each with `add_parser(subparsers)`."""
