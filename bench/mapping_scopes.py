"""What each mapping peer answers and which ECS scope it returns, against the brute-force oracle:
``python -m bench.mapping_scopes`` writes bench/results/mapping_scopes.md.

The corpus is the differential one (tests/support/mapping_data.corpus_maps/corpus_queries: the
hand-picked maps and three seeded random maps, ECS of every source length at every prefix edge).
For every query with ECS, the reply's SCOPE PREFIX-LENGTH is compared with k*, the shortest
aligned block around the looked-up address that has one answer (RFC 7871 §7.2.1):

- ``scope < k*`` (too wide) is unsafe: a resolver caches the answer for the whole block and
  hands it to clients that should get another answer (RFC 7871 §7.3.1);
- ``scope > k*`` (too narrow) is safe but splinters resolver caches;
- SOURCE PREFIX-LENGTH 0 must be answered with scope 0 (§7.1.2) and counts as a query like the
  others (k* = 0).
"""
from __future__ import annotations

import argparse
import ipaddress
import importlib.util
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.mapping_report import NAMES  # noqa: E402
from tests.support import mapping_data as md  # noqa: E402
from tests.support import mapping_peers as mp  # noqa: E402

#: Single queries shown side by side: (map, qtype, ECS) with what each one probes.
SHOWCASE = [
    ("mixed16", "A", ("20.1.0.0", 16), "source /16 over a mixed /16"),
    ("mixed16", "A", ("20.1.7.9", 32), "/32 source inside a /24 entry"),
    ("mixed16", "A", ("20.0.0.0", 8), "default region beside mapped space"),
    ("unmatched", "A", ("30.0.1.0", 24), "no entry matches, others nearby"),
    ("unmatched", "A", ("30.0.0.0", 16), "/16 source whose first /24 is mapped"),
    ("nested", "A", ("10.128.0.7", 32), "/32 entry in four nested levels"),
    ("nested", "A", ("10.0.0.0", 8), "/8 entry with more specific entries"),
    ("nested", "A", ("0.0.0.0", 0), "SOURCE 0 (RFC 7871 §7.1.2)"),
    ("v6", "AAAA", ("2a00:1:2:3::", 56), "IPv6 /56 source over a /64 entry"),
    ("v6", "AAAA", ("2a00:1:2:3::1", 128), "IPv6 /128 entry"),
    ("v6", "AAAA", ("2a00:5::", 32), "IPv6 default beside mapped space"),
]


#: The rule docs/mapping-peers.md states for each server, checked on every ECS query.
RULES = {
    "gdnsd": "scope = k*",
    "knot-geoip": "scope = length of the longest entry covering the looked-up address, 0 if "
                  "none (or SOURCE 0)",
    "pdns-geoip": "scope = the longest entry of the ECS family in the map; answer = the longest "
                  "entry covering the whole source prefix",
    "pdns-lua": "scope = SOURCE PREFIX-LENGTH",
    "pop53": "scope = k*",
}


def rule_holds(kind: str, m: md.MapSpec, spec: md.MappingSpec, q: md.Query, reply,
               k: int) -> bool:
    addr, length = q.ecs
    a = md.lookup_address(addr, length)
    if kind == "knot-geoip":
        lens = [n.prefixlen for n, _ in m.entries if a in n]
        return reply.scope == (max(lens) if lens and length else 0)
    if kind == "pdns-geoip":
        longest = max([n.prefixlen for n, _ in m.entries if n.version == a.version], default=0)
        net = ipaddress.ip_network(f"{a}/{length}")
        cover = [(n.prefixlen, r) for n, r in m.entries
                 if n.version == a.version and n.prefixlen <= length and net.subnet_of(n)]
        region = (md.Oracle(m).region("127.0.0.1") if length == 0 else
                  max(cover)[1] if cover else m.default)
        fam = 4 if q.qtype == "A" else 6
        return (reply.scope == longest
                and reply.addresses == spec.answer(spec.mapped[0], region, fam))
    if kind == "pdns-lua":
        return reply.scope == length
    return reply.scope == k


def survey(kind: str) -> tuple[Counter, dict]:
    cls = mp.MAPPING_PEERS[kind]
    counts: Counter = Counter()
    shown = {}
    for name, m in md.corpus_maps().items():
        spec = md.simple_spec(m)
        oracle = md.Oracle(m)
        qname = spec.mapped[0].name
        extra = [md.Query(q, e) for (mn, q, e, _) in SHOWCASE if mn == name]
        with cls(spec) as srv:
            for q in md.corpus_queries(name, m) + extra:
                region, k = oracle.expect(q.ecs)
                want = spec.answer(spec.mapped[0], region, 4 if q.qtype == "A" else 6)
                r = mp.ask(srv, qname, q.qtype, q.ecs)
                got_region = next((rg for rg in m.regions() if spec.answer(
                    spec.mapped[0], rg, 4 if q.qtype == "A" else 6) == r.addresses), "?")
                if (name, q.qtype, q.ecs) in {(a, b, c) for a, b, c, _ in SHOWCASE}:
                    shown[(name, q.qtype, q.ecs)] = (got_region, r.scope, region, k)
                    continue
                counts["queries"] += 1
                if r.addresses != want:
                    counts["wrong answer"] += 1
                if q.ecs is None:
                    if r.scope is not None:
                        counts["ECS in reply to a query without"] += 1
                    continue
                counts["with ECS"] += 1
                counts["rule holds"] += rule_holds(kind, m, spec, q, r, k)
                if r.scope is None:
                    counts["no ECS option echoed"] += 1
                elif r.scope == k:
                    counts["scope = k*"] += 1
                elif r.scope < k:
                    counts["scope < k* (too wide, unsafe)"] += 1
                else:
                    counts["scope > k* (too narrow)"] += 1
                if q.ecs[1] == 0 and r.scope not in (0, None):
                    counts["SOURCE 0 answered with scope > 0"] += 1
    return counts, shown


def markdown(results: dict) -> str:
    kinds = list(results)
    L = ["# ECS scopes of the mapping peers against the oracle\n",
         "Generated by `python -m bench.mapping_scopes` (see its docstring and "
         "docs/mapping-peers.md). Corpus: `tests/support/mapping_data.corpus_maps()` / "
         "`corpus_queries()`: 4 hand-picked and 3 seeded random maps, ECS of every source "
         "length at every prefix edge (IPv6 sources /16 and longer), A and AAAA, and queries "
         "without ECS. k* = the shortest aligned block around the looked-up address with one "
         "answer.\n"]
    keys = ["queries", "wrong answer", "with ECS", "scope = k*", "scope < k* (too wide, unsafe)",
            "scope > k* (too narrow)", "SOURCE 0 answered with scope > 0",
            "no ECS option echoed", "ECS in reply to a query without", "rule holds"]
    L.append("| | " + " | ".join(NAMES[k] for k in kinds) + " |")
    L.append("|---" * (len(kinds) + 1) + "|")
    for key in keys:
        L.append(f"| {key} | " + " | ".join(f"{results[k][0].get(key, 0):,}" for k in kinds)
                 + " |")
    L.append("\n'rule holds': the ECS queries for which the server's rule, as stated in "
             "docs/mapping-peers.md, predicts its reply exactly:\n")
    L += [f"- {NAMES[k]}: {RULES[k]}" for k in kinds]
    L.append("\n## Single queries (answer region / scope; oracle in the first column)\n")
    L.append("| map | query | probes | oracle | " + " | ".join(NAMES[k] for k in kinds) + " |")
    L.append("|---" * (len(kinds) + 4) + "|")
    for name, qt, ecs, what in SHOWCASE:
        row = [name, f"{qt} {ecs[0]}/{ecs[1]}", what]
        ref = None
        cells = []
        for k in kinds:
            got = results[k][1].get((name, qt, ecs))
            if got is None:
                cells.append("–")
                continue
            g_region, g_scope, region, kstar = got
            ref = f"{region} /{kstar}"
            ok = "" if (g_region == region and g_scope == kstar) else (
                " ✗" if g_region != region or (g_scope is not None and g_scope < kstar)
                else " (narrow)")
            cells.append(f"{g_region} /{g_scope}{ok}")
        L.append("| " + " | ".join(row + [ref or "–"] + cells) + " |")
    L.append("\n✗: wrong answer or a scope wider than k* (unsafe); (narrow): correct but "
             "longer than needed.")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mapping_scopes",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=lambda s: s.split(","),
                   default=["gdnsd", "knot-geoip", "pdns-geoip"] + (
                       ["pop53"] if importlib.util.find_spec("pop53") and
                       _has_mapping() else []))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "mapping_scopes.md")
    a = p.parse_args(argv)
    results = {}
    for kind in a.servers:
        print(f"surveying {kind} ...", flush=True)
        results[kind] = survey(kind)
    a.out.write_text(markdown(results))
    print(f"wrote {a.out}")
    return 0


def _has_mapping() -> bool:
    try:
        return importlib.util.find_spec("pop53.mapping") is not None
    except ModuleNotFoundError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
