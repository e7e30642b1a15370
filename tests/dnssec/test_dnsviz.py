"""DNSViz (Debian dnsviz) over the signed test zone (NSEC3) and its signed and unsigned
children, served by `pop53 serve` on port 53 inside a network namespace of the test's own
(`unshare -n`: DNSViz asks port 53 only): no errors, no warnings, nothing bogus; the zone and
its signed child secure, the unsigned child insecure."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from signing import ZONES

pytestmark = pytest.mark.peers

NAMES = ["sec.example", "www.sec.example", "nope.sec.example", "x.wild.sec.example",
         "ent.sec.example", "cname2.sec.example", "x.dname.sec.example", "signed.sec.example",
         "www.signed.sec.example", "unsigned.sec.example", "www.unsigned.sec.example"]


def dnsviz_print(s, child, tmp_path) -> list[str]:
    """`dnsviz probe` of NAMES against pop53 serving zone `s`, its child and the unsigned
    child in a namespace of its own, then `dnsviz print` with s's KSK as trust anchor."""
    if not shutil.which("dnsviz"):
        pytest.fail("dnsviz not found (Debian dnsviz + python3-pygraphviz; scripts/setup.sh)")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n)")
    ds = s.ds.split(" DS ", 1)[1]
    probe = tmp_path / "probe.json"
    script = f"""
set -e
ip link set lo up
{sys.executable} -m pop53 serve --listen 127.0.0.1:53 --workers 1 --zone {s.path} \\
    --zone {child.path} --zone {ZONES / 'unsigned.sec.example.zone'} > {tmp_path}/serve.log 2>&1 &
P=$!
trap 'kill $P' EXIT
for i in $(seq 100); do
    {sys.executable} -c "import socket,sys; s=socket.socket(2,2); s.settimeout(0.2); \\
s.sendto(bytes.fromhex('1234000000010000000000000373656307657861') + b'mple\\x00\\x00\\x06\\x00\\x01', \\
('127.0.0.1', 53)); s.recv(512)" 2>/dev/null && break
    sleep 0.1
done
dnsviz probe -A -N sec.example:ns1.sec.example=127.0.0.1 -D "sec.example:{ds}" \\
    -x sec.example:127.0.0.1 -x signed.sec.example:127.0.0.1 \\
    -x unsigned.sec.example:127.0.0.1 -o {probe} {' '.join(NAMES)}
"""
    r = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0 and probe.stat().st_size > 0, r.stdout[-2000:] + r.stderr[-2000:]
    anchor = tmp_path / "ta.txt"
    anchor.write_text(_ksk_line(s))
    out = subprocess.run(["dnsviz", "print", "-t", str(anchor), "-r", str(probe)],
                         capture_output=True, text=True, timeout=120).stdout
    lines = out.splitlines()
    assert len(lines) > 50, out
    return lines


def test_dnsviz_finds_no_errors(signed, tmp_path):
    lines = dnsviz_print(signed["nsec3"], signed["child"], tmp_path)
    bad = [ln for ln in lines if re.search(r"\b[EW]:|\[!\]|\[\?\]", ln)]
    assert not bad, "\n".join(bad[:20])
    status = {ln.split()[0]: ln.split()[1] for ln in lines
              if len(ln.split()) > 1 and not ln.startswith(" ")}
    assert status["sec.example"] == "[.]" and status["signed.sec.example"] == "[.]", status
    assert status["unsigned.sec.example"] == "[-]", status


def _ksk_line(s) -> str:
    import dns.zone
    z = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    return "".join(f"{s.origin} 3600 IN DNSKEY {k.to_text()}\n"
                   for k in z.get_rdataset(s.origin, "DNSKEY") if k.flags & 1)


def test_dnsviz_sees_a_broken_signature(signed, tmp_path):
    """The check can fail: one RRSIG corrupted, DNSViz reports it."""
    import dataclasses
    import dns.rdatatype
    import dns.zone
    s = signed["nsec3"]
    zone = dns.zone.from_file(str(s.path), s.origin, relativize=False)
    sigs = zone.find_rdataset("www." + s.origin, dns.rdatatype.RRSIG, dns.rdatatype.A)
    old, ttl = sigs[0], sigs.ttl
    sigs.clear()
    sigs.add(old.replace(signature=bytes([old.signature[0] ^ 1]) + old.signature[1:]), ttl)
    path = tmp_path / "broken.zone"
    zone.to_file(str(path), relativize=False)
    lines = dnsviz_print(dataclasses.replace(s, path=path), signed["child"], tmp_path)
    assert any(re.search(r"\b[E]:|\[!\]", ln) for ln in lines), "\n".join(lines)
