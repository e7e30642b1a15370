"""One changed small signed zone among others, a big unsigned zone present (issue 14 point 2 with
issue 12): the reload that splices that zone (compiled alone, zone/splice.py) against the path a
signed zone took before (every zone compiled again: the full reload).

    python -m bench.micro.signed_splice --big 1000000 --zones 100 --names 1000 --rounds 3
    python -m bench.micro.signed_splice --big 1000000 --big-signed ...   # the big zone signed too

A `pop53.serve.server.Server` (no sockets) loads --zones small unsigned zones, `big.bench.`
with --big A records (signed by dnssec-signzone, NSEC3, with --big-signed) and `sec.bench.` with --names names signed by dnssec-signzone (NSEC3, no
salt, 0 iterations).  Each round rewrites the signed zone's file with the other of two
versions (names added and removed, re-signed) and times `ZoneSet.reload("sec.bench.")`: wall
time and CPU (this process and its children: the full reload compiles in a child process), once
as served (the splice; the server's load counters must say "spliced") and once with the splice
turned off (zonesplice.splice returning None: the name patch turns signed zones down, so this is
the full reload).  Medians over the rounds; the load average before and after.  Not a test."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pop53 import config as cfgmod
from pop53.serve import zonesplice
from pop53.serve.server import Server

SIGNED = "sec.bench."
BIG = "big.bench."


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class _Signer:
    """Versions of sec.bench. signed by dnssec-signzone: serial n holds h<lo>..h<lo+names-1>,
    lo alternating between 0 and names/10 (a tenth of the names gone, as many new)."""

    def __init__(self, d: Path, names: int):
        self.d, self.names = d, names
        self.keys = d / "keys"
        self.keys.mkdir()
        for extra in (["-f", "KSK"], []):
            subprocess.run(["dnssec-keygen", "-q", "-K", str(self.keys), "-a", "ECDSAP256SHA256",
                            *extra, SIGNED], check=True, capture_output=True)

    def version(self, serial: int) -> bytes:
        lo = 0 if serial % 2 else self.names // 10
        src = self.d / "sec.src"
        src.write_text(f"$ORIGIN {SIGNED}\n$TTL 3600\n@ SOA ns1 host {serial} 7200 3600 1209600 "
                       "300\n@ NS ns1\nns1 A 192.0.2.1\n" +
                       "".join(f"h{i} A 198.51.{(i >> 8) & 255}.{i & 255}\n"
                               for i in range(lo, lo + self.names)))
        path = self.d / "sec.signed"
        subprocess.run(["dnssec-signzone", "-S", "-K", str(self.keys), "-o", SIGNED, "-f",
                        str(path), "-3", "-", "-H", "0", str(src)], check=True,
                       capture_output=True, cwd=self.keys)
        return path.read_bytes()


def _setup(d: Path, big: int, zones: int, names: int, big_signed: bool) -> tuple[Server, _Signer]:
    entries = []
    for i in range(zones):
        name = f"z{i:04d}.bench."
        (d / f"{name}zone").write_text(
            f"$ORIGIN {name}\n$TTL 300\n@ SOA ns1 h 1 3600 600 86400 300\n@ NS ns1\n"
            f"ns1 A 192.0.2.1\n@ MX 10 h1.{SIGNED}\n" +
            "".join(f"h{j} A 198.51.100.{j}\n" for j in range(10)))
        entries.append({"name": name, "file": str(d / f"{name}zone")})
    with open(d / "big.zone", "w") as f:
        f.write(f"$ORIGIN {BIG}\n$TTL 300\n@ SOA ns1 h 1 3600 600 86400 300\n@ NS ns1\n"
                "ns1 A 192.0.2.1\n")
        for i in range(big):
            f.write(f"h{i} A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}\n")
    if big_signed:
        keys = d / "bigkeys"
        keys.mkdir()
        for extra in (["-f", "KSK"], []):
            subprocess.run(["dnssec-keygen", "-q", "-K", str(keys), "-a", "ECDSAP256SHA256",
                            *extra, BIG], check=True, capture_output=True)
        subprocess.run(["dnssec-signzone", "-S", "-K", str(keys), "-o", BIG, "-f",
                        str(d / "big.signed"), "-3", "-", "-H", "0", str(d / "big.zone")],
                       check=True, capture_output=True, cwd=keys)
        os.replace(d / "big.signed", d / "big.zone")
    entries.append({"name": BIG, "file": str(d / "big.zone")})
    signer = _Signer(d, names)
    (d / "sec.zone").write_bytes(signer.version(1))
    entries.append({"name": SIGNED, "file": str(d / "sec.zone")})
    cfg = cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "workers": 1, "zone_dir": str(d),
                                       "state": str(d / "state")},
                            "zone": entries}, file="<bench>")
    os.makedirs(d / "state", exist_ok=True)
    s = Server(cfg)
    s.zones.load_first()
    return s, signer


def _round(s: Server, d: Path, text: bytes) -> tuple[float, float, dict]:
    (d / "sec.zone").write_bytes(text)
    before = dict(s.zones.counts)
    c0, t0 = _cpu(), time.monotonic()
    assert s.zones.reload(SIGNED) is True
    t, c = time.monotonic() - t0, _cpu() - c0
    return t, c, {k: s.zones.counts[k] - before[k] for k in before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--zones", type=int, default=100)
    ap.add_argument("--names", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-signed", action="store_true")
    a = ap.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="p53-signed-splice-") as tmp:
        d = Path(tmp)
        t0 = time.monotonic()
        s, signer = _setup(d, a.big, a.zones, a.names, a.big_signed)
        setup = time.monotonic() - t0
        out = {"splice": [], "full": []}
        serial = 1
        original = zonesplice.splice

        def refused(*_a, **_k):
            return None
        refused.last_reason = "turned off by the benchmark"
        for r in range(a.rounds):
            for how in ("splice", "full"):
                serial += 1
                text = signer.version(serial)
                zonesplice.splice = original if how == "splice" else refused
                try:
                    t, c, counts = _round(s, d, text)
                finally:
                    zonesplice.splice = original
                if how == "splice":
                    assert counts["spliced"] == 1 and counts["parsed"] == 1, counts
                else:
                    assert counts["spliced"] == 0, counts    # every zone compiled again
                out[how].append((t, c))
                print(f"round {r} {how:6s}: {t:7.3f} s wall, {c:7.3f} s CPU  {counts}",
                      flush=True)
        image = len(s.zones.slot.current)
        s.zones.saver.flush(120.0)     # the saved image is written in the background
        s.zones.stop()
    res = {"args": vars(a), "setup_s": round(setup, 1), "image_bytes": image,
           "load_before": [round(x, 2) for x in load0],
           "load_after": [round(x, 2) for x in os.getloadavg()]}
    for how, rows in out.items():
        res[how] = {"wall_s": round(statistics.median(r[0] for r in rows), 3),
                    "cpu_s": round(statistics.median(r[1] for r in rows), 3)}
    res["speedup_wall"] = round(res["full"]["wall_s"] / res["splice"]["wall_s"], 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
