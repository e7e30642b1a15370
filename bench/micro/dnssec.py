"""What DO=1 costs on the data plane: thread CPU ns per query in the C loop (`bench_answer_batch`) for a
signed zone of N names (dnssec-signzone, ECDSA P-256; NSEC and NSEC3 with 0 iterations) with
the issue's mix (70% positive, 20% NXDOMAIN, 10% NODATA), DO=0 and DO=1, beside the same zone
unsigned; compile time and image bytes per record.  Prints a markdown table.

    python -m bench.micro.dnssec --names 1000       # from the repository root

Numbers are this machine's now (2 shared cores: say the load beside them).  No peers here:
the side-by-side with Knot and NSD is still to do (docs/dnssec.md)."""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import dns.message

from pop53 import _core, compile_zones

ORIGIN = "bench.example."


def write_zone(path: Path, names: int) -> None:
    lines = [f"$ORIGIN {ORIGIN}", "$TTL 3600", "@ SOA ns1 host 1 7200 3600 1209600 300",
             "@ NS ns1", "ns1 A 192.0.2.1"]
    lines += [f"h{i} A 192.0.{(i >> 8) & 255}.{i & 255}" for i in range(names)]
    path.write_text("\n".join(lines) + "\n")


def sign(src: Path, d: Path, nsec3: bool) -> Path:
    if not list(d.glob("K*.key")):
        for extra in (["-f", "KSK"], []):
            subprocess.run(["dnssec-keygen", "-q", "-K", str(d), "-a", "ECDSAP256SHA256", *extra,
                            ORIGIN], check=True, capture_output=True)
    out = d / ("nsec3.zone" if nsec3 else "nsec.zone")
    subprocess.run(["dnssec-signzone", "-S", "-K", str(d), "-o", ORIGIN, "-f", str(out),
                    *(["-3", "-", "-H", "0"] if nsec3 else []), str(src)],
                   check=True, capture_output=True, cwd=d)
    return out


def mix(names: int, do: bool, n: int = 1000) -> list[bytes]:
    rng = random.Random(53)
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.7:
            q = (f"h{rng.randrange(names)}.{ORIGIN}", "A")
        elif r < 0.9:
            q = (f"nx{rng.randrange(10 ** 9)}.{ORIGIN}", "A")
        else:
            q = (f"h{rng.randrange(names)}.{ORIGIN}", "TXT")
        m = dns.message.make_query(*q, want_dnssec=do, payload=1232, use_edns=0)
        out.append(m.to_wire())
    return out


def _cpu_ns(image, wires: list, repeat: int) -> float:
    """Thread CPU ns per query of the C loop: on a shared, loaded machine the wall clock of the
    loop varies threefold between runs; the CPU time it used does not."""
    t = time.thread_time()
    _core.bench_answer_batch(image.view, wires, repeat)
    return (time.thread_time() - t) / len(wires) / repeat * 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=200)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "plain.zone"
        write_zone(src, args.names)
        files = {"unsigned": src}
        for nsec3 in (False, True):
            t = time.monotonic()
            files["NSEC3" if nsec3 else "NSEC"] = sign(src, d, nsec3)
            rows.append(f"<!-- signing {'NSEC3' if nsec3 else 'NSEC'}: {time.monotonic() - t:.1f} s -->")
        for label, path in files.items():
            t = time.monotonic()
            image = compile_zones([(str(path), ORIGIN)])
            compile_s = time.monotonic() - t
            recs = image.counts["records"]
            for do in (False, True) if label != "unsigned" else (False,):
                wires = mix(args.names, do)
                best = min(_cpu_ns(image, wires, args.repeat) for _ in range(3))
                rows.append(f"| {label} | {'1' if do else '0'} | {best:.0f} | {compile_s:.2f} | "
                            f"{len(image) / recs:.0f} |")
    print(f"{args.names} names, load {os.getloadavg()[0]:.2f}")
    print("| zone | DO | CPU ns/query (best of 3) | compile s | image bytes/record |")
    print("|---|---|---|---|---|")
    print("\n".join(r for r in rows if r.startswith("|")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
