"""`[server] udp_coalesce_us` (ext/io.pxi WorkerBase.set_coalesce, issue 10): after a receive batch
of fewer than 16 queries a UDP worker pauses before reading again, so under load replies and
wake-ups come in larger batches; the price is at most that pause of latency per query."""
from __future__ import annotations

import socket
import statistics
import time

import pytest

from pop53 import config as cfgmod
from pop53.errors import ConfigError
from pop53.serve.server import Server

from integ_support import EXAMPLE_ZONE, make_query, server_config, start_with_retry


def _gaps(us: int, n: int = 21) -> list[float]:
    """Seconds from one reply to the next when the next query is sent at once: the second
    query arrives while the worker pauses after the first (a batch of one)."""
    s = start_with_retry(lambda: Server(server_config([EXAMPLE_ZONE], workers=1,
                                                      udp_coalesce_us=us)))
    out = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            for i in range(n):
                time.sleep(0.01)            # the worker back in its receive
                c.sendto(make_query("www.example.com.", "A", qid=2 * i + 1), s.addresses[0])
                c.recv(4096)
                t0 = time.perf_counter()
                c.sendto(make_query("www.example.com.", "A", qid=2 * i + 2), s.addresses[0])
                assert c.recv(4096)[:2] == (2 * i + 2).to_bytes(2, "big")
                out.append(time.perf_counter() - t0)
    finally:
        s.stop()
    return out


def test_a_query_arriving_during_the_pause_waits_for_its_end():
    gaps = _gaps(1000)
    assert statistics.median(gaps) >= 0.0006, "the worker read again before its 1 ms pause ended"


@pytest.mark.parametrize("value,message", [
    (-1, "server.udp_coalesce_us: must be within 0..1000"),
    (1001, "server.udp_coalesce_us: must be within 0..1000"),
    ("20", "server.udp_coalesce_us"),
])
def test_bad_coalesce_is_rejected_with_the_key(value, message):
    with pytest.raises(ConfigError) as exc:
        cfgmod.from_dict({"server": {"udp_coalesce_us": value}, "zone": []}, file="pop53.toml")
    assert str(exc.value).startswith("pop53.toml:") and message in str(exc.value)


def test_coalesce_default_and_off():
    assert cfgmod.from_dict({"zone": []}).udp_coalesce_us == 0      # opt-in (docs/udp_cost.md)
    assert cfgmod.from_dict({"server": {"udp_coalesce_us": 20}, "zone": []}).udp_coalesce_us == 20
