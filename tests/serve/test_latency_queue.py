"""Issue 14 point 12: answer latency that includes the kernel's receive queue.  A worker that
cannot read for 300 ms leaves a standing queue on its socket: the time inside the server
(`pop53_answer_latency_seconds`, per batch) does not see it, the time from each query's kernel
receive stamp to its send (`pop53_answer_latency_total_seconds`) does."""
from __future__ import annotations

import socket
import time

import pytest

from pop53 import _core
from pop53 import config as cfgmod
from pop53.errors import ConfigError
from pop53.serve.server import Server

from integ_support import (EXAMPLE_ZONE, free_port, make_query, metric, scrape, server_config,
                           start_with_retry, wait_for)

PAUSE = 0.3
N = 50


def _le(families, name, bound: str) -> float:
    return metric(families, name, proto="udp", le=bound)


def _server(mport: int, **server_keys) -> Server:
    """One UDP worker on the example zone, metrics on mport."""
    return start_with_retry(lambda: Server(server_config([EXAMPLE_ZONE], workers=1,
                                                         metrics=f"127.0.0.1:{mport}",
                                                         **server_keys)))


def _queue_while_stopped(s, c, qid0: int) -> None:
    """No reader for PAUSE seconds: N queries wait in the socket's receive queue, then the
    worker runs again and answers them all."""
    w, t = s.workers[0], s.net.threads[0]
    w.stop()
    t.join(2)
    assert not t.is_alive()
    for i in range(N):
        c.sendto(make_query("www.example.com.", "A", qid=qid0 + i), s.addresses[0])
    time.sleep(PAUSE)
    s.net.threads[0] = s.net._thread(0, w, t.name)
    s.net.threads[0].start()
    assert len({c.recv(4096)[:2] for _ in range(N)}) == N


def test_standing_queue_is_in_the_total_latency_not_in_the_server_time():
    mport = free_port()
    s = _server(mport, receive_timestamp_every=1)
    try:
        addr = s.addresses[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            _queue_while_stopped(s, c, 1)
            # and N more with no queue
            for i in range(N):
                c.sendto(make_query("www.example.com.", "A", qid=1000 + i), addr)
                c.recv(4096)
        m = ("127.0.0.1", mport)
        total, inside = "pop53_answer_latency_total_seconds", "pop53_answer_latency_seconds"
        assert wait_for(lambda: _le(scrape(m), total, "+Inf") >= 2 * N, 5)
        f = scrape(m)
        # bucket bounds are 2**(10+k) ns: 0.268435456 s is the first at or above PAUSE - 10%
        assert _le(f, total, "+Inf") == 2 * N
        assert _le(f, total, "0.134217728") <= N, "the queued queries waited >= 0.27 s"
        assert _le(f, total, "0.268435456") <= N
        assert _le(f, inside, "0.134217728") == _le(f, inside, "+Inf") == 2 * N, \
            "inside the server nothing waited that long"
    finally:
        s.stop()


def test_receive_timestamps_off_leaves_the_total_empty():
    mport = free_port()
    s = _server(mport, receive_timestamps=False)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            for i in range(5):
                c.sendto(make_query("www.example.com.", "A", qid=i + 1), s.addresses[0])
                c.recv(4096)
        m = ("127.0.0.1", mport)
        assert wait_for(lambda: _le(scrape(m), "pop53_answer_latency_seconds", "+Inf") == 5, 5)
        assert _le(scrape(m), "pop53_answer_latency_total_seconds", "+Inf") == 0
    finally:
        s.stop()


SO_TIMESTAMPNS, SO_TIMESTAMPING = 35, 37
STAMPING_RX = (1 << 3) | (1 << 4)     # SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)


def _into_window(stamped: bool, every: int, lo: float = 0.2, hi: float = 0.45) -> None:
    """Sleep until `lo` s into a CLOCK_MONOTONIC_COARSE second that is (or is not) a stamped
    window (one in `every`, ext/kstamp.pxi); the idle worker re-decides every 100 ms."""
    while True:
        t = time.clock_gettime(CLOCK_MONOTONIC_COARSE)
        sec, frac = int(t), t - int(t)
        if _core.kstamp_window(every, sec) == stamped and lo <= frac <= hi:
            return
        time.sleep(0.01)


def _asked(s) -> tuple[int, int]:
    sock = s.net.udp_socks[0]
    return (sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS),
            sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING))


def test_sampled_stamps_cover_one_second_in_n_and_keep_the_queue():
    """receive_timestamp_every = 2: the worker asks for stamps (SO_TIMESTAMPING) during one
    second in two and not at all in the others, never with SO_TIMESTAMPNS (which would keep the
    kernel stamping every packet of the host for good); a stamped batch still carries the time
    its queries stood in the socket's queue."""
    assert [_core.kstamp_window(2, t) for t in range(4)] == [True, False, True, False]
    assert _core.kstamp_window(1, 7) and _core.kstamp_window(16, 32) and not _core.kstamp_window(16, 33)
    mport = free_port()
    s = _server(mport, receive_timestamp_every=2)
    try:
        addr = s.addresses[0]
        m = ("127.0.0.1", mport)
        total, inside = "pop53_answer_latency_total_seconds", "pop53_answer_latency_seconds"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)

            def ask(qid0: int, n: int) -> None:
                for i in range(n):
                    c.sendto(make_query("www.example.com.", "A", qid=qid0 + i), addr)
                    c.recv(4096)

            _into_window(False, 2)
            assert _asked(s) == (0, 0), "outside its window the socket asks for no stamp"
            ask(1, 10)
            _into_window(True, 2)
            assert _asked(s) == (0, STAMPING_RX)
            ask(100, 10)
            assert wait_for(lambda: _le(scrape(m), inside, "+Inf") == 20, 5)
            assert _le(scrape(m), total, "+Inf") == 10, "the stamped window's queries only"
            assert metric(scrape(m), "pop53_answer_latency_total_sample_every", proto="udp") == 2
            # N queries queued for PAUSE seconds inside a stamped window, read in one batch
            _into_window(True, 2, 0.15, 0.3)
            _queue_while_stopped(s, c, 200)
        assert wait_for(lambda: _le(scrape(m), total, "+Inf") == 10 + N, 5)
        assert _le(scrape(m), total, "0.134217728") <= 10, "the queued batch waited >= 0.27 s"
    finally:
        s.stop()


def test_stamping_every_batch_keeps_timestampns():
    """receive_timestamp_every = 1: SO_TIMESTAMPNS on the socket for good (no switching)."""
    s = _server(free_port(), receive_timestamp_every=1)
    try:
        assert _asked(s)[0] == 1
    finally:
        s.stop()


@pytest.mark.parametrize("value,message", [
    (0, "server.receive_timestamp_every: must be within 1..65536"),
    (70000, "server.receive_timestamp_every: must be within 1..65536"),
    ("16", "server.receive_timestamp_every"),
])
def test_bad_stamp_sampling_is_rejected_with_the_key(value, message):
    with pytest.raises(ConfigError) as exc:
        cfgmod.from_dict({"server": {"receive_timestamp_every": value}, "zone": []},
                         file="pop53.toml")
    assert str(exc.value).startswith("pop53.toml:") and message in str(exc.value)


def test_stamp_sampling_default():
    """Sampled by default: one second in 16."""
    assert cfgmod.from_dict({"zone": []}).receive_timestamp_every == 16
