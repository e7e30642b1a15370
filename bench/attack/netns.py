"""A network namespace of the bench's own, where frames written into `lo` reach 127.0.0.1.

The flood's packet paths (bench/attack/flood.c `-t ring|pkt`) inject IPv4 frames into `lo`
through an AF_PACKET socket.  Unlike a local sender's datagrams, which carry the route of their
output, such a frame is routed on input, and the kernel drops 127/8 arriving on an interface as
a martian unless that interface has `route_localnet` (ip_route_input_slow).  Setting that on the
machine's own `lo` would change a shared host, so the bench moves itself (and every server,
resolver and flood it starts, which inherit it) into a fresh namespace first, brings its `lo` up
and sets it there; the namespace goes away with the last of these processes."""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess

CLONE_NEWNET = 0x40000000


def enter() -> None:
    """Move this process into a new network namespace with `lo` up and route_localnet on it.
    Call before starting threads or children (each thread has its own namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"unshare(CLONE_NEWNET): {os.strerror(err)} (the packet flood needs root)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/conf/lo/route_localnet", "w") as f:
        f.write("1")


def injects(binary: str, seconds: float = 0.5) -> bool:
    """Whether a frame the flood writes into `lo` reaches a UDP socket on 127.0.0.1 here: one
    ring flood of `seconds` at 1,000 datagrams a second against a socket we read."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(seconds + 1)
        port = s.getsockname()[1]
        name = b"\x07example\x00".hex()
        p = subprocess.Popen([binary, "-t", "ring", str(port), str(seconds), "1000",
                              "1", "1", name, "0", "0"], stdout=subprocess.DEVNULL)
        try:
            data, src = s.recvfrom(512)
        except OSError:
            return False
        finally:
            p.wait(timeout=seconds + 5)
        return src[0] == "127.2.0.1" and data[12:21] == b"\x07example\x00"
