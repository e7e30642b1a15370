"""Issue 16: the AF_XDP path, in namespaces joined by a veth pair.  Answers over XDP are the
in-process answers byte for byte (IPv4 and IPv6); what the XDP program does not take (TCP,
ICMP, other UDP ports, fragments) still reaches the kernel; malformed DNS, a fuzz run and
frames with lying lengths never stop a worker, and every reply parses."""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

import dns.edns
import dns.message
import pytest

import pop53
from pop53 import _core
from pop53.lab.veth import VethRig, netns_of_thread
from tests.malformed.test_every_reply_parses import check, packets

from integ_support import frame, make_query, query_corpus, read_frame, udp_exchange
from test_malformed import flood_packets
from xdp_support import (PORT, client_socket, exchange_window, require_xdp, start_xdp_server,
                         xdp_workers)

pytestmark = pytest.mark.root
ACT_DROP, ACT_REPLY = 0, 1    # _core: and ACT_CONTROL 2 (NOTIFY, XFR, TSIG: answered by the control plane)


@pytest.fixture(scope="module")
def rig():
    require_xdp()
    with VethRig("a") as r:
        yield r


@pytest.fixture(scope="module")
def server(rig):
    s = start_xdp_server(rig)
    yield s
    s.stop()


def _replies(server) -> tuple[int, int]:
    xdp = sum(w.stats()["replies"] for w in xdp_workers(server))
    return xdp, sum(w.stats()["replies"] for w in server.workers) - xdp


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_answers_over_xdp_equal_in_process(rig, server, family):
    host = rig.srv4 if family == "v4" else rig.srv6
    corpus = query_corpus()
    before = _replies(server)
    mismatches, missing = [], 0
    with client_socket(rig, host) as sock:
        client = sock.getsockname()[:2]
        for wire in corpus:
            got = udp_exchange(sock, wire)
            want = pop53.answer(server.current_image, wire, client, responder=server.responder)
            if got is None:
                missing += 1
            elif got != want:
                mismatches.append(dns.message.from_wire(wire).question[0].to_text())
    assert missing == 0
    assert not mismatches, f"{len(mismatches)} answers differ, e.g. {mismatches[:5]}"
    after = _replies(server)
    # every answer came from the XDP worker, none from the kernel's sockets
    assert after[0] - before[0] == len(corpus) and after[1] == before[1]
    assert server.xdp.modes[rig.srv_if] in ("copy", "zerocopy")


def test_kernel_keeps_tcp_icmp_other_ports_and_fragments(rig, server):
    before = sum(w.stats()["udp"] for w in xdp_workers(server))
    for host in (rig.srv4, rig.srv6):
        ping = subprocess.run(["ip", "netns", "exec", rig.cli, "ping", "-c", "1", "-W", "2", host],
                              capture_output=True, text=True, timeout=10)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        wire = make_query("www.integ.example.", "A", qid=77)
        with client_socket(rig, host, socket.SOCK_STREAM) as t:
            t.sendall(frame(wire))
            got = read_frame(t)
        assert got == pop53.answer(server.current_image, wire, ("192.0.2.1", 1), tcp=True,
                                   responder=server.responder)
        # UDP to another port: a kernel socket in the server namespace gets it
        with netns_of_thread(rig.srv):
            other = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        with other, client_socket(rig, host, connect_port=0) as c:
            other.bind((host, 5300))
            other.settimeout(2)
            c.sendto(b"not dns, port 5300", (host, 5300))
            assert other.recv(100) == b"not dns, port 5300"
    # a query in IPv4 fragments (3 kB of EDNS padding): the kernel reassembles it and a socket
    # worker answers
    big = dns.message.make_query("www.integ.example.", "A", use_edns=0,
                                 options=[dns.edns.GenericOption(12, bytes(3000))])
    big.id = 78
    wire = big.to_wire(max_size=65535)
    sockets_before = _replies(server)[1]
    with client_socket(rig, rig.srv4) as sock:
        assert udp_exchange(sock, wire) == pop53.answer(server.current_image, wire,
                                                        sock.getsockname()[:2],
                                                        responder=server.responder)
    assert _replies(server)[1] == sockets_before + 1
    assert sum(w.stats()["udp"] for w in xdp_workers(server)) == before


def test_malformed_and_fuzz_over_xdp(rig, server):
    wires = flood_packets()[:2500]
    gen = packets(16)
    wires += [next(gen) for _ in range(2500)]
    wires = [w for w in wires if len(w) <= 1400]          # one frame each (no fragments)
    hosts = [rig.srv4, rig.srv6]
    socks = {h: [client_socket(rig, h) for _ in range(32)] for h in hosts}
    before = sum(w.stats()["udp"] for w in xdp_workers(server))
    failures = []
    try:
        for start in range(0, len(wires), 32):
            host = hosts[(start // 32) % 2]
            chunk = wires[start:start + 32]
            want = [_core.answer(server.current_image.view, w, server.responder, False) for w in chunk]
            got = exchange_window(socks[host], chunk,
                                  [a != ACT_DROP for a, _r in want])
            for w, (act, r), g in zip(chunk, want, got):
                try:
                    check(w, g, False, server.responder)
                    if act == ACT_REPLY:
                        assert g == r, "differs from the in-process answer"
                except AssertionError as exc:
                    failures.append(f"{w.hex()}: {exc}")
    finally:
        for ss in socks.values():
            for s in ss:
                s.close()
    assert not failures, f"{len(failures)} bad replies, e.g. {failures[:3]}"
    ws = xdp_workers(server)
    assert sum(w.stats()["udp"] for w in ws) - before >= len(wires)
    assert all(w.running for w in ws)
    wire = make_query("www.integ.example.", "A", qid=9)
    with client_socket(rig, rig.srv4) as sock:
        assert udp_exchange(sock, wire) is not None


def _mac(ns: str, dev: str) -> bytes:
    out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-j", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def _csum(b: bytes) -> int:
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s & 0xFFFF) + (s >> 16)
    return ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF


def test_frames_with_lying_lengths_are_dropped(rig, server):
    """Raw frames the XDP program redirects (UDP to the served port) whose IP or UDP lengths
    disagree with the frame: dropped by the worker's parser, which keeps answering."""
    dst, src = _mac(rig.srv, rig.srv_if), _mac(rig.cli, rig.cli_if)
    q = make_query("www.integ.example.", "A", qid=5)
    a4, b4 = socket.inet_aton(rig.cli4), socket.inet_aton(rig.srv4)

    def frame(ip_len_delta=0, udp_len=None, cut=0):
        udp = struct.pack("!HHHH", 40000, PORT, udp_len if udp_len is not None else 8 + len(q), 0) + q
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + ip_len_delta, 1, 0, 64, 17, 0, a4, b4)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        f = dst + src + b"\x08\x00" + ip + udp
        return f[:len(f) - cut] if cut else f

    bad = [frame(udp_len=4), frame(udp_len=8 + len(q) + 40), frame(ip_len_delta=60),
           frame(ip_len_delta=-(len(q) + 1)), frame(cut=len(q) // 2), frame(udp_len=0xFFFF)]
    before = sum(w.stats()["dropped"] for w in xdp_workers(server))
    with netns_of_thread(rig.cli):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with raw:
        raw.bind((rig.cli_if, 0))
        for f in bad * 20:
            raw.send(f)
    time.sleep(0.3)
    ws = xdp_workers(server)
    assert sum(w.stats()["dropped"] for w in ws) - before >= len(bad) * 20
    # IPv4 options and an 802.1Q tag: the program passes them to the kernel; the options one
    # is a good query that a socket worker answers
    udp = struct.pack("!HHHH", 40001, PORT, 8 + len(q), 0) + q
    ip = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(udp), 2, 0, 64, 17, 0, a4, b4) + b"\x01" * 4
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    with_options = dst + src + b"\x08\x00" + ip + udp
    vlan = dst + src + b"\x81\x00\x00\x05" + frame()[12:]
    xdp_udp, sockets = sum(w.stats()["udp"] for w in ws), _replies(server)[1]
    with netns_of_thread(rig.cli):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with raw:
        raw.bind((rig.cli_if, 0))
        raw.send(with_options)
        raw.send(vlan)
    time.sleep(0.3)
    assert sum(w.stats()["udp"] for w in ws) == xdp_udp
    assert _replies(server)[1] == sockets + 1
    assert all(w.running for w in ws)
    with client_socket(rig, rig.srv4) as sock:
        assert udp_exchange(sock, q) == pop53.answer(server.current_image, q, sock.getsockname()[:2],
                                                    responder=server.responder)


def _udp_ok(src: bytes, dst: bytes, udp: bytes) -> bool:
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(udp))
    data = pseudo + udp + (b"\0" if len(udp) % 2 else b"")
    return struct.unpack_from("!H", udp, 6)[0] != 0 and _csum(data) == 0


def test_reply_frames_mirror_the_query_with_correct_checksums(rig, server):
    """Captured on the client's end of the veth: MACs, addresses and ports mirrored, lengths
    right, the IPv4 header checksum and the UDP checksum (RFC 768; mandatory over IPv6, RFC
    8200 §8.1) verify -- checked here, not left to the receiving kernel."""
    with netns_of_thread(rig.cli):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    srv_mac, cli_mac = _mac(rig.srv, rig.srv_if), _mac(rig.cli, rig.cli_if)
    with cap:
        cap.bind((rig.cli_if, 0))
        cap.settimeout(2)
        for host, qid in ((rig.srv4, 301), (rig.srv6, 302)):
            wire = make_query("www.integ.example.", "TXT", qid=qid)
            with client_socket(rig, host) as sock:
                cport = sock.getsockname()[1]
                assert udp_exchange(sock, wire) is not None
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                f = cap.recv(65535)
                if f[:6] != cli_mac or f[6:12] != srv_mac:
                    continue
                if f[12:14] == b"\x08\x00" and host == rig.srv4:
                    ip, udp = f[14:34], f[34:]
                    if struct.unpack_from("!H", udp, 2)[0] != cport:
                        continue
                    assert _csum(ip) == 0, "IPv4 header checksum"
                    assert ip[12:16] == socket.inet_aton(rig.srv4) and ip[16:20] == socket.inet_aton(rig.cli4)
                    assert struct.unpack_from("!H", ip, 2)[0] == len(f) - 14
                    assert _udp_ok(ip[12:16], ip[16:20], udp)
                elif f[12:14] == b"\x86\xdd" and host == rig.srv6:
                    ip, udp = f[14:54], f[54:]
                    if struct.unpack_from("!H", udp, 2)[0] != cport:
                        continue
                    assert ip[8:24] == socket.inet_pton(socket.AF_INET6, rig.srv6)
                    assert ip[24:40] == socket.inet_pton(socket.AF_INET6, rig.cli6)
                    assert struct.unpack_from("!H", ip, 4)[0] == len(udp)
                    assert _udp_ok(ip[8:24], ip[24:40], udp)
                else:
                    continue
                assert struct.unpack_from("!HH", udp, 0) == (PORT, cport)
                assert struct.unpack_from("!H", udp, 4)[0] == len(udp)
                assert udp[8:10] == struct.pack("!H", qid)
                break
            else:
                raise AssertionError(f"no reply frame to {host} captured")
