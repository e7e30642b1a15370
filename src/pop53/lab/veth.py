"""Two network namespaces joined by a veth pair: the rig of the XDP tests and bench
(issue 16).  The server side is `srv` (veth `<tag>s`, 10.<n>.0.1/24 and fd53:<n>::1/64), the
client side `cli` (`<tag>c`, .2 and ::2).  Names carry the creating process's PID, so a rig
left by a killed run is recognised and removed (`remove_stale`) without touching anyone else's.
"""
from __future__ import annotations

import os
import re
import subprocess

PREFIX = "p53x"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["ip", *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=20)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Delete the namespaces of rigs whose creating process is gone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(rf"({PREFIX}(\d+)[a-z]\d*-(?:srv|cli))\b", line)
        if m and not _alive(int(m.group(2))):
            subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)


class VethRig:
    """srv <-> cli over one veth pair with `queues` queues on each end."""

    def __init__(self, tag: str = "a", queues: int = 1, net: int = 53):
        base = f"{PREFIX}{os.getpid()}{tag}"
        self.srv, self.cli = f"{base}-srv", f"{base}-cli"
        short = f"{os.getpid() % 100000}{tag}"
        self.srv_if, self.cli_if = f"p53{short}s", f"p53{short}c"
        self.srv4, self.cli4 = f"10.{net}.0.1", f"10.{net}.0.2"
        self.srv6, self.cli6 = f"fd53:{net}::1", f"fd53:{net}::2"
        self.queues = queues

    def up(self) -> "VethRig":
        remove_stale()
        for ns in (self.srv, self.cli):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        try:
            q = str(self.queues)
            _ip("link", "add", self.srv_if, "numtxqueues", q, "numrxqueues", q, "netns", self.srv,
                "type", "veth", "peer", "name", self.cli_if, "numtxqueues", q, "numrxqueues", q,
                "netns", self.cli)
            for ns, dev, a4, a6 in ((self.srv, self.srv_if, self.srv4, self.srv6),
                                    (self.cli, self.cli_if, self.cli4, self.cli6)):
                _ip("addr", "add", f"{a4}/24", "dev", dev, netns=ns)
                _ip("addr", "add", f"{a6}/64", "dev", dev, "nodad", netns=ns)
                _ip("link", "set", dev, "up", netns=ns)
                _ip("link", "set", "lo", "up", netns=ns)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for ns in (self.srv, self.cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def xdp_attached(self) -> bool:
        """Whether the server end carries an XDP program (any mode)."""
        out = _ip("-d", "link", "show", "dev", self.srv_if, netns=self.srv).stdout
        return bool(re.search(r"\bprog/xdp\b|\bxdp(generic|drv|offload)?\b", out))

    def __enter__(self) -> "VethRig":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


_CLONE_NEWNET = 0x40000000


class netns_of_thread:
    """`with netns_of_thread(name):` this thread runs in namespace `name` (sockets it creates
    stay there; threads it starts are born there), then returns to where it was."""

    def __init__(self, name: str):
        self.name = name

    def _setns(self, fd: int) -> None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns to {self.name}")

    def __enter__(self):
        self.back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            self._setns(fd)
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._setns(self.back)
        finally:
            os.close(self.back)
