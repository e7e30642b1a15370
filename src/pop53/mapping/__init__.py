"""Mapped answers (issue 10): the client's network (ECS or source address) picks the answer.

mapfile.py   map files -> disjoint ranges (RegionTable), file:line errors
config.py    [[map]], [[target]], [[mapped]] of the TOML configuration
snapshot.py  liveness + fallback -> merged per-answer tables -> the immutable MapSnapshot
service.py   the live state in a server: load, reload, target up/down, publish
The data plane is ext/mapping.pxi.  The format is documented in docs/mapping.md.
"""
