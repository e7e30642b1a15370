"""One feed message on the wire, its signing keys, and strict decoding.

    b"P53F" | format (1 byte, = 1) | key id (8 bytes) | header length (2) | header (JSON) |
    payload length (4) | payload | Ed25519 signature (64) over every byte before it

The signature is checked before the header is parsed, so untrusted JSON is never read.  The
header has exactly these fields: stream, kind, name, version, issued, sender.  A message is
about one subject: a map (`kind` "map", payload = the map file's text; or "mapdelta", a small
change against a snapshot: pop53.feed.delta), the known-resolver table (`kind` "resolvers",
payload = a `[scoring] known_resolvers` file's text), a target's liveness
(`kind` "target", payload = {"state": "up"|"down"}) or the publisher's heartbeat (`kind`
"heartbeat", empty payload).  `version` must rise per subject: receivers drop replays and
messages that go back.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pop53.errors import ConfigError, Pop53Error

MAGIC = b"P53F"
FORMAT = 1
SIG = 64
MAX_MESSAGE = 64 << 20          # a full 1M-prefix map is ~20 MB of text
KINDS = ("map", "mapdelta", "target", "resolvers", "heartbeat")
HEADER_FIELDS = {"stream": str, "kind": str, "name": str, "version": int, "issued": float,
                 "sender": str}
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FIXED = struct.Struct("!4sB8sH")


class Refused(Pop53Error):
    """A feed message failed a check.  `reason` is the metric label (one word)."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Message:
    stream: str
    kind: str
    name: str
    version: int
    issued: float
    sender: str
    key_id: str
    payload: bytes

    @property
    def subject_key(self) -> tuple[str, str]:
        return (self.kind, self.name)


def key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8]


def subject(prefix: str, kind: str, name: str) -> str:
    return f"{prefix}.{kind}" if kind == "heartbeat" else f"{prefix}.{kind}.{name}"


def encode(key: Ed25519PrivateKey, *, stream: str, kind: str, name: str, version: int,
           sender: str, payload: bytes = b"", issued: float | None = None) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    header = json.dumps({"stream": stream, "kind": kind, "name": name, "version": version,
                         "issued": float(time.time() if issued is None else issued),
                         "sender": sender}, separators=(",", ":"), sort_keys=True).encode()
    body = (_FIXED.pack(MAGIC, FORMAT, key_id(key.public_key()), len(header)) + header
            + struct.pack("!I", len(payload)) + payload)
    return body + key.sign(body)


def _strict_header(raw: bytes) -> dict:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused("schema", f"header is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != set(HEADER_FIELDS):
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise Refused("schema", f"header fields {got}, expected {sorted(HEADER_FIELDS)}")
    for k, t in HEADER_FIELDS.items():
        v = doc[k]
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            v = doc[k] = float(v)
        if not isinstance(v, t) or isinstance(v, bool):
            raise Refused("schema", f"header field {k!r} must be {t.__name__}")
    if doc["kind"] not in KINDS:
        raise Refused("schema", f"unknown kind {doc['kind']!r}")
    if doc["kind"] == "heartbeat" and doc["name"] != "":
        raise Refused("schema", "a heartbeat has no name")
    if doc["kind"] != "heartbeat" and not NAME_RE.match(doc["name"]):
        raise Refused("schema", f"invalid name {doc['name'][:80]!r}")
    if not 1 <= doc["version"] < 1 << 63:
        raise Refused("schema", "version out of range")
    if len(doc["sender"]) > 255 or len(doc["stream"]) > 64:
        raise Refused("schema", "sender or stream too long")
    return doc


def decode(wire: bytes, trusted: "KeyRing") -> Message:
    """Frame, key, signature, then a strict header.  Raises Refused; never anything else."""
    if not isinstance(wire, (bytes, bytearray, memoryview)):
        raise Refused("format", "not bytes")
    wire = bytes(wire)
    if len(wire) > MAX_MESSAGE:
        raise Refused("format", f"{len(wire)} bytes is over the {MAX_MESSAGE} byte limit")
    if len(wire) < _FIXED.size + 4 + SIG:
        raise Refused("format", "too short")
    magic, fmt, kid, hlen = _FIXED.unpack_from(wire)
    if magic != MAGIC:
        raise Refused("format", "not a pop53 feed message")
    if fmt != FORMAT:
        # An old or future format is refused even when its signature is good ("That's one of
        # ours!": a forgotten machine's authenticated messages in an old format).
        raise Refused("format", f"format {fmt}, this server reads {FORMAT}")
    off = _FIXED.size + hlen
    if off + 4 + SIG > len(wire):
        raise Refused("format", "header runs past the end")
    (plen,) = struct.unpack_from("!I", wire, off)
    if off + 4 + plen + SIG != len(wire):
        raise Refused("format", "lengths do not add up")
    public = trusted.lookup(kid)
    try:
        public.verify(wire[-SIG:], wire[:-SIG])
    except InvalidSignature:
        raise Refused("signature", f"bad signature for key {kid.hex()}") from None
    h = _strict_header(wire[_FIXED.size:off])
    if not trusted.allows(kid, h["kind"]):
        raise Refused("key", f"key {kid.hex()} is trusted for {', '.join(sorted(trusted.kinds[kid]))} "
                             f"messages only, not {h['kind']}")
    return Message(h["stream"], h["kind"], h["name"], h["version"], h["issued"], h["sender"],
                   kid.hex(), wire[off + 4:off + 4 + plen])


class KeyRing:
    """The public keys a subscriber trusts, and the revoked ones (by key id or file).  A key in
    `kinds` is trusted only for those message kinds (another server's key: `resolvers`)."""

    def __init__(self, keys: dict[bytes, Ed25519PublicKey], revoked: set[bytes] = frozenset(),
                 kinds: dict[bytes, frozenset[str]] | None = None):
        self.keys = dict(keys)
        self.revoked = set(revoked)
        self.kinds = dict(kinds or {})

    def allows(self, kid: bytes, kind: str) -> bool:
        allowed = self.kinds.get(kid)
        return allowed is None or kind in allowed

    def limited(self, paths: list[str], kinds: frozenset[str], *, key: str) -> "KeyRing":
        """This ring plus the keys in `paths`, each trusted for `kinds` only (a key also in
        the full list keeps its full trust)."""
        keys, limits = dict(self.keys), dict(self.kinds)
        for i, path in enumerate(paths):
            pub = read_public(path, f"{key}[{i}]")
            kid = key_id(pub)
            if kid not in self.keys:
                keys[kid] = pub
                limits[kid] = kinds
        return KeyRing(keys, self.revoked, limits)

    def lookup(self, kid: bytes) -> Ed25519PublicKey:
        if kid in self.revoked:
            raise Refused("revoked", f"key {kid.hex()} is revoked")
        try:
            return self.keys[kid]
        except KeyError:
            raise Refused("key", f"unknown key {kid.hex()}") from None

    @classmethod
    def from_files(cls, trusted: list[str], revoked: list[str] = (), *, key: str = "feed") -> "KeyRing":
        keys = {}
        for i, path in enumerate(trusted):
            pub = read_public(path, f"{key}.trusted_keys[{i}]")
            keys[key_id(pub)] = pub
        gone = set()
        for i, item in enumerate(revoked):
            if re.fullmatch(r"[0-9a-f]{16}", item):
                gone.add(bytes.fromhex(item))
            else:
                gone.add(key_id(read_public(item, f"{key}.revoked_keys[{i}]")))
        return cls(keys, gone)


def read_public(path: str, key: str) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
        pub = serialization.load_pem_public_key(data)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from None
    except ValueError:
        raise ConfigError(f"{path} is not a PEM public key", key=key) from None
    if not isinstance(pub, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 key", key=key)
    return pub


def read_private(path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def keygen(directory: str, name: str) -> tuple[Path, Path, str]:
    """DIR/NAME.key (private, mode 0600) and DIR/NAME.pub; returns them and the key id."""
    if not NAME_RE.match(name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '-' and '_'")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    if priv.exists():
        raise ConfigError(f"{priv} exists; not overwriting a signing key")
    key = Ed25519PrivateKey.generate()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, key_id(key.public_key()).hex()
