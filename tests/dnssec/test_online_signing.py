"""Online signing of mapped answers (issue 12, pop53/dnssec/online.py): a zone signed by
dnssec-signzone, whose [[zone]] names `dnssec_keys`, served by `pop53 serve` with mapped A,
AAAA and CNAME names.  BIND's delv, with the zone's KSK as trust anchor, validates the mapped
answers for clients in different regions (delv -b picks the source address the map keys on),
after a liveness flip, and a NODATA at a mapped name; answers to different ECS subnets verify
against the zone's DNSKEY; signatures are renewed before they expire; the data plane never
signs (the count of signatures made does not grow with queries)."""
from __future__ import annotations

import shutil
import subprocess
import time

import dns.dnssec
import dns.edns
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.zone
import pytest

from signing import sign
from tests.mapping.test_serve_e2e import Proc, ctl

pytestmark = pytest.mark.peers

ORIGIN = "cdn.example."
# The mapped names are in the zone before signing, with a record of each type they answer, so
# the zone's NSEC/NSEC3 chain lists them with those types (docs/dnssec-online.md); those
# placeholder records are never served.  e1 also holds a static TXT.
ZONE = """$ORIGIN cdn.example.
$TTL 3600
@    SOA ns1 host 1 7200 3600 1209600 300
@    NS  ns1
ns1  A   192.0.2.53
e1   A   192.0.2.1
e1   AAAA 2001:db8::1
e1   TXT "mapped"
www  CNAME e1
"""
CONFIG = """[server]
listen = ["127.0.0.1:0"]
workers = 1
control = "{ctl}"
[[zone]]
name = "cdn.example."
file = "cdn.signed"
dnssec_keys = "keys"
dnssec_validity = 90
dnssec_refresh = 84
[[map]]
name = "world"
file = "world.map"
default = "us"
[[target]]
name = "eu1"
addresses = ["192.0.2.10", "2001:db8::10"]
host = "e1.cdn.example."
[[target]]
name = "us1"
addresses = ["198.51.100.1"]
host = "ns1.cdn.example."
[[mapped]]
name = "e1.cdn.example."
map = "world"
ttl = 20
regions = {{ eu = ["eu1"], us = ["us1"] }}
fallback = ["us"]
[[mapped]]
name = "www.cdn.example."
map = "world"
type = "CNAME"
ttl = 30
regions = {{ eu = ["eu1"], us = ["us1"] }}
fallback = ["us"]
"""
MAP = "127.0.0.0/16 eu\n127.1.0.0/16 us\n10.0.0.0/8 eu\n2001:db8::/32 eu\n"
ALGS = {"p256": "ECDSAP256SHA256", "ed25519": "ED25519"}


def keygen(keydir, alg):
    keydir.mkdir(parents=True, exist_ok=True)
    for extra in (["-f", "KSK"], []):
        subprocess.run(["dnssec-keygen", "-q", "-K", str(keydir), "-a", ALGS[alg], *extra, ORIGIN],
                       check=True, capture_output=True)


@pytest.fixture(scope="module", params=[("p256", "nsec"), ("ed25519", "nsec3")],
                ids=["p256-nsec", "ed25519-nsec3"])
def served(request, tmp_path_factory):
    for tool in ("delv", "dnssec-signzone"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not found (Debian bind9-dnsutils/bind9-utils; scripts/setup.sh)")
    alg, variant = request.param
    d = tmp_path_factory.mktemp(f"online-{alg}")
    keygen(d / "keys", alg)
    (d / "cdn.zone").write_text(ZONE)
    s = sign(d / "cdn.zone", d / "keys", d / "cdn.signed", variant, ORIGIN)
    (d / "world.map").write_text(MAP)
    (d / "pop53.toml").write_text(CONFIG.format(ctl=d / "ctl.sock"))
    p = Proc(["serve", "-c", "pop53.toml"], str(d))
    yield p, str(d), s
    p.stop()


def delv(port, anchor, name, qtype, source="127.0.0.1"):
    out = subprocess.run(["delv", "@127.0.0.1", "-p", str(port), "-b", source, "-a", str(anchor),
                          f"+root={ORIGIN}", name, qtype], capture_output=True, text=True,
                         timeout=30)
    return out.stdout + out.stderr


def addrs(text):
    return sorted(ln.split()[-1] for ln in text.splitlines()
                  if not ln.startswith(";") and ln.split()[3:4] in (["A"], ["AAAA"]))


def test_delv_validates_mapped_answers(served):
    p, cwd, s = served
    eu = delv(p.port, s.anchor, "e1." + ORIGIN, "A")
    assert "fully validated" in eu and addrs(eu) == ["192.0.2.10"], eu
    us = delv(p.port, s.anchor, "e1." + ORIGIN, "A", source="127.1.0.1")
    assert "fully validated" in us and addrs(us) == ["198.51.100.1"], us
    v6 = delv(p.port, s.anchor, "e1." + ORIGIN, "AAAA")
    assert "fully validated" in v6 and addrs(v6) == ["2001:db8::10"], v6
    # the mapped CNAME (eu: e1) and the mapped A at its target, in one validated chain
    cn = delv(p.port, s.anchor, "www." + ORIGIN, "A")
    assert "fully validated" in cn and "CNAME\te1.cdn.example." in cn.replace(" ", "\t"), cn
    assert addrs(cn) == ["192.0.2.10"], cn
    cn = delv(p.port, s.anchor, "www." + ORIGIN, "A", source="127.1.0.1")
    assert "fully validated" in cn and "ns1.cdn.example." in cn and \
        addrs(cn) == ["192.0.2.53"], cn      # us: www -> ns1 (a static A, signed in the zone)
    # NODATA at a mapped name: the zone's NSEC/NSEC3 lists A AAAA TXT, not MX
    nd = delv(p.port, s.anchor, "e1." + ORIGIN, "MX")
    assert "fully validated" in nd and "ncache" in nd.replace("-", ""), nd
    # a static RRset at a mapped name stays the zone's, signed by the zone
    tx = delv(p.port, s.anchor, "e1." + ORIGIN, "TXT")
    assert "fully validated" in tx and '"mapped"' in tx, tx


def _dnskeys(port):
    q = dns.message.make_query(ORIGIN, "DNSKEY", want_dnssec=True)
    r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=3)
    return {dns.name.from_text(ORIGIN): r.find_rrset(r.answer, dns.name.from_text(ORIGIN), 1,
                                                      dns.rdatatype.DNSKEY)}


def _signed_answer(port, ecs, qtype="A"):
    q = dns.message.make_query("e1." + ORIGIN, qtype, want_dnssec=True,
                               options=[dns.edns.ECSOption(*ecs)])
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
    rrs = r.find_rrset(r.answer, dns.name.from_text("e1." + ORIGIN), 1, dns.rdatatype.from_text(qtype))
    sig = r.find_rrset(r.answer, rrs.name, 1, dns.rdatatype.RRSIG, dns.rdatatype.from_text(qtype))
    return r, rrs, sig


def test_ecs_subnets_get_different_signed_answers(served):
    p, cwd, s = served
    keys = _dnskeys(p.port)
    seen = {}
    for ecs in (("10.9.0.0", 24), ("192.0.2.0", 24), ("2001:db8:1::", 48)):
        r, rrs, sig = _signed_answer(p.port, ecs)
        dns.dnssec.validate(rrs, sig, keys)        # raises ValidationFailure when bogus
        seen[ecs] = sorted(x.address for x in rrs)
    assert seen[("10.9.0.0", 24)] == ["192.0.2.10"]
    assert seen[("192.0.2.0", 24)] == ["198.51.100.1"]      # the default region: us
    assert seen[("2001:db8:1::", 48)] == ["192.0.2.10"]
    # a broken signature is caught by the same check (the check can fail)
    r, rrs, sig = _signed_answer(p.port, ("10.9.0.0", 24))
    bad = sig[0].replace(signature=bytes([sig[0].signature[0] ^ 1]) + sig[0].signature[1:])
    sig.clear()
    sig.add(bad)
    with pytest.raises(dns.dnssec.ValidationFailure):
        dns.dnssec.validate(rrs, sig, keys)


def test_liveness_flip_answers_validate(served):
    p, cwd, s = served
    assert ctl(cwd, "mapping")["signatures_made"] >= 5
    assert ctl(cwd, "target", "eu1", "down")["changed"] is True
    try:
        deadline = time.monotonic() + 5
        while True:
            out = delv(p.port, s.anchor, "e1." + ORIGIN, "A")
            if addrs(out) == ["198.51.100.1"] or time.monotonic() > deadline:
                break
        assert "fully validated" in out and addrs(out) == ["198.51.100.1"], out
    finally:
        ctl(cwd, "target", "eu1", "up")


def test_signatures_renewed_before_expiry(served):
    """Validity 90 s, renewed with less than 84 s left: every ~6 s a new snapshot."""
    p, cwd, s = served
    _, _, sig0 = _signed_answer(p.port, ("10.9.0.0", 24))
    exp0 = sig0[0].expiration
    assert exp0 - time.time() <= 90
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, rrs, sig = _signed_answer(p.port, ("10.9.0.0", 24))
        if sig[0].expiration > exp0:
            break
        time.sleep(0.5)
    assert sig[0].expiration > exp0, "the signature was never renewed"
    dns.dnssec.validate(rrs, sig, _dnskeys(p.port))
    out = delv(p.port, s.anchor, "e1." + ORIGIN, "A")
    assert "fully validated" in out, out


def test_a_mapped_name_missing_from_the_signed_chain_is_refused(served, tmp_path):
    p, cwd, s = served
    import shutil as sh
    sh.copytree(cwd + "/keys", tmp_path / "keys")
    (tmp_path / "cdn.zone").write_text(ZONE.replace("e1   A   192.0.2.1\n", ""))
    sign(tmp_path / "cdn.zone", tmp_path / "keys", tmp_path / "cdn.signed", "nsec", ORIGIN)
    (tmp_path / "world.map").write_text(MAP)
    (tmp_path / "pop53.toml").write_text(CONFIG.format(ctl=tmp_path / "ctl.sock"))
    import sys
    for cmd in ("serve", "check"):
        r = subprocess.run([sys.executable, "-m", "pop53", cmd, "-c", "pop53.toml"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "mapped[0].name" in r.stderr and "e1.cdn.example." in r.stderr and \
            "signed A RRset" in r.stderr, r.stderr[-2000:]


def test_check_accepts_the_served_configuration_and_names_bad_keys(served, tmp_path):
    """`pop53 check`: the mapped types at a mapped name of a zone signed online are expected
    (they are its chain entry), not a clash; a missing key directory names the key."""
    import sys
    p, cwd, s = served
    r = subprocess.run([sys.executable, "-m", "pop53", "check", "-c", "pop53.toml"], cwd=cwd,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = open(cwd + "/pop53.toml").read().replace('dnssec_keys = "keys"', 'dnssec_keys = "nokeys"')
    (tmp_path / "pop53.toml").write_text(text.replace('file = "cdn.signed"',
                                                      f'file = "{cwd}/cdn.signed"')
                                         .replace('file = "world.map"', f'file = "{cwd}/world.map"'))
    r = subprocess.run([sys.executable, "-m", "pop53", "check", "-c", "pop53.toml"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "zone[0].dnssec_keys" in r.stderr and "nokeys" in r.stderr, r.stderr
    # no keys at all: mapped answers in a signed zone would go out unsigned (bogus)
    (tmp_path / "pop53.toml").write_text((tmp_path / "pop53.toml").read_text().replace(
        'dnssec_keys = "nokeys"\ndnssec_validity = 90\ndnssec_refresh = 84\n', ""))
    r = subprocess.run([sys.executable, "-m", "pop53", "check", "-c", "pop53.toml"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "mapped[0].name" in r.stderr and \
        "give the zone's signing keys" in r.stderr, r.stderr
