"""The known-resolvers table in a running in-process server: a query from a known /24 is
scored top and one from elsewhere normal by the real worker; a reload publishes a new table
and the old one is retired (freed once every worker has passed a batch boundary); a bad file
is one error naming FILE:LINE, fatal at start, and at reload the previous table keeps serving."""
from __future__ import annotations

import socket

import dns.flags
import dns.message
import pytest

from pop53 import config as cfgmod
from pop53.errors import ConfigError
from pop53.serve.server import Server

from integ_support import INTEG_ZONE, wait_for


def _server(tmp_path, known: str) -> tuple[Server, object]:
    path = tmp_path / "known.txt"
    path.write_text(known)
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1},
           "scoring": {"known_resolvers": str(path)},
           "zone": [{"name": "integ.example.", "file": str(INTEG_ZONE)}]}
    return Server(cfgmod.from_dict(doc, file="<test>")), path


def _ask(addr, src: str) -> dns.message.Message:
    q = dns.message.make_query("www.integ.example.", "A")
    q.flags &= ~dns.flags.RD
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(2)
    try:
        s.sendto(q.to_wire(), addr)
        return dns.message.from_wire(s.recvfrom(4096)[0])
    finally:
        s.close()


def test_known_table_scores_in_the_worker_and_reloads(tmp_path):
    server, path = _server(tmp_path, "127.1.0.0/24\n")
    server.start()
    try:
        addr = server.addresses[0]
        assert _ask(addr, "127.1.0.9").answer and _ask(addr, "127.2.0.9").answer
        st = server.workers[0].scoring_stats()
        assert st["admitted"]["top"] == 1 and st["admitted"]["normal"] == 1
        first = server.scoring.scorer.holder
        path.write_text("# moved\n127.3.0.0/24\n")
        server.reload()
        assert server.scoring.scorer.holder is not first
        assert server.scoring.scorer.holder.known(socket.inet_aton("127.3.0.1"))
        assert not server.scoring.scorer.holder.known(socket.inet_aton("127.1.0.1"))
        assert _ask(addr, "127.3.0.9").answer and _ask(addr, "127.1.0.9").answer
        st = server.workers[0].scoring_stats()
        assert st["admitted"]["top"] == 2 and st["admitted"]["normal"] == 2
        # the old table is released once the worker has passed its batch boundaries
        assert wait_for(lambda: all(entry[0] is not first for entry in server.slot._retired), 5)
        # a bad file at reload: one error naming the line, the table in service stays
        current = server.scoring.scorer.holder
        path.write_text("127.3.0.0/24\nnot-a-prefix\n")
        server.reload()
        assert server.scoring.scorer.holder is current
        assert server.scoring.last_error.startswith(f"{path}:2: ")
    finally:
        server.stop()


def test_bad_known_file_is_fatal_at_start(tmp_path):
    server, path = _server(tmp_path, "# ok\n10.0.0.0/7\n")
    with pytest.raises(ConfigError) as e:
        server.start()
    assert str(e.value).startswith(f"{path}:2: ") and "shorter than /8" in str(e.value)
    server.stop()
