"""The XDP tests' rig (issue 16): a veth pair between two namespaces made for the test
(pop53.lab.veth, names with our PID, removed at teardown and when a killed run left them), an
in-process server whose sockets, AF_XDP sockets and XDP program live in the server namespace,
and client sockets made in the client namespace."""
from __future__ import annotations

import os
import select
import shutil
import socket
import time

import pytest

from pop53 import _core
from pop53 import config as cfgmod
from pop53.lab.veth import VethRig, netns_of_thread
from pop53.serve.server import Server
from pop53.serve.xdp_prog import OBJECT

from integ_support import EXAMPLE_ZONE, INTEG_ZONE, server_config

PORT = 53          # the namespaces are ours: the real port is free


def require_xdp() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    assert os.path.exists(OBJECT), f"{OBJECT} not built: apt-get install clang libbpf-dev, rebuild"


def start_xdp_server(rig: VethRig, tables: dict | None = None, **keys) -> Server:
    """tables: other top-level tables of the config ([rrl], [scoring])."""
    with netns_of_thread(rig.srv):
        cfg = server_config([INTEG_ZONE, EXAMPLE_ZONE],
                            listen=[f"{rig.srv4}:{PORT}", f"[{rig.srv6}]:{PORT}"],
                            workers=1, xdp=[rig.srv_if], **keys)
        if tables:
            cfg = cfgmod.from_dict({**cfg.doc, **tables}, file="<xdp test>")
        s = Server(cfg)
        try:
            s.start()
        except BaseException:
            s.stop()
            raise
    assert s.xdp is not None and s.xdp.workers, "XDP did not start (see the warning logged)"
    return s


def xdp_workers(server: Server) -> list:
    return [w for w in server.workers if isinstance(w, _core.XdpWorker)]


def client_socket(rig: VethRig, host: str, kind=socket.SOCK_DGRAM, connect_port=PORT):
    with netns_of_thread(rig.cli):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    s.settimeout(2.0)
    if connect_port:
        s.connect((host, connect_port))
    return s


def exchange_window(socks: list, wires: list[bytes], expect: list[bool],
                    timeout: float = 2.0) -> list[bytes | None]:
    """Send wires[i] on socks[i] (one each) and collect the replies: wait until every expected
    one came (bounded), then take whatever else is there."""
    for s, w in zip(socks, wires):
        s.send(w)
    got: list[bytes | None] = [None] * len(wires)
    deadline = time.monotonic() + timeout
    pending = {s.fileno(): i for i, s in enumerate(socks[:len(wires)]) if expect[i]}
    while pending and time.monotonic() < deadline:
        r, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
        for fd in r:
            i = pending.pop(fd)
            got[i] = socks[i].recv(65535)
    time.sleep(0.002)
    rest = {s.fileno(): i for i, s in enumerate(socks[:len(wires)]) if got[i] is None}
    r, _, _ = select.select(list(rest), [], [], 0) if rest else ([], [], [])
    for fd in r:
        got[rest[fd]] = socks[rest[fd]].recv(65535)
    return got
