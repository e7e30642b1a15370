"""The kernel stage for a full known-resolver list (issue 13): an eBPF reuseport program
(SO_ATTACH_REUSEPORT_EBPF, a BPF_PROG_TYPE_SOCKET_FILTER program) that looks the datagram's
source up, an IPv4 /24 in a bitmap of all 2^24 (a BPF array map of 2 MiB, one bit per /24: the
verifier inlines the lookup, a few instructions) and an IPv6 /56 in an LPM-trie map, and returns
a socket index in the priority block (W..2W-1) for a known resolver, in the normal block
(0..W-1) otherwise.  Classic BPF compares one /24 per two instructions (pop53.scoring.steer, at
most 1,800 /24s, IPv4 only); the bitmap and the trie cost the same for a million prefixes.
The bitmap replaced an IPv4 trie whose walk was much of the program's cost for every datagram
(bench/micro/steer_prog.py).

The bytecode is assembled here (pop53.scoring.ebpf_asm; no clang on the machine, no C file to
build) and loaded with the bpf(2) system call through ctypes.  It needs CAP_BPF (or root, or
kernel.unprivileged_bpf_disabled = 0 without LPM maps); when the kernel says no, `load` raises
EbpfUnavailable and steer.attach falls back to classic BPF with one clear warning.

Program (r6 = skb; the stack holds the trie key {u32 prefixlen; u8 addr[16]} at fp-24):
    version = load_bytes_relative(skb, 0, 1 byte, NET) >> 4
    4: saddr (net offset 12, 4 bytes); [cookie check]; bit (saddr >> 8) of the v4 bitmap
    6: key = {128, saddr (net offset 8, 16 bytes)}; [cookie check]; lookup v6 trie
    cookie check (with the cookie secrets, CookieKeys): the address's cookie bit set (it has
        sent a valid server cookie) -> steered when the datagram carries a valid server cookie,
        not steered otherwise, nothing else looked at (pop53.scoring.ebpf_cookie)
    known and a trust map: the prefix's strict bit set (it went over known_rate: spoofed sources
        inside it), or the clock (bpf_ktime_get_coarse_ns) before the trust map's overflow
        word (the workers' deadline: a priority socket dropped, so for a second only addresses
        with history are steered there), and the address's trust bit clear -> not steered
    relay check (with the name filter, NameFilter): the address's relay bit set and its question
        name not in the filter (no node of a served zone) -> not steered (pop53.scoring.ebpf_relay)
    base = W if steered else 0;  return base + (hash(last address word) % W)

The trust map (TrustMap) is a BPF array map the workers write through mmap (scoring.pxi,
sc_known_class): address trust bits (per-address history inside known prefixes), strict prefix
bits and cookie bits, all indexed by (folded key * golden) >> shift (_core.TRUST_LAYOUT), then one
word, the overflow deadline (sc_prio_overflow), then the relay bits (sc_relay_bit), so the kernel
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

from pop53.scoring import ebpf_cookie
from pop53.scoring.ebpf_asm import (
    Asm, BPF_ADD, BPF_ALU, BPF_ALU64, BPF_AND, BPF_ATOMIC, BPF_B, BPF_CALL, BPF_DW, BPF_END,
    BPF_EXIT, BPF_FETCH, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LDX, BPF_MEM, BPF_MOD,
    BPF_MOV, BPF_MUL, BPF_RSH, BPF_ST, BPF_STX, BPF_SUB, BPF_TO_BE, BPF_W, BPF_X, BPF_XOR, FP,
    FUNC_KTIME_GET_COARSE_NS, R0, R1, R2, R6, R7, R8, R9)

SO_ATTACH_REUSEPORT_EBPF = 52
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)

# bpf(2) commands, types and flags (include/uapi/linux/bpf.h)
_MAP_CREATE, _MAP_UPDATE_ELEM, _PROG_LOAD, _PROG_TEST_RUN = 0, 2, 5, 10
_MAP_TYPE_ARRAY, _MAP_TYPE_LPM_TRIE = 2, 11
_F_MMAPABLE = 1 << 10
_PROG_TYPE_SOCKET_FILTER = 1
_F_NO_PREALLOC = 1
V4_WORDS = 1 << 18          # the IPv4 bitmap: 2^24 /24s, 64 a word


class EbpfUnavailable(Exception):
    """The kernel refused the map or the program (no CAP_BPF, no syscall, old kernel)."""


def program(workers: int, fd4: int, fd6: int, trust_fd: int = -1, keys_fd: int = -1,
            wake: tuple[int, int] | None = None, names_fd: int = -1) -> bytes:
    """The steering program for a group of 2 x `workers` sockets (see the module text; `fd4`
    the IPv4 bitmap, `fd6` the IPv6 trie); with a
    trust map (`trust_fd`), a strict prefix steers only its trusted addresses, and with the
    cookie secrets too (`keys_fd`, CookieKeys) an address that has sent a valid server cookie
    is steered only, and always, with a valid one (pop53.scoring.ebpf_cookie).  With `wake`
    (the WakeMap's fd, the group's first slot) each steered datagram is counted in its worker's
    wake word, and goes to the worker's normal socket instead while the worker waits there.
    With the name filter too (`names_fd`, ebpf_relay.NameFilter) an address the workers marked
    as relaying water torture is steered only with a name of a served zone (ebpf_relay)."""
    if not 1 <= workers <= 32768:
        raise ValueError("workers within 1..32768")
    a = Asm()
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R6, R1)
    for off in (-32, -24, -16, -8):                                     # the key area: zeroed
        a.op(BPF_ST | BPF_MEM | BPF_DW, FP, 0, off, 0)
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R8, 0, 0, 0)                      # base: the normal block
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R9, 0, 0, 0)                      # hash input

    def load(net_off, stack_off, length):     # cannot read it: not steered
        a.skb_read(stack_off, "pick", off=net_off, length=length)

    if trust_fd >= 0:
        from pop53._core import TRUST_LAYOUT
        (words, _all, addr_shift, prefix_shift, _g, cookie_words, overflow_word,
         relay_words) = TRUST_LAYOUT
    relays = trust_fd >= 0 and names_fd >= 0

    def lookup_v6(known):
        a.op(BPF_LDX | BPF_MEM | BPF_W, R9, FP, -8)                     # hash the last word
        a.map_lookup(fd6, -24, "pick")
        a.jmp(BPF_JMP | BPF_JA, 0, known if trust_fd >= 0 else "prio")

    def lookup_v4(known):
        """Bit (saddr >> 8) of the bitmap: the /24 in host order, as the keys are."""
        a.op(BPF_LDX | BPF_MEM | BPF_W, R9, FP, -20)                    # the address word to hash
        a.op(BPF_ALU64 | BPF_MOV | BPF_X, R1, R9)
        a.op(BPF_ALU | BPF_END | BPF_TO_BE, R1, 0, 0, 32)               # network order: a.b.c.d
        a.op(BPF_ALU | BPF_RSH | BPF_K, R1, 0, 0, 8)                    # the /24
        a.test_bit(fd4, "pick")
        a.jmp(BPF_JMP | BPF_JA, 0, known if trust_fd >= 0 else "prio")

    def key_v4(prefix):          # r1 = the folded address (or /24), as scoring.pxi folds it
        a.op(BPF_LDX | BPF_MEM | BPF_W, R1, FP, -20)
        if prefix:
            a.op(BPF_ALU | BPF_AND | BPF_K, R1, 0, 0, 0xFFFFFF)

    def key_v6(prefix):          # r1 = w0 ^ w1 ^ w2 ^ w3 (or w0 ^ (w1 & 0xFFFFFF): the /56)
        a.op(BPF_LDX | BPF_MEM | BPF_W, R1, FP, -20)
        for off in ((-16,) if prefix else (-16, -12, -8)):
            a.op(BPF_LDX | BPF_MEM | BPF_W, R2, FP, off)
            if prefix:
                a.op(BPF_ALU | BPF_AND | BPF_K, R2, 0, 0, 0xFFFFFF)
            a.op(BPF_ALU | BPF_XOR | BPF_X, R1, R2)

    def bit(key, shift, base, clear):
        """Jump to `clear` unless bit ((key * golden) >> shift) of the trust map's region at
        word `base` is set."""
        key()
        a.op(BPF_ALU | BPF_MUL | BPF_K, R1, 0, 0, _GOLDEN - (1 << 32))
        a.op(BPF_ALU | BPF_RSH | BPF_K, R1, 0, 0, shift)
        a.test_bit(trust_fd, clear, base)

    def overflow_check(word, trusted, calm):
        """Jump to `trusted` while the clock is before word `word` of the trust map (the
        workers' deadline: their priority queue overflowed, sc_prio_overflow); on to `calm`
        otherwise."""
        a.op(BPF_ST | BPF_MEM | BPF_W, FP, 0, -32, word)
        a.map_lookup(trust_fd, -32, calm)
        a.op(BPF_LDX | BPF_MEM | BPF_DW, R7, R0, 0)
        a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R7, calm, 0)
        a.op(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_KTIME_GET_COARSE_NS)
        a.jmp(BPF_JMP | BPF_JGE | BPF_X, R0, calm, 0, R7)
        a.jmp(BPF_JMP | BPF_JA, 0, trusted)

    def cookie_check(tag, iplen, hash_off):
        if keys_fd < 0 or trust_fd < 0:
            return
        key = key_v4 if iplen == 4 else key_v6
        a.op(BPF_LDX | BPF_MEM | BPF_W, R9, FP, hash_off)               # the address word to hash
        ebpf_cookie.emit(a, tag, iplen, -20,
                         lambda clear: bit(lambda: key(False), addr_shift, cookie_words, clear),
                         keys_fd, "prio", "pick")

    load(0, -24, 1)                                                     # the version nibble
    a.op(BPF_LDX | BPF_MEM | BPF_B, R7, FP, -24)
    a.op(BPF_ALU64 | BPF_RSH | BPF_K, R7, 0, 0, 4)
    a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R7, "v4", 4)
    a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R7, "v6", 6)
    a.jmp(BPF_JMP | BPF_JA, 0, "pick")
    a.label("v4")
    load(12, -20, 4)                                                    # saddr
    cookie_check("4", 4, -20)
    lookup_v4("known4")
    a.label("v6")
    a.op(BPF_ST | BPF_MEM | BPF_W, FP, 0, -24, 128)
    load(8, -20, 16)
    cookie_check("6", 16, -8)
    lookup_v6("known6")
    if trust_fd >= 0:
        for v, key in (("4", key_v4), ("6", key_v6)):
            # a prefix that is not strict: every address of it, unless the priority queue
            # overflowed lately; a strict one: trusted only; either, with the name filter: a
            # relaying address only with a name of a served zone
            a.label("known" + v)
            bit(lambda: key(True), prefix_shift, words, "overflow" + v)
            a.label("trusted" + v)
            bit(lambda: key(False), addr_shift, 0, "pick")
            if relays:
                from pop53.scoring import ebpf_relay       # (it imports this module)
                a.label("relay" + v)
                ebpf_relay.emit(a, v, 4 if v == "4" else 16,
                                lambda clear: bit(lambda: key(False), addr_shift, relay_words,
                                                  clear),
                                names_fd, "prio", "pick")
            else:
                a.jmp(BPF_JMP | BPF_JA, 0, "prio")
            a.label("overflow" + v)
            overflow_check(overflow_word, "trusted" + v, "relay" + v if relays else "prio")
    a.label("prio")
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R8, 0, 0, workers)                # the priority block
    a.label("pick")
    # r0 = base + (hash32(word) % W): Fibonacci hashing spreads sources over the block
    a.op(BPF_ALU | BPF_MOV | BPF_X, R0, R9)
    a.op(BPF_ALU | BPF_MUL | BPF_K, R0, 0, 0, -1640531535)              # 0x9E3779B1
    a.op(BPF_ALU | BPF_RSH | BPF_K, R0, 0, 0, 16)
    a.op(BPF_ALU | BPF_MOD | BPF_K, R0, 0, 0, workers)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R0, R8)
    if wake is not None:
        _wake_epilogue(a, workers, *wake)
    a.op(BPF_JMP | BPF_EXIT)
    return a.assemble()


def _wake_epilogue(a: Asm, workers: int, wake_fd: int, base: int) -> None:
    """r0 = the socket index chosen.  A priority one (r8 = W) is counted in its worker's wake
    word (atomically, the old value fetched); when the worker waits in its normal socket's
    receive (WAKE_SLEEP in the old value) and fewer than WAKE_REDIR_MAX went there since, the
    count is taken back, the redirect counted, and the datagram goes to that normal socket,
    index r0 - W (UdpReceive._receive_woken, ext/udp_recv.pxi)."""
    from pop53._core import WAKE_LAYOUT
    _slots, stride, sleep_bit, _on_bit, redir_shift, redir_max = WAKE_LAYOUT
    a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R8, "done", 0)                     # the normal block
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R7, R0)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R0, 0, 0, base - workers)         # the worker's slot
    a.op(BPF_ALU64 | BPF_MUL | BPF_K, R0, 0, 0, stride)
    a.op(BPF_STX | BPF_MEM | BPF_W, FP, R0, -32)
    a.map_lookup(wake_fd, -32, "chosen")
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R1, 0, 0, 1)
    a.op(BPF_STX | BPF_ATOMIC | BPF_DW, R0, R1, 0, BPF_ADD | BPF_FETCH)  # r1 = the old word
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, R1)
    a.op(BPF_ALU64 | BPF_RSH | BPF_K, R2, 0, 0, sleep_bit)
    a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R2, "chosen", 0)
    a.op(BPF_ALU64 | BPF_RSH | BPF_K, R1, 0, 0, redir_shift)
    a.op(BPF_ALU64 | BPF_AND | BPF_K, R1, 0, 0, 0xFF)
    a.jmp(BPF_JMP | BPF_JGE | BPF_K, R1, "chosen", redir_max)
    a.imm64(R1, (1 << redir_shift) - 1)                         # one redirect, one count less
    a.op(BPF_STX | BPF_ATOMIC | BPF_DW, R0, R1, 0, BPF_ADD)
    a.op(BPF_ALU64 | BPF_SUB | BPF_K, R7, 0, 0, workers)                # its normal socket
    a.label("chosen")
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R0, R7)
    a.label("done")


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


class MappedArray:
    """A BPF array map of `words` 64-bit words, mmapped read-write (`buf`): the workers or the
    control plane write it, the steering program reads it, with no system call per change.
    Raises EbpfUnavailable (naming `what`) when the kernel does not allow it."""

    def __init__(self, words: int, what: str):
        import mmap
        try:
            self.fd = _map(4, words, _MAP_TYPE_ARRAY, 8, _F_MMAPABLE)
        except OSError as exc:
            raise EbpfUnavailable(f"bpf(2) array map: {exc.strerror}") from None
        try:
            self.buf = mmap.mmap(self.fd, words * 8, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(self.fd)
            raise EbpfUnavailable(f"mmap of the {what}: {exc.strerror}") from None

    def close(self) -> None:
        """Close the fd (the programs keep the map); the mapping goes with the last reference
        to `buf`."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TrustMap(MappedArray):
    """The trust bits shared by the workers and the steering program: _core.TRUST_LAYOUT's
    words (the Scorer writes them, Scorer.use_trust_buffer)."""

    def __init__(self):
        from pop53._core import TRUST_LAYOUT
        super().__init__(TRUST_LAYOUT[1], "trust map")


class WakeMap(MappedArray):
    """The workers' wake words (ext/io.pxi WAKE_LAYOUT): one 64-bit word a cache line per
    worker slot: the steering program counts each priority datagram in its worker's word, and
    a worker waiting in its normal socket's receive says so there (Worker.set_priority)."""

    def __init__(self):
        from pop53._core import WAKE_LAYOUT
        self.slots = WAKE_LAYOUT[0]
        super().__init__(WAKE_LAYOUT[0] * WAKE_LAYOUT[1], "wake map")


def _update(fd: int, key: bytes, value: bytes = b"\x01") -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQQ", attr, 0, fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
    _bpf(_MAP_UPDATE_ELEM, attr)


class CookieKeys:
    """The server-cookie secrets the steering program checks cookies with (ebpf_cookie): a BPF
    array map of one value, the current key, the previous one and whether there is one.
    Raises EbpfUnavailable when the kernel does not allow it."""

    def __init__(self):
        try:
            self.fd = _map(4, 1, _MAP_TYPE_ARRAY, ebpf_cookie.KEYS_VALUE, 0)
        except OSError as exc:
            raise EbpfUnavailable(f"bpf(2) array map: {exc.strerror}") from None

    def set(self, current: bytes, previous: bytes | None) -> None:
        """The 16-byte secrets as [server] cookie_secret and cookie_secret_previous give them."""
        value = current + (previous or bytes(16)) + struct.pack("<Q", previous is not None)
        _update(self.fd, struct.pack("<I", 0), value)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _load(insns: bytes, log_level: int = 0) -> int:
    """Load a socket filter program; a verifier's refusal is loaded again with its log
    (level 1; the log's tail in the error), a missing privilege is an OSError."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 24 if log_level else 1)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, _PROG_TYPE_SOCKET_FILTER, len(insns) // 8,
                     ctypes.addressof(code), ctypes.addressof(lic), log_level,
                     len(log) if log_level else 0, ctypes.addressof(log) if log_level else 0)
    try:
        return _bpf(_PROG_LOAD, attr)
    except OSError as exc:
        if log_level and log.value:
            # the verifier said no: a bug here, not a missing privilege
            raise RuntimeError("the steering program was rejected by the verifier:\n"
                               + log.value.decode(errors="replace")[-3000:]) from None
        if exc.errno in (errno_mod.EACCES, errno_mod.EINVAL) and not log_level:
            return _load(insns, 1)
        raise


def load(workers: int, v4_keys, v6_keys, trust_fd: int = -1, keys_fd: int = -1,
         wake: tuple[int, int] | None = None, names_fd: int = -1) -> int:
    """Build the maps from known /24 keys (the top 24 bits of the address: the bitmap) and /56
    keys (the top 56 bits: the trie) and load the program; returns its fd (the caller closes it
    after attaching).  Raises EbpfUnavailable when the kernel does not allow it."""
    fds = []
    try:
        fd4 = _v4_bitmap(v4_keys)
        fds.append(fd4)
        fd6 = _map(20, len(v6_keys))
        fds.append(fd6)
        for k in v6_keys:
            _update(fd6, struct.pack("<I", 56) + (k << 72).to_bytes(16, "big"))
        return _load(program(workers, fd4, fd6, trust_fd, keys_fd, wake, names_fd))
    except OSError as exc:
        raise EbpfUnavailable(f"bpf(2): {exc.strerror}") from None
    finally:
        for fd in fds:
            os.close(fd)          # the loaded program holds its maps


def _v4_bitmap(v4_keys) -> int:
    """The IPv4 bitmap map (V4_WORDS 64-bit words; /24 key k is bit k & 63 of word k >> 6, i.e.
    bit k & 7 of byte k >> 3 of the little-endian words), filled through mmap: one write of
    2 MiB, not a system call per word.  Returns its fd."""
    import mmap
    bits = bytearray(V4_WORDS * 8)
    for k in v4_keys:
        bits[k >> 3] |= 1 << (k & 7)
    fd = _map(4, V4_WORDS, _MAP_TYPE_ARRAY, 8, _F_MMAPABLE)
    try:
        with mmap.mmap(fd, len(bits), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[:] = bits
    except OSError:
        os.close(fd)
        raise
    return fd


def attach(sock: socket.socket, workers: int, v4_keys, v6_keys, trust_fd: int = -1,
           keys_fd: int = -1, wake: tuple[int, int] | None = None, names_fd: int = -1) -> None:
    """Load and attach the program to the group of 2 x `workers` sockets `sock` belongs to
    (attaching again replaces the group's program atomically)."""
    fd = load(workers, v4_keys, v6_keys, trust_fd, keys_fd, wake, names_fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, struct.pack("i", fd))
    except OSError as exc:
        raise EbpfUnavailable(f"SO_ATTACH_REUSEPORT_EBPF: {exc.strerror}") from None
    finally:
        os.close(fd)


def test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> tuple[int, int]:
    """Run a loaded program on an Ethernet frame (BPF_PROG_TEST_RUN: the skb's network header
    at the IP header) `repeat` times: (its return value, the kernel's mean ns per run)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIIIQQII", attr, 0, prog_fd, 0, len(frame), 0, ctypes.addressof(data), 0,
                     repeat, 0)
    _bpf(_PROG_TEST_RUN, attr)
    _fd, retval, _i, _o, _di, _do, _r, duration = struct.unpack_from("<IIIIQQII", attr, 0)
    return retval, duration


def v6_key(address: str) -> int:
    """The /56 key of an IPv6 address (as pop53.scoring.known stores them)."""
    return int(ipaddress.IPv6Address(address)) >> 72
