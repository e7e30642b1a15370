"""The lab's DNS clients: NSID queries that tell which machine answered, the probe loop a client
namespace runs (`python -m pop53.lab.probe client`), and reading its log."""
from __future__ import annotations

import csv
import random
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from pop53.lab.process import DNS_PORT, LAB_ZONE


def nsid_query(qname: str = LAB_ZONE, qtype: int = 6, qid: int | None = None) -> bytes:
    """A wire-format query with an EDNS(0) OPT record carrying an empty NSID option (RFC 5001)."""
    qid = random.getrandbits(16) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0000, 1, 0, 0, 1)
    q = b"".join(bytes([len(l)]) + l.encode() for l in qname.rstrip(".").split(".") if l) + b"\0"
    q += struct.pack("!HH", qtype, 1)
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 4) + struct.pack("!HH", 3, 0)
    return header + q + opt


def parse_nsid(wire: bytes) -> tuple[int, str | None]:
    """(query id, NSID text or None) from a response; tolerant: returns None on anything odd."""
    import dns.message

    try:
        msg = dns.message.from_wire(wire)
    except Exception:  # noqa: BLE001 - a broken answer counts as "no identity"
        return (struct.unpack("!H", wire[:2])[0] if len(wire) >= 2 else -1), None
    for opt in msg.options:
        if opt.otype == 3:
            data = getattr(opt, "nsid", None) or getattr(opt, "data", b"")
            return msg.id, data.decode(errors="replace")
    return msg.id, None


def probe_client(target: str, port: int, interval: float, timeout: float, duration: float,
                 out: Path) -> None:
    """Send one NSID query every `interval` s (fresh socket = fresh source port, like resolvers
    that randomize ports, §3.1) until `duration` or SIGTERM; one CSV row per query:
    send time, answered (0/1), nsid, rtt ms.  Unanswered after `timeout` = a lost query."""
    stop = False

    def _term(*_a):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    fam = socket.AF_INET6 if ":" in target else socket.AF_INET
    pending: dict[socket.socket, tuple[float, int]] = {}
    end = time.time() + duration
    next_send = time.time()
    with open(out, "w", buffering=1) as f:
        f.write("t_send,answered,nsid,rtt_ms\n")
        while (not stop and time.time() < end) or pending:
            now = time.time()
            if not stop and now >= next_send and now < end:
                s = socket.socket(fam, socket.SOCK_DGRAM)
                s.setblocking(False)
                qid = random.getrandbits(16)
                try:
                    s.sendto(nsid_query(qid=qid), (target, port))
                    pending[s] = (now, qid)
                except OSError:
                    f.write(f"{now:.6f},0,,\n")
                    s.close()
                next_send += interval
                if next_send < now:
                    next_send = now + interval
            wait = max(0.0, min(next_send - time.time(), 0.05))
            r, _, _ = select.select(list(pending), [], [], wait) if pending else ([], [], [])
            if not pending:
                time.sleep(wait)
            now = time.time()
            for s in r:
                t0, qid = pending[s]
                try:
                    wire = s.recv(4096)
                except OSError:
                    continue
                rid, nsid = parse_nsid(wire)
                if rid != qid:
                    continue
                f.write(f"{t0:.6f},1,{nsid or ''},{(now - t0) * 1000:.2f}\n")
                del pending[s]
                s.close()
            for s, (t0, _q) in list(pending.items()):
                if now - t0 > timeout:
                    f.write(f"{t0:.6f},0,,\n")
                    del pending[s]
                    s.close()
            if stop and time.time() > end + timeout + 1:
                break


def query_identity(target: str, port: int = DNS_PORT, timeout: float = 1.0) -> str | None:
    fam = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        qid = random.getrandbits(16)
        try:
            s.sendto(nsid_query(qid=qid), (target, port))
            wire = s.recv(4096)
        except OSError:
            return None
    rid, nsid = parse_nsid(wire)
    return nsid if rid == qid else None


# -- the lab -----------------------------------------------------------------------------------


def read_client_log(path: Path) -> list[tuple[float, bool, str]]:
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append((float(r["t_send"]), r["answered"] == "1", r["nsid"]))
    rows.sort()
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pop53.lab.probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client", help="query the anycast address periodically (lab internal)")
    c.add_argument("--target", required=True)
    c.add_argument("--port", type=int, default=DNS_PORT)
    c.add_argument("--interval", type=float, default=0.1)
    c.add_argument("--timeout", type=float, default=1.0)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    probe_client(a.target, a.port, a.interval, a.timeout, a.duration, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
