"""Persistence across restarts, SOA expiry, staleness and the input-delayed role, with a real Knot
primary on loopback."""
from __future__ import annotations

import json
import time

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from xfr_support import KEYNAME, SECRET, Recorder, free_port, tsig_key, wait_for

from pop53.anycast import staleness
from pop53.xfr.config import parse_xfr_config
from pop53.xfr.service import XfrService
from test_knot_primary import ZONE, knot_primary, start_engine

pytestmark = pytest.mark.peers


def config(tmp_path, knot_port, state="state", zone_extra=None, **xfr_opts):
    return parse_xfr_config({
        "server": {"state": str(tmp_path / state)},
        "xfr": {"status_interval": 0.1, "timeout": 1, **xfr_opts},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET}],
        "zone": [{"name": ZONE, "primaries": [f"127.0.0.1:{knot_port}"], "key": KEYNAME,
                  **(zone_extra or {})}],
    }, "t.toml")


def run(engines, cfg, rec, port=None):
    port = port or free_port()
    e = start_engine(engines, cfg, port, rec)
    e.port = port
    return e


def stop(engines, e):
    e.stop()
    engines.remove(e)


def test_restart_serves_at_once_and_asks_only_for_the_change(knot_factory, engines, tmp_path):
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port)
    rec = Recorder()
    e = run(engines, config(tmp_path, k.port), rec, pop_port)
    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="serial 1")
    k.change(ZONE, ("a", "300", "A", "192.0.2.10"))
    wait_for(lambda: rec.serial(ZONE) == 2, 10, what="serial 2")
    stop(engines, e)

    k.change(ZONE, ("b", "300", "A", "192.0.2.11"))  # serial 3 while we are down

    rec2 = Recorder()
    e2 = XfrService(config(tmp_path, k.port), rec2)
    engines.append(e2)
    e2.start()
    # start() returns after publishing the saved state, before any network traffic.
    assert rec2.calls[0] == (ZONE, 2)
    assert rec2.rdata(ZONE, "a.example.org.", "A") == ["192.0.2.10"]
    wait_for(lambda: rec2.serial(ZONE) == 3, 10, what="serial 3 after restart")
    assert rec2.rdata(ZONE, "b.example.org.", "A") == ["192.0.2.11"]
    # Only what changed travelled: one IXFR 2 -> 3, no AXFR.
    assert e2.stats["xfr_in.ixfr.ok"] == 1 and e2.stats["xfr_in.axfr.ok"] == 0
    assert "IXFR, outgoing, remote 127.0.0.1" in k.log.read_text()
    assert "2 -> 3" in k.log.read_text()
    stop(engines, e2)

    # A torn last journal line (crash mid-append) is cut off; what came before still serves.
    store = e2.zones[dns.name.from_text(ZONE)].store
    with open(store.journal, "a") as f:
        f.write('deadbeef {"received": 1, "ste')
    rec3 = Recorder()
    e3 = XfrService(config(tmp_path, k.port), rec3)
    engines.append(e3)
    e3.load_saved()
    assert e3.zones[dns.name.from_text(ZONE)].serial == 3

    # A damaged middle record: replay stops before it and the primary fills the gap by IXFR.
    lines = store.journal.read_text().splitlines(keepends=True)
    assert len(lines) >= 3
    lines[-2] = lines[-2].replace("192.0.2.11", "192.0.2.99")  # CRC no longer matches
    store.journal.write_text("".join(lines[:-1]))
    rec4 = Recorder()
    e4 = XfrService(config(tmp_path, k.port), rec4)
    engines.append(e4)
    e4.start()
    assert rec4.calls[0] == (ZONE, 2)
    wait_for(lambda: rec4.serial(ZONE) == 3, 10, what="serial 3 again")
    assert rec4.rdata(ZONE, "b.example.org.", "A") == ["192.0.2.11"]
    assert e4.stats["xfr_in.ixfr.ok"] == 1


def test_expire_stale_and_recovery(knot_factory, engines, tmp_path):
    pop_port = free_port()
    # refresh 1 s, retry 1 s, expire 4 s (SOA timers, RFC 1034 §4.3.5)
    k = knot_primary(knot_factory, pop_port, refresh=1, retry=1, expire=4)
    rec = Recorder()
    e = run(engines, config(tmp_path, k.port, stale_after=2,
                            zone_extra={"allow_transfer": ["127.0.0.1"]}), rec, pop_port)
    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="serial 1")
    wait_for(lambda: not e.status()["stale"], 5, what="fresh")
    assert e.status()["zones"][ZONE]["age"] < 2

    t0 = time.monotonic()
    k.stop()  # the primary is unreachable from now on
    wait_for(lambda: e.status()["stale"], 6, what="stale")
    # The state file the monitoring agent reads says so too (rewritten every 0.1 s here).
    st = wait_for(lambda: (lambda x: x if x["stale"] else None)(staleness.read_state(e.state_file)),
                  2, what="state file says stale")
    assert st["stale"] and st["zones"][ZONE]["stale"] and st["role"] == "normal"
    assert not st["zones"][ZONE]["expired"]

    wait_for(lambda: rec.calls[-1] == (ZONE, None), 8, what="expiry")
    # not before the SOA expire (4 s after the last successful check, which was at most
    # refresh (1 s) + one check before t0)
    assert time.monotonic() - t0 >= 2.0
    assert e.stats["zone.expired"] == 1
    assert e.status()["zones"][ZONE]["expired"]
    # An expired zone answers SERVFAIL (our SOA answer here; the data plane gets publish(None)).
    q = dns.message.make_query(ZONE, "SOA")
    r = dns.query.udp(q, "127.0.0.1", port=pop_port, timeout=2)
    assert r.rcode() == dns.rcode.SERVFAIL
    # and we stop serving transfers of it
    q = dns.message.make_query(ZONE, "AXFR")
    q.use_tsig(tsig_key())
    assert e.handle_tcp_query(q.to_wire(), ("127.0.0.1", 1))[0][3] & 0xF == dns.rcode.SERVFAIL

    k.start()  # the primary is back: one refresh and we serve again
    wait_for(lambda: rec.calls[-1] == (ZONE, 1), 10, what="served again")
    wait_for(lambda: not e.status()["stale"], 5, what="fresh again")
    assert not e.status()["zones"][ZONE]["expired"]


def test_input_delayed_role(knot_factory, engines, tmp_path):
    """Paper §4.2.3: the delayed machine applies every update only after the delay, keeping
    the pending versions (also across a restart), and never reports itself stale.  A poisonous
    update reaches the normal machine at once; the delayed one keeps answering the old data."""
    normal_port, delayed_port = free_port(), free_port()
    k = knot_primary(knot_factory, normal_port)
    # Knot notifies only the normal machine; the delayed one follows by NOTIFY we send it
    # ourselves below (refresh_now), as an operator's notify list would.
    rec_n, rec_d = Recorder(), Recorder()
    n = run(engines, config(tmp_path, k.port, state="n"), rec_n, normal_port)
    d = run(engines, config(tmp_path, k.port, state="d", delay=3, stale_after=1), rec_d, delayed_port)
    wait_for(lambda: rec_n.serial(ZONE) == 1 and rec_d.serial(ZONE) == 1, 10, what="both at 1")

    k.change(ZONE, ("www", "300", "A", "203.0.113.66"), unsets=(("www", "A"),))  # the poison
    t_change = time.monotonic()
    d.refresh_now(ZONE)
    wait_for(lambda: rec_n.serial(ZONE) == 2, 10, what="normal machine has the poison")
    assert rec_n.rdata(ZONE, "www.example.org.", "A") == ["203.0.113.66"]
    wait_for(lambda: d.status()["zones"][ZONE]["pending"] == 1, 10, what="delayed machine queued it")
    assert rec_d.serial(ZONE) == 1
    assert rec_d.rdata(ZONE, "www.example.org.", "A") == ["192.0.2.1"]
    status = d.status()
    assert status["zones"][ZONE]["pending_serials"] == [2]
    assert status["role"] == "delayed"

    # Restart the delayed machine while the update is pending: it comes back serving serial 1
    # with serial 2 still pending (from its journal), without transferring it again.
    stop(engines, d)
    rec_d2 = Recorder()
    d2 = run(engines, config(tmp_path, k.port, state="d", delay=3, stale_after=1), rec_d2, delayed_port)
    assert rec_d2.calls[0] == (ZONE, 1)
    assert d2.status()["zones"][ZONE]["pending_serials"] == [2]

    # The primary goes away: the delayed machine is old but never stale (exempt, §4.2.3).
    k.stop()
    time.sleep(1.5)
    s = d2.status()
    assert s["zones"][ZONE]["age"] > 1 and s["zones"][ZONE]["stale"] and not s["stale"]
    time.sleep(0.3)  # one more state-file rewrite
    assert json.loads(d2.state_file.read_text())["stale"] is False

    # After the delay the pending version applies, in order.
    wait_for(lambda: rec_d2.serial(ZONE) == 2, 10, what="delayed machine applies serial 2")
    assert time.monotonic() - t_change >= 2.9
    assert rec_d2.rdata(ZONE, "www.example.org.", "A") == ["203.0.113.66"]
    assert d2.stats["xfr_in.ixfr.ok"] == 0 and d2.stats["xfr_in.axfr.ok"] == 0

