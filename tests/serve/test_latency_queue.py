"""Issue 14 point 12: answer latency that includes the kernel's receive queue.  A worker that
cannot read for 300 ms leaves a standing queue on its socket: the time inside the server
(`pop53_answer_latency_seconds`, per batch) does not see it, the time from each query's kernel
receive stamp to its send (`pop53_answer_latency_total_seconds`) does."""
from __future__ import annotations

import socket
import time

from pop53.serve.server import Server

from integ_support import (EXAMPLE_ZONE, free_port, make_query, metric, scrape, server_config,
                           start_with_retry, wait_for)

PAUSE = 0.3
N = 50


def _le(families, name, bound: str) -> float:
    return metric(families, name, proto="udp", le=bound)


def test_standing_queue_is_in_the_total_latency_not_in_the_server_time():
    mport = free_port()
    s = start_with_retry(lambda: Server(server_config([EXAMPLE_ZONE], workers=1,
                                                      metrics=f"127.0.0.1:{mport}")))
    try:
        addr = s.addresses[0]
        w, t = s.workers[0], s.net.threads[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            # no reader for PAUSE seconds: the queries wait in the socket's receive queue
            w.stop()
            t.join(2)
            assert not t.is_alive()
            for i in range(N):
                c.sendto(make_query("www.example.com.", "A", qid=i + 1), addr)
            time.sleep(PAUSE)
            s.net.threads[0] = s.net._thread(0, w, t.name)
            s.net.threads[0].start()
            got = {c.recv(4096)[:2] for _ in range(N)}
            assert len(got) == N
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
    s = start_with_retry(lambda: Server(server_config([EXAMPLE_ZONE], workers=1,
                                                      metrics=f"127.0.0.1:{mport}",
                                                      receive_timestamps=False)))
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
