"""`pop53 check` on signed zones: signatures expiring within the window (warning), expired or
made by a key the DNSKEY RRset does not hold or not verifying (errors, exit 1)."""
from __future__ import annotations

import os
import subprocess
import sys

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from pop53.dnssec.check import check_signatures


def _zone(s):
    return dns.zone.from_file(str(s.path), s.origin, relativize=False), dns.name.from_text(s.origin)


def _expiry(zone, origin):
    return zone.find_rdataset(origin, dns.rdatatype.RRSIG, dns.rdatatype.SOA)[0].expiration


def test_a_freshly_signed_zone_has_no_findings(signed):
    for v in ("nsec", "nsec3", "optout", "child"):
        zone, origin = _zone(signed[v])
        assert check_signatures(zone, origin) == []


def test_expiring_and_expired_signatures(signed):
    zone, origin = _zone(signed["nsec3"])
    exp = _expiry(zone, origin)
    soon = check_signatures(zone, origin, now=exp - 2 * 86400)
    assert [f.level for f in soon] == ["warning"] and "expire within 7 days" in soon[0].message
    assert check_signatures(zone, origin, now=exp - 2 * 86400, window_days=1) == []
    late = check_signatures(zone, origin, now=exp + 60)
    assert [f.level for f in late] == ["error"] and "have expired" in late[0].message


def test_a_dnskey_that_does_not_match_the_signatures(signed):
    zone, origin = _zone(signed["nsec"])
    other = dns.dnssec.make_dnskey(ec.generate_private_key(ec.SECP256R1()).public_key(),
                                   dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
    keys = zone.find_rdataset(origin, dns.rdatatype.DNSKEY)
    ttl = keys.ttl
    keys.clear()
    keys.add(other, ttl)
    found = check_signatures(zone, origin)
    assert any(f.level == "error" and "does not hold" in f.message for f in found), found


def test_a_signature_that_does_not_verify(signed):
    zone, origin = _zone(signed["nsec"])
    sigs = zone.find_rdataset("www." + signed["nsec"].origin, dns.rdatatype.RRSIG, dns.rdatatype.A)
    old = sigs[0]
    ttl = sigs.ttl
    sigs.clear()
    sigs.add(old.replace(signature=bytes([old.signature[0] ^ 1]) + old.signature[1:]), ttl)
    found = check_signatures(zone, origin)
    assert [f.level for f in found] == ["error"]
    assert "do not verify" in found[0].message and "www.sec.example. A" in found[0].message


def test_the_cli_exit_code_and_window(signed, tmp_path):
    s = signed["nsec"]
    env = dict(os.environ)
    run = lambda *a: subprocess.run([sys.executable, "-m", "pop53", "check", "--zone", *a],
                                    capture_output=True, text=True, env=env, timeout=120)
    ok = run(str(s.path))
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    # dnssec-signzone's default validity is 30 days: a 40-day window warns, exit 0
    warn = run(str(s.path), "--dnssec-window", "40")
    assert warn.returncode == 0 and "signatures expire within 40 days" in warn.stderr
    zone, origin = _zone(s)
    keys = zone.find_rdataset(origin, dns.rdatatype.DNSKEY)
    other = dns.dnssec.make_dnskey(ec.generate_private_key(ec.SECP256R1()).public_key(),
                                   dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
    ttl = keys.ttl
    keys.clear()
    keys.add(other, ttl)
    bad = tmp_path / "badkey.zone"
    zone.to_file(str(bad), relativize=False)
    res = run(str(bad))
    assert res.returncode == 1 and "does not hold" in res.stderr, res.stderr


def _both(path, origin, **kw):
    """Findings of the record-columns path (what `pop53 check` runs on a scanner-read file)
    and of the dnspython path, on the same file."""
    from pop53.dnssec.sigcols import check_columns
    from pop53.zone.zonefile import load_zone_file

    data = load_zone_file(str(path), origin)
    assert data.columns is not None        # the scanner read it: the columns path is tested
    name = dns.name.from_text(origin)
    return (check_columns(data.columns, name, **kw),
            check_signatures(dns.zone.from_file(str(path), origin, relativize=False), name, **kw))


def _spoil(zone, origin, tmp_path):
    """The signed zone with one signature of each kind of fault, written out."""
    now = _expiry(zone, origin) - 20 * 86400

    def edit(owner, rdtype, **change):
        sigs = zone.find_rdataset(owner, dns.rdatatype.RRSIG, rdtype)
        old, ttl = sigs[0], sigs.ttl
        sigs.remove(old)
        sigs.add(old.replace(**change), ttl)
        return old

    o = origin.to_text()
    www = zone.find_rdataset("www." + o, dns.rdatatype.RRSIG, dns.rdatatype.A)[0]
    edit("www." + o, "A", signature=bytes([www.signature[0] ^ 1]) + www.signature[1:])
    edit(o, "NS", expiration=int(now - 86400))                     # expired
    edit(o, "SOA", inception=int(now + 86400))                     # not valid yet
    edit("ns1." + o, "A", key_tag=(www.key_tag + 1) & 0xFFFF)     # a key the zone lacks
    edit(o, "MX", signer=dns.name.from_text(o.upper()))            # the zone, in capitals: fine
    # an RRSIG covering TXT at a name with no TXT, and one by another zone's name
    orphan = www.replace(type_covered=dns.rdatatype.TXT)
    zone.find_rdataset("www." + o, dns.rdatatype.RRSIG, dns.rdatatype.TXT, create=True).add(orphan, 300)
    zone.find_rdataset("www." + o, dns.rdatatype.RRSIG, dns.rdatatype.A).add(
        www.replace(signer=dns.name.from_text("other.example."), signature=b"\x07" * 64), 300)
    out = tmp_path / "spoiled.zone"
    zone.to_file(str(out), relativize=False)
    return out, now


def test_the_columns_path_gives_the_dnspython_findings(signed, tmp_path):
    for v in ("nsec", "nsec3", "optout"):
        s = signed[v]
        cols, old = _both(s.path, s.origin)
        assert cols == old == [], (v, cols, old)
    s = signed["nsec"]
    path, now = _spoil(*_zone(s), tmp_path)
    cols, old = _both(path, s.origin, now=now, window_days=30)
    assert cols == old, (cols, old)
    spoiled = cols
    text = "\n".join(map(str, cols))
    for part in ("2 signatures made by a key the DNSKEY RRset does not hold",
                 "signed by other.example. (not the zone)", "have expired (first sec.example. NS",
                 "not valid yet (first sec.example. SOA", "expire within 30 days",
                 "RRSIGs without the RRset they cover: www.sec.example. TXT",
                 "do not verify", "www.sec.example. A (key tag"):
        assert part in text, (part, text)
    # the even sample of the cryptographic check picks the same signatures in both paths
    cols, old = _both(path, s.origin, now=now, verify_limit=7)
    assert cols == old and "an even sample of" in str(cols[-1]), cols
    # an RRSIG written twice is one signature in both forms (dnspython keeps one)
    sig = dns.zone.from_file(str(path), s.origin, relativize=False).find_rdataset(
        "ns1." + s.origin, dns.rdatatype.RRSIG, dns.rdatatype.A)[0]
    with open(path, "a") as f:
        f.write(f"ns1.{s.origin} 3600 IN RRSIG {sig.to_text()}\n")
    again = _both(path, s.origin, now=now, window_days=30)
    assert again[0] == again[1] == spoiled, again
