"""Issue 14 point 11: dnstap.  What a running server writes is read back and decoded by the real
tools (dnstap-read; fstrm_capture on the unix socket): every query and response sent is there,
paired, with the right addresses, ports, transport and sizes; sampling keeps exactly 1 in N; a
reader that goes away is reconnected; a stalled reader makes the rings drop and count, and never
slows a worker."""
from __future__ import annotations

import socket
import time

import dns.message
import dns.query
import pytest

from pop53 import config as cfgmod
from pop53.errors import ConfigError
from pop53.serve.server import Server

import dnstap_support as tap
from integ_support import (EXAMPLE_ZONE, INTEG_ZONE, free_port, make_query, metric, scrape,
                           start_with_retry, wait_for)


@pytest.fixture
def dnstap_server():
    servers = []

    def start(dnstap: dict, workers: int = 1, listen: str = "127.0.0.1:0"):
        mport = free_port()
        doc = {"server": {"listen": [listen], "workers": workers, "identity": "tap-test",
                          "metrics": f"127.0.0.1:{mport}"},
               "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)},
                        {"name": "example.com.", "file": str(EXAMPLE_ZONE)}],
               "dnstap": dnstap}

        def make():
            s = Server(cfgmod.from_dict(doc, file="<dnstap test>"))
            servers.append(s)
            return s
        s = start_with_retry(make)
        return s, ("127.0.0.1", s.addresses[0][1]), ("127.0.0.1", mport)

    yield start
    for s in servers:
        s.stop()


def _udp(addr, name, rdtype="A", qid=1, keep: list | None = None):
    """One query from its own socket: (client port, reply bytes).  With `keep`, the socket stays
    open (appended there), so the kernel cannot hand its port to the next query's socket."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(2)
        s.bind(("127.0.0.1", 0))
        s.sendto(make_query(name, rdtype, qid=qid), addr)
        reply = s.recv(65535)
        port = s.getsockname()[1]
    except BaseException:
        s.close()
        raise
    if keep is None:
        s.close()
    else:
        keep.append(s)
    return port, reply


def _frames(maddr) -> float:
    return metric(scrape(maddr), "pop53_dnstap_frames")


def test_file_pairs_every_query_and_response(dnstap_server, tmp_path):
    out = tmp_path / "t.dnstap"
    s, addr, maddr = dnstap_server({"file": str(out)}, workers=2)
    # the taps are paired by client port: every socket stays open until the end, so no two
    # queries can share an ephemeral port (a closed socket's port may be handed out again)
    kept: list[socket.socket] = []
    try:
        sent = [_udp(addr, f"w{i}.integ.example." if i % 3 else "www.integ.example.", "A", i + 1,
                     keep=kept) for i in range(12)]
        sent.append(_udp(addr, "nx.example.com.", "AAAA", 99, keep=kept))
        q = dns.message.make_query("www.example.com.", "MX")
        with socket.create_connection(addr, timeout=2) as c:
            tcp_port = c.getsockname()[1]
            tcp_reply = dns.query.tcp(q, addr[0], port=addr[1], sock=c, timeout=2).to_wire()
    finally:
        for k in kept:
            k.close()
    wait_for(lambda: _frames(maddr) >= 2 * (len(sent) + 1), 5)
    assert metric(scrape(maddr), "pop53_dnstap_dropped") == 0
    s.stop()
    taps = tap.read(out)
    assert len(taps) == 2 * (len(sent) + 1)
    by_port = {}
    for t in taps:
        assert t.server == "127.0.0.1" and t.server_port == addr[1]
        by_port.setdefault((t.proto, t.client_port), []).append(t)
    for port, reply in sent:
        pair = sorted(by_port.pop(("UDP", port)), key=lambda t: t.kind)
        assert [t.kind for t in pair] == ["AQ", "AR"]
        msg = dns.message.from_wire(reply)
        assert pair[0].qname + "." == msg.question[0].name.to_text().lower()
        assert pair[0].qname == pair[1].qname
        assert pair[1].size == len(reply)
    pair = sorted(by_port.pop(("TCP", tcp_port)), key=lambda t: t.kind)
    assert [(t.kind, t.qname, t.qtype) for t in pair] == [("AQ", "www.example.com", "MX"),
                                                          ("AR", "www.example.com", "MX")]
    assert pair[1].size == len(tcp_reply)
    assert not by_port
    assert set(tap.read_yaml_field(out, "identity")) == {"tap-test"}
    # the DNS messages themselves: each query and its response carry the id that was sent
    ids = sorted(int(x) for x in tap.read_yaml_field(out, "id"))
    sent_ids = [i + 1 for i in range(12)] + [99, q.id]
    assert ids == sorted(sent_ids * 2)


def test_sampling_keeps_exactly_one_in_n(dnstap_server, tmp_path):
    out = tmp_path / "s.dnstap"
    s, addr, maddr = dnstap_server({"file": str(out), "sample": 10, "responses": False})
    ports = [_udp(addr, f"n{i}.integ.example.", "A", i + 1)[0] for i in range(200)]
    wait_for(lambda: _frames(maddr) >= 20, 5)
    assert metric(scrape(maddr), "pop53_dnstap_sampled") == 20
    s.stop()
    taps = tap.read(out)
    # one worker: its countdown logs the 10th, 20th, ... query it answered
    assert [t.kind for t in taps] == ["AQ"] * 20
    assert [t.client_port for t in taps] == ports[9::10]
    assert [t.qname for t in taps] == [f"n{i}.integ.example" for i in range(9, 200, 10)]


def test_unix_socket_to_fstrm_capture_with_reconnect(dnstap_server, tmp_path):
    sock = tmp_path / "tap.sock"
    first, second = tmp_path / "1.fstrm", tmp_path / "2.fstrm"
    cap = tap.Capture(sock, first)
    try:
        s, addr, maddr = dnstap_server({"socket": str(sock), "reconnect": 0.1, "queries": False})
        wait_for(lambda: metric(scrape(maddr), "pop53_dnstap_connected") == 1, 5)
        a = [_udp(addr, "www.integ.example.", "A", i + 1)[0] for i in range(5)]
        wait_for(lambda: _frames(maddr) >= 5, 5)
    finally:
        cap.stop()
    assert [(t.kind, t.client_port) for t in tap.read(first)] == [("AR", p) for p in a]
    # the reader went away: the server notices on its next write and reconnects to a new one
    sock.unlink(missing_ok=True)
    cap = tap.Capture(sock, second)
    try:
        def delivered():
            _udp(addr, "www.example.com.", "A", 7)
            return metric(scrape(maddr), "pop53_dnstap_opens") >= 2
        wait_for(delivered, 10, interval=0.1)
        b = [_udp(addr, "www.example.com.", "AAAA", i + 1)[0] for i in range(4)]
        s.stop()          # the last drain, STOP, then FINISH from fstrm_capture
    finally:
        cap.stop()
    got = [(t.kind, t.client_port, t.qtype) for t in tap.read(second)]
    assert got[-4:] == [("AR", p, "AAAA") for p in b]


def test_stalled_reader_drops_and_counts_never_blocks(dnstap_server, tmp_path):
    sock = tmp_path / "stall.sock"
    cap = tap.Capture(sock, tmp_path / "stall.fstrm")
    try:
        s, addr, maddr = dnstap_server({"socket": str(sock), "ring_size": 65536})
        wait_for(lambda: metric(scrape(maddr), "pop53_dnstap_connected") == 1, 5)
        cap.pause()       # the reader stops reading: the socket buffer and then the ring fill
        n = 3000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(2)
            for i in range(n):
                c.sendto(make_query("www.integ.example.", "TXT", qid=i & 0xFFFF), addr)
                c.recv(65535)           # every query is answered while the output is stuck
        m = scrape(maddr)
        assert metric(m, "pop53_dnstap_sampled") == n
        assert metric(m, "pop53_dnstap_dropped") > 0
        assert metric(m, "pop53_zone_responses", zone="integ.example.", rcode="NOERROR") == n
    finally:
        cap.stop()


@pytest.mark.parametrize("table, key", [
    ({}, "dnstap"),
    ({"file": "a", "socket": "b"}, "dnstap"),
    ({"file": "a", "sample": 0}, "dnstap.sample"),
    ({"file": "a", "queries": False, "responses": False}, "dnstap"),
    ({"file": "a", "ring_size": 100}, "dnstap.ring_size"),
    ({"file": "a", "sample": "10"}, "dnstap.sample"),
])
def test_bad_dnstap_config_names_the_key(table, key):
    from pop53.serve import dnstap
    with pytest.raises(ConfigError) as e:
        dnstap.parse({"dnstap": table}, "pop53.toml", "id")
    assert key in str(e.value)


def test_check_rejects_a_bad_dnstap_table(tmp_path):
    import subprocess
    import sys
    conf = tmp_path / "pop53.toml"
    conf.write_text('[server]\nlisten = ["127.0.0.1:0"]\n[dnstap]\nfile = "t.dnstap"\nsample = 0\n')
    r = subprocess.run([sys.executable, "-m", "pop53", "check", "-c", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"{conf}:dnstap.sample: must be 1 or more" in r.stderr


def test_output_that_cannot_be_written_drops_and_counts(dnstap_server):
    # /dev/full: every write fails (ENOSPC); the workers keep answering, the ring fills, and
    # what does not fit is dropped and counted
    s, addr, maddr = dnstap_server({"file": "/dev/full", "ring_size": 65536, "reconnect": 0.05})
    n = 600
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(2)
        for i in range(n):
            c.sendto(make_query("www.integ.example.", "A", qid=i), addr)
            c.recv(65535)
    m = scrape(maddr)
    assert metric(m, "pop53_dnstap_connected") == 0
    assert metric(m, "pop53_dnstap_frames") == 0
    assert metric(m, "pop53_dnstap_sampled") == n
    assert 0 < metric(m, "pop53_dnstap_dropped") < n


def test_wildcard_listen_logs_the_address_asked(dnstap_server, tmp_path):
    # on 0.0.0.0 the reply's source comes from IP_PKTINFO; dnstap logs that address too
    out = tmp_path / "wild.dnstap"
    s, addr, maddr = dnstap_server({"file": str(out)}, listen="0.0.0.0:0")
    port, _ = _udp(addr, "www.integ.example.")
    wait_for(lambda: _frames(maddr) >= 2, 5)
    s.stop()
    assert [(t.kind, t.client_port, t.server, t.server_port) for t in tap.read(out)] == [
        ("AQ", port, "127.0.0.1", addr[1]), ("AR", port, "127.0.0.1", addr[1])]
