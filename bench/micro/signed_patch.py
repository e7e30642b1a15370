"""IXFR to a signed zone: the patch (pop53.zone.incremental + zone/patch_dnssec.py) against the
full compile of the new version, for a zone of --names names signed by dnssec-signzone (NSEC and
NSEC3), the IXFR refreshing one name's RRSIG (what a signing primary sends most often).

    python -m bench.micro.signed_patch --names 50000      # from the repository root

Wall time, best of --repeat, of patch_image(old, ...) and of compile_zone_data([new])."""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone

from pop53.dnssec import keys as dkeys
from pop53.zone.compiler import compile_zone_data
from pop53.zone.incremental import patch_image
from pop53.zone.zonefile import load_zone_file

ORIGIN = "bench.example."


def _zone(d: Path, names: int, variant: str) -> tuple[Path, Path]:
    keys = d / "keys"
    keys.mkdir(exist_ok=True)
    if not list(keys.glob("*.key")):
        for extra in (["-f", "KSK"], []):
            subprocess.run(["dnssec-keygen", "-q", "-K", str(keys), "-a", "ECDSAP256SHA256",
                            *extra, ORIGIN], check=True, capture_output=True)
    src = d / "zone"
    src.write_text(f"$ORIGIN {ORIGIN}\n$TTL 3600\n@ SOA ns1 host 1 7200 3600 1209600 300\n"
                   "@ NS ns1\nns1 A 192.0.2.1\n" +
                   "".join(f"h{i} A 198.51.{(i >> 8) & 255}.{i & 255}\n" for i in range(names)))
    out = d / f"{variant}.signed"
    extra = ["-3", "-", "-H", "0"] if variant == "nsec3" else []
    subprocess.run(["dnssec-signzone", "-S", "-K", str(keys), "-o", ORIGIN, "-f", str(out),
                    *extra, str(src)], check=True, capture_output=True, cwd=keys)
    return out, keys


def _one_rrsig_changed(path: Path, keys: Path, out: Path) -> dns.name.Name:
    z = dns.zone.from_file(str(path), ORIGIN, relativize=False)
    name = dns.name.from_text("h7." + ORIGIN)
    origin = dns.name.from_text(ORIGIN)
    zsk = next(k for k in dkeys.load_dir(str(keys), origin)
               if isinstance(k, dkeys.SigningKey) and not k.ksk)
    sig = dns.dnssec.sign(z.find_rrset(name, "A"), zsk.private, origin, zsk.dnskey, lifetime=86400)
    node = z.nodes[name]
    node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.A)
    node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.A, create=True).add(sig, 3600)
    z.to_file(str(out), relativize=False)
    return name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for variant in ("nsec", "nsec3"):
            v1, keys = _zone(d, a.names, variant)
            v2 = d / f"{variant}.v2"
            changed = _one_rrsig_changed(v1, keys, v2)
            old = compile_zone_data([load_zone_file(v1, ORIGIN)])
            data = load_zone_file(v2, ORIGIN)
            best_p = best_c = float("inf")
            for _ in range(a.repeat):
                t = time.perf_counter()
                img = patch_image(old, dns.name.from_text(ORIGIN), data, [changed])
                best_p = min(best_p, time.perf_counter() - t)
                assert img is not None, patch_image.last_reason
                t = time.perf_counter()
                compile_zone_data([data])
                best_c = min(best_c, time.perf_counter() - t)
            print(f"{variant}: {a.names} names, {len(old)} bytes: patch {best_p * 1e3:.1f} ms, "
                  f"full compile {best_c * 1e3:.1f} ms ({best_c / best_p:.0f}x)")


if __name__ == "__main__":
    main()
