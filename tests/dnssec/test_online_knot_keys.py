"""Online signing with the keys Knot itself made (pop53/dnssec/keys.py: Knot's key store):
a knotd signs the zone automatically (RSASHA256, RSASHA512, ECDSA P-256, Ed25519), pop53 serves the zone
Knot signed (taken by AXFR) with `dnssec_keys` pointing at Knot's key store directory (PKCS#8
PEMs named by key id, matched against the zone's DNSKEY RRset by public key).  `delv` with
Knot's KSK as trust anchor validates the mapped answers; then Knot rolls the ZSK
(`knotc zone-key-rollover`) and each step it takes, transferred again and reloaded (`pop53 ctl
reload`), keeps the mapped answers validating, signed by the key Knot signs with."""
from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import dns.dnssec
import dns.query
import dns.rdatatype
import dns.zone
import pytest

from test_online_keyroll import answer_tags
from test_online_signing import CONFIG, MAP, ORIGIN, ZONE, addrs, delv
from tests.mapping.test_serve_e2e import Proc, ctl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xfr"))
from xfr_support import Knot  # noqa: E402

pytestmark = pytest.mark.peers

POLICY = """\
policy:
  - id: p
    algorithm: {alg}
{sizes}    ksk-lifetime: 0
    zsk-lifetime: 0
    dnskey-ttl: 1
    zone-max-ttl: 1
    propagation-delay: 0
acl:
  - id: axfr
    address: 127.0.0.1
    action: transfer
zone:
  - domain: {origin}
    file: "{dir}/cdn.zone"
    dnssec-signing: on
    dnssec-policy: p
    acl: axfr
    zonefile-sync: -1
"""


def transfer(knot, out: Path, serial_above=0, timeout=20) -> dns.zone.Zone:
    """Knot's signed zone by AXFR (once it is signed and its serial is above `serial_above`),
    written where pop53 reads it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            z = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", ORIGIN, port=knot.port, lifetime=5,
                                                relativize=False), relativize=False)
            if z.get_rdataset(ORIGIN, "DNSKEY") and \
                    z.get_rdataset(ORIGIN, "SOA")[0].serial > serial_above:
                z.to_file(str(out), relativize=False)
                return z
        except (dns.exception.DNSException, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("Knot did not serve a signed zone")
        time.sleep(0.2)


def keys_of(z, ksk: bool) -> set[int]:
    return {dns.dnssec.key_id(k) for k in z.get_rdataset(ORIGIN, "DNSKEY") if bool(k.flags & 1) == ksk}


def soa_signers(z) -> set[int]:
    return {s.key_tag for s in z.get_rdataset(ORIGIN, "RRSIG", "SOA")}


def validated(port, anchor):
    for name, qtype, src in (("e1.", "A", "127.0.0.1"), ("e1.", "A", "127.1.0.1"),
                             ("www.", "A", "127.0.0.1")):
        out = delv(port, anchor, name + ORIGIN, qtype, source=src)
        assert "fully validated" in out and addrs(out), (name, qtype, src, out)


@pytest.mark.parametrize("alg", ["rsasha256", "rsasha512", "ecdsap256sha256", "ed25519"])
def test_knot_key_store_signs_mapped_answers(tmp_path, alg):
    knot = Knot(tmp_path, "knot")
    (knot.dir / "cdn.zone").write_text(ZONE)
    sizes = "    ksk-size: 2048\n    zsk-size: 1024\n" if alg.startswith("rsa") else ""
    knot.write_conf(POLICY.format(alg=alg, sizes=sizes, origin=ORIGIN, dir=knot.dir))
    knot.start()
    p = None
    try:
        z = transfer(knot, tmp_path / "cdn.signed")
        store = knot.dir / "db" / "keys" / "keys"
        assert len(list(store.glob("*.pem"))) == 2          # Knot's KSK and ZSK
        ksk = next(k for k in z.get_rdataset(ORIGIN, "DNSKEY") if k.flags & 1)
        anchor = tmp_path / "anchor"
        anchor.write_text('trust-anchors {\n  "%s" static-key %d %d %d "%s";\n};\n' % (
            ORIGIN, ksk.flags, ksk.protocol, ksk.algorithm, base64.b64encode(ksk.key).decode()))
        (tmp_path / "world.map").write_text(MAP)
        (tmp_path / "pop53.toml").write_text(
            CONFIG.format(ctl=tmp_path / "ctl.sock")
            .replace('dnssec_keys = "keys"', f'dnssec_keys = "{store}"')
            .replace("dnssec_validity = 90\ndnssec_refresh = 84\n", ""))
        check = subprocess.run([sys.executable, "-m", "pop53", "check", "-c", "pop53.toml"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        p = Proc(["serve", "-c", "pop53.toml"], str(tmp_path))
        zsk0 = keys_of(z, ksk=False)
        assert answer_tags(p.port)[0] == zsk0 == soa_signers(z)
        validated(p.port, anchor)
        if alg != "ecdsap256sha256":
            return

        # Knot rolls the ZSK; pop53 gets each step of it by AXFR + reload
        knot.knotc("zone-key-rollover", ORIGIN, "zsk")
        serial, steps, deadline = z.get_rdataset(ORIGIN, "SOA")[0].serial, [], time.monotonic() + 60
        while time.monotonic() < deadline:
            z = transfer(knot, tmp_path / "cdn.signed", serial)
            serial = z.get_rdataset(ORIGIN, "SOA")[0].serial
            assert ctl(str(tmp_path), "reload")["ok"] is True
            want = soa_signers(z)
            for _ in range(50):           # re-signed in the background
                if answer_tags(p.port)[0] == want:
                    break
                time.sleep(0.1)
            assert answer_tags(p.port)[0] == want
            validated(p.port, anchor)
            steps.append((keys_of(z, ksk=False), want))
            if not keys_of(z, ksk=False) & zsk0:
                break
        assert steps and not steps[-1][0] & zsk0, steps       # the old ZSK is gone
        assert any(len(zsks) == 2 for zsks, _ in steps), steps   # a pre-published step seen
    finally:
        if p is not None:
            p.stop()
        knot.stop()
