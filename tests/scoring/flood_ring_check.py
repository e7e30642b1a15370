"""Run by tests/scoring/test_flood_ring.py inside `unshare -n` (a network namespace of its own):
the checks of bench/attack/flood.c's AF_PACKET ring transport that need route_localnet on `lo`.

    flood_ring_check.py FLOOD_BINARY CONFIG_DIR ZONE

Prints one JSON object:
- "layouts": per flood source layout (SRC 0-3) and MODE, what a plain UDP socket on 127.0.0.1
  received of a slow ring flood: the count the flood printed, the datagrams received, their
  source addresses, and whether each parses as a one-question DNS query for the right name;
- "steer": with a real pop53 (scoring, `steer = true`, one worker, 127.1.0.0/24 known) stopped
  (SIGSTOP, so its queues only fill), per transport and source layout, which of its two
  SO_REUSEPORT sockets (normal, priority) the datagrams landed in (/proc/net/udp queue bytes
  plus drops, before and after)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.name

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.attack import netns  # noqa: E402

ZONE = "integ.example."


def expected_sources(src: int, n: int) -> set[str]:
    if src == 1:
        return {f"127.{16 + (i >> 8)}.{i & 255}.1" for i in range(n)}
    if src == 2:
        return {f"127.1.0.{100 + i % 150}" for i in range(n)}
    if src == 3:
        return {f"127.3.{i & 255}.1" for i in range(n)}
    return {f"127.2.{i & 255}.{(i >> 8) + 1}" for i in range(n)}


def layouts(binary: str) -> list[dict]:
    out = []
    zone_wire = dns.name.from_text(ZONE).to_wire().hex()
    name = dns.name.from_text("www." + ZONE)
    for src, mode, nsrc in ((0, 0, 4), (1, 0, 300), (2, 1, 150), (3, 0, 4)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.5)
            p = subprocess.run([binary, "-t", "ring", str(s.getsockname()[1]), "0.3", "2000",
                                str(nsrc), str(mode), name.to_wire().hex() if mode else zone_wire,
                                str(src), "0"], capture_output=True, text=True, timeout=10)
            sent = int(p.stdout.split()[0])
            got, srcs, good = 0, set(), True
            while True:
                try:
                    data, addr = s.recvfrom(1024)
                except OSError:
                    break
                got += 1
                srcs.add(addr[0])
                try:
                    q = dns.message.from_wire(data)
                    qn = q.question[0].name
                    good &= len(q.question) == 1 and (qn == name if mode else (
                        qn.parent() == dns.name.from_text(ZONE) and len(qn.labels[0]) == 12))
                except Exception:
                    good = False
        out.append({"src": src, "mode": mode, "sent": sent, "got": got, "parsed": good,
                    "sources_ok": srcs <= expected_sources(src, nsrc), "sources": len(srcs)})
    return out


def udp_sockets(port: int) -> dict[str, int]:
    """inode -> queue bytes + drops of every UDP socket bound to 127.0.0.1:port."""
    out = {}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == f"0100007F:{port:04X}":
            out[f[9]] = int(f[4].split(":")[1], 16) + int(f[12])
    return out


def stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of `pid` is stopped: kill(SIGSTOP) returns before they are, and a
    worker still running would drain the queue the check measures."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = []
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = Path(f"/proc/{pid}/task/{t}/stat").read_text()
            except OSError:
                continue
            states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(st in "Tt" for st in states):
            return
        time.sleep(0.01)


def steer(binary: str, conf_dir: Path, zone: str) -> dict:
    port = netns_free_port()
    known = conf_dir / "known.txt"
    known.write_text("127.1.0.0/24\n")
    conf = conf_dir / "pop53.toml"
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\n\n'
                    # the program's choice of socket, not where a stopped idle worker waits
                    # (its first WAKE_REDIR_MAX known datagrams would go to its normal socket)
                    f'[scoring]\nknown_resolvers = "{known}"\nsteer = true\n'
                    'steer_idle = false\n\n'
                    f'[[zone]]\nname = "{ZONE}"\nfile = "{zone}"\n')
    srv = subprocess.Popen([sys.executable, "-m", "pop53", "serve", "--config", str(conf)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict = {}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind(("127.9.0.1", 0))
            c.settimeout(0.2)
            q = dns.message.make_query("www." + ZONE, "A").to_wire()
            for _ in range(150):
                try:
                    c.sendto(q, ("127.0.0.1", port))
                    c.recvfrom(4096)
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                return {"error": "pop53 did not answer"}
        time.sleep(0.5)                          # the steering program attached with the known table
        os.kill(srv.pid, signal.SIGSTOP)
        stopped(srv.pid)
        name = dns.name.from_text("www." + ZONE).to_wire().hex()
        for tx in ("sock", "ring"):
            for label, src in (("known", 2), ("unknown", 0)):
                before = udp_sockets(port)
                subprocess.run([binary, "-t", tx, str(port), "0.05", "1000", "8", "1", name,
                                str(src), "0"], capture_output=True, timeout=10, check=True)
                after = udp_sockets(port)
                out[f"{tx} {label}"] = sorted(k for k in after if after[k] > before.get(k, 0))
        out["sockets"] = len(udp_sockets(port))
        os.kill(srv.pid, signal.SIGCONT)
    finally:
        os.kill(srv.pid, signal.SIGCONT)
        srv.terminate()
        srv.wait(10)
    return out


def netns_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    binary, conf_dir, zone = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/ipv4/conf/lo/route_localnet").write_text("1")
    print(json.dumps({"injects": netns.injects(binary), "layouts": layouts(binary),
                      "steer": steer(binary, conf_dir, zone)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
