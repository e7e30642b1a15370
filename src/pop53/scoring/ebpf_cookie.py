"""The server-cookie check of the steering program (issue 13): a datagram from an address that
has shown us a valid DNS COOKIE (its bit in the trust map's cookie region, set by the workers)
is steered to the priority socket only when it carries a valid server cookie again, so spoofed
datagrams with that exact address but no cookie stay in the normal socket's queue, and the real
client's reach the priority socket even when its address lost its trust (spoofed past
known_addr_rate) or its prefix is strict.

The check parses the query in the program (bpf_skb_load_bytes_relative from the network header,
past the IPv4 header's IHL or IPv6's 40 bytes with UDP next, and the UDP header; so the program
reads the same bytes whether the skb was pulled past the UDP header, as for reuseport, or not,
as in BPF_PROG_TEST_RUN, bench/micro/steer_prog.py): a header with QDCOUNT 1, ANCOUNT 0,
NSCOUNT 0, ARCOUNT 1; the question name (read at once, up to 256 bytes as the IP header's
length allows, then walked on the stack: at most 127 labels); the OPT record; its options (at
most 8) up to COOKIE (option 10) of 24 bytes: an 8-byte client cookie and an RFC 9018 server
cookie (version 1, three reserved bytes, a timestamp, an 8-byte hash).  Then, as ext/cookie.pxi: the timestamp at
most an hour old and five minutes ahead (the kernel's TAI clock, which is UTC or up to 37 s
ahead of it), and SipHash-2-4 over client cookie | version | reserved | timestamp | client
address under the current secret, else the previous one (CookieKeys, written by the control
plane at start and at each config reload).  Anything else is invalid: the normal socket.

Stack (below the steering program's own 32 bytes): -40 loop counter, -48 the options' end,
-56 the packet's length, then how much of the name was read, -64 the received hash, -72 where
the name starts, -104..-73 the hashed message, -120..-105 bytes read from the packet,
-376..-121 the question name (read at once, then walked on the stack).
"""
from __future__ import annotations

from pop53.scoring.ebpf_asm import (
    Asm, BPF_ADD, BPF_ALU, BPF_ALU64, BPF_AND, BPF_B, BPF_CALL, BPF_DIV, BPF_DW, BPF_END,
    BPF_JA, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JLE, BPF_JMP, BPF_JNE, BPF_JSLE, BPF_K, BPF_LDX,
    BPF_LSH, BPF_MEM, BPF_MOV, BPF_OR, BPF_RSH, BPF_ST, BPF_STX, BPF_SUB, BPF_TO_BE, BPF_W,
    BPF_X, BPF_XOR, FP, FUNC_KTIME_GET_TAI_NS, R0, R1, R2, R3, R4, R5, R7)

COUNTER, END, HASH, MSG, BUF = -40, -48, -64, -104, -120
LEN_AT, OFF_AT, NAME = -56, -72, -376     # bytes of the name read, where it starts, the bytes
MAX_LABELS, MAX_OPTIONS = 127, 8
KEYS_VALUE = 40          # CookieKeys' one value: current k0 k1, previous k0 k1, has previous

# SipHash-2-4's initial constants ("somepseudorandomlygeneratedbytes")
_C = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)


def _be16(a: Asm, dst: int, stack: int) -> None:
    """dst = the big-endian 16-bit value at `stack` (byte by byte: the verifier refuses
    misaligned stack reads).  Uses R3."""
    a.op(BPF_LDX | BPF_MEM | BPF_B, dst, FP, stack)
    a.op(BPF_ALU64 | BPF_LSH | BPF_K, dst, 0, 0, 8)
    a.op(BPF_LDX | BPF_MEM | BPF_B, R3, FP, stack + 1)
    a.op(BPF_ALU64 | BPF_OR | BPF_X, dst, R3)


def _count(a: Asm, limit: int, loop: str, invalid: str) -> None:
    """The loop counter at COUNTER plus one; to `loop` below `limit`, else to `invalid`."""
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, FP, COUNTER)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R1, 0, 0, 1)
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R1, COUNTER)
    a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R1, invalid, limit)
    a.jmp(BPF_JMP | BPF_JA, 0, loop)


def question(a: Asm, tag: str, iplen: int, invalid: str, opt: bool) -> None:
    """Read the question name: its bytes at NAME (what the packet holds of 256), R7 = the index
    of its root label there, the name's start (from the network header) at OFF_AT.  The header
    must have QDCOUNT 1 and ANCOUNT 0, and with `opt` NSCOUNT 0 and ARCOUNT 1 too.  Uses R1-R5
    and R7."""
    a.skb_read(BUF, invalid, length=8)                         # the IP header's start
    if iplen == 4:                                                # past IHL words and UDP's 8
        a.op(BPF_LDX | BPF_MEM | BPF_B, R7, FP, BUF)
        a.op(BPF_ALU64 | BPF_AND | BPF_K, R7, 0, 0, 0x0F)
        a.op(BPF_ALU64 | BPF_LSH | BPF_K, R7, 0, 0, 2)
        a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 8)
        _be16(a, R1, BUF + 2)                                     # the total length
    else:                                                         # UDP next: no extension headers
        a.op(BPF_LDX | BPF_MEM | BPF_B, R1, FP, BUF + 6)
        a.jmp(BPF_JMP | BPF_JNE | BPF_K, R1, invalid, 17)
        a.op(BPF_ALU64 | BPF_MOV | BPF_K, R7, 0, 0, 48)
        _be16(a, R1, BUF + 4)                                     # the payload length
        a.op(BPF_ALU64 | BPF_ADD | BPF_K, R1, 0, 0, 40)
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R1, LEN_AT)             # the packet's length
    a.skb_read(BUF, invalid, off_reg=R7, length=12)                   # the DNS header
    a.op(BPF_LDX | BPF_MEM | BPF_W, R1, FP, BUF + 4)             # QDCOUNT 1, ANCOUNT 0 (LE)
    a.jmp(BPF_JMP | BPF_JNE | BPF_K, R1, invalid, 0x0100)
    if opt:
        a.op(BPF_LDX | BPF_MEM | BPF_W, R1, FP, BUF + 8)         # NSCOUNT 0, ARCOUNT 1
        a.jmp(BPF_JMP | BPF_JNE | BPF_K, R1, invalid, 0x01000000)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 12)
    # the question name: what the packet holds of its 256 bytes in one read, then walked on
    # the stack (a read per label cost ~18 ns a label: a spoofer's 120 labels, 2.4 us)
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R7, OFF_AT)
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R4, FP, LEN_AT)
    a.op(BPF_ALU64 | BPF_SUB | BPF_X, R4, R7)
    a.jmp(BPF_JMP | BPF_JSLE | BPF_K, R4, invalid, 0)
    a.jmp(BPF_JMP | BPF_JLE | BPF_K, R4, "qread" + tag, 256)
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R4, 0, 0, 256)
    a.label("qread" + tag)
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R4, LEN_AT)
    a.skb_read(NAME, invalid, off_reg=R7, len_reg=R4)
    a.op(BPF_ALU64 | BPF_MOV | BPF_K, R7, 0, 0, 0)
    a.op(BPF_ST | BPF_MEM | BPF_DW, FP, 0, COUNTER, 0)
    a.label("qname" + tag)
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, FP, LEN_AT)
    a.jmp(BPF_JMP | BPF_JGE | BPF_X, R7, invalid, src=R1)       # past what was read
    a.jmp(BPF_JMP | BPF_JGT | BPF_K, R7, invalid, 255)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, FP)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R2, 0, 0, NAME)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R2, R7)
    a.op(BPF_LDX | BPF_MEM | BPF_B, R1, R2, 0)
    a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R1, "qend" + tag, 0)
    a.jmp(BPF_JMP | BPF_JGT | BPF_K, R1, invalid, 63)          # no pointer in a question
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R7, R1)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 1)
    _count(a, MAX_LABELS, "qname" + tag, invalid)
    a.label("qend" + tag)


def _parse(a: Asm, tag: str, iplen: int, invalid: str) -> None:
    """Find the COOKIE option; leave its 24 bytes at MSG (client cookie, server cookie's head,
    hash).  Uses R7 as the offset from the network header."""
    question(a, tag, iplen, invalid, True)
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, FP, OFF_AT)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R7, R1)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 5)              # the root, QTYPE, QCLASS
    a.skb_read(BUF, invalid, off_reg=R7, length=11)                   # OPT: owner, type ... RDLEN
    a.op(BPF_LDX | BPF_MEM | BPF_B, R1, FP, BUF)
    a.jmp(BPF_JMP | BPF_JNE | BPF_K, R1, invalid, 0)
    _be16(a, R1, BUF + 1)
    a.jmp(BPF_JMP | BPF_JNE | BPF_K, R1, invalid, 41)
    _be16(a, R1, BUF + 9)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 11)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R1, R7)
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R1, END)
    a.op(BPF_ST | BPF_MEM | BPF_DW, FP, 0, COUNTER, 0)
    a.label("option" + tag)                                      # the options
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, FP, END)
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R2, R7)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R2, 0, 0, 4)
    a.jmp(BPF_JMP | BPF_JGT | BPF_X, R2, invalid, src=R1)
    a.skb_read(BUF, invalid, off_reg=R7, length=4)
    _be16(a, R1, BUF)
    _be16(a, R2, BUF + 2)
    a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R1, "found" + tag, 10)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 4)
    a.op(BPF_ALU64 | BPF_ADD | BPF_X, R7, R2)
    _count(a, MAX_OPTIONS, "option" + tag, invalid)
    a.label("found" + tag)
    a.jmp(BPF_JMP | BPF_JNE | BPF_K, R2, invalid, 24)
    a.op(BPF_ALU64 | BPF_ADD | BPF_K, R7, 0, 0, 4)
    a.skb_read(MSG, invalid, off_reg=R7, length=24)


def _rotl(a: Asm, x: int, b: int) -> None:
    a.op(BPF_ALU64 | BPF_MOV | BPF_X, R5, x)
    a.op(BPF_ALU64 | BPF_RSH | BPF_K, R5, 0, 0, 64 - b)
    a.op(BPF_ALU64 | BPF_LSH | BPF_K, x, 0, 0, b)
    a.op(BPF_ALU64 | BPF_OR | BPF_X, x, R5)


def _sipround(a: Asm) -> None:
    v0, v1, v2, v3 = R1, R2, R3, R4
    add = lambda d, s: a.op(BPF_ALU64 | BPF_ADD | BPF_X, d, s)   # noqa: E731
    xor = lambda d, s: a.op(BPF_ALU64 | BPF_XOR | BPF_X, d, s)   # noqa: E731
    add(v0, v1); _rotl(a, v1, 13); xor(v1, v0); _rotl(a, v0, 32)
    add(v2, v3); _rotl(a, v3, 16); xor(v3, v2)
    add(v0, v3); _rotl(a, v3, 21); xor(v3, v0)
    add(v2, v1); _rotl(a, v1, 17); xor(v1, v2); _rotl(a, v2, 32)


def _siphash(a: Asm, key_off: int, iplen: int) -> None:
    """R1 = SipHash-2-4 of the message at MSG (16 + iplen bytes) under the key at R0 + key_off
    (as p53_siphash24 in ext/include/p53_siphash.h).  Uses R0-R5 and R7."""
    n = 16 + iplen
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R5, R0, key_off)           # k0
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R7, R0, key_off + 8)       # k1
    for v, c, k in ((R1, _C[0], R5), (R2, _C[1], R7), (R3, _C[2], R5), (R4, _C[3], R7)):
        a.imm64(v, c)
        a.op(BPF_ALU64 | BPF_XOR | BPF_X, v, k)
    for i in range(n // 8):
        a.op(BPF_LDX | BPF_MEM | BPF_DW, R7, FP, MSG + 8 * i)
        a.op(BPF_ALU64 | BPF_XOR | BPF_X, R4, R7)
        _sipround(a)
        _sipround(a)
        a.op(BPF_ALU64 | BPF_XOR | BPF_X, R1, R7)
    if n % 8:                                     # 4 bytes of an IPv4 address left
        a.op(BPF_LDX | BPF_MEM | BPF_W, R7, FP, MSG + n - 4)
        a.imm64(R5, n << 56)
        a.op(BPF_ALU64 | BPF_OR | BPF_X, R7, R5)
    else:
        a.imm64(R7, n << 56)
    a.op(BPF_ALU64 | BPF_XOR | BPF_X, R4, R7)
    _sipround(a)
    _sipround(a)
    a.op(BPF_ALU64 | BPF_XOR | BPF_X, R1, R7)
    a.op(BPF_ALU64 | BPF_XOR | BPF_K, R3, 0, 0, 0xFF)
    for _ in range(4):
        _sipround(a)
    for v in (R2, R3, R4):
        a.op(BPF_ALU64 | BPF_XOR | BPF_X, R1, v)


def emit(a: Asm, tag: str, iplen: int, addr_stack: int, cookie_bit, keys_fd: int,
         valid: str, invalid: str) -> None:
    """The check for one address family (`iplen` 4 or 16 bytes of source address at
    `addr_stack`): falls through when the address's cookie bit is clear (`cookie_bit(label)`
    emits the bit test jumping to `label` when clear), else jumps to `valid` or `invalid`.
    R6 holds the skb; R6, R8 and R9 are kept."""
    none = "nocookie" + tag
    cookie_bit(none)
    _parse(a, tag, iplen, invalid)
    a.op(BPF_LDX | BPF_MEM | BPF_B, R1, FP, MSG + 8)            # version 1
    a.jmp(BPF_JMP | BPF_JNE | BPF_K, R1, invalid, 1)
    a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, FP, MSG + 16)          # the hash, out of the way
    a.op(BPF_STX | BPF_MEM | BPF_DW, FP, R1, HASH)
    for k in range(0, iplen, 4):                                  # the address after the head
        a.op(BPF_LDX | BPF_MEM | BPF_W, R1, FP, addr_stack + k)
        a.op(BPF_STX | BPF_MEM | BPF_W, FP, R1, MSG + 16 + k)
    # the time window (RFC 9018 4.3): -300 <= now - timestamp <= 3600, in serial arithmetic
    a.op(BPF_JMP | BPF_CALL, 0, 0, 0, FUNC_KTIME_GET_TAI_NS)
    a.op(BPF_ALU64 | BPF_DIV | BPF_K, R0, 0, 0, 1_000_000_000)
    a.op(BPF_LDX | BPF_MEM | BPF_W, R1, FP, MSG + 12)
    a.op(BPF_ALU | BPF_END | BPF_TO_BE, R1, 0, 0, 32)
    a.op(BPF_ALU | BPF_SUB | BPF_X, R0, R1)
    a.op(BPF_ALU | BPF_ADD | BPF_K, R0, 0, 0, 300)
    a.jmp(BPF_JMP | BPF_JGT | BPF_K, R0, invalid, 3900)
    a.op(BPF_ST | BPF_MEM | BPF_W, FP, 0, COUNTER, 0)          # the keys' index: 0
    for key_off in (0, 16):                                       # current, then previous
        a.map_lookup(keys_fd, COUNTER, invalid)
        if key_off:
            a.op(BPF_LDX | BPF_MEM | BPF_DW, R1, R0, 32)
            a.jmp(BPF_JMP | BPF_JEQ | BPF_K, R1, invalid, 0)      # no previous secret
        _siphash(a, key_off, iplen)
        a.op(BPF_LDX | BPF_MEM | BPF_DW, R2, FP, HASH)
        a.jmp(BPF_JMP | BPF_JEQ | BPF_X, R1, valid, src=R2)
    a.jmp(BPF_JMP | BPF_JA, 0, invalid)
    a.label(none)
