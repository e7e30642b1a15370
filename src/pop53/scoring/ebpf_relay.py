"""The relay check of the steering program (issue 13, water torture relayed by trusted
resolvers): a datagram from an address whose relay bit is set (the trust map's relay region,
written by the workers, scoring_trust.pxi sc_relay_bit) is steered to the priority socket only
when its question name is a node of a served zone, by the name filter (NameFilter, a Bloom
filter refilled from each published image, ext/scoring_names.pxi).
The relay's random names then queue in the normal socket, where the normal class is cut under
overload, instead of ahead of the known resolvers' queries in the priority socket, where the
worker read and cut them one by one (up to 230,000 a second at 5x in the attack bench).  Its
real names still reach the priority socket; a false positive of the filter only leaves a random
name there, cut by the worker as before.  A datagram whose question cannot be read is not
steered.

The hash, as nf_hash in ext/scoring_names.pxi: the name's wire bytes zero-padded to 8-byte
words, each lowercased eight bytes at once (A-Z only), folded in by xor and multiply, mixed;
bit h & (2^24 - 1) and bit h >> 40 of the live half.

Stack: what the cookie check uses (pop53.scoring.ebpf_cookie: the name at NAME, its counters),
the hash at HASH, the live half's first word at END, the array index at -32 and the bit at -28.
"""
from __future__ import annotations

import logging
import threading

from pop53.scoring.ebpf_asm import (
    Asm, BPF_ADD, BPF_ALU64, BPF_AND, BPF_DW, BPF_JA, BPF_JGE, BPF_JGT, BPF_JMP, BPF_K,
    BPF_LDX, BPF_LSH, BPF_MEM, BPF_MOV, BPF_MUL, BPF_OR, BPF_RSH, BPF_ST, BPF_STX, BPF_SUB,
    BPF_W, BPF_X, BPF_XOR, FP, R0, R1, R2, R3, R4, R5, R7)
from pop53.scoring.ebpf import MappedArray
from pop53.scoring.ebpf_cookie import END, HASH, NAME, question

log = logging.getLogger("pop53.scoring")

SEED, MUL, MIX = 0x243F6A8885A308D3, 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9
SHIFT = 24                      # bits a half: 1 << 24 (NF_SHIFT)
HALF_WORDS = 1 << (SHIFT - 6)


def _lower8(a: Asm) -> None:
    """R1 = R1 with A-Z lowercased in each of its eight bytes (nf_lower8).  Uses R0, R2, R3."""
    a.imm64(R0, 0x7F7F7F7F7F7F7F7F)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, R1)
    a.op(BPF_ALU64 | BPF_AND | BPF_X, R2, R0)                   # x7
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R3, R2)
    a.imm64(R0, 0x3F3F3F3F3F3F3F3F)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R3, R0)                   # >= 'A'
    a.imm64(R0, 0x2525252525252525)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R2, R0)                   # > 'Z'
    a.op(BPF_ALU64 | BPF_XOR | BPF_K, R2, 0, 0, -1)
    a.op(BPF_ALU64 | BPF_AND | BPF_X, R3, R2)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, R1)
    a.op(BPF_ALU64 | BPF_XOR | BPF_K, R2, 0, 0, -1)             # not high already
    a.op(BPF_ALU64 | BPF_AND | BPF_X, R3, R2)
    a.imm64(R0, 0x8080808080808080)
    a.op(BPF_ALU64 | BPF_AND | BPF_X, R3, R0)
    a.op(BPF_ALU64 | BPF_RSH | BPF_K, R3, 0, 0, 2)
    a.op(BPF_ALU64 | BPF_OR | BPF_X, R1, R3)


def _hash(a: Asm, tag: str) -> None:
    """HASH = the filter's hash of the name at NAME whose root label is at index R7."""
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 1)             # its length
    a.imm64(R4, SEED)
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R5, 0, 0, 0)
    a.label("nword" + tag)
    a.jmp(BPF_JMP | BPF_JGE | BPF_X, R5, "nmix" + tag, src=R7)
    a.jmp(BPF_JMP | BPF_JGT | BPF_K, R5, "nmix" + tag, 248)    # (the verifier's bound)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, FP)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R2, 0, 0, NAME)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R2, R5)
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, R2, 0)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R3, R7)                   # the last word: its bytes only
    a.op(BPF_ALU64 | BPF_SUB | BPF_X, R3, R5)
    a.jmp(BPF_JMP | BPF_JGE | BPF_K, R3, "nfull" + tag, 8)
    a.op(BPF_ALU64 | BPF_LSH | BPF_K, R3, 0, 0, 3)
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R2, 0, 0, 1)
    a.op(BPF_ALU64 | BPF_LSH | BPF_X, R2, R3)
    a.op(BPF_ALU64 | BPF_SUB | BPF_K, R2, 0, 0, 1)
    a.op(BPF_ALU64 | BPF_AND | BPF_X, R1, R2)
    a.label("nfull" + tag)
    _lower8(a)
    a.op(BPF_ALU64 | BPF_XOR | BPF_X, R4, R1)
    a.imm64(R0, MUL)
    a.op(BPF_ALU64 | BPF_MUL | BPF_X, R4, R0)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R5, 0, 0, 8)
    a.jmp(BPF_JMP | BPF_JA, 0, "nword" + tag)
    a.label("nmix" + tag)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R1, R4)
    a.op(BPF_ALU64 | BPF_RSH | BPF_K, R1, 0, 0, 29)
    a.op(BPF_ALU64 | BPF_XOR | BPF_X, R4, R1)
    a.imm64(R0, MIX)
    a.op(BPF_ALU64 | BPF_MUL | BPF_X, R4, R0)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R1, R4)
    a.op(BPF_ALU64 | BPF_RSH | BPF_K, R1, 0, 0, 32)
    a.op(BPF_ALU64 | BPF_XOR | BPF_X, R4, R1)
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R4, HASH)


def emit(a: Asm, tag: str, iplen: int, relay_bit, names_fd: int, prio: str,
         normal: str) -> None:
    """The check for one address family (`iplen` 4 or 16): to `prio` when the address's relay
    bit is clear (`relay_bit(label)` emits the bit test jumping to `label` when clear) or the
    filter holds its question name, else to `normal`.  R6, R8 and R9 are kept."""
    relay_bit(prio)
    t = "r" + tag
    question(a, t, iplen, normal, False)
    _hash(a, t)
    a.op(BPF_ST | BPF_MEM | BPF_W, FP, 0, -32, 0)
    a.map_lookup(names_fd, -32, prio)                            # the live half
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, R0, 0)
    a.op(BPF_ALU64 | BPF_AND | BPF_K, R1, 0, 0, 1)
    a.op(BPF_ALU64 | BPF_MUL | BPF_K, R1, 0, 0, HALF_WORDS)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R1, 0, 0, 1)
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R1, END)
    for high in (False, True):
        a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, FP, HASH)
        if high:
            a.op(BPF_ALU64 | BPF_RSH | BPF_K, R1, 0, 0, 64 - SHIFT)
        else:
            a.op(BPF_ALU64 | BPF_AND | BPF_K, R1, 0, 0, (1 << SHIFT) - 1)
        a.test_bit(names_fd, normal, base_at=END, miss=prio)
    a.jmp(BPF_JMP | BPF_JA, 0, prio)


class NameFilter(MappedArray):
    """The name filter the steering program reads (_core.NAME_FILTER_WORDS 64-bit words: word 0
    says which half is live, then the two halves), filled from each published image by a
    thread of its own (`follow`), so publishing never waits for it (a million names take
    0.25 s).  Until a fill ends, a name the new image added goes to the normal socket if a
    relaying address asks it, and a name it removed to the priority socket."""

    def __init__(self):
        from pop53._core import NAME_FILTER_WORDS
        super().__init__(NAME_FILTER_WORDS, "name filter")
        self.names = 0
        self._cv = threading.Condition()
        self._want = None            # the newest view asked for, while not yet filled from
        self._asked = self._done = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def follow(self, view) -> None:
        """Fill from the image view `view` (None: no name) soon, in the filler thread; a newer
        view asked for meanwhile replaces it."""
        with self._cv:
            self._want = view
            self._asked += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pop53-names", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the newest view asked for is in the filter (tests, tools)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._done == self._asked, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or self._done != self._asked)
                if self._closed:
                    return
                view, asked, self._want = self._want, self._asked, None
            try:
                self.fill(view)               # without the GIL
            except Exception:                 # noqa: BLE001  never lose the thread
                log.exception("the kernel stage's name filter was not refilled")
            with self._cv:
                self._done = asked
                self._cv.notify_all()

    def fill(self, view) -> int:
        """Every node name of the image view `view` (None: none) in the half not live, then
        that half live.  Returns how many names."""
        from pop53._core import name_filter_fill
        self.names = name_filter_fill(view, self.buf)
        return self.names

    def close(self) -> None:
        """Stop the filler thread and close the fd (the programs keep the map; the mapping
        lives while `buf` does)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        super().close()
