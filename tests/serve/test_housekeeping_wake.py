"""The housekeeping thread sleeps until woken (pop53.serve.workers): a control-plane message a
UDP worker sets aside (here a NOTIFY) wakes it through the eventfd, and so does an image retired
by a publish, which it then reclaims on its 20 ms round.  IDLE_MS is raised to a minute so
that neither would happen within the test's timeouts if only the idle round did it."""
from __future__ import annotations

import socket

import dns.message
import dns.opcode

from pop53.serve import workers
from pop53.serve.server import Server

from integ_support import EXAMPLE_ZONE, server_config, start_with_retry, wait_for


def test_a_notify_and_a_retired_image_wake_the_idle_housekeeping(monkeypatch):
    monkeypatch.setattr(workers, "IDLE_MS", 60_000)
    s = start_with_retry(lambda: Server(server_config([EXAMPLE_ZONE], workers=1)))
    try:
        hk = [t for t in s.net.threads if t.name == "pop53-housekeeping"]
        assert len(hk) == 1 and hk[0].is_alive()
        n = dns.message.make_query("example.com.", "SOA")
        n.set_opcode(dns.opcode.NOTIFY)
        n.id = 4242
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            for _ in range(3):      # three rounds: each a new wake-up of a sleeping thread
                c.sendto(n.to_wire(), s.addresses[0])
                r = dns.message.from_wire(c.recv(4096))
                assert r.id == 4242 and r.opcode() == dns.opcode.NOTIFY and r.flags & 0x8000
        assert sum(w.stats()["control"] for w in s.workers) == 3, "set aside by the worker"
        s.slot.publish(s.current_image)
        assert len(s.slot._retired) == 1
        assert wait_for(lambda: not s.slot._retired, 5), "the retired image was never reclaimed"
    finally:
        s.stop()
    assert s.net._wakefd == -1, "the eventfd is closed once every thread has stopped"
