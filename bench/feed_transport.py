"""The transport alone: how long one nats-server (JetStream, file storage, loopback) takes to
acknowledge and deliver an opaque payload of the size of a 1,000,000-prefix map, with no pop53
in the path (the floor under bench.feed_fleet's full-map numbers).

    python -m bench.feed_transport [--bytes 18128693] [--runs 5]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _measure(url: str, size: int, runs: int) -> list[tuple[float, float]]:
    import nats
    from nats.js.api import DeliverPolicy

    from pop53.feed.transport import ensure_stream

    nc = await nats.connect(servers=[url])
    sub = await nats.connect(servers=[url])
    try:
        js = nc.jetstream(timeout=30)
        await ensure_stream(js, "POP53", "pop53")
        got: asyncio.Queue = asyncio.Queue()

        async def cb(m):
            await got.put(time.monotonic())

        await sub.jetstream().subscribe("pop53.>", stream="POP53", cb=cb, ordered_consumer=True,
                                        deliver_policy=DeliverPolicy.NEW)
        data = os.urandom(1024) * (size // 1024)
        out = []
        for _ in range(runs):
            t0 = time.monotonic()
            await js.publish("pop53.map.world", data, stream="POP53")
            t1 = time.monotonic()
            t2 = await asyncio.wait_for(got.get(), 60)
            out.append((t1 - t0, t2 - t0))
        return out
    finally:
        await nc.close()
        await sub.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.feed_transport")
    ap.add_argument("--bytes", type=int, default=18_128_693)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    d = Path(tempfile.mkdtemp(prefix="pop53-feedtr-"))
    port = _port()
    (d / "nats.conf").write_text(f"listen: 127.0.0.1:{port}\nmax_payload: 64MB\n"
                                 f"jetstream {{ store_dir: \"{d / 'js'}\" }}\n")
    p = subprocess.Popen([shutil.which("nats-server") or "/usr/sbin/nats-server", "-c",
                          str(d / "nats.conf")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        res = asyncio.run(_measure(f"nats://127.0.0.1:{port}", a.bytes, a.runs))
    finally:
        p.terminate()
        p.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    acks, dels = [r[0] for r in res], [r[1] for r in res]
    print(f"{a.bytes:,} bytes, {a.runs} runs, load {os.getloadavg()[0]:.2f}: ack median "
          f"{statistics.median(acks) * 1e3:.0f} ms (max {max(acks) * 1e3:.0f}), delivered median "
          f"{statistics.median(dels) * 1e3:.0f} ms (max {max(dels) * 1e3:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
