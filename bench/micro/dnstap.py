"""What per-zone counting and dnstap add to an answer, in the C loop without syscalls.

    python -m bench.micro.dnstap

`_core.bench_observe` runs core_answer over the 1,000-name benchmark zone's A queries (EDNS),
as `bench_answer_batch` does, with what a worker adds per query: the per-zone counters (the
image labelled with its slots), then a dnstap push of query and reply at sample 1 or 1 in 100
(the ring emptied after each pass: the worker's share alone), then the same with the writer's
share in the same thread (encode to protobuf and write() Frame Streams frames to /dev/null after
each pass).  The latency from the kernel stamp: each
query's SO_TIMESTAMPNS read from its control data and counted per 64 (udp_loop.pxi, klat_add).
Rounds alternate the variants; medians and minima.  Writes
bench/results/dnstap_micro.md.  Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from pop53 import _core  # noqa: E402
from bench.micro.rrl import bench_args, bench_queries, report_head, write_report  # noqa: E402

PASSES = 2          # short calls: their minimum over many rounds finds the quiet moments


def kernel_control() -> tuple[bytes, bytes]:
    """A datagram's control data as recvmmsg writes it (64-bit cmsghdr: size_t len, int level,
    int type, data padded to 8): a receive stamp alone (a socket on one address), and the stamp
    then IP_PKTINFO (a wildcard socket: udp_recvmsg puts the socket-level cmsgs, the stamp,
    before the IP-level ones), stamped one second before the bench runs."""
    import struct
    import time
    now = time.time() - 1.0
    ts = struct.pack("qq", int(now), int((now % 1) * 1e9))
    stamp = struct.pack("Qii", 16 + len(ts), 1, 35) + ts                # SOL_SOCKET, SO_TIMESTAMPNS
    info = struct.pack("i4s4s", 1, bytes(4), bytes(4))                  # struct in_pktinfo
    pkt = struct.pack("Qii", 16 + len(info), 0, 8) + info + bytes(4)    # IPPROTO_IP, IP_PKTINFO
    return stamp, stamp + pkt


def main(argv=None) -> int:
    args = bench_args(__doc__, "dnstap_micro", argv)
    image, wires = bench_queries()
    zones = _core.ZoneStats()
    zones.attach(_core.Counters())
    zones.label(image.view, list(image.zones()))
    devnull = os.open(os.devnull, os.O_WRONLY)
    # rings and writer made once (their pages touched before timing), reused by every round
    ring100, ring1, ringw = (_core.DnstapRing(1 << 20, n) for n in (100, 1, 1))
    writer = _core.DnstapWriter([ringw], "bench", "pop53")
    stamp, both = kernel_control()
    variants = {
        "answer alone": lambda: _core.bench_observe(image.view, wires, PASSES),
        "+ latency from the kernel stamp (SO_TIMESTAMPNS cmsg)": lambda: _core.bench_observe(
            image.view, wires, PASSES, control=stamp),
        "+ latency from the kernel stamp (SO_TIMESTAMPNS + IP_PKTINFO cmsgs)":
            lambda: _core.bench_observe(image.view, wires, PASSES, control=both),
        "+ per-zone counters": lambda: _core.bench_observe(image.view, wires, PASSES, zones),
        "+ counters + dnstap push, 1 in 100": lambda: _core.bench_observe(
            image.view, wires, PASSES, zones, ring100),
        "+ counters + dnstap push, every query": lambda: _core.bench_observe(
            image.view, wires, PASSES, zones, ring1),
        "+ counters + dnstap push + encode + write, every query": lambda: _core.bench_observe(
            image.view, wires, PASSES, zones, ringw, writer, devnull),
    }
    for fn in variants.values():
        fn()                                                    # warm up
    got = {k: [] for k in variants}
    for r in range(args.rounds):
        for k in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            got[k].append(variants[k]())
    os.close(devnull)
    base = statistics.median(got["answer alone"])
    base_min = min(got["answer alone"])
    lines = report_head("Per-zone counters and dnstap: cost per answer", "dnstap",
                        args, f"load average {os.getloadavg()[0]:.2f}") + [
        "", "| variant | median ns/query | min | added to the answer (median / min) |",
        "|---|---|---|---|"]
    for k, xs in got.items():
        m = statistics.median(xs)
        lines.append(f"| {k} | {m:.1f} | {min(xs):.1f} | {m - base:+.1f} / {min(xs) - base_min:+.1f} |")
    lines += ["", f"Rounds: {args.rounds}, each {PASSES} passes over 1,000 queries; variants in "
              "alternating order.  The push copies an 80-byte header, the query and the reply "
              "into the worker's ring; encoding and writing run in the writer thread in a server "
              "(here in the same thread, to price them).", ""]
    return write_report(args, lines)


if __name__ == "__main__":
    raise SystemExit(main())
