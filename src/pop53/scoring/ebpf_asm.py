"""A tiny eBPF assembler for the kernel stage's hand-written programs (pop53.scoring.ebpf, the
steering program; pop53.scoring.ebpf_cookie and ebpf_relay, its server-cookie and relay
checks): instructions as
(code, dst, src, off, imm), jumps to labels, 64-bit immediates and map fds.  There is no clang
on the machine and no C file to build."""
from __future__ import annotations

import struct

# instruction classes and fields (include/uapi/linux/bpf.h, bpf_common.h)
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
BPF_ALU64 = 0x07
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_MEM, BPF_ATOMIC = 0x00, 0x60, 0xC0
BPF_FETCH = 0x01          # with BPF_ATOMIC: the old value into the source register
BPF_K, BPF_X = 0x00, 0x08
BPF_ADD, BPF_MUL, BPF_AND, BPF_RSH, BPF_MOD = 0x00, 0x20, 0x50, 0x70, 0x90
BPF_XOR, BPF_MOV = 0xA0, 0xB0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JNE = 0x00, 0x10, 0x20, 0x30, 0x50
BPF_CALL, BPF_EXIT = 0x80, 0x90
BPF_JLE, BPF_JSLE = 0xB0, 0xD0
BPF_SUB, BPF_LSH, BPF_OR, BPF_DIV, BPF_END = 0x10, 0x60, 0x40, 0x30, 0xD0
BPF_TO_BE = 0x08          # with BPF_END: to big-endian (a byte swap on a little-endian host)
BPF_PSEUDO_MAP_FD = 1
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = range(11)
# helper functions (enum bpf_func_id) and bpf_skb_load_bytes_relative's start header
FUNC_MAP_LOOKUP_ELEM, FUNC_SKB_LOAD_BYTES_RELATIVE, FUNC_KTIME_GET_TAI_NS = 1, 68, 208
FUNC_KTIME_GET_COARSE_NS = 160
HDR_START_NET = 1


class Asm:
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
        self.op(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd)
        self.op(0, 0, 0, 0, 0)

    def map_lookup(self, fd, key_off: int, miss: str) -> None:
        """r0 = bpf_map_lookup_elem(map `fd`, the key at fp + key_off); to `miss` without one."""
        self.ld_map(R1, fd)
        self.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, FP)
        self.op(BPF_ALU64 | BPF_ADD | BPF_K, R2, 0, 0, key_off)
        self.op(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM)
        self.jmp(BPF_JMP | BPF_JEQ | BPF_K, R0, miss, 0)

    def assemble(self) -> bytes:
        out = []
        for i, (code, dst, src, off, imm) in enumerate(self.ins):
            if isinstance(off, str):
                off = self.labels[off] - (i + 1)
            out.append(struct.pack("<BBhi", code, (src << 4) | dst, off, imm))
        return b"".join(out)

    def skb_read(self, stack: int, fail: str, *, off: int = 0, off_reg: int | None = None,
                 length: int = 0, len_reg: int | None = None) -> None:
        """bpf_skb_load_bytes_relative(R6 = the skb, offset, fp + stack, length, from the network
        header): offset and length constants or registers; to `fail` when it cannot be read.
        Clobbers R0-R5."""
        self.op(BPF_ALU64 | BPF_MOV | BPF_X, R1, R6)
        if off_reg is None:
            self.op(BPF_ALU64 | BPF_MOV | BPF_K, R2, 0, 0, off)
        else:
            self.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, off_reg)
        self.op(BPF_ALU64 | BPF_MOV | BPF_X, R3, FP)
        self.op(BPF_ALU64 | BPF_ADD | BPF_K, R3, 0, 0, stack)
        if len_reg is None:
            self.op(BPF_ALU64 | BPF_MOV | BPF_K, R4, 0, 0, length)
        elif len_reg != R4:
            self.op(BPF_ALU64 | BPF_MOV | BPF_X, R4, len_reg)
        self.op(BPF_ALU64 | BPF_MOV | BPF_K, R5, 0, 0, HDR_START_NET)
        self.op(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_SKB_LOAD_BYTES_RELATIVE)
        self.jmp(BPF_JMP | BPF_JNE | BPF_K, R0, fail, 0)

    def test_bit(self, fd: int, clear: str, base: int = 0, base_at: int | None = None,
                 miss: str | None = None) -> None:
        """Jump to `clear` unless bit r1 of array map `fd`'s 64-bit words, counted from word
        `base` (plus the u64 at fp + `base_at`), is set; to `miss` (default `clear`) when the
        element is missing (the verifier inlines an array's lookup).  Uses R0-R5 and fp-32 to
        fp-25."""
        self.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, R1)
        self.op(BPF_ALU64 | BPF_RSH | BPF_K, R2, 0, 0, 6)
        if base:
            self.op(BPF_ALU64 | BPF_ADD | BPF_K, R2, 0, 0, base)
        if base_at is not None:
            self.op(BPF_LDX | BPF_MEM | BPF_DW, R3, FP, base_at)
            self.op(BPF_ALU64 | BPF_ADD | BPF_X, R2, R3)
        self.op(BPF_STX | BPF_MEM | BPF_W, FP, R2, -32)                 # the array index
        self.op(BPF_ALU64 | BPF_AND | BPF_K, R1, 0, 0, 63)
        self.op(BPF_STX | BPF_MEM | BPF_W, FP, R1, -28)                 # the bit in the word
        self.map_lookup(fd, -32, miss or clear)
        self.op(BPF_LDX | BPF_MEM | BPF_DW, R1, R0, 0)
        self.op(BPF_LDX | BPF_MEM | BPF_W, R2, FP, -28)
        self.op(BPF_ALU64 | BPF_RSH | BPF_X, R1, R2)
        self.op(BPF_ALU64 | BPF_AND | BPF_K, R1, 0, 0, 1)
        self.jmp(BPF_JMP | BPF_JEQ | BPF_K, R1, clear, 0)

    def imm64(self, dst, value):
        """dst = a 64-bit constant (BPF_LD | BPF_DW | BPF_IMM, two instruction slots)."""
        value &= (1 << 64) - 1
        lo, hi = value & 0xFFFFFFFF, value >> 32
        self.op(BPF_LD | BPF_DW | BPF_IMM, dst, 0, 0, lo - (1 << 32) if lo >> 31 else lo)
        self.op(0, 0, 0, 0, hi - (1 << 32) if hi >> 31 else hi)
