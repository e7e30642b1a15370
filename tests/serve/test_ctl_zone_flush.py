"""Issue 14 point 13: `pop53 ctl zone-flush [ZONE] [-o DIR]` (knotc zone-flush) writes what a
secondary serves right now to a zone file, atomically.  A real primary and secondary
(`pop53 serve`); the flushed file must load in pop53's own zone loader and equal, record for
record (dnspython), the zone the secondary hands out by AXFR, after an IXFR changed it."""
from __future__ import annotations

import json

import dns.name
import dns.query
import dns.zone

from integ_support import EXAMPLE_ZONE, RELOAD_V1, RELOAD_V2, wait_for
from test_config_reload import ctl

from pop53.zone.zonefile import load_zone_file

ZONE = "reload.example."


def served_zone(addr) -> dns.zone.Zone:
    host, port = addr
    return dns.zone.from_xfr(dns.query.xfr(host, ZONE, port=port, timeout=5, relativize=False),
                              relativize=False)


def serial_of(sock):
    r = ctl(sock, "--json", "zone-status", ZONE)
    return json.loads(r.stdout)["zones"][ZONE]["serial"] if r.returncode == 0 else None


def test_zone_flush_writes_the_served_zone(serve, tmp_path):
    pfile = tmp_path / "primary.zone"
    pfile.write_text(RELOAD_V1.read_text())
    psock, pconf = tmp_path / "p.sock", tmp_path / "primary.toml"
    pconf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{psock}"\n'
                     f'[[zone]]\nname = "{ZONE}"\nfile = "{pfile}"\n'
                     'allow_transfer = ["127.0.0.0/8"]\n')
    ph, pp = serve("-c", str(pconf)).addresses[0]
    state, sock, conf = tmp_path / "state", tmp_path / "s.sock", tmp_path / "secondary.toml"
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{sock}"\n'
                    f'state = "{state}"\n'
                    f'[[zone]]\nname = "{ZONE}"\nprimaries = ["{ph}:{pp}"]\n'
                    'allow_transfer = ["127.0.0.0/8"]\n'
                    f'[[zone]]\nname = "example.com."\nfile = "{EXAMPLE_ZONE}"\n')
    sec = serve("-c", str(conf))
    assert wait_for(lambda: serial_of(sock) == 1001, 15)
    # the primary changes; the secondary takes the change by transfer, so the served content
    # is no file anyone wrote
    pfile.write_text(RELOAD_V2.read_text())
    assert ctl(psock, "reload").returncode == 0
    assert ctl(sock, "zone-refresh", ZONE).returncode == 0
    assert wait_for(lambda: serial_of(sock) == 1002, 15)

    r = ctl(sock, "--json", "zone-flush", ZONE)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    path = state / "zone" / "reload.example.zone"
    assert reply["flushed"][ZONE] == {"file": str(path), "serial": 1002, "records": 9,
                                      "bytes": path.stat().st_size, "expired": False}
    served = served_zone(sec.addresses[0])
    flushed = load_zone_file(path, ZONE).zone          # pop53's loader validates it too
    assert flushed.origin == dns.name.from_text(ZONE)
    assert flushed == served, "the flushed file differs from the zone served"
    text = path.read_text()
    assert text.startswith(f"; zone {ZONE} serial 1002, written by pop53 zone-flush at ")
    assert "only2" in text and "only1" not in text
    assert sorted(p.name for p in path.parent.iterdir()) == ["reload.example.zone"]  # no temp

    # human output, every zone (the file zone too: the engine holds it), another directory
    out = tmp_path / "out dir"
    out.mkdir()
    r = ctl(sock, "zone-flush", "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = [line.split("  ") for line in r.stdout.splitlines()]
    assert [(z, f) for z, _s, _n, f in lines] == [
        ("example.com.", f"-> {out / 'example.com.zone'}"),
        (ZONE, f"-> {out / 'reload.example.zone'}")]
    assert lines[1][1:3] == ["serial 1002", "9 records"]
    assert dns.zone.from_file(str(out / "reload.example.zone"), ZONE, relativize=False) == served
    assert dns.zone.from_file(str(out / "example.com.zone"), "example.com.", relativize=False) \
        == dns.zone.from_file(str(EXAMPLE_ZONE), "example.com.", relativize=False)
    # errors are one line
    r = ctl(sock, "zone-flush", "nope.example")
    assert r.returncode == 1 and r.stderr.strip() == "error: zone nope.example. is not configured"
    r = ctl(sock, "zone-flush", ZONE, "-o", str(tmp_path / "missing"))
    assert r.returncode == 1 and "not a directory" in r.stderr


def test_zone_flush_without_transfers_refuses_file_zones(serve, tmp_path):
    sock, conf = tmp_path / "s.sock", tmp_path / "pop53.toml"
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncontrol = "{sock}"\n'
                    f'[[zone]]\nname = "example.com."\nfile = "{EXAMPLE_ZONE}"\n')
    serve("-c", str(conf))
    r = ctl(sock, "zone-flush", "example.com")
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: zone example.com. is served from its file " \
                               f"{EXAMPLE_ZONE}; nothing to flush"
    r = ctl(sock, "zone-flush")
    assert r.returncode == 1 and "no transferred zones here" in r.stderr
