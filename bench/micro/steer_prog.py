"""What the kernel stage's steering program costs per datagram, with and without its
server-cookie check (issue 13; pop53.scoring.ebpf, pop53.scoring.ebpf_cookie).

    python -m bench.micro.steer_prog [--rounds 15]

The kernel runs each program on one frame `--repeat` times (BPF_PROG_TEST_RUN, the JIT on) and
reports the mean ns per run.  The frame stays in cache across the repeats, and so does the
known-prefix trie: these are warm costs.  A flood from scattered sources adds the trie's cache
misses.  Known table: 100,000 random IPv4 /24s and 20,000 IPv6 /56s (the bench.micro.scoring
table), 127.1.0.0/24 among them.  Secrets: a current and a previous one.  Rounds alternate the
two programs; the table gives medians.  Writes bench/results/steer_prog.md and .png.  Not a
test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

import dns.edns
import dns.message

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from pop53 import _core  # noqa: E402
from pop53.scoring import ebpf  # noqa: E402

SECRET, PREVIOUS = bytes(range(16)), bytes(range(16, 32))


def frame(src: str, payload: bytes, dst: str | None = None, sport: int = 40000) -> bytes:
    """An Ethernet frame of a UDP datagram from `src` to port 53, as BPF_PROG_TEST_RUN takes
    it (no checksums: nothing reads them)."""
    udp = struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload
    if ":" in src:
        ip = (struct.pack("!IHBB", 6 << 28, len(udp), 17, 64)
              + socket.inet_pton(socket.AF_INET6, src)
              + socket.inet_pton(socket.AF_INET6, dst or "::1"))
        return bytes(12) + b"\x86\xdd" + ip + udp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst or "127.0.0.1"))
    return bytes(12) + b"\x08\x00" + ip + udp


def query(src: str | None = None, secret: bytes = SECRET, cc: bytes = b"\x01" * 8,
          name: str = "www.example.com.") -> bytes:
    """An A query; with `src`, carrying a server cookie made with `secret` for that address."""
    if src is None:
        return dns.message.make_query(name, "A").to_wire()
    packed = socket.inet_pton(socket.AF_INET6 if ":" in src else socket.AF_INET, src)
    sc = _core.server_cookie(secret, cc, packed, int(time.time()))
    return dns.message.make_query(name, "A", use_edns=0,
                                  options=[dns.edns.CookieOption(cc, sc)]).to_wire()


LONG = "a." * 126                       # 126 labels and the root: a 253-byte name


# case -> (source, payload, steered without the check, with it); the cookie senders 127.2.0.5
# and 2001:db8::5 are outside the known prefixes
CASES = {
    "flood (unknown source, no cookie)": ("10.20.30.40", query(), False, False),
    "known resolver, no cookie": ("127.1.0.9", query(), True, True),
    "cookie sender, valid cookie (IPv4)": ("127.2.0.5", query("127.2.0.5"), False, True),
    "cookie sender, valid cookie (IPv6)": ("2001:db8::5", query("2001:db8::5"), False, True),
    "cookie sender, cookie of the previous secret":
        ("127.2.0.5", query("127.2.0.5", PREVIOUS), False, True),
    "cookie sender, invalid cookie (both secrets tried)":
        ("127.2.0.5", query("127.2.0.5", bytes(16)), False, False),
    "cookie sender, no cookie": ("127.2.0.5", query(), False, False),
    "cookie sender, invalid cookie, a 126-label name":
        ("127.2.0.5", query("127.2.0.5", bytes(16), name=LONG), False, False),
}


def setup(workers: int = 2, known: int = 100_000):
    """The two programs' fds (without, with the check) over one trust map and a known table of
    `known` random /24s (and a fifth as many /56s) plus 127.1.0.0/24."""
    rnd = random.Random(1)
    v4 = sorted({rnd.randrange(1 << 24) for _ in range(known)} | {0x7F0100})
    v6 = sorted({(0x2001_0DB8 << 24) | rnd.randrange(1 << 24) for _ in range(known // 5)})
    trust, keys = ebpf.TrustMap(), ebpf.CookieKeys()
    keys.set(SECRET, PREVIOUS)
    scorer = _core.Scorer()
    scorer.use_trust_buffer(trust.buf)
    for a in ("127.2.0.5", "2001:db8::5"):
        scorer.cookie_proven(socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a))
    progs = {"without the check": ebpf.load(workers, v4, v6, trust.fd),
             "with the check": ebpf.load(workers, v4, v6, trust.fd, keys.fd)}
    return progs, (trust, keys, scorer)


def alternate(progs: dict, frames: dict, rounds: int, repeat: int, workers: int) -> dict:
    """Run each program (name -> fd; two) on each case's frame (case -> (frame, steered by the
    first program, by the second)) `repeat` times a measurement, the programs' order alternated
    round by round, checking where each is steered.  Returns (program, case) -> [ns]."""
    ns: dict[tuple[str, str], list[int]] = {}
    names = list(progs)
    for rnd in range(rounds):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            for case, (fr, *steered) in frames.items():
                ret, dur = ebpf.test_run(progs[name], fr, repeat)
                want = steered[names.index(name)]
                if (ret >= workers) != want:
                    raise SystemExit(f"{name}, {case}: socket {ret}, expected the "
                                     f"{'priority' if want else 'normal'} block")
                ns.setdefault((name, case), []).append(dur)
    return ns


def table(progs: dict, frames: dict, ns: dict) -> list[str]:
    """The markdown rows: each case's median (min-max) ns per program, where the second
    steers it."""
    lines = []
    for case, (_fr, _first, steered) in frames.items():
        cells = []
        for name in progs:
            xs = ns[(name, case)]
            cells.append(f"{statistics.median(xs):.0f} ({min(xs)}-{max(xs)})")
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {'priority' if steered else 'normal'} |")
    return lines


def arguments(argv, doc: str, out: str) -> argparse.Namespace:
    """--rounds, --repeat and --out (default bench/results/`out`) of a program bench."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = arguments(argv, __doc__, "steer_prog.md")
    workers = 2
    progs, _keep = setup(workers)
    load0 = os.getloadavg()[0]
    frames = {case: (frame(src, payload), *steered)
              for case, (src, payload, *steered) in CASES.items()}
    ns = alternate(progs, frames, args.rounds, args.repeat, workers)
    load1 = os.getloadavg()[0]
    lines = ["# The steering program's cost per datagram (bench/micro/steer_prog.py)", "",
             f"- Date (UTC): {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
             f"- Command (from the repository root): `python -m bench.micro.steer_prog"
             + (f" --rounds {args.rounds}" if args.rounds != 15 else "") + "`",
             f"- Machine: {os.cpu_count()} CPUs shared with other work, kernel {os.uname().release}, "
             f"load average {load0:.2f} at start, {load1:.2f} at end",
             f"- BPF_PROG_TEST_RUN, {args.repeat:,} runs a measurement, {args.rounds} rounds "
             "alternating the programs: medians (min-max) of the kernel's mean ns per run; warm "
             "(one frame, the trie in cache)", "",
             "| datagram | without the check | with the check | steered (with) |", "|---|---|---|---|"]
    lines += table(progs, frames, ns)
    lines += ["", "Without the check a cookie sender is steered by its prefix alone (both here are "
              "outside the known prefixes: the normal block), whatever it carries.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(9, 4.5))
    cases = list(CASES)
    for k, name in enumerate(progs):
        ax.barh([i + 0.4 * k for i in range(len(cases))],
                [statistics.median(ns[(name, c)]) for c in cases], height=0.4, label=name)
    ax.set_yticks([i + 0.2 for i in range(len(cases))], cases, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ns per datagram (median)")
    ax.set_title("pop53 steering program (BPF_PROG_TEST_RUN, warm)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
