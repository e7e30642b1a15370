"""Serving UDP over AF_XDP (`[server] xdp = ["IFACE"]`, issue 16, docs/xdp.md).

Per interface: pop53's XDP program (serve/xdp_prog.py) is loaded with its own maps (the
served port and addresses, one XSK socket per receive queue) and attached as a BPF link; one
`_core.XdpWorker` per queue runs the nogil loop of ext/xdp.pxi.  The workers join the server's
socket workers (`Server.workers`): the same counters and metrics, image and known-table
reclamation by epochs, config-reload restarts, NOTIFY/XFR/TSIG handed to the control plane.
What the program does not redirect (TCP, ICMP, ARP/ND, other ports, fragments, options) reaches
the kernel and the server's ordinary sockets, which stay bound.

When XDP cannot be used on an interface (no libbpf, program not built, no capability, driver
or kernel without XDP or AF_XDP, another XDP program attached) the server logs one warning
line naming the interface and the reason and serves those queries over its sockets.
"""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading

from pop53 import _core
from pop53.serve.xdp_prog import XdpProgram, XdpUnavailable, remove_stale

log = logging.getLogger("pop53.xdp")


def link_info(ifname: str) -> tuple[int, int]:
    """(receive queues, MTU) of an interface in this thread's network namespace (`ip -j`:
    /sys/class/net shows the namespace /sys was mounted in, not necessarily ours)."""
    try:
        out = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", ifname], check=True,
                             capture_output=True, text=True, timeout=10).stdout
        d = json.loads(out)[0]
        return max(1, int(d.get("num_rx_queues", 1))), int(d.get("mtu", 1500))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        raise XdpUnavailable(f"cannot read {ifname}'s queues and MTU: {exc}") from None


class XdpService:
    """The XDP programs and workers of one server."""

    def __init__(self, server):
        self.server = server
        self.programs: dict[str, XdpProgram] = {}
        self.workers: list = []
        self.modes: dict[str, str] = {}      # interface -> "zerocopy" | "copy"

    def open_interface(self, ifname: str, port: int, hosts: list[str], first_index: int) -> list:
        """Program, sockets and workers for one interface (root needed); all or nothing."""
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise XdpUnavailable(f"no interface {ifname}") from None
        if remove_stale(ifindex, ifname):
            log.warning("removed a stale pop53 XDP program from %s (a previous run died)", ifname)
        prog = XdpProgram()
        workers = []
        try:
            prog.configure(port, hosts)
            queues, mtu = link_info(ifname)
            for q in range(queues):
                w = _core.XdpWorker(-1, first_index + q, True)
                w.open(ifindex, q, port, mtu)
                prog.set_socket(q, w.xsk_fd)
                workers.append(w)
            prog.attach(ifindex, ifname)
        except OSError as exc:
            prog.close()
            raise XdpUnavailable(f"{ifname}: {exc.strerror or exc}") from None
        except XdpUnavailable:
            prog.close()
            raise
        self.programs[ifname] = prog
        self.modes[ifname] = "zerocopy" if all(w.zerocopy for w in workers) else "copy"
        return workers

    def join(self, net) -> None:
        """Add the workers and their (not yet started) threads to the server's (Workers, the
        `net` part), after its socket workers: it starts them, and restart and stop treat them
        like the socket workers."""
        for w in self.workers:
            net.workers.append(w)
            net.threads.append(net._thread(w.index, w, f"pop53-xdp-{w.index}"))

    def control_socket(self, rawaddr: bytes) -> socket.socket:
        """The socket that replies to a control message an XDP worker set aside: the server's
        first UDP socket of the peer's family."""
        family = int.from_bytes(rawaddr[:2], "little")
        socks = self.server.net.udp_socks
        for s in socks:
            if s.family == family:
                return s
        return socks[0]

    def close(self) -> None:
        """Detach every program and release the sockets (after the workers stopped)."""
        for prog in self.programs.values():
            prog.close()
        self.programs.clear()
        for w in self.workers:
            if not w.running:
                w.close()


def attach(server) -> XdpService | None:
    """Called by Server.start after bind, as root: XDP on every `[server] xdp` interface that
    supports it.  None when no interface could be used (each reason logged)."""
    cfg = server.config
    if not cfg.xdp:
        return None
    ports = {p for _h, p in server.addresses}
    if len(ports) != 1:
        log.warning("XDP needs one port for every listen address (have %s): serving over sockets",
                    sorted(ports))
        return None
    port = ports.pop()
    hosts = [h for h, _p in server.addresses]
    svc = XdpService(server)
    index = len(server.net.udp_socks)
    for ifname in cfg.xdp:
        try:
            ws = svc.open_interface(ifname, port, hosts, index)
        except XdpUnavailable as exc:
            log.warning("XDP not available on %s, serving it over sockets: %s", ifname, exc)
            continue
        svc.workers.extend(ws)
        index += len(ws)
        log.info("XDP on %s: %d queue(s), %s mode, UDP port %d", ifname, len(ws),
                 svc.modes[ifname], port)
    if not svc.workers:
        return None
    return svc
