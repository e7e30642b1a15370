"""Issue 14 points 10 and 6: the operator's log.  A start and a stop line with the version, one
line per zone load (serial old -> new, records, time), `[log] format = "json"` for machines; and
a changed zone whose serial did not increase is warned about (or refused) with both serials."""
from __future__ import annotations

import json
import logging
import os
import signal

import dns.message
import pytest

from pop53 import __version__
from pop53 import config as cfgmod
from pop53.errors import ConfigError
from pop53.serve.server import Server

from integ_support import (RELOAD_V1, RELOAD_V2, make_query, start_with_retry, udp_exchange,
                           udp_socket, wait_for)

V1 = RELOAD_V1.read_text()


def _conf(tmp_path, fmt=None):
    zone = tmp_path / "reload.example.zone"
    zone.write_text(V1)
    conf = tmp_path / "pop53.toml"
    conf.write_text(f"""
[server]
listen = ["127.0.0.1:0"]
workers = 1
[[zone]]
name = "reload.example."
file = "{zone}"
""" + (f'[log]\nformat = "{fmt}"\n' if fmt else ""))
    return conf, zone


def test_json_log_start_zone_loads_and_stop(serve, tmp_path):
    conf, zone = _conf(tmp_path, "json")
    p = serve("-c", str(conf))
    zone.write_text(RELOAD_V2.read_text())
    os.kill(p.pid, signal.SIGHUP)
    assert wait_for(lambda: p.log_text().count('"zone_loaded"') == 2, 10.0), p.log_text()
    p.stop()
    events = [json.loads(line) for line in p.log_text().splitlines()]   # every line is JSON
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in events)
    start, stop = events[0], events[-1]
    assert start["event"] == "start" and start["version"] == __version__ and start["pid"] == p.pid
    assert stop["event"] == "stop" and stop["version"] == __version__ and stop["uptime"] > 0
    loads = [e for e in events if e.get("event") == "zone_loaded"]
    assert [(e["zone"], e["serial_old"], e["serial"], e["records"]) for e in loads] == [
        ("reload.example.", None, 1001, 9), ("reload.example.", 1001, 1002, 9)]
    assert all(e["seconds"] >= 0 for e in loads)
    assert any(e.get("event") == "listen" and e["port"] == p.addresses[0][1] for e in events)


def test_text_log_lines(serve, tmp_path):
    conf, zone = _conf(tmp_path)
    p = serve("-c", str(conf))
    zone.write_text(RELOAD_V2.read_text())
    os.kill(p.pid, signal.SIGHUP)
    assert wait_for(lambda: "serial 1001 -> 1002" in p.log_text(), 10.0), p.log_text()
    p.stop()
    text = p.log_text()
    assert f"pop53 {__version__} starting, pid {p.pid}" in text
    assert "zone reload.example. loaded: serial 1001, 9 records," in text
    assert "zone reload.example. loaded: serial 1001 -> 1002, 9 records," in text
    assert f"pop53 {__version__} stopped after" in text.splitlines()[-1]


def test_log_format_is_checked():
    with pytest.raises(ConfigError) as err:
        cfgmod.from_dict({"log": {"format": "xml"}}, file="pop53.toml")
    assert err.value.key == "log.format" and "text, json" in str(err.value)


# -- the serial check on a primary (point 6) ----------------------------------------------------
def _start(tmp_path, policy):
    zone = tmp_path / "reload.example.zone"
    zone.write_text(V1)
    cfg = cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "workers": 1,
                                       "serial_check": policy},
                            "zone": [{"name": "reload.example.", "file": str(zone)}]})
    return start_with_retry(lambda: Server(cfg)), zone


def _pair(s):
    with udp_socket(s.addresses[0]) as sock:
        r = dns.message.from_wire(udp_exchange(sock, make_query("pair.reload.example.", "A", qid=4)))
    return sorted(a.address for a in r.answer[0])


CHANGED_SAME_SERIAL = V1.replace("10.53.1.1\n", "10.53.9.9\n")
CHANGED_LOWER_SERIAL = CHANGED_SAME_SERIAL.replace(" 1001 ", " 1000 ")


@pytest.mark.parametrize("text,new", [(CHANGED_SAME_SERIAL, 1001), (CHANGED_LOWER_SERIAL, 1000)],
                         ids=["same", "lower"])
def test_serial_not_increased_is_warned(tmp_path, caplog, text, new):
    caplog.set_level(logging.INFO, "pop53")
    s, zone = _start(tmp_path, "warn")
    try:
        zone.write_text(text)
        assert s.reload() is True
        assert _pair(s) == ["10.53.1.2", "10.53.9.9"]       # served, but:
        warn = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warn) == 1 and "zone reload.example. changed but its serial did not " \
            f"increase (1001 -> {new})" in warn[0].getMessage()
        # an unchanged file reloaded is no mistake
        caplog.clear()
        assert s.reload() is True
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        s.stop()


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-compile"])
def test_serial_not_increased_is_refused_when_configured(tmp_path, monkeypatch, isolated):
    if isolated:
        from pop53.serve import zones as servermod
        monkeypatch.setattr(servermod, "ISOLATE_BYTES", 0)
    s, zone = _start(tmp_path, "refuse")
    try:
        assert s.zones.isolate_compile() is isolated
        zone.write_text(CHANGED_SAME_SERIAL)
        assert s.reload() is False
        assert "(1001 -> 1001)" in s.last_error and "refused" in s.last_error
        assert _pair(s) == ["10.53.1.1", "10.53.1.2"]       # the previous version serves
        zone.write_text(CHANGED_SAME_SERIAL.replace(" 1001 ", " 1003 "))
        assert s.reload() is True and _pair(s) == ["10.53.1.2", "10.53.9.9"]
    finally:
        s.stop()


def test_serial_wrap_is_an_increase(tmp_path, caplog):
    """RFC 1982: 4000000000 -> 5 is an increase (reached in steps under 2^31); no warning."""
    caplog.set_level(logging.INFO, "pop53")
    s, zone = _start(tmp_path, "refuse")
    try:
        for serial in (2000001000, 4000000000):
            zone.write_text(V1.replace(" 1001 ", f" {serial} "))
            assert s.reload() is True, s.last_error
        zone.write_text(CHANGED_SAME_SERIAL.replace(" 1001 ", " 5 "))
        assert s.reload() is True, s.last_error
        assert "serial 4000000000 -> 5" in caplog.text and "did not increase" not in caplog.text
    finally:
        s.stop()
