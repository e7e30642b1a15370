"""Online signing keys re-read without a restart (pop53/dnssec/online.py, keys.select): a ZSK
roll by pre-publication (RFC 6781 §4.1.1.1) run with BIND's tools on a zone whose mapped answers
pop53 signs.  Each step re-signs the zone and runs `pop53 ctl reload` (or SIGHUP); pop53 follows
the zone: its mapped answers are signed by the key that signs the zone's SOA among the keys the
zone publishes, re-signed in the background.  `delv` with the KSK as trust anchor validates the
mapped answers at every step; a bad key file is refused with one error naming the file while the
current key keeps signing."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from signing import sign
from test_online_signing import ALGS, CONFIG, MAP, ORIGIN, ZONE, addrs, delv
from tests.mapping.test_serve_e2e import Proc, ctl

pytestmark = pytest.mark.peers


def keygen(keydir, *args):
    out = subprocess.run(["dnssec-keygen", "-q", "-K", str(keydir), "-a", ALGS["p256"], *args,
                          ORIGIN], check=True, capture_output=True, text=True)
    return out.stdout.strip()          # Kcdn.example.+013+TAG


def settime(keydir, key, *args):
    subprocess.run(["dnssec-settime", "-K", str(keydir), *args, key], check=True,
                   capture_output=True)


def tag(key: str) -> int:
    return int(key.rsplit("+", 1)[1])


def resign(d, serial):
    (d / "cdn.zone").write_text(ZONE.replace("host 1 ", f"host {serial} "))
    return sign(d / "cdn.zone", d / "keys", d / "cdn.signed", "nsec", ORIGIN)


def answer_tags(port, source_ecs=("10.0.0.0", 8)):
    """Key tags of the RRSIGs over the mapped A answer (eu) and of the zone's DNSKEYs."""
    import dns.edns
    q = dns.message.make_query("e1." + ORIGIN, "A", want_dnssec=True,
                               options=[dns.edns.ECSOption(*source_ecs)])
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
    sigs = {rd.key_tag for rr in r.answer if rr.rdtype == dns.rdatatype.RRSIG for rd in rr}
    q = dns.message.make_query(ORIGIN, "DNSKEY", want_dnssec=True)
    r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=3)
    keys = {dns.dnssec.key_id(rd) for rr in r.answer if rr.rdtype == dns.rdatatype.DNSKEY
            for rd in rr}
    return sigs, keys


def wait_tags(port, want, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        got = answer_tags(port)[0]
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def validated(port, anchor):
    for name, qtype, src in (("e1.", "A", "127.0.0.1"), ("e1.", "A", "127.1.0.1"),
                             ("e1.", "AAAA", "127.0.0.1"), ("www.", "A", "127.0.0.1")):
        out = delv(port, anchor, name + ORIGIN, qtype, source=src)
        assert "fully validated" in out and addrs(out), (name, qtype, src, out)


def test_zsk_roll_without_restart(tmp_path):
    import dns.dnssec  # noqa: F401
    d = tmp_path
    keys = d / "keys"
    keys.mkdir()
    keygen(keys, "-f", "KSK")
    zsk1 = keygen(keys)
    s = resign(d, 1)
    (d / "world.map").write_text(MAP)
    (d / "pop53.toml").write_text(CONFIG.format(ctl=d / "ctl.sock")
                                  .replace("dnssec_validity = 90\ndnssec_refresh = 84\n", ""))
    p = Proc(["serve", "-c", "pop53.toml"], str(d))
    try:
        sigs, published = answer_tags(p.port)
        assert sigs == {tag(zsk1)} and tag(zsk1) in published
        validated(p.port, s.anchor)

        # 1. pre-publish: the new ZSK is in the DNSKEY RRset, not active; ZSK1 keeps signing
        zsk2 = keygen(keys, "-P", "now", "-A", "none")
        resign(d, 2)
        assert ctl(str(d), "reload")["ok"] is True
        time.sleep(1.0)
        sigs, published = answer_tags(p.port)
        assert {tag(zsk1), tag(zsk2)} <= published and sigs == {tag(zsk1)}, (sigs, published)
        validated(p.port, s.anchor)

        # a bad key file: the reload is refused naming it; ZSK1 keeps signing, answers validate
        bad = [keys / ("Kcdn.example.+013+00001" + ext) for ext in (".key", ".private")]
        bad[0].write_text("cdn.example. IN DNSKEY 256 3 13 AAAA\n")
        bad[1].write_text("Private-key-format: v1.3\nAlgorithm: 13\n")
        r = ctl(str(d), "reload")
        assert r["ok"] is False and "Kcdn.example.+013+00001" in r["error"] and \
            "zone[0].dnssec_keys" in r["error"], r
        assert len(r["error"].splitlines()) == 1
        assert answer_tags(p.port)[0] == {tag(zsk1)}
        validated(p.port, s.anchor)
        for f in bad:
            f.unlink()

        # 2. switch: ZSK2 active, ZSK1 inactive but still published; SIGHUP this time
        settime(keys, zsk1, "-I", "now")
        settime(keys, zsk2, "-A", "now")
        resign(d, 3)
        made = ctl(str(d), "mapping")["signatures_made"]
        os.kill(p.p.pid, signal.SIGHUP)
        assert wait_tags(p.port, {tag(zsk2)}) == {tag(zsk2)}
        assert ctl(str(d), "mapping")["signing_keys"] == {ORIGIN: [tag(zsk2)]}
        assert tag(zsk1) in answer_tags(p.port)[1]
        assert ctl(str(d), "mapping")["signatures_made"] >= made + 5   # every answer re-signed
        validated(p.port, s.anchor)
        # the old signatures are gone from every mapped answer (both regions, CNAME too)
        for ecs in (("10.0.0.0", 8), ("192.0.2.0", 24)):
            assert answer_tags(p.port, ecs)[0] == {tag(zsk2)}

        # 3. remove: ZSK1 leaves the DNSKEY RRset and the key directory
        settime(keys, zsk1, "-D", "now")
        resign(d, 4)
        for f in keys.glob(zsk1 + ".*"):
            f.unlink()
        assert ctl(str(d), "reload")["ok"] is True
        time.sleep(1.0)
        sigs, published = answer_tags(p.port)
        assert tag(zsk1) not in published and sigs == {tag(zsk2)}, (sigs, published)
        validated(p.port, s.anchor)
    finally:
        p.stop()
