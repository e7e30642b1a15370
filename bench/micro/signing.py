"""Online-signing throughput (issue 12): signatures per CPU second of one core, for ECDSA P-256
(13) and Ed25519 (15), through pop53's signer (pop53.dnssec.online.OnlineSigner.sign: dnspython
builds the RRSIG, `cryptography` signs) and, as the floor, `cryptography` alone over the same
bytes.  Every signed RRset is a distinct mapped A answer, so no cache hit is counted.

    python -m bench.micro.signing --n 2000          # from the repository root

Thread CPU time (time.thread_time) of the signing loop, best of --repeat runs."""
from __future__ import annotations

import argparse
import os
import time

import dns.dnssec
import dns.name
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pop53.dnssec import online
from pop53.dnssec.keys import SigningKey

ORIGIN = dns.name.from_text("cdn.example.")
OWNER = dns.name.from_text("www.cdn.example.").to_wire()


def _key(alg: int) -> SigningKey:
    priv = ec.generate_private_key(ec.SECP256R1()) if alg == 13 else ed25519.Ed25519PrivateKey.generate()
    dnskey = dns.dnssec.make_dnskey(priv.public_key(), alg, 256)
    return SigningKey("(generated)", ORIGIN, dnskey, priv, dns.dnssec.key_id(dnskey))


def pop53_rate(alg: int, n: int) -> float:
    """Signatures per CPU second through OnlineSigner.sign (n distinct A RRsets)."""
    k = _key(alg)
    signer = online.OnlineSigner([online.ZoneSigning(ORIGIN, [k], 14 * 86400, 7 * 86400)])
    rdatas = [[bytes([10, i >> 16 & 255, i >> 8 & 255, i & 255])] for i in range(n)]
    t0 = time.thread_time()
    for rd in rdatas:
        signer.sign(OWNER, 1, 20, rd)
    dt = time.thread_time() - t0
    assert signer.made == n
    return n / dt


def raw_rate(alg: int, n: int) -> float:
    """Signatures per CPU second of `cryptography` alone over 60-byte messages."""
    k = _key(alg).private
    msgs = [os.urandom(60) for _ in range(n)]
    t0 = time.thread_time()
    if alg == 13:
        algo = ec.ECDSA(hashes.SHA256())
        for m in msgs:
            k.sign(m, algo)
    else:
        for m in msgs:
            k.sign(m)
    return n / (time.thread_time() - t0)


def measure(n: int = 2000, repeat: int = 3) -> dict:
    out = {}
    for alg, name in ((13, "ECDSA P-256"), (15, "Ed25519")):
        out[name] = {"pop53": max(pop53_rate(alg, n) for _ in range(repeat)),
                     "cryptography": max(raw_rate(alg, n) for _ in range(repeat))}
    return out


def table(res: dict) -> str:
    lines = ["| algorithm | pop53 signer (sig/s per core) | cryptography alone (sig/s per core) |",
             "|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['pop53']:,.0f} | {r['cryptography']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"{a.n} distinct RRsets, best of {a.repeat}, load average {load:.2f}")
    print(table(measure(a.n, a.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
