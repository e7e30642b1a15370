"""Issue 3: reloads and image swaps under load lose no query and return no wrong answer.

Two versions of reload.example. (zones/reload-v1.zone, reload-v2.zone) differ in the serial, the
two A and the two TXT records of 'pair', and in which of only1/only2 exists.  A client queries at
a steady rate while the server is reloaded (Server.reload() in-process, SIGHUP against a
`pop53 serve` process) or while images are published back and forth; every answer must be
byte-for-byte (id aside) the answer of version 1 or of version 2: never a mix, never missing.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import dns.message
import pytest

import pop53

from integ_support import (IDENTITY, RELOAD_V1, RELOAD_V2, free_port, make_query, metric,
                           msg_id, read_frame, frame, scrape, tcp_connect, udp_exchange,
                           udp_socket, wait_for, with_id)

V1_TEXT = RELOAD_V1.read_text()
V2_TEXT = RELOAD_V2.read_text()
BAD_ZONES = {
    # each must be rejected on reload, naming the file (and line where there is one)
    "syntax": V1_TEXT + "broken  A  not-an-address\n",
    "cname-and-other-data": V1_TEXT + "www  CNAME  pair\n",
    "no-soa": "\n".join(l for l in V1_TEXT.splitlines() if " SOA " not in l) + "\n",
    "empty": "",
    "missing": None,         # the file was removed
    "directory": None,       # a directory where the file was
}
QUESTIONS = [("pair.reload.example.", "A"), ("pair.reload.example.", "TXT"),
             ("reload.example.", "SOA"), ("only1.reload.example.", "A"),
             ("only2.reload.example.", "A"), ("www.reload.example.", "A"),
             ("pair.reload.example.", "ANY")]


class Oracle:
    """The two acceptable answers (id zeroed) of every question, computed in-process."""

    def __init__(self, responder, client=("127.0.0.1", 0)):
        images = [pop53.compile_zones([RELOAD_V1]), pop53.compile_zones([RELOAD_V2])]
        self.wires = [make_query(n, t, qid=0) for n, t in QUESTIONS]
        self.answers = {}
        for tcp in (False, True):
            for i, w in enumerate(self.wires):
                a, b = (pop53.answer(img, w, client, tcp=tcp, responder=responder) for img in images)
                assert a != b or QUESTIONS[i][0] == "www.reload.example.", QUESTIONS[i]
                self.answers[(tcp, i)] = (a, b)

    def version(self, i: int, reply: bytes, tcp: bool = False) -> int | None:
        """1 or 2 if reply is version 1's or 2's answer to question i, 3 for an answer both
        versions share, None if it is neither: a wrong answer."""
        a, b = self.answers[(tcp, i)]
        r = with_id(reply, 0)
        if r == a == b:
            return 3
        if r == a:
            return 1
        if r == b:
            return 2
        return None


class _Load(threading.Thread):
    """A query loop bounded in count and time that sorts the answers: lost, wrong, or which
    version (1 or 2) they come from."""

    def __init__(self, addr, oracle: Oracle, count: int, max_seconds: float):
        super().__init__(daemon=True)
        self.addr, self.oracle, self.count, self.max_seconds = addr, oracle, count, max_seconds
        self.sent = 0
        self.lost: list[int] = []
        self.wrong: list[tuple[int, bytes]] = []
        self.seen = {1: 0, 2: 0}
        self.stop_early = threading.Event()
        self.t0 = 0.0

    def numbers(self):
        """Query numbers until the count, the time limit or stop_early."""
        self.t0 = time.monotonic()
        for n in range(self.count):
            if self.stop_early.is_set() or time.monotonic() - self.t0 > self.max_seconds:
                return
            yield n

    def judge(self, i: int, r: bytes, tcp: bool = False) -> None:
        v = self.oracle.version(i, r, tcp=tcp)
        if v is None:
            self.wrong.append((i, r))
        elif v != 3:
            self.seen[v] += 1


class UdpLoad(_Load):
    """Queries at a steady rate, one at a time (no retry)."""

    def __init__(self, addr, oracle: Oracle, count: int, interval: float, max_seconds: float):
        super().__init__(addr, oracle, count, max_seconds)
        self.interval = interval

    def run(self):
        with udp_socket(self.addr, timeout=2.0) as sock:
            for n in self.numbers():
                delay = self.t0 + n * self.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                i = n % len(self.oracle.wires)
                wire = with_id(self.oracle.wires[i], n + 1)
                self.sent += 1
                r = udp_exchange(sock, wire)
                if r is None:
                    self.lost.append(n)
                    continue
                self.judge(i, r)


class TcpLoad(_Load):
    """The same over one TCP connection, one query at a time."""

    def run(self):
        with tcp_connect(self.addr, timeout=5.0) as s:
            for n in self.numbers():
                i = n % len(self.oracle.wires)
                s.sendall(frame(with_id(self.oracle.wires[i], n + 1)))
                self.sent += 1
                try:
                    r = read_frame(s)
                except OSError:
                    r = None
                if r is None or msg_id(r) != (n + 1) & 0xFFFF:
                    self.lost.append(n)
                    break
                self.judge(i, r, tcp=True)
                time.sleep(0.002)


def check_load(load, min_sent: int):
    assert load.sent >= min_sent, f"only {load.sent} queries sent"
    assert not load.lost, f"{len(load.lost)} of {load.sent} queries got no answer"
    assert not load.wrong, (f"{len(load.wrong)} wrong answers, e.g. question {load.wrong[0][0]}: "
                            f"{dns.message.from_wire(load.wrong[0][1])}")
    # both versions were really served while the client was querying
    assert load.seen[1] > 10 and load.seen[2] > 10, load.seen


@pytest.mark.slow
def test_reload_under_load_in_process(start_server, tmp_path):
    served = tmp_path / "reload.example.zone"
    served.write_text(V1_TEXT)
    mport = free_port()
    s = start_server([served], workers=2, metrics=f"127.0.0.1:{mport}", tcp_max_queries=100000)
    oracle = Oracle(s.responder)
    udp = UdpLoad(s.addresses[0], oracle, count=3000, interval=0.0015, max_seconds=15)
    tcp = TcpLoad(s.addresses[0], oracle, count=1500, max_seconds=15)
    gen0 = s.shared.generation
    good = bad = 0
    udp.start()
    tcp.start()
    try:
        deadline = time.monotonic() + 15
        n = 0
        while udp.is_alive() and time.monotonic() < deadline and n < 400:
            n += 1
            if n % 7 == 0:
                # a bad zone in the middle of it: rejected, the last good version keeps serving
                served.write_text(BAD_ZONES["syntax"])
                assert s.reload() is False
                bad += 1
            else:
                served.write_text(V2_TEXT if good % 2 == 0 else V1_TEXT)
                assert s.reload() is True, s.last_error
                good += 1
            time.sleep(0.01)
    finally:
        udp.stop_early.set()
        udp.join(20)
        tcp.stop_early.set()
        tcp.join(20)
    check_load(udp, 1000)
    check_load(tcp, 100)
    assert good >= 20
    assert s.shared.generation == gen0 + good          # rejected reloads publish nothing
    assert s.reload_failures == bad
    assert metric(scrape(("127.0.0.1", mport)), "pop53_reload_failures") == bad


@pytest.mark.parametrize("kind", sorted(BAD_ZONES))
def test_bad_zone_on_reload_is_rejected_and_old_data_keeps_serving(start_server, tmp_path, kind):
    served = tmp_path / "reload.example.zone"
    served.write_text(V2_TEXT)
    mport = free_port()
    s = start_server([served], workers=1, metrics=f"127.0.0.1:{mport}")
    oracle = Oracle(s.responder)
    gen = s.shared.generation
    served.unlink()
    if kind == "directory":
        served.mkdir()
    elif kind != "missing":
        served.write_text(BAD_ZONES[kind])
    assert s.reload() is False
    assert s.reload_failures == 1
    assert str(served) in s.last_error, s.last_error   # the error names the file
    if kind == "syntax":
        line = BAD_ZONES[kind].count("\n")
        assert f":{line}" in s.last_error, s.last_error
    assert s.shared.generation == gen
    assert s.zone_serials == {"reload.example.": 1002}
    assert metric(scrape(("127.0.0.1", mport)), "pop53_reload_failures") == 1
    with udp_socket(s.addresses[0]) as sock:
        for i, w in enumerate(oracle.wires):
            r = udp_exchange(sock, with_id(w, 500 + i))
            assert r is not None and oracle.version(i, r) in (2, 3)
    # and a good reload afterwards works again
    if kind == "directory":
        served.rmdir()
    served.write_text(V1_TEXT)
    assert s.reload() is True
    assert s.zone_serials == {"reload.example.": 1001}


def _serial(sock) -> int | None:
    r = udp_exchange(sock, make_query("reload.example.", "SOA", qid=0xBEEF))
    if r is None:
        return None
    m = dns.message.from_wire(r)
    return m.answer[0][0].serial if m.answer else None


@pytest.mark.slow
def test_sighup_reload_under_load(serve, tmp_path):
    served = tmp_path / "reload.example.zone"
    served.write_text(V1_TEXT)
    mport = free_port()
    p = serve("--zone", str(served), "--listen", "127.0.0.1:0", "--workers", "2",
              "--identity", IDENTITY, "--metrics", f"127.0.0.1:{mport}")
    addr = p.addresses[0]
    oracle = Oracle(pop53.Responder(identity=IDENTITY))
    udp = UdpLoad(addr, oracle, count=4000, interval=0.0015, max_seconds=15)
    udp.start()
    reloads = 0
    try:
        with udp_socket(addr) as probe:
            deadline = time.monotonic() + 8
            while udp.is_alive() and time.monotonic() < deadline and reloads < 40:
                want = 1002 if reloads % 2 == 0 else 1001
                served.write_text(V2_TEXT if want == 1002 else V1_TEXT)
                os.kill(p.pid, signal.SIGHUP)
                assert wait_for(lambda: _serial(probe) == want, 5.0), f"SIGHUP reload to {want} not seen"
                reloads += 1
            # a bad zone: rejected, counted, the last version keeps serving
            last = _serial(probe)
            served.write_text(BAD_ZONES["syntax"])
            os.kill(p.pid, signal.SIGHUP)
            assert wait_for(lambda: metric(scrape(("127.0.0.1", mport)), "pop53_reload_failures") == 1, 5.0)
            assert _serial(probe) == last
            assert p.proc.poll() is None
    finally:
        udp.stop_early.set()
        udp.join(20)
    assert reloads >= 5
    check_load(udp, 500)
    assert "reload rejected" in p.log_text()


@pytest.mark.slow
def test_query_answered_from_exactly_one_image_during_swaps(start_server):
    """Publish images A and B back and forth as fast as possible while clients hammer: every
    answer (two A records, or two TXT records, of one owner) is entirely A's or entirely B's."""
    s = start_server([RELOAD_V1], workers=2, tcp_max_queries=100000)
    img = [pop53.compile_zones([RELOAD_V1]), pop53.compile_zones([RELOAD_V2])]
    oracle = Oracle(s.responder)
    stop = threading.Event()
    publishes = 0

    def publisher():
        nonlocal publishes
        t0 = time.monotonic()
        while not stop.is_set() and publishes < 200000 and time.monotonic() - t0 < 10:
            s.publish(img[publishes % 2])
            publishes += 1
            if publishes % 64 in (0, 33):
                # let the clients and the reclaimer run, with A current or with B current
                time.sleep(0)

    results = {"answers": 0, "wrong": [], "lost": 0, "seen": {1: 0, 2: 0}}
    lock = threading.Lock()

    def udp_client(seed: int):
        # bursts of 16 in flight so the workers' recvmmsg batches hold several queries
        with udp_socket(s.addresses[0], timeout=2.0) as sock:
            qid = seed << 12
            for _ in range(60):
                if stop.is_set():
                    break
                pending = {}
                for k in range(16):
                    i = k % 2                 # 'pair' A / 'pair' TXT
                    qid = (qid + 1) & 0xFFFF
                    pending[qid] = i
                    sock.send(with_id(oracle.wires[i], qid))
                while pending:
                    try:
                        r = sock.recv(4096)
                    except (socket.timeout, TimeoutError):
                        with lock:
                            results["lost"] += len(pending)
                        break
                    i = pending.pop(msg_id(r), None)
                    if i is None:
                        continue
                    v = oracle.version(i, r)
                    with lock:
                        results["answers"] += 1
                        if v is None:
                            results["wrong"].append(r)
                        else:
                            results["seen"][v] += 1

    pub = threading.Thread(target=publisher, daemon=True)
    clients = [threading.Thread(target=udp_client, args=(k,), daemon=True) for k in range(3)]
    tcp = TcpLoad(s.addresses[0], oracle, count=600, max_seconds=10)
    pub.start()
    for c in clients:
        c.start()
    tcp.start()
    try:
        for c in clients:
            c.join(20)
        tcp.join(20)
    finally:
        stop.set()
        pub.join(5)
    assert publishes > 100
    assert results["lost"] == 0
    assert results["answers"] == 3 * 60 * 16
    assert not results["wrong"], dns.message.from_wire(results["wrong"][0])
    assert results["seen"][1] > 0 and results["seen"][2] > 0, (results["seen"], publishes)
    assert not tcp.lost and not tcp.wrong and tcp.sent >= 100
    # every retired image is released once the workers have passed a batch boundary
    assert wait_for(lambda: s.reclaim() == 0, 3.0), f"{len(s.slot._retired)} images never reclaimed"
