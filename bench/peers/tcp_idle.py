"""Idle TCP connections held by a server: open N loopback connections, one answered query on
each, keep them open and read the server's memory (the --tcp run's last table)."""
from __future__ import annotations

import resource
import socket
import struct
import time
from pathlib import Path

import dns.message


def kernel_tcp_pages() -> int:
    """Pages the kernel has allocated to TCP sockets (/proc/net/sockstat 'TCP: ... mem N')."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1])
    return 0


def open_idle(port: int, count: int, qname: str, limit_s: float = 60.0) -> tuple[list, int]:
    """Open up to ``count`` connections to 127.0.0.1:port, each with one query answered.
    Returns (the open sockets, how many were answered).  Stops early after 50 failures in a
    row or after ``limit_s``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 200), hard))
    wire = dns.message.make_query(qname, "A").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    socks, held, fails = [], 0, 0
    deadline = time.monotonic() + limit_s
    while held < count and fails < 50 and time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(framed)
            head = s.recv(2)
            ok = len(head) == 2
            if ok:
                n = struct.unpack("!H", head)[0]
                got = 0
                while got < n:
                    chunk = s.recv(n - got)
                    if not chunk:
                        break
                    got += len(chunk)
                ok = got == n
        except OSError:
            ok = False
        if ok:
            socks.append(s)
            held += 1
            fails = 0
        else:
            s.close()
            fails += 1
    return socks, held
