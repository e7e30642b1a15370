"""BIND-format DNSSEC key files (`K<zone>+<alg>+<tag>.key` / `.private`, as written by
`dnssec-keygen` and by Knot's `keymgr ... bind` export) for online signing (dnssec/online.py).

Only the algorithms pop53 signs with are accepted: ECDSA P-256/SHA-256 (13, RFC 6605) and
Ed25519 (15, RFC 8080); anything else is a one-line error naming the file.
"""
from __future__ import annotations

import base64
import dataclasses
import glob
import os

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pop53.errors import ConfigError

ALG_P256, ALG_ED25519 = 13, 15
SEP = 0x0001          # DNSKEY flags: Secure Entry Point (a KSK, RFC 4034 §2.1.1)
REVOKE = 0x0080


@dataclasses.dataclass(frozen=True)
class SigningKey:
    path: str
    owner: dns.name.Name
    dnskey: object            # dns.rdtypes.ANY.DNSKEY.DNSKEY
    private: object           # cryptography private key
    tag: int

    @property
    def ksk(self) -> bool:
        return bool(self.dnskey.flags & SEP)


def _fail(path: str, msg: str):
    raise ConfigError(f"{path}: {msg}")


def _read_dnskey(path: str):
    """The DNSKEY record of a .key file: `OWNER [TTL] [IN] DNSKEY FLAGS 3 ALG KEY`, ';' comments."""
    try:
        with open(path, encoding="ascii") as f:
            lines = [ln.split(";", 1)[0].strip() for ln in f]
    except (OSError, UnicodeDecodeError) as exc:
        _fail(path, f"cannot read: {exc}")
    for ln in lines:
        parts = ln.split()
        if "DNSKEY" not in (p.upper() for p in parts):
            continue
        i = [p.upper() for p in parts].index("DNSKEY")
        try:
            rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, " ".join(parts[i + 1:]))
            owner = dns.name.from_text(parts[0])
        except Exception as exc:  # dnspython raises several types for bad text
            _fail(path, f"bad DNSKEY record: {exc}")
        return owner, rd
    _fail(path, "no DNSKEY record")


def _read_private(path: str) -> dict:
    try:
        with open(path, encoding="ascii") as f:
            fields = dict(ln.split(":", 1) for ln in f if ":" in ln)
    except (OSError, UnicodeDecodeError) as exc:
        _fail(path, f"cannot read: {exc}")
    return {k.strip(): v.strip() for k, v in fields.items()}


def load_key(key_path: str) -> SigningKey:
    owner, dnskey = _read_dnskey(key_path)
    priv_path = key_path[:-4] + ".private"
    fields = _read_private(priv_path)
    try:
        alg = int(fields.get("Algorithm", "").split()[0])
    except (IndexError, ValueError):
        _fail(priv_path, "not a BIND private key (no Algorithm line)")
    if alg != dnskey.algorithm:
        _fail(priv_path, f"algorithm {alg} does not match its .key ({dnskey.algorithm})")
    if alg not in (ALG_P256, ALG_ED25519):
        _fail(priv_path, f"algorithm {alg}: only ECDSAP256SHA256 (13) and ED25519 (15) are signed "
                         "online")
    try:
        raw = base64.b64decode(fields["PrivateKey"], validate=True)
    except (KeyError, ValueError):
        _fail(priv_path, "not a BIND private key (no PrivateKey line)")
    if alg == ALG_P256 and len(raw) == 32:
        private = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    elif alg == ALG_ED25519 and len(raw) == 32:
        private = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    else:
        _fail(priv_path, f"a {len(raw)}-byte private key is not one of algorithm {alg}")
    # the private key must be the one the DNSKEY publishes, or every signature is bogus
    if dns.dnssec.make_dnskey(private.public_key(), alg, dnskey.flags).key != dnskey.key:
        _fail(priv_path, "the private key does not match the DNSKEY of its .key file")
    return SigningKey(key_path, owner, dnskey, private, dns.dnssec.key_id(dnskey))


def load_dir(directory: str, origin: dns.name.Name) -> list[SigningKey]:
    """The usable keys of `origin` in a directory: every K<origin>+*.key with its .private,
    revoked keys left out.  Errors name the file; no key at all is an error."""
    if not os.path.isdir(directory):
        raise ConfigError(f"{directory}: not a directory of key files")
    stem = origin.to_text().rstrip(".").lower() or "."
    keys = []
    for path in sorted(glob.glob(os.path.join(directory, "K*.key"))):
        base = os.path.basename(path)
        if base[1:].split("+", 1)[0].rstrip(".").lower() != stem:
            continue
        k = load_key(path)
        if k.owner != origin:
            _fail(path, f"the key's owner {k.owner} is not the zone {origin}")
        if not k.dnskey.flags & REVOKE:
            keys.append(k)
    if not keys:
        raise ConfigError(f"{directory}: no K{stem}+*.key/.private key pair for zone {origin}")
    return keys


def zone_signing_keys(keys: list[SigningKey]) -> list[SigningKey]:
    """The keys that sign RRsets other than DNSKEY: the ZSKs, or every key when there are only
    KSKs (a combined signing key), as dnssec-signzone and Knot do."""
    zsks = [k for k in keys if not k.ksk]
    return zsks or keys
