"""What response rate limiting adds to a UDP response, beside what the answer itself costs.

    python -m bench.micro.rrl

Both loops run in C without the GIL (`_core.bench_answer_batch` and `RateLimiter.bench`),
on the 1,000-name benchmark zone (bench/data.py).  The limiter's loop takes one reply and varies
the client address over 65,536 IPv4 addresses (the last two bytes; 256 /24 buckets), the way a
spoofed flood does; its clock does not advance, so most decisions are "over the limit", the
costlier path (a compare-and-swap on the bucket).  Writes bench/results/rrl.md.  Not a test:
nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import dns.edns  # noqa: E402
import dns.message  # noqa: E402

import pop53  # noqa: E402
from pop53 import _core  # noqa: E402
from bench import data  # noqa: E402


def main(argv=None) -> int:
    args = bench_args(__doc__, "rrl", argv)
    image, wires = bench_queries()
    reply = pop53.answer(image, wires[0], ("127.0.0.1", 5353))
    sa = struct.pack("=HH4s", socket.AF_INET, socket.htons(5353), socket.inet_aton("192.0.2.1")).ljust(28, b"\0")
    # the same queries carrying a client cookie, answered by a responder with a server secret
    cwires = [dns.message.make_query(dns.message.from_wire(w).question[0].name, "A", use_edns=0,
                                     options=[dns.edns.CookieOption(bytes(range(8)), b"")]).to_wire()
              for w in wires]
    cresp = _core.Responder(cookie_secret=bytes(range(16)))
    assert len(dns.message.from_wire(pop53.answer(image, cwires[0], ("192.0.2.1", 53),
                                                  responder=cresp)).options) == 1
    answer_ns, rrl_ns, cookie_ns = [], [], []
    for _ in range(args.rounds):
        answer_ns.append(_core.bench_answer_batch(image.view, wires, 20))
        cookie_ns.append(_core.bench_answer_batch(image.view, cwires, 20, cresp,
                                                  socket.inet_aton("192.0.2.1")))
        rl = _core.RateLimiter(20, slip=2, exempt=("127.0.0.0/8", "::1/128"))   # the default
        rrl_ns.append(rl.bench(sa, reply, 2_000_000))
    a, r, c = statistics.median(answer_ns), statistics.median(rrl_ns), statistics.median(cookie_ns)
    lines = report_head("Response rate limiting and DNS COOKIEs: cost per UDP response", "rrl",
                        args, f"load average {os.getloadavg()[0]:.2f}") + [
        "",
        "| measurement | median of rounds | min | max |",
        "|---|---|---|---|",
        f"| answer (parse + lookup + write), 1,000 distinct A queries, C loop | {a:.1f} ns | "
        f"{min(answer_ns):.1f} | {max(answer_ns):.1f} |",
        f"| RRL decision (classify the reply, key, bucket update), 65,536 client addresses in 256 /24s | "
        f"{r:.1f} ns | {min(rrl_ns):.1f} | {max(rrl_ns):.1f} |",
        f"| answer to the same queries with a client cookie: server cookie made (SipHash-2-4) "
        f"and written | {c:.1f} ns | {min(cookie_ns):.1f} | {max(cookie_ns):.1f} |",
        "",
        f"RRL adds {r / a:.2f}x the answer's own cost to a UDP response when it is on "
        f"(`[rrl] rate > 0`); when it is off the worker loop skips it with one branch.  "
        f"A server cookie adds {c - a:.1f} ns to an answer whose query asked for one.  "
        f"On the minima of the rounds (this VM alternates between quiet and slow periods): "
        f"RRL {min(rrl_ns):.1f} ns against {min(answer_ns):.1f} ns for the answer, a server cookie "
        f"+{min(cookie_ns) - min(answer_ns):.1f} ns.",
        f"Rounds: {args.rounds}; per round 20 passes over the 1,000 queries and 2,000,000 decisions. "
        "Limiter: rate 20, slip 2, the default exempt list (loopback, 2 prefixes, checked first).",
        "",
    ]
    lines.insert(-1, "Beside the whole UDP path: pinned CPU per query of a `pop53 serve` worker, "
                     "syscalls included, was 5.53 us in `bench/results/peers.md` (one core), so the "
                     f"limiter is about {r / 5530 * 100:.1f}% of it.")
    args.out.write_text("\n".join(lines))
    chart(a, r, args.out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


def chart(answer_ns: float, rrl_ns: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh(["RRL decision", "answer"], [rrl_ns, answer_ns], color=["#d62728", "#1f77b4"])
    for y, v in enumerate([rrl_ns, answer_ns]):
        ax.text(v, y, f" {v:.0f} ns", va="center")
    ax.set_xlabel("ns per UDP response (C loop, median of rounds)")
    ax.set_title("python -m bench.micro.rrl", fontsize=9)
    ax.set_xlim(0, max(answer_ns, rrl_ns) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_args(doc: str, name: str, argv) -> argparse.Namespace:
    """--rounds and --out (bench/results/NAME.md) of a micro benchmark module."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"{name}.md")
    return ap.parse_args(argv)


def report_head(title: str, name: str, args, load: str) -> list[str]:
    """The first lines of a results file: title, date, command, machine and load."""
    return [
        f"# {title}",
        "",
        f"- Date (UTC): {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        f"- Command (from the repository root): `python -m bench.micro.{name}"
        + (f" --rounds {args.rounds}" if args.rounds != 15 else "") + "`",
        f"- Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {load}",
    ]


def write_report(args, lines: list[str]) -> int:
    """Write a results file (args.out) and print it; the exit status."""
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def bench_queries() -> tuple[pop53.Image, list[bytes]]:
    """The 1,000-name benchmark zone compiled, and an A query (EDNS) for each of its names."""
    zonefile = data.bench_zone(1000)
    image = pop53.compile_zones([zonefile])
    return image, [dns.message.make_query(rr, "A", use_edns=0).to_wire()
                   for rr in image_names(zonefile)[:1000]]


def image_names(zonefile: Path) -> list[str]:
    """Owner names with an A record in the benchmark zone file (absolute)."""
    origin = data.ORIGIN
    out = []
    for line in zonefile.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-2] == "A" and not line.startswith(("$", ";")):
            owner = parts[0]
            out.append(owner if owner.endswith(".") else f"{owner}.{origin}")
    return out


if __name__ == "__main__":
    sys.exit(main())
