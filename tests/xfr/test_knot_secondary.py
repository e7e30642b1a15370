"""Knot DNS as a secondary of pop53: Knot -> pop53 -> Knot.  pop53 serves AXFR, then IXFR from its
journal, and sends the NOTIFY; everything TSIG-signed."""
from __future__ import annotations

import pytest

from xfr_support import (KEYNAME, SECRET, Recorder, free_port, knot_pop53_peer, query, soa_serial,
                         stop_daemon, tsig_key, wait_for)

from pop53.xfr.config import parse_xfr_config
from test_knot_primary import ZONE, knot_primary, start_engine

pytestmark = pytest.mark.peers


def test_chain_knot_pop53_knot(knot_factory, engines, tmp_path):
    pop_port = free_port()
    primary = knot_primary(knot_factory, pop_port)
    rec = Recorder()
    # The secondary's port is known once it is created; it is started after pop53 has data.
    secondary_knot = knot_factory("secondary")
    # Our config: secondary of the Knot primary, and primary for the Knot secondary.
    cfg = parse_xfr_config({
        "server": {"state": str(tmp_path / "state")},
        "xfr": {"status_interval": 0.2},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256",
                 "secret": SECRET}],
        "zone": [{"name": ZONE, "primaries": [f"127.0.0.1:{primary.port}"], "key": KEYNAME,
                  "notify": [f"127.0.0.1:{secondary_knot.port}"]}],
    }, "test.toml")
    e = start_engine(engines, cfg, pop_port, rec)
    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="pop53 has serial 1")

    secondary_knot.write_conf(knot_pop53_peer(pop_port, "notify") + f"""\
        zone:
          - domain: {ZONE}
            file: "{secondary_knot.dir}/example.org.zone"
            master: pop53
            acl: pop53
            zonefile-sync: -1
            journal-content: changes
        """)
    secondary_knot.start()
    # Knot bootstraps with AXFR from pop53.
    wait_for(lambda: soa_serial(secondary_knot.port, ZONE) == 1, 15, what="Knot secondary serial 1")
    assert e.stats["xfr_out.axfr"] >= 1

    primary.change(ZONE, ("chain", "300", "TXT", "\"via pop53\""))
    wait_for(lambda: soa_serial(secondary_knot.port, ZONE) == 2, 15, what="Knot secondary serial 2")
    r = query(secondary_knot.port, "chain.example.org.", "TXT")
    assert [rd.to_text() for rr in r.answer for rd in rr] == ['"via pop53"']
    # The second hop was incremental (our journal), and was triggered by our NOTIFY.
    assert e.stats["xfr_out.ixfr"] >= 1
    assert e.stats["notify.sent"] >= 1
    log = secondary_knot.log.read_text()
    assert "IXFR, incoming" in log and "1 -> 2" in log

    # A deletion travels the chain too.
    primary.change(ZONE, unsets=(("chain",),))
    wait_for(lambda: soa_serial(secondary_knot.port, ZONE) == 3, 15, what="Knot secondary serial 3")
    r = query(secondary_knot.port, "chain.example.org.", "TXT")
    assert r.rcode() == 3  # NXDOMAIN
    # Our SOA answers are TSIG-aware (Knot checked them with the key before each IXFR).
    assert soa_serial(pop_port, ZONE, key=tsig_key()) == 3


def test_nsd_secondary_of_pop53(knot_factory, engines, tmp_path):
    """NSD (a second implementation) transfers from pop53 and follows its NOTIFY."""
    import shutil
    import subprocess

    nsd = shutil.which("nsd") or "/usr/sbin/nsd"
    pop_port = free_port()
    primary = knot_primary(knot_factory, pop_port)
    nsd_port = free_port()
    d = tmp_path / "nsd"
    d.mkdir()
    (d / "nsd.conf").write_text(f"""\
server:
    ip-address: 127.0.0.1@{nsd_port}
    port: {nsd_port}
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    zonelistfile: "{d}/zone.list"
    logfile: "{d}/nsd.log"
    verbosity: 2
    xfrd-reload-timeout: 0
remote-control:
    control-enable: no
key:
    name: "{KEYNAME}"
    algorithm: hmac-sha256
    secret: "{SECRET}"
zone:
    name: "{ZONE}"
    zonefile: "{d}/example.org.zone"
    request-xfr: 127.0.0.1@{pop_port} {KEYNAME}
    allow-notify: 127.0.0.1 {KEYNAME}
""")
    rec = Recorder()
    cfg = parse_xfr_config({
        "server": {"state": str(tmp_path / "state")},
        "key": [{"name": KEYNAME, "algorithm": "hmac-sha256", "secret": SECRET}],
        "zone": [{"name": ZONE, "primaries": [f"127.0.0.1:{primary.port}"], "key": KEYNAME,
                  "notify": [f"127.0.0.1:{nsd_port}"]}],
    }, "test.toml")
    e = start_engine(engines, cfg, pop_port, rec)
    wait_for(lambda: rec.serial(ZONE) == 1, 10, what="pop53 has serial 1")
    proc = subprocess.Popen([nsd, "-d", "-c", str(d / "nsd.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: soa_serial(nsd_port, ZONE, timeout=0.5) == 1, 20, what="NSD serial 1")
        primary.change(ZONE, ("nsd", "300", "A", "192.0.2.53"))
        wait_for(lambda: soa_serial(nsd_port, ZONE, timeout=0.5) == 2, 20, what="NSD serial 2")
        r = query(nsd_port, "nsd.example.org.", "A")
        assert [rd.to_text() for rr in r.answer for rd in rr] == ["192.0.2.53"]
        assert e.stats["notify.sent"] >= 1
        assert e.stats["xfr_out.ixfr"] + e.stats["xfr_out.axfr"] >= 2
    finally:
        stop_daemon(proc)
