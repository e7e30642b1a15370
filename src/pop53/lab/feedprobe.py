"""The lab's feed publisher and prober, run inside a lab namespace (`ip netns exec`):

    python -m pop53.lab.feedprobe stream --servers URL,URL,URL --replicas 3
    python -m pop53.lab.feedprobe run --servers ... --key lab.key --machines 10.53.1.2,... \\
        --kind liveness|delta|full --count 100 --out result.json

`run` publishes `count` changes, one at a time, and after each one asks every machine's DNS
server directly (its link address) until the answer shows the change: the time from the start
of publishing (signing included) to that answer is the change's latency on that machine.  The
query is `e1.example.net. A` with ECS 1.2.4.0/24 (the embedded mapping example):

* liveness: target eu1 down / up (answer 192.0.2.11 / 192.0.2.10 + .11);
* delta: a map of `--prefixes` filler prefixes whose 1.2.4.0/24 line flips between ap and us,
  sent as a one-prefix delta against the snapshot;
* full: the same flip sent as the whole map (use --prefixes 1000000 for the 1M-prefix map).

Every loop is bounded (per change `--timeout`, the whole run `--deadline`).  A publish that
fails (a NATS node down, a leader election) is retried with a fresh version.  A query with no
answer within 0.2 s counts as unanswered for that machine: serving must never stop.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time

import dns.edns
import dns.exception
import dns.message

PROBE = "1.2.4.0/24"
ANSWERS = {"down": ["192.0.2.11"], "up": ["192.0.2.10", "192.0.2.11"],
           "ap": ["203.0.113.10"], "us": ["198.51.100.10"], "eu": ["192.0.2.10", "192.0.2.11"]}


def filler(n: int) -> bytes:
    """n distinct /24s outside the example's prefixes, regions cycling eu/us/ap."""
    regions = ("eu", "us", "ap")
    return "".join(f"{20 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24 {regions[i % 3]}\n"
                   for i in range(n)).encode()


def ordered(example: bytes, n: int) -> tuple[bytes, bytes]:
    """The map around the probe line, in address order as generated maps are (the compiler
    skips its sort for a file already in order): the example's IPv4 prefixes below 20.0.0.0,
    [the probe line], the filler, the rest of the example."""
    low, high = [], []
    for line in example.splitlines(keepends=True):
        first = line.split(b".", 1)[0]
        (low if first.isdigit() and int(first) < 20 else high).append(line)
    return b"".join(low), filler(n) + b"".join(high)


class Prober:
    """One UDP socket per machine; `answer(i)` = the A addresses machine i serves now."""

    def __init__(self, machines: list[str], port: int = 53):
        q = dns.message.make_query("e1.example.net.", "A",
                                   options=[dns.edns.ECSOption(PROBE.split("/")[0], 24)])
        self.wire = q.to_wire()
        self.socks = []
        for m in machines:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((m, port))
            s.settimeout(0.2)
            self.socks.append(s)
        self.unanswered = [0] * len(machines)
        self.queries = 0

    def answer(self, i: int) -> list[str] | None:
        s = self.socks[i]
        self.queries += 1
        try:
            s.send(self.wire)
            r = dns.message.from_wire(s.recv(4096))
        except (OSError, dns.exception.DNSException):
            self.unanswered[i] += 1
            return None
        return sorted(rd.address for rrset in r.answer for rd in rrset if rrset.rdtype == 1)

    def wait(self, want: list[str], t0: float, timeout: float) -> list[float | None]:
        """Seconds from t0 until each machine answers `want` (None: not within timeout)."""
        out: list[float | None] = [None] * len(self.socks)
        pending = set(range(len(self.socks)))
        end = t0 + timeout
        while pending and time.monotonic() < end:
            for i in sorted(pending):
                if self.answer(i) == want:
                    out[i] = time.monotonic() - t0
                    pending.discard(i)
            if pending:
                time.sleep(0.001)
        return out


async def _stream(args) -> int:
    import nats

    from pop53.feed.transport import ensure_stream

    nc = await nats.connect(servers=args.servers.split(","), connect_timeout=3,
                            max_reconnect_attempts=1)
    try:
        js = nc.jetstream(timeout=5)
        await ensure_stream(js, "POP53", "pop53", replicas=args.replicas)
        info = await js.stream_info("POP53")
        if info.config.num_replicas != args.replicas:
            print(f"stream has {info.config.num_replicas} replicas", file=sys.stderr)
            return 1
        print(json.dumps({"leader": info.cluster.leader if info.cluster else None}))
        return 0
    finally:
        await nc.close()


class Portal:
    """One NATS connection that signs and publishes, retrying (bounded) across node failures."""

    def __init__(self, servers: list[str], key):
        from pop53.feed.publisher import Publisher

        self.pub = Publisher(servers, key, sender="lab-portal")
        self.servers = servers
        self.retries = 0

    async def connect(self):
        import nats

        self.nc = await nats.connect(servers=self.servers, connect_timeout=2,
                                     reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        self.js = self.nc.jetstream(timeout=2)

    async def send(self, kind: str, name: str, payload: bytes, within: float = 30.0) -> int:
        """Sign and publish; returns the version applied-to-be.  Raises after `within` seconds
        of failures (a stream leader election after a node is killed takes a few)."""
        end = time.monotonic() + within
        while time.monotonic() < end:
            subj, wire = self.pub.sign(kind, name, payload)
            try:
                await self.js.publish(subj, wire, stream="POP53")
                return self.pub._last
            except Exception as exc:  # noqa: BLE001 - a node down / election: retry
                self.retries += 1
                print(f"publish retry: {type(exc).__name__}: {exc}", file=sys.stderr)
                await asyncio.sleep(0.1)
        raise RuntimeError(f"publish of {kind} {name} failed for {within} s")


async def _run(args) -> int:
    from pop53.feed import delta as fdelta
    from pop53.feed.message import read_private

    machines = args.machines.split(",")
    prober = Prober(machines)
    portal = Portal(args.servers.split(","), read_private(args.key))
    await portal.connect()
    started = time.monotonic()
    example = open(args.example_map, "rb").read()
    changes = []
    # a known starting point: eu1 up; for maps, the snapshot with 1.2.4.0/24 in eu
    await portal.send("target", "eu1", b'{"state": "up"}')
    pieces = ordered(example, args.prefixes) if args.kind != "liveness" else (b"", b"")
    snap = pieces[0] + f"{PROBE} eu\n".encode() + pieces[1]
    snap_version = await portal.send("map", "world", snap) if args.kind != "liveness" else 0
    ready = prober.wait(ANSWERS["eu"], time.monotonic(), 60)
    if None in ready:
        print(f"machines never reached the starting state: {ready}", file=sys.stderr)
        return 1
    ready_at = time.monotonic()
    await asyncio.sleep(args.settle)       # an idle stretch: the steady state before changes
    variants = {s: pieces[0] + f"{PROBE} {s}\n".encode() + pieces[1] for s in ("ap", "us")} \
        if args.kind != "liveness" else {}
    for i in range(args.count):
        if time.monotonic() - started > args.deadline:
            break
        state = ("down", "up")[i % 2] if args.kind == "liveness" else ("ap", "us")[i % 2]
        t0 = time.monotonic()
        if args.kind == "liveness":
            await portal.send("target", "eu1", f'{{"state": "{state}"}}'.encode())
            size = 0
        elif args.kind == "delta":
            d = fdelta.make(snap_version, snap, variants[state], 1)
            assert d is not None and d.count(b"\n+ ") == 1
            await portal.send("mapdelta", "world", d)
            size = len(d)
        else:
            wire = fdelta.deflate(variants[state])     # as Publisher.send_map sends it
            await portal.send("map", "world", wire)
            size = len(wire)
        published = time.monotonic() - t0
        # the machines' part is timed from the acknowledgement: while a killed node's stream
        # leader is re-elected (NATS Raft: 4-9 s) nothing can be published at all
        lat = prober.wait(ANSWERS[state], t0, published + args.timeout)
        changes.append({"i": i, "state": state, "bytes": size, "t0": t0,
                        "published": published, "served": lat})
        if args.interval:
            await asyncio.sleep(args.interval)
    done_at = time.monotonic()
    await asyncio.sleep(args.settle)       # and after: the steady state with the last map
    await portal.nc.close()
    out = {"kind": args.kind, "machines": machines, "prefixes": args.prefixes,
           "changes": changes, "publish_retries": portal.retries, "queries": prober.queries,
           "unanswered": prober.unanswered, "seconds": time.monotonic() - started,
           "ready_at": ready_at, "done_at": done_at}
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pop53.lab.feedprobe")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stream")
    s.add_argument("--servers", required=True)
    s.add_argument("--replicas", type=int, default=1)
    r = sub.add_parser("run")
    r.add_argument("--servers", required=True)
    r.add_argument("--key", required=True)
    r.add_argument("--machines", required=True)
    r.add_argument("--kind", choices=("liveness", "delta", "full"), required=True)
    r.add_argument("--count", type=int, default=100)
    r.add_argument("--prefixes", type=int, default=10000)
    r.add_argument("--interval", type=float, default=0.02)
    r.add_argument("--timeout", type=float, default=10.0,
                   help="seconds after a change's publish is acknowledged for every machine to serve it")
    r.add_argument("--deadline", type=float, default=600.0)
    r.add_argument("--settle", type=float, default=0.0)
    r.add_argument("--example-map", required=True)
    r.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return asyncio.run(_stream(args) if args.cmd == "stream" else _run(args))


if __name__ == "__main__":
    sys.exit(main())
