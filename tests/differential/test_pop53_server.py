"""pop53 on the wire against pop53 in process: `pop53 serve` (real UDP and TCP sockets on
127.0.0.1, one worker) must send, for every query of the corpus, exactly the bytes that
`pop53.answer()` returns for the same image, so everything the reference comparison shows for
`answer()` holds for the server too."""
from __future__ import annotations

import pytest

import dnsdiff
from tests.support.refservers import Pop53Server

pytestmark = pytest.mark.peers


def test_server_sends_the_bytes_answer_returns(corpus, pop53_replies):
    with Pop53Server(dnsdiff.reference_zones(), identity=dnsdiff.IDENTITY) as srv:
        on_wire = []
        for c in corpus:
            for _ in range(3):      # a loaded CI box may lose a loopback datagram
                reply = srv.query(c.wire(), tcp=c.tcp)
                if reply is not None:
                    break
            on_wire.append(reply)
    differ = [c.key for c, a, b in zip(corpus, pop53_replies, on_wire)
              # version.bind./version.server. answer the version string, which the command
              # line cannot set (the in-process Responder uses dnsdiff.VERSION).
              if a != b and not c.qname.startswith("version.")]
    assert not differ, f"{len(differ)} replies differ, e.g. {differ[:10]}"
    assert sum(r is not None for r in on_wire) == len(corpus)
