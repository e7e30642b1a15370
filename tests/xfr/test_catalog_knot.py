"""Issue 14 point 4: catalog zones (RFC 9432) as a consumer, through Knot's catalog producer
(Knot 3.2, `catalog-role: generate`): `pop53 serve` transfers the catalog like any secondary
zone, and its member zones become secondaries of the same primary with the same TSIG key;
a member added on Knot is served, a member removed stops being served, without a restart."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import dns.message
import dns.query
import dns.rcode
import pytest

from xfr_support import (KEYNAME, SECRET, free_port, knot_pop53_peer, soa_serial, stop_process,
                         wait_for, zone_text)

pytestmark = pytest.mark.peers

CATALOG = "catalog.invalid."


def knot_conf(k, pop_port, members):
    body = textwrap.dedent(knot_pop53_peer(pop_port, "transfer")) + textwrap.dedent(f"""\
        zone:
          - domain: {CATALOG}
            catalog-role: generate
            notify: pop53
            acl: pop53
        """)
    for m in members:
        f = k.dir / f"{m}zone"
        if not f.exists():
            f.write_text(zone_text(m, 1))
        body += (f"  - domain: {m}\n    file: \"{f}\"\n    catalog-role: member\n"
                 f"    catalog-zone: {CATALOG}\n    notify: pop53\n    acl: pop53\n")
    k.write_conf(body)


def rcode(port, name):
    r = dns.query.udp(dns.message.make_query(name, "SOA"), "127.0.0.1", port=port, timeout=2)
    return r.rcode()


def test_catalog_members_added_and_removed_through_knot(knot_factory, tmp_path):
    port = free_port()
    k = knot_factory("producer")
    knot_conf(k, port, ["one.example.", "two.example."])
    k.start()
    conf = tmp_path / "pop53.toml"
    conf.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\nstate = "{tmp_path / "state"}"\n'
        f'control = "{tmp_path / "ctl.sock"}"\n'
        f'[xfr]\nstatus_interval = 0.2\n'
        f'[[key]]\nname = "{KEYNAME}"\nalgorithm = "hmac-sha256"\nsecret = "{SECRET}"\n'
        f'[[zone]]\nname = "{CATALOG}"\nprimaries = ["127.0.0.1:{k.port}"]\nkey = "{KEYNAME}"\n'
        'catalog = true\n')
    proc = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: soa_serial(port, "one.example.") == 1 and
                 soa_serial(port, "two.example.") == 1, 20, what="the catalog's members")
        assert rcode(port, "three.example.") == dns.rcode.REFUSED
        r = subprocess.run([sys.executable, "-m", "pop53", "ctl", "-s", str(tmp_path / "ctl.sock"),
                            "zone-status"], capture_output=True, text=True, timeout=30)
        rows = [l.split()[:5] for l in r.stdout.splitlines()]
        assert ["one.example.", "member", "of", CATALOG, "serial"] in rows, r.stdout

        # a member added on the producer: Knot NOTIFYs the new catalog, pop53 adds the zone
        knot_conf(k, port, ["one.example.", "two.example.", "three.example."])
        k.knotc("reload")
        wait_for(lambda: soa_serial(port, "three.example.") == 1, 20, what="member added")

        # a member removed: no longer served (REFUSED: not ours any more)
        knot_conf(k, port, ["two.example.", "three.example."])
        k.knotc("reload")
        wait_for(lambda: rcode(port, "one.example.") == dns.rcode.REFUSED, 20,
                 what="member removed")
        assert soa_serial(port, "two.example.") == 1

        # members change like any secondary zone: NOTIFY + IXFR from the same primary
        k.knotc("zone-begin", "two.example.")
        k.knotc("zone-set", "two.example.", "new", "300", "A", "192.0.2.9")
        k.knotc("zone-commit", "two.example.")
        wait_for(lambda: soa_serial(port, "two.example.") == 2, 20, what="member update")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stop_process(proc)}") from None
    finally:
        out = stop_process(proc)
    assert "catalog catalog.invalid.: " in out and "Traceback" not in out, out

    # a restart with the primary gone: the catalog and its members come back from the saved
    # state (the members the catalog lists now, not the removed one)
    k.stop()
    proc = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: soa_serial(port, "two.example.") == 2, 15, what="restored member")
        assert soa_serial(port, "three.example.") == 1
        assert rcode(port, "one.example.") == dns.rcode.REFUSED
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stop_process(proc)}") from None
    finally:
        out = stop_process(proc)
    assert "Traceback" not in out, out


def test_knot_consumes_the_catalog_pop53_produces(knot_factory, tmp_path):
    """The producer side: pop53 generates a catalog of its file zones; Knot (catalog-role:
    interpret) transfers it and its members; a zone added to pop53's config by `ctl reload`
    reaches Knot through the catalog (NOTIFY, IXFR), a removed one leaves it."""
    port = free_port()
    k = knot_factory("consumer")
    zones = {}
    for name in ("one.example.", "two.example.", "three.example."):
        zones[name] = tmp_path / f"{name}zone"
        zones[name].write_text(zone_text(name, 5))
    conf, sock = tmp_path / "pop53.toml", tmp_path / "ctl.sock"

    def write(names):
        text = (f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\ncontrol = "{sock}"\n'
                f'[[key]]\nname = "{KEYNAME}"\nalgorithm = "hmac-sha256"\nsecret = "{SECRET}"\n'
                f'[[zone]]\nname = "{CATALOG}"\ncatalog = true\nkey = "{KEYNAME}"\n'
                'allow_transfer = ["127.0.0.1"]\n'
                f'notify = ["127.0.0.1:{k.port}"]\n')
        for n in names:
            text += f'[[zone]]\nname = "{n}"\nfile = "{zones[n]}"\nallow_transfer = ["127.0.0.1"]\n'
        conf.write_text(text)

    write(["one.example.", "two.example."])
    proc = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: soa_serial(port, "one.example.") == 5, 15, what="pop53 up")
        k.write_conf(textwrap.dedent(knot_pop53_peer(port, "notify")) + textwrap.dedent(f"""\
            template:
              - id: default
                storage: "{k.dir}"
              - id: member
                storage: "{k.dir}"
                master: pop53
                acl: pop53
            zone:
              - domain: {CATALOG}
                master: pop53
                acl: pop53
                catalog-role: interpret
                catalog-template: member
            """))
        k.start()
        wait_for(lambda: soa_serial(k.port, "one.example.") == 5 and
                 soa_serial(k.port, "two.example.") == 5, 20, what="Knot has the members")
        assert soa_serial(k.port, "three.example.") is None

        write(["two.example.", "three.example."])
        r = subprocess.run([sys.executable, "-m", "pop53", "ctl", "-s", str(sock), "reload"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: soa_serial(k.port, "three.example.") == 5, 20, what="member added on Knot")
        wait_for(lambda: soa_serial(k.port, "one.example.") is None, 20,
                 what="member removed on Knot")
        assert soa_serial(k.port, "two.example.") == 5
    except AssertionError as exc:
        log = k.log.read_text() if k.log.exists() else ""
        raise AssertionError(f"{exc}\n{stop_process(proc)}\n{log[-3000:]}") from None
    finally:
        out = stop_process(proc)
    assert "Traceback" not in out, out
