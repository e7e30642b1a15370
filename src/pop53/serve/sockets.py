"""Sockets and privileges for the server: the UDP and TCP listening sockets (SO_REUSEPORT,
PKTINFO, the receive timeout workers need), the run user, handing paths to it, and the drop
itself.  Start-up failures become one-line StartErrors naming the address or path."""
from __future__ import annotations

import logging
import os
import pwd
import socket
import struct

from pop53.config import Listen
from pop53.errors import Pop53Error, StartError

log = logging.getLogger("pop53.server")

# Linux constants Python's socket module may not name
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_IP_MTU_DISCOVER, _IPV6_MTU_DISCOVER = 10, 23
_PMTUDISC_PROBE = 3       # IP_PMTUDISC_PROBE / IPV6_PMTUDISC_PROBE: DF set, path MTU ignored
FIXED_MTU_EDNS_MAX = 1232  # replies up to this fit the IPv6 minimum MTU (RFC 8200), any real link
RECV_TIMEOUT = 0.1        # how often an idle worker passes a quiescent point and checks for stop


# every UDP socket's receive buffer asked for (the kernel doubles it: 8 MiB as it counts)
RCVBUF = 4 << 20


def udp_socket(addr: Listen, stamps: bool = True,
               edns_max: int = FIXED_MTU_EDNS_MAX) -> socket.socket:
    s = socket.socket(addr.family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, int(RECV_TIMEOUT * 1e6)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    if stamps:
        # the kernel's receive time of every datagram: answer latency with the socket's queue
        # (pop53_answer_latency_total_seconds, docs/dnstap.md)
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    if addr.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if edns_max <= FIXED_MTU_EDNS_MAX:
        mtu_mode(s, edns_max)
    if addr.wildcard:
        # replies must leave from the address the query was sent to
        if addr.family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
    s.bind((addr.host, addr.port))
    return s


def _mtu_opt(family: int) -> tuple[int, int]:
    return ((socket.IPPROTO_IP, _IP_MTU_DISCOVER) if family == socket.AF_INET
            else (socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER))


def mtu_mode(s: socket.socket, edns_max: int) -> None:
    """With edns_max <= 1232 (the default) every reply fits any link, so replies leave with DF
    set and the kernel ignores learned path MTUs (IP_PMTUDISC_PROBE): no reply is ever
    fragmented (RFC 9715: DNS responses with DF), a forged ICMP "fragmentation needed" cannot
    shrink what the kernel sends to a victim resolver (the fragmentation attacks on DNS), and
    the kernel skips the per-reply route MTU lookups and the IP ID hash (about 50 ns of a
    ~6 us UDP reply in a perf profile, issue 10).  A larger edns_max gets the kernel's default
    for new sockets back (a reply larger than the link then fragments rather than failing to
    send); a config reload that changes edns_max calls this again (Workers.restart)."""
    level, opt = _mtu_opt(s.family)
    try:
        if edns_max <= FIXED_MTU_EDNS_MAX:
            mode = _PMTUDISC_PROBE
        else:
            with socket.socket(s.family, socket.SOCK_DGRAM) as fresh:
                mode = fresh.getsockopt(level, opt)
        s.setsockopt(level, opt, mode)
    except OSError as exc:       # a kernel without it keeps its default
        log.debug("IP_MTU_DISCOVER not set: %s", exc)


def tcp_socket(addr: Listen) -> socket.socket:
    s = socket.socket(addr.family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if addr.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr.host, addr.port))
    s.listen(1024)
    s.setblocking(False)
    return s


def run_user(user: str | None):
    """The passwd entry to switch to, or None when there is nothing to drop (no user, or not
    started as root)."""
    if not user or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise Pop53Error(f"user {user!r} does not exist (server.user)") from None


def _start_error(exc: OSError, what: str) -> StartError:
    return StartError(exc.errno, f"{what}: {exc.strerror or exc}")


def give_to(pw, path: str, recursive: bool = False) -> None:
    """Before the drop: make `path` (and what is below it) the run user's, so that it can
    still write there afterwards (the state directory) or remove it (pidfile, socket)."""
    if pw is None:
        return
    os.chown(path, pw.pw_uid, pw.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def drop_privileges(user: str | None) -> None:
    """After binding: switch to the unprivileged user before anything is served."""
    pw = run_user(user)
    if pw is None:
        return
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise Pop53Error("could not drop root privileges")
    log.info("dropped privileges to %s (uid %d)", user, pw.pw_uid)
