"""Issue 14 point 13: knotc-like zone commands through a real `pop53 serve` and its control
socket: zone-status, zone-reload ZONE (that zone's file only), zone-notify ZONE,
zone-refresh / zone-retransfer ZONE (retransfer and refresh stay as aliases), stop."""
from __future__ import annotations

import json
import socket

import dns.message
import dns.opcode

from integ_support import EXAMPLE_ZONE, RELOAD_V1, RELOAD_V2, wait_for
from test_config_reload import ctl


def serial_of(sock, zone):
    r = ctl(sock, "--json", "zone-status", zone)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["zones"][zone]["serial"]


def test_zone_status_and_zone_reload_of_one_zone(serve, tmp_path):
    a, b = tmp_path / "a.zone", tmp_path / "b.zone"
    a.write_text(RELOAD_V1.read_text())
    b.write_text(RELOAD_V1.read_text().replace("reload.example.", "other.example."))
    sock, conf = tmp_path / "ctl.sock", tmp_path / "pop53.toml"
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{sock}"\n'
                    f'[[zone]]\nname = "reload.example."\nfile = "{a}"\n'
                    f'[[zone]]\nname = "other.example."\nfile = "{b}"\n')
    serve("-c", str(conf))
    r = ctl(sock, "zone-status")
    assert r.returncode == 0
    rows = [l.split() for l in r.stdout.splitlines()]
    assert ["other.example.", "file", "serial", "1001", "ok"] in rows, r.stdout
    assert ["reload.example.", "file", "serial", "1001", "ok"] in rows, r.stdout
    # both files change; zone-reload reads only the one named
    a.write_text(RELOAD_V2.read_text())
    b.write_text(RELOAD_V2.read_text().replace("reload.example.", "other.example."))
    r = ctl(sock, "zone-reload", "reload.example")
    assert r.returncode == 0 and "reloaded" in r.stdout, r.stderr
    assert serial_of(sock, "reload.example.") == 1002
    assert serial_of(sock, "other.example.") == 1001
    assert ctl(sock, "reload").returncode == 0
    assert serial_of(sock, "other.example.") == 1002
    # errors are one line
    r = ctl(sock, "zone-reload", "nope.example.")
    assert r.returncode == 1 and r.stderr.strip() == \
        "error: zone nope.example. is not a configured file zone"
    r = ctl(sock, "zone-status", "nope.example.")
    assert r.returncode == 1 and "not configured" in r.stderr


def test_zone_notify_sends_a_notify(serve, tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    sock, conf = tmp_path / "ctl.sock", tmp_path / "pop53.toml"
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{sock}"\n'
                    f'[[zone]]\nname = "example.com."\nfile = "{EXAMPLE_ZONE}"\n'
                    f'notify = ["127.0.0.1:{port}"]\n')
    serve("-c", str(conf))
    with listener:
        r = ctl(sock, "zone-notify", "example.com.")
        assert r.returncode == 0 and "zone-notify of example.com. queued" in r.stdout, r.stderr
        data, _ = listener.recvfrom(4096)
    m = dns.message.from_wire(data)
    assert m.opcode() == dns.opcode.NOTIFY and m.question[0].name.to_text() == "example.com."


def test_refresh_retransfer_aliases_and_stop(serve, tmp_path):
    pconf = tmp_path / "primary.toml"
    pconf.write_text('[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\n'
                     f'[[zone]]\nname = "reload.example."\nfile = "{RELOAD_V1}"\n'
                     'allow_transfer = ["127.0.0.0/8"]\n')
    ph, pp = serve("-c", str(pconf)).addresses[0]
    sock, conf = tmp_path / "ctl.sock", tmp_path / "pop53.toml"
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{sock}"\n'
                    f'[[zone]]\nname = "reload.example."\nprimaries = ["{ph}:{pp}"]\n')
    p = serve("-c", str(conf))
    assert wait_for(lambda: serial_of(sock, "reload.example.") == 1001, 15)
    for verb in ("zone-refresh", "refresh", "zone-retransfer", "retransfer"):
        r = ctl(sock, verb, "reload.example.")
        assert r.returncode == 0 and "queued" in r.stdout, (verb, r.stderr)
    # a forced full transfer of the same serial is applied again
    assert wait_for(lambda: p.log_text().count("reload.example.: serving serial 1001") >= 2, 10), \
        p.log_text()
    r = ctl(sock, "zone-refresh", "example.org.")
    assert r.returncode == 1 and "not configured" in r.stderr
    r = ctl(sock, "stop")
    assert r.returncode == 0 and r.stdout.strip() == "stopping"
    assert p.proc.wait(10) == 0
    assert "stopped after" in p.log_text()


def test_zone_reload_of_one_zone_with_transfers_on(tmp_path):
    """The same through the transfer engine's reload path (xfr/secondary.py)."""
    from pop53 import config as cfgmod
    from pop53.xfr import secondary
    from integ_support import start_with_retry

    a, b = tmp_path / "a.zone", tmp_path / "b.zone"
    a.write_text(RELOAD_V1.read_text())
    b.write_text(RELOAD_V1.read_text().replace("reload.example.", "other.example."))
    cfg = cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "workers": 1}, "zone": [
        {"name": "reload.example.", "file": str(a), "allow_transfer": ["127.0.0.1"]},
        {"name": "other.example.", "file": str(b), "allow_transfer": ["127.0.0.1"]}]})
    s = start_with_retry(lambda: secondary.build(cfg)[0])
    try:
        a.write_text(RELOAD_V2.read_text())
        b.write_text(RELOAD_V2.read_text().replace("reload.example.", "other.example."))
        assert s.reload("reload.example.")
        assert s.zone_serials == {"reload.example.": 1002, "other.example.": 1001}
        assert s.reload()
        assert s.zone_serials == {"reload.example.": 1002, "other.example.": 1002}
    finally:
        s.stop()
