"""The feed when a NATS node dies: a 3-node JetStream cluster on loopback (the stream with three
replicas), subscribers following it (pop53.feed.transport.Subscriber, each its own connection
and ordered consumer), a change published every 0.1 s, and the stream's leader SIGKILLed (by
PID) 3 s in (or, `--kill follower`, a node that leads neither the stream nor JetStream's meta
group).  Per run: how long publishing stalls (NATS Raft elects a new leader), and the
slowest change each subscriber applied after its publish was acknowledged (what pop53's side
adds: noticing that its consumer is gone and recreating it).  The runs alternate the settings
of `--heartbeats` ([feed] consumer_heartbeat).

    python -m bench.feed_failover [--runs 8] [--subscribers 2] [--kill leader|follower]
                                  [--heartbeats 1.0,0.5]

Writes bench/results/feed_failover.md.  Loopback only; every process is stopped by its PID;
bounded: `--changes` publishes a run, each retried for at most 30 s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peers.procs import stop  # noqa: E402  (SIGTERM by PID, then SIGKILL)
KEY = Ed25519PrivateKey.generate()


class Applied:
    """A feed sink that only notes when each target (one per change) was applied."""

    def __init__(self):
        self.at: dict[str, float] = {}

    def validate(self, kind, name, payload, source):
        return name

    def apply(self, kind, name, prepared):
        self.at.setdefault(name, time.monotonic())


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Three nats-server nodes on loopback, clustered, each with its own store."""

    def __init__(self, work: Path):
        ports = _ports(9)
        self.client, routes, self.http = ports[:3], ports[3:6], ports[6:]
        self.procs: dict[str, subprocess.Popen] = {}
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        for k in range(3):
            d = work / f"n{k + 1}"
            d.mkdir(parents=True)
            peers = ", ".join(f"nats-route://127.0.0.1:{routes[j]}" for j in range(3) if j != k)
            (d / "nats.conf").write_text(
                f"server_name: n{k + 1}\nlisten: 127.0.0.1:{self.client[k]}\n"
                f"http: 127.0.0.1:{self.http[k]}\n"
                f"jetstream {{ store_dir: \"{d / 'js'}\" }}\n"
                f"cluster {{\n  name: failover\n  listen: 127.0.0.1:{routes[k]}\n"
                f"  routes: [ {peers} ]\n}}\n")
            self.procs[f"n{k + 1}"] = subprocess.Popen(
                [exe, "-c", str(d / "nats.conf")], stdout=subprocess.DEVNULL,
                stderr=open(d / "nats.log", "wb"))

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client]

    def meta_leader(self) -> str | None:
        """The JetStream meta group's leader (the monitoring endpoint /jsz): consumers are
        created through it, so a subscriber can only recreate its consumer once it is elected."""
        import urllib.request

        for k, port in enumerate(self.http):
            if self.procs[f"n{k + 1}"].poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=2) as r:
                    return json.load(r).get("meta_cluster", {}).get("leader")
            except OSError:
                continue
        return None

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            stop(p)


async def _quiet(exc) -> None:
    """The publisher's connection errors while a node is down: expected, not printed."""


async def _publish_until_acked(js, name: str, within: float = 30.0) -> None:
    from pop53.feed import message as fm

    end = time.monotonic() + within
    while True:
        wire = fm.encode(KEY, stream="pop53", kind="target", name=name,
                         version=time.time_ns(), sender="bench", payload=b'{"state":"up"}')
        try:
            await js.publish(fm.subject("pop53", "target", name), wire, stream="POP53")
            return
        except Exception:  # noqa: BLE001 - no leader yet: retry, bounded
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.1)


async def one_run(args, heartbeat: float) -> dict:
    import nats

    from pop53.feed import message as fm
    from pop53.feed.receiver import FeedSettings, Receiver
    from pop53.feed.transport import Subscriber, ensure_stream

    ring = fm.KeyRing({fm.key_id(KEY.public_key()): KEY.public_key()})
    work = Path(tempfile.mkdtemp(prefix="pop53-failover-"))
    cluster = Cluster(work)
    subs = []
    try:
        nc = await nats.connect(servers=cluster.urls, connect_timeout=2, reconnect_time_wait=0.1,
                                max_reconnect_attempts=-1, error_cb=_quiet)
        js = nc.jetstream(timeout=2)
        deadline = time.monotonic() + 60
        while True:
            try:
                await ensure_stream(js, "POP53", "pop53", replicas=3)
                leader = (await js.stream_info("POP53")).cluster.leader
                meta = cluster.meta_leader()
                if leader and meta:
                    break
            except Exception:  # noqa: BLE001 - the cluster is still forming
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)
        for _ in range(args.subscribers):
            sink = Applied()
            r = Receiver(FeedSettings(consumer_heartbeat=heartbeat), ring, sink)
            subs.append((Subscriber(cluster.urls, r).start(), sink))
        await asyncio.sleep(2)
        acks, killed, start = {}, None, time.monotonic()
        for i in range(args.changes):
            if killed is None and time.monotonic() - start > 3:
                victim = leader if args.kill == "leader" else next(
                    n for n in ("n1", "n2", "n3") if n not in (leader, meta))
                on_victim = [sub.url == f"127.0.0.1:{cluster.client[int(victim[1]) - 1]}"
                             for sub, _ in subs]
                cluster.kill(victim)
                killed = time.monotonic()
            t0 = time.monotonic()
            await _publish_until_acked(js, f"t{i}")
            acks[f"t{i}"] = (t0, time.monotonic())
            await asyncio.sleep(0.1)
        end = time.monotonic() + args.settle
        while time.monotonic() < end and any(len(s.at) < len(acks) for _, s in subs):
            await asyncio.sleep(0.05)
        await nc.close()
    finally:
        for sub, _ in subs:
            sub.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    if killed is None:
        raise SystemExit(f"bench.feed_failover: {args.changes} changes ended before the kill "
                         "3 s in: use --changes 40 or more")
    gap = max(ta - t0 for t0, ta in acks.values() if t0 >= killed)
    lag, missing = [], []
    for _, sink in subs:
        late = [sink.at[n] - ta for n, (_, ta) in acks.items() if n in sink.at]
        lag.append(max(0.0, max(late, default=0.0)))
        missing.append(sum(n not in sink.at for n in acks))
    return {"heartbeat": heartbeat, "killed": victim, "leader": leader, "meta_leader": meta,
            "publish_gap": gap, "on_victim": on_victim,
            "lag": lag, "missing": missing}


def report(args, runs: list[dict], load0: float, load1: float) -> str:
    lines = ["# The feed when a NATS node dies (bench/feed_failover.py)", "",
             f"- Date (UTC): {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}",
             f"- Command: `python -m bench.feed_failover --runs {args.runs} --subscribers "
             f"{args.subscribers} --kill {args.kill} --changes {args.changes} --settle "
             f"{args.settle:g} --heartbeats {','.join(str(h) for h in args.heartbeats)}`",
             f"- Machine: 2 CPUs shared with other work, load average {load0:.2f} at start, "
             f"{load1:.2f} at end",
             f"- 3 nats-server nodes on loopback, stream with 3 replicas; {args.subscribers} "
             f"subscribers; {args.changes} changes, one every 0.1 s; "
             + ("the stream leader" if args.kill == "leader" else
                "a node leading neither the stream nor the meta group")
             + " SIGKILLed 3 s in; runs alternate the consumer heartbeat", "",
             "| consumer_heartbeat | runs | publishing stalled (s): median, range | slowest "
             "change applied after its ack (s): median, max | runs with any > 0.5 s | changes "
             "never applied |", "|---|---|---|---|---|---|"]
    for hb in args.heartbeats:
        rs = [r for r in runs if r["heartbeat"] == hb]
        if not rs:
            continue
        gaps = [r["publish_gap"] for r in rs]
        lags = [max(r["lag"]) for r in rs]
        lines.append(f"| {hb} s | {len(rs)} | {statistics.median(gaps):.2f}, {min(gaps):.2f}-"
                     f"{max(gaps):.2f} | {statistics.median(lags):.2f}, {max(lags):.2f} | "
                     f"{sum(x > 0.5 for x in lags)} | {sum(sum(r['missing']) for r in rs)} |")
    both = [max(r["lag"]) for r in runs if r["killed"] == r["meta_leader"]]
    one = [max(r["lag"]) for r in runs if r["killed"] != r["meta_leader"]]
    lines += ["", "By what the killed node led (every heartbeat setting; the slowest change "
              "applied after its ack, each run):", "",
              f"- the stream and the meta group (consumers are created through the meta "
              f"leader): {', '.join(f'{x:.2f}' for x in both) or 'no run'}",
              f"- not the meta group: {', '.join(f'{x:.2f}' for x in one) or 'no run'}",
              "", "Every run (heartbeat, node killed, the leaders before, stall, each "
              "subscriber's slowest):", ""]
    lines += [f"- {r['heartbeat']} s, {r['killed']} (stream leader {r['leader']}, meta "
              f"{r['meta_leader']}): "
              f"{r['publish_gap']:.2f} s, " + ", ".join(f"{x:.2f}" for x in r["lag"])
              for r in runs]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.feed_failover",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="runs per heartbeat setting")
    ap.add_argument("--subscribers", type=int, default=2)
    ap.add_argument("--changes", type=int, default=60)
    ap.add_argument("--settle", type=float, default=15.0,
                    help="seconds to wait after the last publish for every subscriber")
    ap.add_argument("--kill", choices=("leader", "follower"), default="leader",
                    help="the stream's leader, or a node that leads neither the stream nor the "
                         "meta group")
    ap.add_argument("--heartbeats", default=[1.0, 0.5],
                    type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "feed_failover.md")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    runs = []
    for i in range(args.runs):
        for hb in args.heartbeats if i % 2 == 0 else args.heartbeats[::-1]:
            r = asyncio.run(one_run(args, hb))
            print(json.dumps(r), flush=True)
            runs.append(r)
    text = report(args, runs, load0, os.getloadavg()[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
