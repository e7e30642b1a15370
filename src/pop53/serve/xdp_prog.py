"""pop53's XDP program (ext/bpf/pop53_xdp.c) from Python: load it with libbpf (through ctypes,
so pop53 builds and runs without libbpf; only `[server] xdp` needs it), fill its maps, attach it
to an interface as a BPF link, detach it, and find and remove a stale one.

A BPF link lives as long as its file descriptor: when the server process dies, even by
SIGKILL, the kernel closes the descriptor and detaches the program, so no program of ours stays
attached.  A program attached the old way (netlink, e.g. `ip link set dev X xdp obj ...`, or a
kernel without links) does stay; `remove_stale` finds one of ours by name and removes it at
start.  Someone else's program is never replaced.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import struct

PROG_NAME = "pop53_xdp"
OBJECT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "pop53_xdp.bpf.o")
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


class XdpUnavailable(Exception):
    """XDP cannot be used here; the message says why (one line)."""


_lib = None


def libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise XdpUnavailable(f"libbpf is not installed ({exc}); Debian: apt-get install libbpf1") from None
        vp, cp, i, u32, u64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
        for fn, res, args in (
                ("bpf_object__open_file", vp, [cp, vp]), ("bpf_object__load", i, [vp]),
                ("bpf_object__close", None, [vp]),
                ("bpf_object__find_program_by_name", vp, [vp, cp]),
                ("bpf_object__find_map_fd_by_name", i, [vp, cp]),
                ("bpf_program__attach_xdp", vp, [vp, i]), ("bpf_link__destroy", i, [vp]),
                ("bpf_map_update_elem", i, [i, vp, vp, u64]),
                ("bpf_xdp_query_id", i, [i, i, ctypes.POINTER(u32)]),
                ("bpf_xdp_detach", i, [i, u32, vp]), ("bpf_prog_get_fd_by_id", i, [u32]),
                ("bpf_obj_get_info_by_fd", i, [i, vp, ctypes.POINTER(u32)]),
                ("libbpf_set_print", vp, [vp])):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        lib.libbpf_set_print(None)      # our own one-line errors instead of libbpf's chatter
        _lib = lib
    return _lib


def _err(what: str, rc: int | None = None) -> XdpUnavailable:
    code = ctypes.get_errno() if rc is None or rc == -1 else -rc
    hint = " (needs root or CAP_BPF + CAP_NET_ADMIN)" if code == errno.EPERM else ""
    return XdpUnavailable(f"{what}: {os.strerror(code)}{hint}")


def attached_program(ifindex: int) -> tuple[int, str] | None:
    """(id, name) of the XDP program attached to the interface, or None."""
    lib = libbpf()
    for flags in (0, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
        pid = ctypes.c_uint32(0)
        if lib.bpf_xdp_query_id(ifindex, flags, ctypes.byref(pid)) == 0 and pid.value:
            return pid.value, program_name(pid.value)
    return None


def program_name(prog_id: int) -> str:
    lib = libbpf()
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""
    try:
        info = ctypes.create_string_buffer(80)          # struct bpf_prog_info up to name[16]
        n = ctypes.c_uint32(80)
        if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(n)) != 0:
            return ""
        return info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def remove_stale(ifindex: int, ifname: str) -> bool:
    """Detach a program of ours left attached the old way (a crashed run with a netlink
    attachment).  Raises XdpUnavailable when the interface carries another program, or ours
    held by a live link (another pop53 serves there).  Returns whether one was removed."""
    found = attached_program(ifindex)
    if found is None:
        return False
    pid, name = found
    if name != PROG_NAME:
        raise XdpUnavailable(f"{ifname} already has XDP program {name or '?'} (id {pid}); "
                             "pop53 does not replace it")
    lib = libbpf()
    for flags in (0, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
        lib.bpf_xdp_detach(ifindex, flags, None)
    if attached_program(ifindex) is not None:
        raise XdpUnavailable(f"{ifname}: pop53's XDP program (id {pid}) is held by a live link: "
                             "another pop53 serves this interface")
    return True


class XdpProgram:
    """One loaded copy of the program (its own maps) for one interface."""

    def __init__(self, path: str = OBJECT):
        if not os.path.exists(path):
            raise XdpUnavailable(f"the XDP program {path} was not built (clang missing when "
                                 "pop53 was built: apt-get install clang libbpf-dev, rebuild)")
        lib = libbpf()
        self.lib = lib
        self.link = None
        self.obj = lib.bpf_object__open_file(path.encode(), None)
        if not self.obj:
            raise _err(f"cannot open {path}")
        rc = lib.bpf_object__load(self.obj)
        if rc != 0:
            self.close()
            raise _err("cannot load the XDP program", rc)
        self.prog = lib.bpf_object__find_program_by_name(self.obj, PROG_NAME.encode())
        self.maps = {m: lib.bpf_object__find_map_fd_by_name(self.obj, m.encode())
                     for m in ("pop53_xsks", "pop53_conf", "pop53_addr4", "pop53_addr6")}
        if not self.prog or min(self.maps.values()) < 0:
            self.close()
            raise XdpUnavailable(f"{path} is not pop53's XDP program")

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        rc = self.lib.bpf_map_update_elem(self.maps[name], key, value, 0)
        if rc != 0:
            raise _err(f"cannot update the XDP map {name}", rc)

    def configure(self, port: int, hosts: list[str]) -> None:
        """Redirect UDP to `port` at these addresses (a wildcard: every address of its family)."""
        any4 = any6 = 0
        for h in hosts:
            a = ipaddress.ip_address(h)
            if a.is_unspecified:
                any4, any6 = (1, any6) if a.version == 4 else (any4, 1)
            elif a.version == 4:
                self._update("pop53_addr4", a.packed, b"\1")
            else:
                self._update("pop53_addr6", a.packed, b"\1")
        # the sockets are IPV6_V6ONLY (sockets.py): a v6 wildcard is IPv6 only here too
        self._update("pop53_conf", struct.pack("=I", 0), struct.pack("!H", port) + bytes([any4, any6]))

    def set_socket(self, queue: int, xsk_fd: int) -> None:
        self._update("pop53_xsks", struct.pack("=I", queue), struct.pack("=I", xsk_fd))

    def attach(self, ifindex: int, ifname: str) -> None:
        link = self.lib.bpf_program__attach_xdp(self.prog, ifindex)
        if not link:
            raise _err(f"cannot attach the XDP program to {ifname}")
        self.link = link

    def close(self) -> None:
        """Detach (destroying the link) and unload."""
        if self.link:
            self.lib.bpf_link__destroy(self.link)
            self.link = None
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None
