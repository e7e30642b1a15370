"""Issue 14 point 1: one bad zone among good ones.  It is skipped with one clear error naming
file:line, answers SERVFAIL (as Knot does, not REFUSED: it is ours), the others serve, and a
later fix + reload loads it.  A zone that breaks on reload keeps its previous version."""
from __future__ import annotations

import os
import signal

import dns.message
import dns.rcode
import pytest

from pop53 import config as cfgmod
from pop53.serve import zones as servermod
from pop53.serve.server import Server

from integ_support import (EXAMPLE_ZONE, RELOAD_V1, RELOAD_V2, make_query, start_with_retry,
                           udp_exchange, udp_socket, wait_for)

BROKEN = "$ORIGIN broken.example.\n$TTL 300\n@ SOA ns1 h 7 3600 600 86400 60\n@ NS ns1\n" \
         "ns1 A 192.0.2.1\nbad A not-an-address\n"
FIXED = BROKEN.replace("bad A not-an-address", "good A 192.0.2.7")


def rcode_of(addr, name, rdtype="A", qid=1):
    with udp_socket(addr) as s:
        r = udp_exchange(s, make_query(name, rdtype, qid=qid))
    assert r is not None, f"no answer for {name}"
    return dns.message.from_wire(r)


def zone_files(tmp_path):
    broken = tmp_path / "broken.example.zone"
    broken.write_text(BROKEN)
    reload_zone = tmp_path / "reload.example.zone"
    reload_zone.write_text(RELOAD_V1.read_text())
    return broken, reload_zone


def config_text(broken, reload_zone, **server):
    extra = "".join(f'{k} = "{v}"\n' for k, v in server.items())
    return f"""
[server]
listen = ["127.0.0.1:0"]
workers = 1
{extra}
[[zone]]
name = "example.com."
file = "{EXAMPLE_ZONE}"

[[zone]]
name = "broken.example."
file = "{broken}"

[[zone]]
name = "reload.example."
file = "{reload_zone}"
"""


def test_serve_skips_a_bad_zone_answers_servfail_and_loads_it_when_fixed(serve, tmp_path):
    broken, reload_zone = zone_files(tmp_path)
    conf = tmp_path / "pop53.toml"
    conf.write_text(config_text(broken, reload_zone))
    p = serve("-c", str(conf))
    addr = p.addresses[0]
    # the good zones serve
    assert rcode_of(addr, "www.example.com.").rcode() == dns.rcode.NOERROR
    assert rcode_of(addr, "pair.reload.example.").rcode() == dns.rcode.NOERROR
    # the bad one answers SERVFAIL, everywhere in it, never REFUSED
    for name in ("broken.example.", "good.broken.example.", "ns1.broken.example."):
        r = rcode_of(addr, name)
        assert r.rcode() == dns.rcode.SERVFAIL and not r.answer, name
    assert rcode_of(addr, "elsewhere.test.").rcode() == dns.rcode.REFUSED
    # one clear error line naming the file and line
    lines = [l for l in p.log_text().splitlines() if "broken.example" in l]
    assert len(lines) == 1, p.log_text()
    assert f"{broken}:6" in lines[0] and "SERVFAIL" in lines[0] and "ERROR" in lines[0]
    assert "Traceback" not in p.log_text()

    # fixed, and a SIGHUP loads it; the others still serve
    broken.write_text(FIXED)
    os.kill(p.pid, signal.SIGHUP)
    assert wait_for(lambda: rcode_of(addr, "good.broken.example.", qid=9).rcode()
                    == dns.rcode.NOERROR, 10.0), p.log_text()
    r = rcode_of(addr, "good.broken.example.")
    assert r.answer[0][0].address == "192.0.2.7"
    assert rcode_of(addr, "www.example.com.").rcode() == dns.rcode.NOERROR


def _start(cfg) -> Server:
    return start_with_retry(lambda: Server(cfg))


@pytest.fixture
def servers():
    started = []
    yield started
    for s in started:
        s.stop()


def _config(tmp_path, broken, reload_zone, **server):
    conf = tmp_path / "pop53.toml"
    conf.write_text(config_text(broken, reload_zone, **server))
    return cfgmod.load(conf)


def test_reload_keeps_a_broken_zones_previous_version_and_publishes_the_others(tmp_path, servers):
    broken, reload_zone = zone_files(tmp_path)
    broken.write_text(FIXED)
    s = _start(_config(tmp_path, broken, reload_zone, control=str(tmp_path / "ctl.sock")))
    servers.append(s)
    addr = s.addresses[0]
    assert s.zone_serials["broken.example."] == 7 and s.zone_failed == {}
    # broken.example. breaks while reload.example. changes: the change is published, the broken
    # zone keeps serial 7 and its data, and the reload reports the error
    broken.write_text(BROKEN)
    reload_zone.write_text(RELOAD_V2.read_text())
    assert s.reload() is False
    assert f"{broken}:6" in s.last_error and s.reload_failures == 1
    assert s.zone_serials == {"example.com.": s.zone_serials["example.com."],
                              "broken.example.": 7, "reload.example.": 1002}
    assert rcode_of(addr, "good.broken.example.").answer[0][0].address == "192.0.2.7"
    from pop53.serve.control import send
    z = send(str(tmp_path / "ctl.sock"), "zones")
    assert z["zones"]["broken.example."] == 7 and z["failed"] == {}
    # fixed again: a clean reload
    broken.write_text(FIXED.replace(" 7 ", " 8 "))
    assert s.reload() is True and s.last_error is None
    assert s.zone_serials["broken.example."] == 8


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-compile"])
def test_start_with_a_bad_zone_then_fix(tmp_path, servers, monkeypatch, isolated):
    if isolated:
        monkeypatch.setattr(servermod, "ISOLATE_BYTES", 0)    # every load in a child process
    broken, reload_zone = zone_files(tmp_path)
    ctl = str(tmp_path / "ctl.sock")
    s = _start(_config(tmp_path, broken, reload_zone, control=ctl))
    servers.append(s)
    assert s.zones.isolate_compile() is isolated
    addr = s.addresses[0]
    assert list(s.zone_failed) == ["broken.example."] and f"{broken}:6" in s.zone_failed["broken.example."]
    assert rcode_of(addr, "ns1.broken.example.").rcode() == dns.rcode.SERVFAIL
    assert rcode_of(addr, "pair.reload.example.").rcode() == dns.rcode.NOERROR
    from pop53.serve.control import send
    st = send(ctl, "status")
    assert "broken.example." not in st["zones"] and "reload.example." in st["zones"]
    assert f"{broken}:6" in st["failed"]["broken.example."]
    # still broken: the others reload, it stays SERVFAIL
    reload_zone.write_text(RELOAD_V2.read_text())
    assert s.reload() is False and s.zone_serials["reload.example."] == 1002
    assert rcode_of(addr, "ns1.broken.example.").rcode() == dns.rcode.SERVFAIL
    # fixed
    broken.write_text(FIXED)
    assert s.reload() is True and s.zone_failed == {}
    assert rcode_of(addr, "good.broken.example.").answer[0][0].address == "192.0.2.7"
    if isolated:
        # a served zone that breaks in a child compile: no previous version in memory, so the
        # whole reload is rejected and the old image keeps serving
        gen = s.shared.generation
        broken.write_text(BROKEN)
        assert s.reload() is False and s.shared.generation == gen
        assert f"{broken}:6" in s.last_error
        assert rcode_of(addr, "good.broken.example.").answer[0][0].address == "192.0.2.7"


def test_a_saved_image_remembers_which_zones_failed(tmp_path, servers, caplog):
    import logging
    caplog.set_level(logging.INFO, "pop53.server")
    broken, reload_zone = zone_files(tmp_path)
    state = tmp_path / "state"
    s = _start(_config(tmp_path, broken, reload_zone, state=str(state)))
    s.stop()
    again = _start(_config(tmp_path, broken, reload_zone, state=str(state)))
    servers.append(again)
    assert "serving the saved image" in caplog.text
    assert again.zone_failed.keys() == {"broken.example."}
    assert rcode_of(again.addresses[0], "ns1.broken.example.").rcode() == dns.rcode.SERVFAIL


def test_with_transfers_configured_a_bad_file_zone_is_a_stand_in_too(tmp_path):
    """The same with the transfer engine attached (a zone with allow_transfer): the bad zone
    answers SERVFAIL, the others serve, a fix loads it, a later break keeps the old version."""
    from pop53.xfr import secondary
    broken, reload_zone = zone_files(tmp_path)
    conf = tmp_path / "pop53.toml"
    conf.write_text(config_text(broken, reload_zone) + 'allow_transfer = ["127.0.0.1"]\n')
    cfg = cfgmod.load(conf)
    assert secondary.needs_engine(cfg)
    server = start_with_retry(lambda: secondary.build(cfg)[0])
    try:
        addr = server.addresses[0]
        assert list(server.zone_failed) == ["broken.example."]
        assert rcode_of(addr, "ns1.broken.example.").rcode() == dns.rcode.SERVFAIL
        assert rcode_of(addr, "pair.reload.example.").rcode() == dns.rcode.NOERROR
        broken.write_text(FIXED)
        assert server.reload() is True and server.zone_failed == {}
        assert rcode_of(addr, "good.broken.example.").answer[0][0].address == "192.0.2.7"
        broken.write_text(BROKEN)
        reload_zone.write_text(RELOAD_V2.read_text())
        assert server.reload() is False and f"{broken}:6" in server.last_error
        assert rcode_of(addr, "good.broken.example.").answer[0][0].address == "192.0.2.7"
        assert server.zone_serials["reload.example."] == 1002
    finally:
        server.stop()
