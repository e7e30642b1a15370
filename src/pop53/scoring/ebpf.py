"""The kernel stage for a full known-resolver list (issue 13): an eBPF reuseport program
(SO_ATTACH_REUSEPORT_EBPF, a BPF_PROG_TYPE_SOCKET_FILTER program) that looks the datagram's
source up in two LPM-trie maps, IPv4 and IPv6, and returns a socket index in the priority block
(W..2W-1) for a known resolver, in the normal block (0..W-1) otherwise.  Classic BPF compares
one /24 per two instructions (pop53.scoring.steer, at most 1,800 /24s, IPv4 only); a trie
lookup costs the same for a million prefixes and takes IPv6.

The bytecode is assembled here (no clang on the machine, no C file to build) and loaded with
the bpf(2) system call through ctypes.  It needs CAP_BPF (or root, or kernel.
unprivileged_bpf_disabled = 0 without LPM maps); when the kernel says no, `load` raises
EbpfUnavailable and steer.attach falls back to classic BPF with one clear warning.

Program (r6 = skb; the stack holds the trie key {u32 prefixlen; u8 addr[16]} at fp-24):
    version = load_bytes_relative(skb, 0, 1 byte, NET) >> 4
    4: key = {32, saddr (net offset 12, 4 bytes)};  lookup v4 trie
    6: key = {128, saddr (net offset 8, 16 bytes)}; lookup v6 trie
    known and a trust map: the prefix's strict bit set (it went over known_rate: spoofed sources
        inside it) and the address's trust bit clear -> not steered
    not known, a trust map and `proven`: the address's trust bit set (outside known prefixes
        only a valid server cookie of ours sets it) -> steered
    base = W if steered else 0;  return base + (hash(last address word) % W)

The trust map (TrustMap) is a BPF array map the workers write through mmap (scoring.pxi,
sc_known_class): address trust bits (per-address history inside known prefixes) and strict
prefix bits, both indexed by (folded key * golden) >> shift (_core.TRUST_LAYOUT), so the kernel
and the workers agree on every bit without a system call per change.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import ipaddress
import os
import socket
import struct

SO_ATTACH_REUSEPORT_EBPF = 52
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)

# bpf(2) commands, types and flags (include/uapi/linux/bpf.h)
_MAP_CREATE, _MAP_UPDATE_ELEM, _PROG_LOAD = 0, 2, 5
_MAP_TYPE_ARRAY, _MAP_TYPE_LPM_TRIE = 2, 11
_F_MMAPABLE = 1 << 10
_PROG_TYPE_SOCKET_FILTER = 1
_F_NO_PREALLOC = 1
_FUNC_MAP_LOOKUP_ELEM = 1
_FUNC_SKB_LOAD_BYTES_RELATIVE = 68
_HDR_START_NET = 1

# instruction classes and fields
_LD, _LDX, _ST, _STX, _ALU, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
_W, _B, _DW = 0x00, 0x10, 0x18
_IMM, _MEM = 0x00, 0x60
_K, _X = 0x00, 0x08
_ADD, _MUL, _AND, _RSH, _MOD, _XOR, _MOV = 0x00, 0x20, 0x50, 0x70, 0x90, 0xA0, 0xB0
_JA, _JEQ, _JNE, _CALL, _EXIT = 0x00, 0x10, 0x50, 0x80, 0x90
_PSEUDO_MAP_FD = 1
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = range(11)


class EbpfUnavailable(Exception):
    """The kernel refused the map or the program (no CAP_BPF, no syscall, old kernel)."""


class _Asm:
    """A tiny assembler: instructions as (code, dst, src, off, imm), jumps to labels."""

    def __init__(self):
        self.ins: list = []
        self.labels: dict[str, int] = {}

    def op(self, code, dst=0, src=0, off=0, imm=0):
        self.ins.append([code, dst, src, off, imm])

    def label(self, name):
        self.labels[name] = len(self.ins)

    def jmp(self, code, dst, target, imm=0, src=0):
        self.ins.append([code, dst, src, target, imm])

    def ld_map(self, dst, fd):
        self.op(_LD | _DW | _IMM, dst, _PSEUDO_MAP_FD, 0, fd)
        self.op(0, 0, 0, 0, 0)

    def assemble(self) -> bytes:
        out = []
        for i, (code, dst, src, off, imm) in enumerate(self.ins):
            if isinstance(off, str):
                off = self.labels[off] - (i + 1)
            out.append(struct.pack("<BBhi", code, (src << 4) | dst, off, imm))
        return b"".join(out)


def program(workers: int, fd4: int, fd6: int, trust_fd: int = -1, proven: bool = False) -> bytes:
    """The steering program for a group of 2 x `workers` sockets (see the module text); with a
    trust map (`trust_fd`), a strict prefix steers only its trusted addresses, and with `proven`
    a trusted address outside the known prefixes (a cookie proved it) is steered too."""
    if not 1 <= workers <= 32768:
        raise ValueError("workers within 1..32768")
    a = _Asm()
    a.op(_ALU64 | _MOV | _X, R6, R1)
    for off in (-32, -24, -16, -8):                              # the key area starts zeroed
        a.op(_ST | _MEM | _DW, FP, 0, off, 0)
    a.op(_ALU64 | _MOV | _K, R8, 0, 0, 0)                        # base: the normal block
    a.op(_ALU64 | _MOV | _K, R9, 0, 0, 0)                        # hash input

    def load(net_off, stack_off, length):
        a.op(_ALU64 | _MOV | _X, R1, R6)
        a.op(_ALU64 | _MOV | _K, R2, 0, 0, net_off)
        a.op(_ALU64 | _MOV | _X, R3, FP)
        a.op(_ALU64 | _ADD | _K, R3, 0, 0, stack_off)
        a.op(_ALU64 | _MOV | _K, R4, 0, 0, length)
        a.op(_ALU64 | _MOV | _K, R5, 0, 0, _HDR_START_NET)
        a.op(_JMP | _CALL, 0, 0, 0, _FUNC_SKB_LOAD_BYTES_RELATIVE)
        a.jmp(_JMP | _JNE | _K, R0, "pick", 0)                   # cannot read it: not steered

    proven = proven and trust_fd >= 0

    def lookup(fd, hash_off, known, miss):
        a.op(_LDX | _MEM | _W, R9, FP, hash_off)                 # the address word to hash
        a.ld_map(R1, fd)
        a.op(_ALU64 | _MOV | _X, R2, FP)
        a.op(_ALU64 | _ADD | _K, R2, 0, 0, -24)
        a.op(_JMP | _CALL, 0, 0, 0, _FUNC_MAP_LOOKUP_ELEM)
        a.jmp(_JMP | _JEQ | _K, R0, miss if proven else "pick", 0)
        a.jmp(_JMP | _JA, 0, known if trust_fd >= 0 else "prio")

    def key_v4(prefix):          # r1 = the folded address (or /24), as scoring.pxi folds it
        a.op(_LDX | _MEM | _W, R1, FP, -20)
        if prefix:
            a.op(_ALU | _AND | _K, R1, 0, 0, 0xFFFFFF)

    def key_v6(prefix):          # r1 = w0 ^ w1 ^ w2 ^ w3 (or w0 ^ (w1 & 0xFFFFFF): the /56)
        a.op(_LDX | _MEM | _W, R1, FP, -20)
        for off in ((-16,) if prefix else (-16, -12, -8)):
            a.op(_LDX | _MEM | _W, R2, FP, off)
            if prefix:
                a.op(_ALU | _AND | _K, R2, 0, 0, 0xFFFFFF)
            a.op(_ALU | _XOR | _X, R1, R2)

    def bit(key, shift, base, clear):
        """Jump to `clear` unless bit ((key * golden) >> shift) of the region at word `base`
        is set (a missing element counts as clear)."""
        key()
        a.op(_ALU | _MUL | _K, R1, 0, 0, _GOLDEN - (1 << 32))
        a.op(_ALU | _RSH | _K, R1, 0, 0, shift)
        a.op(_ALU64 | _MOV | _X, R2, R1)
        a.op(_ALU64 | _RSH | _K, R2, 0, 0, 6)
        a.op(_ALU64 | _ADD | _K, R2, 0, 0, base)
        a.op(_STX | _MEM | _W, FP, R2, -32)                      # the array index
        a.op(_ALU64 | _AND | _K, R1, 0, 0, 63)
        a.op(_STX | _MEM | _W, FP, R1, -28)                      # the bit in the word
        a.ld_map(R1, trust_fd)
        a.op(_ALU64 | _MOV | _X, R2, FP)
        a.op(_ALU64 | _ADD | _K, R2, 0, 0, -32)
        a.op(_JMP | _CALL, 0, 0, 0, _FUNC_MAP_LOOKUP_ELEM)
        a.jmp(_JMP | _JEQ | _K, R0, clear, 0)
        a.op(_LDX | _MEM | _DW, R1, R0, 0)
        a.op(_LDX | _MEM | _W, R2, FP, -28)
        a.op(_ALU64 | _RSH | _X, R1, R2)
        a.op(_ALU64 | _AND | _K, R1, 0, 0, 1)
        a.jmp(_JMP | _JEQ | _K, R1, clear, 0)

    load(0, -24, 1)                                              # the version nibble
    a.op(_LDX | _MEM | _B, R7, FP, -24)
    a.op(_ALU64 | _RSH | _K, R7, 0, 0, 4)
    a.jmp(_JMP | _JEQ | _K, R7, "v4", 4)
    a.jmp(_JMP | _JEQ | _K, R7, "v6", 6)
    a.jmp(_JMP | _JA, 0, "pick")
    a.label("v4")
    a.op(_ST | _MEM | _W, FP, 0, -24, 32)                        # prefixlen
    load(12, -20, 4)                                             # saddr
    lookup(fd4, -20, "known4", "miss4")
    a.label("v6")
    a.op(_ST | _MEM | _W, FP, 0, -24, 128)
    load(8, -20, 16)
    lookup(fd6, -8, "known6", "miss6")                           # hash the last word
    if trust_fd >= 0:
        from pop53._core import TRUST_LAYOUT
        words, _all, addr_shift, prefix_shift, _g = TRUST_LAYOUT
        for v, key in (("4", key_v4), ("6", key_v6)):
            # a prefix that is not strict: every address of it; a strict one: trusted only
            a.label("known" + v)
            bit(lambda: key(True), prefix_shift, words, "prio")
            bit(lambda: key(False), addr_shift, 0, "pick")
            a.jmp(_JMP | _JA, 0, "prio")
            if proven:
                # not known: steered when trusted (a valid cookie proved the address)
                a.label("miss" + v)
                bit(lambda: key(False), addr_shift, 0, "pick")
                a.jmp(_JMP | _JA, 0, "prio")
    a.label("prio")
    a.op(_ALU64 | _MOV | _K, R8, 0, 0, workers)                  # the priority block
    a.label("pick")
    # r0 = base + (hash32(word) % W): Fibonacci hashing spreads sources over the block
    a.op(_ALU | _MOV | _X, R0, R9)
    a.op(_ALU | _MUL | _K, R0, 0, 0, -1640531535)                # 0x9E3779B1
    a.op(_ALU | _RSH | _K, R0, 0, 0, 16)
    a.op(_ALU | _MOD | _K, R0, 0, 0, workers)
    a.op(_ALU64 | _ADD | _X, R0, R8)
    a.op(_JMP | _EXIT)
    return a.assemble()


_GOLDEN = 0x9E3779B1


_libc = None


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    global _libc
    if _NR_BPF is None:
        raise EbpfUnavailable(f"no bpf(2) syscall number known for {os.uname().machine}")
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    r = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _map(key_size: int, entries: int, kind: int = _MAP_TYPE_LPM_TRIE, value_size: int = 1,
         flags: int = _F_NO_PREALLOC) -> int:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIIII", attr, 0, kind, key_size, value_size, max(1, entries), flags)
    return _bpf(_MAP_CREATE, attr)


class TrustMap:
    """The trust bits shared by the workers and the steering program: a BPF array map of
    _core.TRUST_LAYOUT's words, mmapped (the Scorer writes it, Scorer.use_trust_buffer).
    Raises EbpfUnavailable when the kernel does not allow it."""

    def __init__(self):
        import mmap
        from pop53._core import TRUST_LAYOUT
        words = TRUST_LAYOUT[1]
        try:
            self.fd = _map(4, words, _MAP_TYPE_ARRAY, 8, _F_MMAPABLE)
        except OSError as exc:
            raise EbpfUnavailable(f"bpf(2) array map: {exc.strerror}") from None
        try:
            self.buf = mmap.mmap(self.fd, words * 8, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(self.fd)
            raise EbpfUnavailable(f"mmap of the trust map: {exc.strerror}") from None

    def close(self) -> None:
        """Close the fd (the mapping and the programs keep the map); the mapping goes with
        the last reference to `buf` (the Scorer's)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _update(fd: int, key: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(b"\x01", 1)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQQ", attr, 0, fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
    _bpf(_MAP_UPDATE_ELEM, attr)


def _load(insns: bytes) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, _PROG_TYPE_SOCKET_FILTER, len(insns) // 8,
                     ctypes.addressof(code), ctypes.addressof(lic), 1, len(log),
                     ctypes.addressof(log))
    try:
        return _bpf(_PROG_LOAD, attr)
    except OSError as exc:
        if exc.errno == errno_mod.EACCES and log.value:
            # the verifier said no: a bug here, not a missing privilege
            raise RuntimeError("the steering program was rejected by the verifier:\n"
                               + log.value.decode(errors="replace")[-2000:]) from None
        raise


def load(workers: int, v4_keys, v6_keys, trust_fd: int = -1, proven: bool = False) -> int:
    """Build the tries from known /24 keys (the top 24 bits of the address) and /56 keys (the
    top 56 bits) and load the program; returns its fd (the caller closes it after attaching).
    Raises EbpfUnavailable when the kernel does not allow it."""
    fds = []
    try:
        fd4 = _map(8, len(v4_keys))
        fds.append(fd4)
        fd6 = _map(20, len(v6_keys))
        fds.append(fd6)
        for k in v4_keys:
            _update(fd4, struct.pack("<I", 24) + (k << 8).to_bytes(4, "big"))
        for k in v6_keys:
            _update(fd6, struct.pack("<I", 56) + (k << 72).to_bytes(16, "big"))
        return _load(program(workers, fd4, fd6, trust_fd, proven))
    except OSError as exc:
        raise EbpfUnavailable(f"bpf(2): {exc.strerror}") from None
    finally:
        for fd in fds:
            os.close(fd)          # the loaded program holds its maps


def attach(sock: socket.socket, workers: int, v4_keys, v6_keys, trust_fd: int = -1,
           proven: bool = False) -> None:
    """Load and attach the program to the group of 2 x `workers` sockets `sock` belongs to
    (attaching again replaces the group's program atomically)."""
    fd = load(workers, v4_keys, v6_keys, trust_fd, proven)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, struct.pack("i", fd))
    except OSError as exc:
        raise EbpfUnavailable(f"SO_ATTACH_REUSEPORT_EBPF: {exc.strerror}") from None
    finally:
        os.close(fd)


def v6_key(address: str) -> int:
    """The /56 key of an IPv6 address (as pop53.scoring.known stores them)."""
    return int(ipaddress.IPv6Address(address)) >> 72
