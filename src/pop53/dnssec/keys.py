"""The keys that sign mapped answers online (dnssec/online.py), from a `dnssec_keys` directory:

- BIND-format key pairs, `K<zone>+<alg>+<tag>.key` / `.private`, as written by `dnssec-keygen`
  and by Knot's `keymgr ... bind` export;
- Knot's key store (Knot 3.x `keys/` directory): PKCS#8 PEM private keys named by key id.  A
  PEM carries no DNSKEY flags or tag: each is matched against the zone's DNSKEY RRset by its
  public key (the KASP database, which holds the rest, is not read).

Algorithms (those validators must support, RFC 8624 §3.1): RSASHA256 (8, RFC 5702), RSASHA512
(10), ECDSA P-256/SHA-256 (13, RFC 6605) and Ed25519 (15, RFC 8080); anything else is a
one-line error naming the file.

Which of the keys sign (select()): the zone is signed by its signer (dnssec-signzone, Knot), so
the mapped answers follow it: the keys of the directory that are published in the zone's DNSKEY
RRset and sign the zone's apex SOA.  A key roll is then driven by the zone itself (pre-publish,
switch, remove: RFC 6781 §4.1.1.1), whatever the key files' timing metadata or Knot's KASP
state say.
"""
from __future__ import annotations

import base64
import dataclasses
import glob
import logging
import os

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pop53.errors import ConfigError

ALG_RSASHA256, ALG_RSASHA512, ALG_P256, ALG_ED25519 = 8, 10, 13, 15
ALGORITHMS = {ALG_RSASHA256: "RSASHA256", ALG_RSASHA512: "RSASHA512",
              ALG_P256: "ECDSAP256SHA256", ALG_ED25519: "ED25519"}
SEP = 0x0001          # DNSKEY flags: Secure Entry Point (a KSK, RFC 4034 §2.1.1)
REVOKE = 0x0080
ZONE_KEY = 0x0100     # RFC 4034 §2.1.1: only zone keys sign a zone's RRsets
# the private-key class each algorithm needs
_KINDS = {ALG_RSASHA256: rsa.RSAPrivateKey, ALG_RSASHA512: rsa.RSAPrivateKey,
          ALG_P256: ec.EllipticCurvePrivateKey, ALG_ED25519: ed25519.Ed25519PrivateKey}
_RSA_FIELDS = ("Modulus", "PublicExponent", "PrivateExponent", "Prime1", "Prime2", "Exponent1",
               "Exponent2", "Coefficient")

log = logging.getLogger("pop53.dnssec")


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


@dataclasses.dataclass(frozen=True)
class StoreKey:
    """A private key of Knot's key store (PEM): its DNSKEY is found in the zone (select())."""
    path: str
    private: object


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


def _b64int(fields: dict, name: str, path: str) -> int:
    try:
        return int.from_bytes(base64.b64decode(fields[name], validate=True), "big")
    except (KeyError, ValueError):
        _fail(path, f"not a BIND RSA private key (no valid {name} line)")


def _bind_private(alg: int, fields: dict, path: str):
    """The cryptography key of a BIND .private (format v1.3)."""
    if alg in (ALG_RSASHA256, ALG_RSASHA512):
        n, e, d, p, q, dp, dq, qi = (_b64int(fields, f, path) for f in _RSA_FIELDS)
        try:
            return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi,
                                         rsa.RSAPublicNumbers(e, n)).private_key()
        except ValueError as exc:
            _fail(path, f"bad RSA private key: {exc}")
    try:
        raw = base64.b64decode(fields["PrivateKey"], validate=True)
    except (KeyError, ValueError):
        _fail(path, "not a BIND private key (no PrivateKey line)")
    if alg == ALG_P256 and 0 < len(raw) <= 32:
        # BIND writes the scalar without leading zero octets (31 bytes once in 256 keys)
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    if alg == ALG_ED25519 and len(raw) == 32:
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    _fail(path, f"a {len(raw)}-byte private key is not one of algorithm {alg}")


def _public_matches(private, dnskey) -> bool:
    """Whether `private` is the key a DNSKEY publishes (same algorithm family and key)."""
    if not isinstance(private, _KINDS.get(dnskey.algorithm, ())):
        return False
    if dnskey.algorithm == ALG_P256 and private.curve.name != "secp256r1":
        return False
    try:
        return dns.dnssec.make_dnskey(private.public_key(), dnskey.algorithm,
                                      dnskey.flags).key == dnskey.key
    except Exception:  # dnspython refuses a key/algorithm mismatch with several types
        return False


def _unsupported(path: str, alg: int):
    _fail(path, f"algorithm {alg}: only " + ", ".join(f"{v} ({k})" for k, v in
                                                      sorted(ALGORITHMS.items())) +
          " are signed online")


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
    if alg not in ALGORITHMS:
        _unsupported(priv_path, alg)
    private = _bind_private(alg, fields, priv_path)
    # the private key must be the one the DNSKEY publishes, or every signature is bogus
    if not _public_matches(private, dnskey):
        _fail(priv_path, "the private key does not match the DNSKEY of its .key file")
    return SigningKey(key_path, owner, dnskey, private, dns.dnssec.key_id(dnskey))


_P256_ALGID = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")   # ecPublicKey, P-256


def _der(buf: bytes, pos: int, tag: int) -> tuple[int, int]:
    """(start, end) of the DER value of `tag` at pos (ValueError when it is not there)."""
    if pos + 2 > len(buf) or buf[pos] != tag:
        raise ValueError("unexpected DER")
    n, pos = buf[pos + 1], pos + 2
    if n & 0x80:
        n, pos = int.from_bytes(buf[pos:pos + (n & 0x7F)], "big"), pos + (n & 0x7F)
    if pos + n > len(buf):
        raise ValueError("truncated DER")
    return pos, pos + n


def _gnutls_p256(pem: bytes):
    """A P-256 PKCS#8 key as GnuTLS (Knot) writes it: the private value with a leading zero
    octet (33 bytes), which cryptography refuses (RFC 5915 §3 says 32)."""
    body = b"".join(ln for ln in pem.splitlines() if ln and not ln.startswith(b"-----"))
    der = base64.b64decode(body)
    start, _ = _der(der, 0, 0x30)               # PrivateKeyInfo
    _, p = _der(der, start, 0x02)               # version
    _, b = _der(der, p, 0x30)                   # AlgorithmIdentifier
    if der[p:b] != _P256_ALGID:
        raise ValueError("not a P-256 key")
    o, _ = _der(der, b, 0x04)                   # privateKey: ECPrivateKey
    q, _ = _der(der, o, 0x30)
    _, q = _der(der, q, 0x02)                   # version 1
    k, ke = _der(der, q, 0x04)
    value = int.from_bytes(der[k:ke], "big")
    return ec.derive_private_key(value, ec.SECP256R1())


def load_pem(path: str) -> StoreKey:
    """A Knot key store key: an unencrypted PKCS#8 PEM of a supported algorithm."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as exc:
        _fail(path, f"cannot read: {exc}")
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        try:
            private = _gnutls_p256(pem)
        except (ValueError, TypeError, IndexError):
            _fail(path, f"not an unencrypted PKCS#8 PEM private key: {exc}")
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name != "secp256r1":
        _fail(path, f"ECDSA curve {private.curve.name}: only P-256 (algorithm 13) is signed online")
    if not isinstance(private, tuple(_KINDS.values())):
        _fail(path, f"a {type(private).__name__} is not a key of an algorithm signed online")
    return StoreKey(path, private)


def load_dir(directory: str, origin: dns.name.Name) -> list:
    """Every key of `origin` in a directory: each K<origin>+*.key with its .private
    (SigningKey; revoked keys left out) and each *.pem of a Knot key store (StoreKey, of any
    zone: select() keeps those the zone publishes).  Errors name the file; no key at all is
    an error."""
    if not os.path.isdir(directory):
        raise ConfigError(f"{directory}: not a directory of key files")
    stem = origin.to_text().rstrip(".").lower() or "."
    keys: list = []
    for path in sorted(glob.glob(os.path.join(directory, "K*.key"))):
        base = os.path.basename(path)
        if base[1:].split("+", 1)[0].rstrip(".").lower() != stem:
            continue
        k = load_key(path)
        if k.owner != origin:
            _fail(path, f"the key's owner {k.owner} is not the zone {origin}")
        if not k.dnskey.flags & REVOKE:
            keys.append(k)
    keys += [load_pem(p) for p in sorted(glob.glob(os.path.join(directory, "*.pem")))]
    if not keys:
        raise ConfigError(f"{directory}: no K{stem}+*.key/.private key pair and no Knot key "
                          f"store (*.pem) key for zone {origin}")
    return keys


def zone_signing_keys(keys: list[SigningKey]) -> list[SigningKey]:
    """The keys that sign RRsets other than DNSKEY: the ZSKs, or every key when there are only
    KSKs (a combined signing key), as dnssec-signzone and Knot do."""
    zsks = [k for k in keys if not k.ksk]
    return zsks or keys


def select(keys: list, origin: dns.name.Name, dnskeys, soa_signers, where: str) -> list[SigningKey]:
    """The keys that sign the mapped answers of `origin`.

    dnskeys: the zone's DNSKEY RDATAs as served (None: the zone is not loaded yet);
    soa_signers: {(key tag, algorithm)} of the RRSIGs over its apex SOA.
    Not loaded: the BIND keys' zone-signing keys (a key store's PEMs need the zone's DNSKEY).
    Loaded: the keys held here that the DNSKEY RRset publishes (flags and tag from there), of
    those the ones that sign the SOA (they are the signer's active zone-signing keys), else the
    held ZSKs (a SOA signed by a key not held: logged).  Raises ConfigError naming `where`
    when no held key is published (every signature would be bogus)."""
    if dnskeys is None:
        return zone_signing_keys([k for k in keys if isinstance(k, SigningKey)])
    held = []
    for d in dnskeys:
        if not d.flags & ZONE_KEY or d.flags & REVOKE or d.algorithm not in ALGORITHMS:
            continue
        for k in keys:
            if isinstance(k, SigningKey):
                hit = k.dnskey.algorithm == d.algorithm and k.dnskey.key == d.key
            else:
                hit = _public_matches(k.private, d)
            if hit:
                held.append(SigningKey(k.path, origin, d, k.private, dns.dnssec.key_id(d)))
                break
    if not held:
        raise ConfigError(f"{where}: none of its keys is in the DNSKEY RRset of zone {origin} "
                          f"(tags {sorted(dns.dnssec.key_id(d) for d in dnskeys)})")
    active = [k for k in held if (k.tag, k.dnskey.algorithm) in soa_signers]
    if not active:
        log.warning("zone %s: its SOA is signed by %s, none of which %s holds; mapped answers "
                    "are signed by the zone-signing keys it holds that the zone publishes",
                    origin, sorted(soa_signers), where)
        return zone_signing_keys(held)
    return active
