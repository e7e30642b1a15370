"""The dnstap ring and encoder of the data plane (ext/dnstap.pxi, ext/observe.pxi), without a
server: a full ring drops and counts instead of waiting; records that wrap around the buffer end
come out intact; big TCP answers fit whole; the frames decode with dnstap-read."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import dns.message
import dns.rrset

from pop53 import _core
from pop53.serve.dnstap import START, STOP, control_frame

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
import dnstap_support as tap  # noqa: E402

CLIENT = bytes([192, 0, 2, 7])


def _exchange(name: str, n_txt: int = 0) -> tuple[bytes, bytes]:
    q = dns.message.make_query(name, "TXT")
    r = dns.message.make_response(q)
    if n_txt:
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT",
                                            *[f'"{i:04d}{"x" * 250}"' for i in range(n_txt)]))
    return q.to_wire(), r.to_wire(max_size=65535)


def _write(path: Path, writer, ring_sets=1) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, control_frame(START))
        n = writer.drain(fd)
        os.write(fd, control_frame(STOP, None))
        return n
    finally:
        os.close(fd)


def test_full_ring_drops_and_counts(tmp_path):
    ring = _core.DnstapRing(1 << 16, 1, True, True, False, bytes([192, 0, 2, 53]), 53)
    q, r = _exchange("full.example.", 2)
    results = [ring.push(q, r, CLIENT, 1000 + i) for i in range(200)]
    kept = results.count(True)
    assert 0 < kept < 200 and results == [True] * kept + [False] * (200 - kept)
    st = ring.stats()
    assert st["sampled"] == 200 and st["dropped"] == 200 - kept
    writer = _core.DnstapWriter([ring], "ring-test", "v1")
    assert _write(tmp_path / "f.dnstap", writer) == 2 * kept
    taps = tap.read(tmp_path / "f.dnstap")
    assert [t.client_port for t in taps[::2]] == list(range(1000, 1000 + kept))
    assert {(t.kind, t.client, t.server, t.server_port, t.size) for t in taps} == {
        ("AQ", "192.0.2.7", "192.0.2.53", 53, len(q)), ("AR", "192.0.2.7", "192.0.2.53", 53, len(r))}
    # drained: room again
    assert ring.push(q, r, CLIENT, 7) and ring.stats()["pending_bytes"] > 0


def test_wraparound_and_sampling(tmp_path):
    ring = _core.DnstapRing(1 << 16, 3, False, True, True)     # responses only, 1 in 3, TCP
    writer = _core.DnstapWriter([ring])
    path = tmp_path / "w.dnstap"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, control_frame(START))
    expect = []
    for rnd in range(40):                     # ~40 x 12 KB through a 64 KB ring: it wraps
        for i in range(30):
            k = rnd * 30 + i
            q, r = _exchange(f"n{k}.example.", k % 4)
            assert ring.push(q, r, CLIENT, k)
            if (k + 1) % 3 == 0:
                expect.append((k, len(r)))
        writer.drain(fd)
    os.write(fd, control_frame(STOP, None))
    os.close(fd)
    taps = tap.read(path)
    assert [(t.client_port, t.size) for t in taps] == expect
    assert {(t.kind, t.proto) for t in taps} == {("AR", "TCP")}
    assert [t.qname for t in taps] == [f"n{k}.example" for k, _ in expect]
    assert writer.stats()["frames"] == len(expect) and ring.stats()["dropped"] == 0


def test_big_tcp_answer_whole(tmp_path):
    q, r = _exchange("big.example.", 230)
    assert len(r) > 60000
    small = _core.DnstapRing(1 << 16, 1, True, True, True)
    assert small.push(q, r, CLIENT, 1)
    assert not small.push(q, r, CLIENT, 2)     # no room for a second one: dropped, counted
    assert small.stats()["dropped"] == 1
    ring = _core.DnstapRing(1 << 18, 1, True, True, True, bytes(16), 53)
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    assert [ring.push(q, r, v6, 4000 + i) for i in range(5)] == [True] * 4 + [False]  # 4 x 60 KB
    writer = _core.DnstapWriter([ring])
    assert _write(tmp_path / "b.dnstap", writer) == 8
    taps = tap.read(tmp_path / "b.dnstap")
    assert [(t.kind, t.size) for t in taps] == [("AQ", len(q)), ("AR", len(r))] * 4
    assert {t.client for t in taps} == {"2001:db8::1"}
