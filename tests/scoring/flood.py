"""A bounded loopback flood for the scoring tests: random-subdomain queries (RD=0, like a
resolver's, so they score "normal" until the sketch or the controller says otherwise) from
`sources` sockets bound to 127.2.X.1 (one /24 each), as fast as this process can send, for at most `seconds`
and `limit` datagrams.  Loopback only: it refuses any other destination.

    python flood.py PORT SECONDS LIMIT SOURCES   -> prints the number of datagrams sent
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time


def queries(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        label = os.urandom(6).hex().encode()
        name = bytes([len(label)]) + label + b"\x05integ\x07example\x00"
        out.append(struct.pack("!HHHHHH", i & 0xFFFF, 0, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01")
    return out


def main(port: int, seconds: float, limit: int, sources: int) -> int:
    dest = ("127.0.0.1", port)
    socks = []
    for i in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.2.{i & 255}.{(i >> 8) + 1}", 0))     # one /24 each
        s.setblocking(False)
        socks.append(s)
    wires = queries(1024)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < limit and time.monotonic() < deadline:
        for k in range(256):            # the clock is read every 256 datagrams
            try:
                socks[(sent + k) % sources].sendto(wires[(sent + k) & 1023], dest)
            except (BlockingIOError, ConnectionRefusedError):
                pass
        sent += 256
    for s in socks:
        s.close()
    return sent


if __name__ == "__main__":
    port, seconds, limit, sources = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(main(port, seconds, limit, sources))
