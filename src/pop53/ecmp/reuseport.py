"""Which worker socket of a SO_REUSEPORT group receives a UDP flow -- made predictable.

Without a program the kernel picks the socket with ``reciprocal_scale(hash, n)`` where
``hash = udp_ehashfn(...)`` is keyed by a per-boot random secret (``udp_ehash_secret``
mixed with ``net_hash_mix``): correct and even, but not reproducible from user space, so an
operator cannot say which worker answers a given resolver.

:func:`attach_cbpf` attaches a classic BPF program (``SO_ATTACH_REUSEPORT_CBPF``, Linux
4.5+) to the group.  The kernel runs it for each datagram (sock_reuseport.c
``run_bpf_filter``) and uses its return value as the index into the group's socket array,
which is the order the sockets were bound in (worker 0..N-1; a socket that closes is
replaced by the last one).  The program reads the network header through the negative
``SKF_NET_OFF`` offsets (the skb data itself has already been pulled past the UDP header)
and computes a fixed, unkeyed 32-bit hash of (source address, destination address,
source port, destination port) modulo N; :func:`predict_socket` computes the same hash in
numpy.  A return value >= N makes the kernel fall back to its own random hash; the program
does that for IPv6 packets with extension headers, where the UDP header is not at a fixed
offset.

The hash (all arithmetic mod 2**32)::

    h = 0x5053_3533
    for w in words:                       # IPv4: src, dst, sport<<16|dport
        h = (h ^ w) * 0x9E3779B1          # IPv6: 4 src words, 4 dst words, ports
        h ^= h >> 16
    h ^= h >> 13; h *= 0x85EBCA6B; h ^= h >> 16
    worker = h % N

It is not keyed, so anyone who knows the algorithm can aim many flows at one worker; the
kernel's default is keyed for exactly that reason.  Use it where predictability is worth
that (tests, capacity planning, pinning a noisy resolver to a known worker).
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from typing import Sequence

import numpy as np

from pop53.errors import Pop53Error

__all__ = ["ReuseportError", "attach_cbpf", "detach", "build_program", "predict_socket",
           "predict_socket_flows", "HASH_INIT", "SO_ATTACH_REUSEPORT_CBPF"]

SOL_SOCKET = 1
SO_ATTACH_REUSEPORT_CBPF = 51   # include/uapi/asm-generic/socket.h
SO_DETACH_REUSEPORT_BPF = 68

HASH_INIT = 0x50533533
_GOLDEN = 0x9E3779B1
_FMIX = 0x85EBCA6B
_SKF_NET_OFF = -0x100000        # include/uapi/linux/filter.h

# Classic BPF opcodes (include/uapi/linux/filter.h, bpf_common.h).
_LD, _LDX, _ST, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_IMM, _ABS, _IND, _MEM = 0x00, 0x20, 0x40, 0x60
_ADD, _MUL, _OR, _AND, _LSH, _RSH, _MOD, _XOR = 0x00, 0x20, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0
_JEQ = 0x10
_K, _X = 0x00, 0x08
_A = 0x10
_TAX = 0x00


class ReuseportError(Pop53Error):
    """The reuseport program could not be built or attached."""


def _ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k & 0xFFFFFFFF)


def _mix_word(load: list) -> list:
    """Instructions: A = word (by ``load``); h = (h ^ A) * GOLDEN; h ^= h >> 16 (h in M[0])."""
    return load + [
        _ins(_LDX | _MEM, 0),            # X = h
        _ins(_ALU | _XOR | _X),          # A = w ^ h
        _ins(_ALU | _MUL | _K, _GOLDEN),  # A *= GOLDEN
        _ins(_ST, 0),                    # M[0] = A
        _ins(_ALU | _RSH | _K, 16),      # A >>= 16
        _ins(_LDX | _MEM, 0),            # X = M[0]
        _ins(_ALU | _XOR | _X),          # A ^= X
        _ins(_ST, 0),                    # h = A
    ]


def _finish(n: int, base_in_m1: bool = False) -> list:
    """h % n, plus M[1] when base_in_m1 (a prologue's choice of a block of sockets)."""
    return [
        _ins(_LD | _MEM, 0),
        _ins(_ST, 0), _ins(_ALU | _RSH | _K, 13), _ins(_LDX | _MEM, 0), _ins(_ALU | _XOR | _X),
        _ins(_ALU | _MUL | _K, _FMIX),
        _ins(_ST, 0), _ins(_ALU | _RSH | _K, 16), _ins(_LDX | _MEM, 0), _ins(_ALU | _XOR | _X),
        _ins(_ALU | _MOD | _K, n),
    ] + ([_ins(_LDX | _MEM, 1), _ins(_ALU | _ADD | _X)] if base_in_m1 else []) + [
        _ins(_RET | _A),
    ]


def _ld_net(size: int, off: int) -> list:
    return [_ins(_LD | size | _ABS, _SKF_NET_OFF + off)]


def build_program(n_sockets: int, prologue: Sequence = ()) -> list[tuple[int, int, int, int]]:
    """The classic BPF program as (code, jt, jf, k) tuples for a group of ``n_sockets``.
    With a prologue (instructions that leave a socket index base in M[1] and fall through at
    their end), the result is that base plus the hash modulo ``n_sockets``: how
    pop53.scoring.steer sends known resolvers to a second block of sockets."""
    if not isinstance(n_sockets, int) or not 1 <= n_sockets <= 65535:
        raise ReuseportError(f"n_sockets must be an integer in 1..65535, not {n_sockets!r}")
    init = [_ins(_LD | _IMM, HASH_INIT), _ins(_ST, 0)]
    v4 = list(init)
    for off in (12, 16):                                   # saddr, daddr
        v4 += _mix_word(_ld_net(_W, off))
    v4 += _mix_word([
        _ins(_LD | _B | _ABS, _SKF_NET_OFF),               # A = version/IHL byte
        _ins(_ALU | _AND | _K, 0x0F),
        _ins(_ALU | _LSH | _K, 2),                         # A = IHL * 4
        _ins(_MISC | _TAX),                                # X = A
        _ins(_LD | _W | _IND, _SKF_NET_OFF),               # A = sport << 16 | dport
    ])
    v4 += _finish(n_sockets, bool(prologue))
    v6 = [
        _ins(_LD | _B | _ABS, _SKF_NET_OFF + 6),           # next header
        _ins(_JMP | _JEQ | _K, 17, 1, 0),                  # UDP right after the header?
        _ins(_RET | _K, n_sockets),                        # no: let the kernel hash it
    ] + list(init)
    for off in range(8, 40, 4):                            # saddr, daddr (8 words)
        v6 += _mix_word(_ld_net(_W, off))
    v6 += _mix_word(_ld_net(_W, 40))                       # sport << 16 | dport
    v6 += _finish(n_sockets, bool(prologue))
    head = [
        _ins(_LD | _B | _ABS, _SKF_NET_OFF),
        _ins(_ALU | _RSH | _K, 4),                         # IP version
        _ins(_JMP | _JEQ | _K, 6, 0, len(v6)),             # 6: fall into v6, else skip it
    ]
    prog = list(prologue) + head + v6 + v4
    if len(prog) > 4096:
        raise ReuseportError("program too long")
    return prog


def attach_cbpf(sock: socket.socket, n_sockets: int, prog: list | None = None) -> None:
    """Attach the selection program (or ``prog``) to ``sock``'s SO_REUSEPORT group of
    ``n_sockets`` UDP sockets (call it on worker 0's socket once all workers are bound, in
    order; attaching again replaces the group's program)."""
    if sock.type != socket.SOCK_DGRAM:
        raise ReuseportError("the reuseport program is for UDP sockets")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        raise ReuseportError("socket does not have SO_REUSEPORT set")
    prog = build_program(n_sockets) if prog is None else prog
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))   # struct sock_fprog
    try:
        sock.setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise ReuseportError(f"SO_ATTACH_REUSEPORT_CBPF failed: {exc}") from exc


def detach(sock: socket.socket) -> None:
    """Remove the program: the kernel's keyed default hash selects again."""
    try:
        sock.setsockopt(SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        raise ReuseportError(f"SO_DETACH_REUSEPORT_BPF failed: {exc}") from exc


# --------------------------------------------------------------------------------------
# Emulator
# --------------------------------------------------------------------------------------

def _mix(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    h = ((h ^ w) * np.uint32(_GOLDEN)).astype(np.uint32)
    return h ^ (h >> np.uint32(16))


def _words(addr_bytes: np.ndarray) -> np.ndarray:
    """(n, 4k) uint8 network-order bytes -> (n, k) uint32 values as ``ld`` loads them."""
    return addr_bytes.view(">u4").astype(np.uint32)


def predict_socket_flows(flows, n_sockets: int) -> np.ndarray:
    """Worker index per flow for a :class:`pop53.ecmp.Flows` batch."""
    if not isinstance(n_sockets, (int, np.integer)) or not 1 <= n_sockets <= 65535:
        raise ReuseportError(f"n_sockets must be in 1..65535, not {n_sockets!r}")
    src, dst = _words(flows.src), _words(flows.dst)
    ports = (flows.sport.astype(np.uint32) << np.uint32(16)) | flows.dport.astype(np.uint32)
    with np.errstate(over="ignore"):
        h = np.full(len(flows), HASH_INIT, np.uint32)
        for i in range(src.shape[1]):
            h = _mix(h, src[:, i])
        for i in range(dst.shape[1]):
            h = _mix(h, dst[:, i])
        h = _mix(h, ports)
        h = h ^ (h >> np.uint32(13))
        h = (h * np.uint32(_FMIX)).astype(np.uint32)
        h = h ^ (h >> np.uint32(16))
    return (h % np.uint32(n_sockets)).astype(np.int64)


def predict_socket(src_ip, src_port, dst_ip, dst_port, n: int):
    """Worker index (0..n-1) the attached program picks for each flow.

    Scalars give an int; sequences (of equal length, one address family) give an array."""
    from pop53.ecmp.model import Flows

    scalar = isinstance(src_ip, (str, ipaddress.IPv4Address, ipaddress.IPv6Address))
    if scalar:
        src_ip, src_port, dst_ip, dst_port = [src_ip], [src_port], [dst_ip], [dst_port]
    srcs: Sequence = list(src_ip)
    sports = np.broadcast_to(np.asarray(src_port), (len(srcs),))
    dsts = list(dst_ip) if not isinstance(dst_ip, str) else [dst_ip] * len(srcs)
    dports = np.broadcast_to(np.asarray(dst_port), (len(srcs),))
    flows = Flows.from_tuples(zip(srcs, sports, dsts, dports))
    out = predict_socket_flows(flows, n)
    return int(out[0]) if scalar else out
