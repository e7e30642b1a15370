"""Sign the DNSSEC test zones with BIND's dnssec-signzone (Debian bind9-utils) in the test
setup: NSEC, NSEC3 (RFC 9276: no salt, 0 extra iterations) and NSEC3 with opt-out."""
from __future__ import annotations

import base64
import dataclasses
import subprocess
from pathlib import Path

import dns.dnssec
import dns.name
import dns.zone

ZONES = Path(__file__).resolve().parent / "zones"
ORIGIN = "sec.example."
VARIANTS = {
    "nsec": [],
    "nsec3": ["-3", "-", "-H", "0"],
    "optout": ["-3", "-", "-H", "0", "-A"],
}


@dataclasses.dataclass
class Signed:
    variant: str
    origin: str
    path: Path              # the signed zone file
    anchor: Path            # delv's trust anchor file (trust-anchors { ... static-key ... })
    ds: str                 # the KSK's DS record (presentation)
    keydir: Path


def make_keys(keydir: Path, origin: str = ORIGIN) -> None:
    keydir.mkdir(parents=True, exist_ok=True)
    for extra in (["-f", "KSK"], []):
        subprocess.run(["dnssec-keygen", "-q", "-K", str(keydir), "-a", "ECDSAP256SHA256",
                        *extra, origin], check=True, capture_output=True)


def sign(src: Path, keydir: Path, out: Path, variant: str, origin: str = ORIGIN,
         extra=()) -> Signed:
    """Sign `src` with the keys in keydir into `out`; also write delv's anchor file."""
    subprocess.run(["dnssec-signzone", "-S", "-K", str(keydir), "-o", origin, "-f", str(out),
                    *VARIANTS[variant], *extra, str(src)], check=True, capture_output=True,
                   cwd=keydir)
    zone = dns.zone.from_file(str(out), origin, relativize=False)
    keys = zone.get_rdataset(origin, "DNSKEY")
    ksk = next(k for k in keys if k.flags & 1)
    ds = dns.dnssec.make_ds(origin, ksk, "SHA256")
    anchor = out.with_suffix(".anchor")
    anchor.write_text("trust-anchors {\n  \"%s\" static-key %d %d %d \"%s\";\n};\n" % (
        origin, ksk.flags, ksk.protocol, ksk.algorithm,
        base64.b64encode(ksk.key).decode()))
    return Signed(variant, origin, out, anchor, f"{origin} IN DS {ds.to_text()}", keydir)


CHILD = "signed." + ORIGIN


def sign_all(tmp: Path) -> dict[str, Signed]:
    """The test zone in each variant, one key set for all; its child signed.sec.example.
    signed (NSEC) with its own keys, and its real DS put into the parent before signing."""
    child_keys = tmp / "child-keys"
    make_keys(child_keys, CHILD)
    child = sign(ZONES / "signed.sec.example.zone", child_keys, tmp / "child.zone", "nsec", CHILD)
    text = (ZONES / "sec.example.zone").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("signed      DS")]
    src = tmp / "sec.example.zone"
    src.write_text("\n".join(lines + [child.ds.replace(" IN ", " 3600 IN ", 1)]) + "\n")
    keydir = tmp / "keys"
    make_keys(keydir)
    out = {v: sign(src, keydir, tmp / f"{v}.zone", v) for v in VARIANTS}
    out["child"] = child
    return out
