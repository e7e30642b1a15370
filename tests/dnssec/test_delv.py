"""Validation by a real validator: BIND's delv (Debian bind9-dnsutils), given the zone's KSK as
its trust anchor, validates pop53's DO=1 answers of every category (cases.py) for NSEC, NSEC3
and NSEC3 opt-out signing, served over real sockets by `pop53 serve`; a deliberately broken
signature is detected."""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import dns.rdata
import dns.rdatatype
import dns.zone
import pytest

from cases import CASES, qname
from signing import ZONES
from tests.support.refservers import Pop53Server, Zone

pytestmark = pytest.mark.peers

# A wildcard answer whose next closer name is covered by an opt-out NSEC3 may stand for an
# unsigned delegation: validators treat it as insecure, not bogus (RFC 5155 §9.2); Knot's
# answer is byte for byte the same (test_vs_knot.py).
INSECURE_OK = {("optout", "x.wild", "TXT"), ("optout", "y.z.wild", "MX"),
               ("optout", "wcname", "TXT"),
               # below an ENT opt-out left bare, a name's absence is provably insecure
               ("optout", "y.deep", "A")}


def delv(server, anchor, origin: str, name: str, qtype: str) -> str:
    host, port = server.address
    p = subprocess.run(["delv", f"@{host}", "-p", str(port), "-a", str(anchor),
                        f"+root={origin}", name, qtype],
                       capture_output=True, text=True, timeout=30)
    return p.stdout + p.stderr


@pytest.fixture(scope="module", autouse=True)
def _have_delv():
    if not shutil.which("delv"):
        pytest.fail("delv not found (Debian bind9-dnsutils; scripts/setup.sh installs it)")


@pytest.mark.parametrize("variant", ["nsec", "nsec3", "optout"])
def test_delv_validates_every_answer_type(signed, variant):
    s = signed[variant]
    cases = [(cat, rel, t) for cat, rel, t in CASES
             # delv asks as a resolver would: a referral is validated through the DS RRset
             # (the "ds" cases); the child zones are not served here
             if cat != "referral" and t != "RRSIG"
             # the DS of the trust anchor's own apex lives in the parent, not served here
             and (rel, t) != ("@", "DS")]
    with Pop53Server([Zone(s.origin, s.path)]) as srv:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda c: delv(srv, s.anchor, s.origin, qname(c[1], s.origin),
                                                c[2]), cases))
    bad = []
    for (cat, rel, t), out in zip(cases, outs):
        if "fully validated" in out:
            continue
        if (variant, rel, t) in INSECURE_OK and "unsigned answer" in out:
            continue
        bad.append(f"{cat} {rel} {t}: {out[:300]}")
    assert not bad, "\n".join(bad)


def test_delv_detects_a_broken_signature(signed, tmp_path):
    s = signed["nsec"]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    www = zone.find_node("www." + s.origin)
    sigs = www.find_rdataset(1, dns.rdatatype.RRSIG, dns.rdatatype.A)
    old = sigs[0]
    broken = old.replace(signature=bytes([old.signature[0] ^ 0xFF]) + old.signature[1:])
    sigs.clear()
    sigs.add(broken)
    path = tmp_path / "broken.zone"
    zone.to_file(str(path), relativize=False)
    with Pop53Server([Zone(s.origin, path)]) as srv:
        good = delv(srv, s.anchor, s.origin, "mail." + s.origin, "A")
        out = delv(srv, s.anchor, s.origin, "www." + s.origin, "A")
    assert "fully validated" in good, good        # the rest of the zone still validates
    assert "fully validated" not in out and "resolution failed" in out, out


@pytest.mark.parametrize("variant", ["nsec", "nsec3", "optout"])
def test_delv_follows_referrals_to_signed_and_unsigned_children(signed, variant):
    """Parent and children served together: a validator follows the parent's DS to the signed
    child's keys (fully validated) and accepts the parent's proof that the unsigned child has
    no DS (an insecure answer, not a bogus one); DS queries at the children's apexes are the
    parent's (RFC 4035 §3.1.4.1)."""
    s, child = signed[variant], signed["child"]
    zones = [Zone(s.origin, s.path), Zone(child.origin, child.path),
             Zone("unsigned." + s.origin, ZONES / "unsigned.sec.example.zone")]
    asks = [("www.signed." + s.origin, "A"), ("nope.signed." + s.origin, "A"),
            ("signed." + s.origin, "DS"), ("unsigned." + s.origin, "DS"),
            ("www.unsigned." + s.origin, "A")]
    with Pop53Server(zones) as srv:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda a: delv(srv, s.anchor, s.origin, *a), asks))
    for (name, qtype), out in zip(asks[:4], outs[:4]):
        assert "fully validated" in out, (name, qtype, out)
    assert "; unsigned answer" in outs[4] and "192.0.2.154" in outs[4], outs[4]
