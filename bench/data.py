"""Seeded benchmark data: one zone (1,000 names, or 1,000,000) and the query mix for dnsperf.

Everything here is a pure function of (names, seed), so two machines that run the same command
benchmark the same bytes.  Generated files go to ``bench/results/raw/data/`` (gitignored); they
are regenerated when missing and never committed.

The zone (origin ``bench.example.``):
  - apex: SOA, NS ns-1/ns-2 (in-zone, with A records), MX 10 mail-1, TXT;
  - ``names`` owner names below the apex: 95% hosts (A; every 2nd host also AAAA; every 10th
    host also TXT) and 5% aliases (CNAME to a host, so the CNAME is followed inside the zone,
    RFC 1034 §4.3.2 step 3a).
  - ``a_only=True`` gives ``names`` hosts with exactly one A record each (the "1,000,000 A
    records" image-size measurement of issue 2).

The query mix (dnsperf input format, one ``name TYPE`` per line), by share of lines:
  70% A at a host (answer), 10% AAAA at a host that has one (answer), 10% A at a name that does
  not exist (NXDOMAIN), 5% A at an alias (CNAME + A), 5% other: MX/NS/SOA at the apex, TXT at a
  host that has one, MX at a host (NODATA), 1% each.
"""
from __future__ import annotations

import argparse
import os
import random
import string
from dataclasses import dataclass
from pathlib import Path

ORIGIN = "bench.example."
DEFAULT_SEED = 53
DEFAULT_QUERIES = 200_000
BENCH_DIR = Path(__file__).resolve().parent
RAW_DIR = BENCH_DIR / "results" / "raw"
DATA_DIR = RAW_DIR / "data"

# Query mix: (share in percent, kind).  Must add up to 100.
MIX = (
    (70, "a"),
    (10, "aaaa"),
    (10, "nxdomain"),
    (5, "cname"),
    (1, "apex-mx"),
    (1, "apex-ns"),
    (1, "apex-soa"),
    (1, "txt"),
    (1, "nodata-mx"),
)
assert sum(share for share, _ in MIX) == 100

@dataclass(frozen=True)
class ZoneNames:
    """The owner names of a generated zone, relative to ORIGIN, by role."""

    hosts: list[str]
    aliases: list[str]

    def with_aaaa(self) -> list[str]:
        return self.hosts[::2]

    def with_txt(self) -> list[str]:
        return self.hosts[::10]


def zone_names(names: int, seed: int = DEFAULT_SEED, a_only: bool = False) -> ZoneNames:
    """The owner names: a seeded random prefix of letters plus the index in decimal (so unique;
    no hyphen: the apex helpers and the NXDOMAIN names carry one, so they never collide)."""
    if names < 20:
        raise ValueError(f"a benchmark zone needs at least 20 names, got {names}")
    rnd = random.Random(f"zone:{seed}")
    n_alias = 0 if a_only else names // 20
    labels = []
    for i in range(names):
        prefix = "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 9)))
        labels.append(prefix + str(i))
    rnd.shuffle(labels)
    return ZoneNames(hosts=labels[n_alias:], aliases=labels[:n_alias])


def _ipv4(i: int) -> str:
    # 10.0.0.0/8 holds 16M addresses: enough for the 1M zone, and never routable.
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _ipv6(i: int) -> str:
    return f"fd53:b::{(i >> 16) & 0xffff:x}:{i & 0xffff:x}"


def write_zone(path: Path, names: int, seed: int = DEFAULT_SEED, a_only: bool = False) -> Path:
    """Write the zone file to ``path`` (atomically) and return it."""
    zn = zone_names(names, seed, a_only)
    rnd = random.Random(f"alias:{seed}")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="ascii", buffering=1 << 20) as f:
        f.write(f"$ORIGIN {ORIGIN}\n$TTL 3600\n")
        f.write("@ IN SOA ns-1 hostmaster 2024010101 7200 3600 1209600 300\n")
        f.write("@ IN NS ns-1\n@ IN NS ns-2\n@ IN MX 10 mail-1\n")
        f.write('@ IN TXT "v=spf1 -all"\n')
        f.write("ns-1 IN A 192.0.2.1\nns-2 IN A 192.0.2.2\nmail-1 IN A 192.0.2.25\n")
        if a_only:
            for i, h in enumerate(zn.hosts):
                f.write(f"{h} IN A {_ipv4(i)}\n")
        else:
            for i, h in enumerate(zn.hosts):
                f.write(f"{h} IN A {_ipv4(i)}\n")
                if i % 2 == 0:
                    f.write(f"{h} IN AAAA {_ipv6(i)}\n")
                if i % 10 == 0:
                    f.write(f'{h} IN TXT "host {i}"\n')
            for a in zn.aliases:
                f.write(f"{a} IN CNAME {rnd.choice(zn.hosts)}\n")
    os.replace(tmp, path)
    return path


def write_queries(path: Path, names: int, seed: int = DEFAULT_SEED,
                  count: int = DEFAULT_QUERIES) -> Path:
    """Write ``count`` seeded queries in dnsperf's input format (``name TYPE`` per line)."""
    zn = zone_names(names, seed)
    aaaa, txt = zn.with_aaaa(), zn.with_txt()
    rnd = random.Random(f"queries:{seed}:{count}")
    kinds = [k for share, k in MIX for _ in range(share)]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="ascii", buffering=1 << 20) as f:
        for _ in range(count):
            kind = rnd.choice(kinds)
            if kind == "a":
                line = f"{rnd.choice(zn.hosts)}.{ORIGIN} A"
            elif kind == "aaaa":
                line = f"{rnd.choice(aaaa)}.{ORIGIN} AAAA"
            elif kind == "nxdomain":
                nx = "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(4, 10)))
                line = f"nx-{nx}.{ORIGIN} A"
            elif kind == "cname":
                line = f"{rnd.choice(zn.aliases)}.{ORIGIN} A"
            elif kind == "apex-mx":
                line = f"{ORIGIN} MX"
            elif kind == "apex-ns":
                line = f"{ORIGIN} NS"
            elif kind == "apex-soa":
                line = f"{ORIGIN} SOA"
            elif kind == "txt":
                line = f"{rnd.choice(txt)}.{ORIGIN} TXT"
            else:  # nodata-mx
                line = f"{rnd.choice(zn.hosts)}.{ORIGIN} MX"
            f.write(line + "\n")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Dataset:
    names: int
    seed: int
    zone: Path
    queries: Path
    probe: str  # a host name that must answer A with NOERROR (readiness check)


def bench_zone(names: int, seed: int = DEFAULT_SEED, directory: Path = DATA_DIR,
               a_only: bool = False) -> Path:
    """The benchmark zone file for (names, seed), generated on first use and reused after
    (``a_only``: one A record per host, plus the apex records)."""
    directory.mkdir(parents=True, exist_ok=True)
    zone = directory / f"bench-{'a' if a_only else ''}{names}-s{seed}.zone"
    if not zone.exists():
        write_zone(zone, names, seed, a_only=a_only)
    return zone


def dataset(names: int, seed: int = DEFAULT_SEED, count: int = DEFAULT_QUERIES,
            directory: Path = DATA_DIR) -> Dataset:
    """The zone and query files for (names, seed), generated on first use and reused after."""
    zone = bench_zone(names, seed, directory)
    queries = directory / f"queries-{names}-s{seed}-q{count}.txt"
    if not queries.exists():
        write_queries(queries, names, seed, count)
    probe = zone_names(names, seed).hosts[-1] + "." + ORIGIN
    return Dataset(names, seed, zone, queries, probe)


def a_only_zone(names: int, seed: int = DEFAULT_SEED, directory: Path = DATA_DIR) -> Path:
    """A zone of ``names`` hosts with one A record each (plus the apex records)."""
    return bench_zone(names, seed, directory, a_only=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--queries", type=int, default=DEFAULT_QUERIES)
    p.add_argument("--dir", type=Path, default=DATA_DIR)
    p.add_argument("--a-only", action="store_true", help="hosts with one A record each, no queries")
    a = p.parse_args(argv)
    if a.a_only:
        print(a_only_zone(a.names, a.seed, a.dir))
    else:
        ds = dataset(a.names, a.seed, a.queries, a.dir)
        print(ds.zone)
        print(ds.queries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
