"""What the steering program's relay check costs per datagram (issue 13; pop53.scoring.ebpf_relay:
a trusted relay's question name hashed and looked up in the name filter).

    python -m bench.micro.relay_prog [--rounds 15]

As bench.micro.steer_prog (BPF_PROG_TEST_RUN, the JIT on, one frame repeated: warm costs; the
same known table of 100,000 /24s and 20,000 /56s), two programs alternated round by round:
without the name filter (`steer_names = false`) and with it.  The relay, 127.1.0.30, earned its
trust and its relay bit from a probe scorer (two calm queries, then 64 NXDOMAINs of relay.test.);
127.1.0.9 is a trusted resolver that relays nothing.  Writes bench/results/relay_prog.md.  Not a
test: nothing asserts a time.
"""
from __future__ import annotations

import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import pop53  # noqa: E402
from pop53 import _core  # noqa: E402
from pop53.scoring import ebpf  # noqa: E402
from pop53.scoring.ebpf_relay import NameFilter  # noqa: E402

from bench.micro.steer_prog import LONG, alternate, arguments, frame, query, table  # noqa: E402

ZONE = ("$ORIGIN relay.test.\n$TTL 60\n@ SOA ns hostmaster 1 60 60 60 60\n@ NS ns\n"
        "ns A 127.0.0.1\nwww A 127.0.0.2\n")

# case -> (source, name, steered without the filter, with it)
CASES = {
    "trusted resolver, not relaying": ("127.1.0.9", "www.relay.test.", True, True),
    "relay, a real name": ("127.1.0.30", "www.relay.test.", True, True),
    "relay, a real name in capitals": ("127.1.0.30", "WWW.RELAY.TEST.", True, True),
    "relay, a random name": ("127.1.0.30", "x7k2qz9w.relay.test.", True, False),
    "relay, a random 253-byte name": ("127.1.0.30", LONG, True, False),
}


def setup(workers: int = 2, known: int = 100_000):
    rnd = random.Random(1)
    v4 = sorted({rnd.randrange(1 << 24) for _ in range(known)} | {0x7F0100})
    v6 = sorted({(0x2001_0DB8 << 24) | rnd.randrange(1 << 24) for _ in range(known // 5)})
    with tempfile.TemporaryDirectory() as d:
        zone = Path(d) / "relay.test.zone"
        zone.write_text(ZONE)
        image = pop53.compile_zones([zone])
    trust, names = ebpf.TrustMap(), NameFilter()
    names.fill(image.view)
    scorer = _core.Scorer(trust_after_ms=0, nx_rate=16)
    scorer.use_trust_buffer(trust.buf)
    scorer.publish(_known_table())
    for src in ("127.1.0.9", "127.1.0.30"):
        for _ in range(2):
            scorer.classify(query(name="www.relay.test."), socket.inet_aton(src))
    relay = socket.inet_aton("127.1.0.30")
    for i in range(64):
        q = query(name=f"r{i}x.relay.test.")
        scorer.nx_check(q, pop53.answer(image, q, ("127.1.0.30", 5353)), scorer.classify(q, relay),
                        relay)
    if not (scorer.trusted(relay) and scorer.relaying(relay)):
        raise SystemExit("the probe scorer did not mark 127.1.0.30 as a trusted relay")
    progs = {"without the filter": ebpf.load(workers, v4, v6, trust.fd),
             "with the filter": ebpf.load(workers, v4, v6, trust.fd, names_fd=names.fd)}
    return progs, (trust, names, scorer, image)


def _known_table():
    from pop53.scoring.known import KnownPrefixes, compile_table
    return compile_table(KnownPrefixes(frozenset({0x7F0100}), frozenset()))


def main(argv=None) -> int:
    args = arguments(argv, __doc__, "relay_prog.md")
    workers = 2
    progs, _keep = setup(workers)
    load0 = os.getloadavg()[0]
    frames = {case: (frame(src, query(name=qname)), *steered)
              for case, (src, qname, *steered) in CASES.items()}
    ns = alternate(progs, frames, args.rounds, args.repeat, workers)
    load1 = os.getloadavg()[0]
    lines = ["# The steering program's relay check, cost per datagram (bench/micro/relay_prog.py)",
             "", f"- Date (UTC): {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
             "- Command (from the repository root): `python -m bench.micro.relay_prog"
             + (f" --rounds {args.rounds}" if args.rounds != 15 else "") + "`",
             f"- Machine: {os.cpu_count()} CPUs shared with other work, kernel {os.uname().release}, "
             f"load average {load0:.2f} at start, {load1:.2f} at end",
             f"- BPF_PROG_TEST_RUN, {args.repeat:,} runs a measurement, {args.rounds} rounds "
             "alternating the programs: medians (min-max) of the kernel's mean ns per run; warm", "",
             "| datagram | without the filter | with the filter | steered (with) |",
             "|---|---|---|---|"]
    lines += table(progs, frames, ns)
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
