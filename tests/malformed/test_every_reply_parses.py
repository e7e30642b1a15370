"""Every reply pop53 sends, for any input, parses (issue 9).

For every generated message: dropped exactly when it is shorter than a header or has QR=1;
otherwise a reply that dnspython parses and that keeps the invariants of wirekit.check_reply
(ID, QR, RD and opcode, the question echoed byte for byte, error replies at most header,
question and OPT; opcode-UPDATE replies are read as QUERY, because dnspython parses UPDATE by
RFC 2136's own rules), within 512 octets without OPT or the configured maximum over UDP.

The inputs: all 16 opcodes, random flags and section counts (true and lying), questions at
the zones' names, outside them, CHAOS and edge names, every class and the meta types, OPT
records with random sizes, versions and options (NSID, ECS, COOKIE of every length, unknown),
TSIG and other records, trailing bytes; the BIND corpus (../shared/corpora), the decision
table's rows (test_decision_table.CASES) and wirekit's seeds, whole, mutated (wirekit.mutate)
and cut short; random bytes.  Four responders (default, COOKIEs on, a 512 maximum with a long
identity, CHAOS off with a 4096 maximum).

- test_bulk_in_process: a seeded generator, PARSE_PACKETS (default 1,000,000) messages through
  pop53.answer (UDP and TCP limits alternately).  dnspython's verdict depends only on the bytes
  and never on the message ID, so it is memoized per reply with the ID left out: every reply is
  parsed, equal ones once.
- test_over_udp_and_tcp: a share of the same stream (PARSE_WIRE_PACKETS, default 40,000) sent
  to a running `pop53 serve` over real UDP and TCP sockets; every reply received parses, every
  message the decision table answers is answered, no dropped one is, and the server still
  answers afterwards.
- test_shrinkable: the same building blocks driven by hypothesis, so a failure shrinks to a
  minimal message.

Budget (CI, 2 cores): about 2 minutes for the file; the sizes are environment variables so a
longer soak is one command: `PARSE_PACKETS=10000000 pytest tests/malformed/test_every_reply_parses.py`.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.zone
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pop53
from pop53 import _core

from .test_decision_table import CASES
from .wirekit import (
    CLIENT, CORPUS, EXAMPLE_ZONE, SEEDS, check_reply, ecs, labels, mutate, name, opt, option,
    question_end, read_reply, rr, tsig,
)

HERE = Path(__file__).resolve().parent
ZONE_FILES = [EXAMPLE_ZONE, HERE / "zones" / "chain.example.org.zone",
              HERE.parent / "fuzz" / "zones" / "z.zone"]
PACKETS = int(os.environ.get("PARSE_PACKETS", 1_000_000))
WIRE_PACKETS = int(os.environ.get("PARSE_WIRE_PACKETS", 40_000))
SEED = int(os.environ.get("PARSE_SEED", 53))

IMAGE = pop53.compile_zones([str(p) for p in ZONE_FILES])
RESPONDERS = [
    pop53.Responder(identity="parse-test"),
    pop53.Responder(identity="parse-test", cookie_secret=b"k" * 16),
    pop53.Responder(identity="i" * 200, version="v" * 255, edns_max=512),
    pop53.Responder(chaos=False, nsid=False, edns_max=4096),
]

# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------


def _zone_names() -> list[bytes]:
    out = set()
    for p in ZONE_FILES:
        z = dns.zone.from_file(str(p), relativize=False, check_origin=False)
        for n in z.nodes:
            out.add(n.to_wire())
            out.add(b"\x02nx" + n.to_wire() if len(n.to_wire()) < 250 else n.to_wire())
    return sorted(out)


NAMES = _zone_names() + [
    name(t) for t in ("id.server", "hostname.bind", "version.bind", "version.server",
                      "authors.bind", "example.net", "com", "z.example.com")
] + [b"\x00", labels(*[b"x"] * 126, b"z"), labels(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 59, b"z"),
     labels(b"x\x00y", b"z"), labels(b"\xff\x80", b"z"), labels(b"*", b"apps", b"example", b"com")]
QTYPES = [1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 39, 41, 43, 46, 47, 48, 50, 51, 65, 99, 249, 250,
          251, 252, 253, 254, 255, 0, 65280, 65535]
QCLASSES = [1, 1, 1, 1, 1, 3, 3, 255, 255, 254, 4, 2, 0, 65535]
PAYLOADS = [0, 1, 511, 512, 513, 1232, 1400, 4096, 65535]


def _case(rng: random.Random, wire_name: bytes) -> bytes:
    """0x20: flip the case of some letters (the label lengths are never letters' codes here
    unless a label is 65+ octets, which cannot be)."""
    if rng.random() < 0.7:
        return wire_name
    b = bytearray(wire_name)
    for i, c in enumerate(b):
        if (65 <= c <= 90 or 97 <= c <= 122) and rng.random() < 0.5:
            b[i] = c ^ 0x20
    return bytes(b)


def _options(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        k = rng.randrange(8)
        if k == 0:
            out += option(3, b"" if rng.random() < 0.8 else rng.randbytes(4))       # NSID
        elif k == 1:
            fam, src = rng.choice(((1, 24), (1, 32), (2, 56), (1, 0), (2, 128), (3, 8), (1, 33)))
            n = (src + 7) // 8 + rng.choice((0, 0, 0, 1, -1))
            out += ecs(fam, src, rng.choice((0, 0, 24)), rng.randbytes(max(0, n)))  # ECS
        elif k == 2:
            out += option(10, rng.randbytes(rng.choice((8, 8, 16, 24, 40, 7, 41, 0))))  # COOKIE
        elif k == 3:
            out += option(12, b"\x00" * rng.randrange(0, 64))                       # padding
        elif k == 4:
            out += option(rng.randrange(65536), rng.randbytes(rng.randrange(0, 20)))
        elif k == 5:
            out += option(rng.randrange(65536), b"", olen=rng.randrange(1, 300))   # lying length
        else:
            out += option(rng.choice((5, 6, 7, 9, 11, 13, 14, 15)), rng.randbytes(rng.randrange(8)))
    return out


def _record(rng: random.Random) -> bytes:
    k = rng.randrange(6)
    if k == 0:
        return tsig(orig_id=rng.randrange(65536))
    if k == 1:
        return rr(b"\xc0\x0c", 6, rdata=name("ns1.example.com") + name("h.example.com")
                  + struct.pack("!IIIII", *(rng.randrange(1 << 32) for _ in range(5))))
    if k == 2:
        return rr(b"\xc0\x0c", rng.choice(QTYPES), rng.choice(QCLASSES), rng.randrange(1 << 32),
                  rng.randbytes(rng.randrange(0, 40)))
    if k == 3:
        return rr(rng.choice(NAMES), 1, rdata=b"\xc0\x00\x02\x01")
    if k == 4:
        return rr(b"\xc0" + bytes([rng.randrange(256)]), rng.randrange(65536), rdata=b"",
                  rdlen=rng.choice((0, 4, 65535)))
    return rng.randbytes(rng.randrange(1, 30))


def structured(rng: random.Random) -> bytes:
    """A message built field by field: any opcode, random flags, questions at interesting
    names, an OPT record mostly, other records sometimes, counts true or lying."""
    flags = rng.getrandbits(16) & ~0x8000 & ~0x7800
    if rng.random() < 0.03:
        flags |= 0x8000
    opcode = rng.choice((0, 0, 0, 0, 0, 4, 5, rng.randrange(16)))
    qd = rng.choice((1, 1, 1, 1, 1, 1, 0, 2))
    questions = b"".join(_case(rng, rng.choice(NAMES)) + struct.pack(
        "!HH", rng.choice(QTYPES), rng.choice(QCLASSES)) for _ in range(qd))
    an_records = [_record(rng) for _ in range(rng.choice((0, 0, 0, 0, 1, 2)))]
    ns_records = [_record(rng) for _ in range(rng.choice((0, 0, 0, 0, 0, 1)))]
    ar_records = [_record(rng) for _ in range(rng.choice((0, 0, 0, 0, 1)))]
    if rng.random() < 0.7:
        o = opt(udp=rng.choice(PAYLOADS), ext_rcode=rng.choice((0, 0, 0, 1)),
                version=rng.choice((0, 0, 0, 0, 1, 255)), do=rng.random() < 0.3,
                options=_options(rng))
        ar_records.insert(rng.randrange(len(ar_records) + 1), o)
    counts = [qd, len(an_records), len(ns_records), len(ar_records)]
    if rng.random() < 0.15:
        counts[rng.randrange(4)] = rng.choice((0, 1, 2, 3, 65535))
    wire = struct.pack("!HHHHHH", rng.randrange(65536), flags | (opcode << 11), *counts)
    wire += questions + b"".join(an_records + ns_records + ar_records)
    if rng.random() < 0.05:
        wire += rng.randbytes(rng.randrange(1, 8))
    return wire


def _corpus() -> list[bytes]:
    assert CORPUS.is_dir(), f"missing corpus {CORPUS} (set POP53_SHARED)"
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.pkt"))]


def base_packets() -> list[bytes]:
    """What the stream starts from: the BIND corpus, the decision-table rows, the seeds."""
    return _corpus() + [c.wire for c in CASES] + SEEDS


def packets(seed: int):
    """The seeded stream: structured messages, mutations of base and structured ones, cut
    and QR-cleared corpus messages, header rewrites of all of them, random bytes."""
    rng = random.Random(seed)
    bases = base_packets()
    recent = [structured(rng) for _ in range(64)]
    while True:
        r = rng.random()
        if r < 0.35:
            wire = structured(rng)
            recent[rng.randrange(64)] = wire
        elif r < 0.65:
            src = rng.choice(bases) if rng.random() < 0.5 else rng.choice(recent)
            wire = mutate(src, [(rng.choice(("flip", "set", "set", "insert", "delete", "cut")),
                                 rng.randrange(1 << 16), rng.randrange(256))
                                for _ in range(rng.randrange(1, 5))])
        elif r < 0.9:
            # the same message with another header: every opcode, random flags and counts
            src = rng.choice(bases) if rng.random() < 0.3 else rng.choice(recent)
            hdr = bytearray(src[:12].ljust(12, b"\x00"))
            hdr[2] = (rng.randrange(16) << 3) | (rng.getrandbits(3) & 0x07) | \
                (0x80 if rng.random() < 0.03 else 0)
            hdr[3] = rng.getrandbits(8)
            if rng.random() < 0.3:
                i = 4 + 2 * rng.randrange(4)
                hdr[i:i + 2] = struct.pack("!H", rng.choice((0, 1, 2, rng.randrange(65536))))
            wire = bytes(hdr) + src[12:]
        elif r < 0.95:
            src = rng.choice(bases)
            src = src[:2] + bytes([src[2] & 0x7F]) + src[3:] if len(src) > 2 else src
            wire = src[:rng.randrange(len(src) + 1)]
        else:
            wire = rng.randbytes(rng.randrange(0, 80))
            if len(wire) > 2 and rng.random() < 0.8:
                wire = wire[:2] + bytes([wire[2] & 0x7F]) + wire[3:]
        yield wire


def _skeleton(reply: bytes) -> bytes:
    """The reply without its ID, and with the echoed question's label octets blanked (lengths
    kept): neither can change whether or how dnspython reads the message (a label is opaque
    octets; pointers into the question land on the same offsets), so equal skeletons parse
    alike."""
    qend = question_end(reply)
    if qend is None:
        return reply[2:]
    out = bytearray(reply[2:qend])
    p = 10
    while out[p]:
        n = out[p]
        out[p + 1:p + 1 + n] = b"a" * n
        p += n + 1
    return bytes(out) + reply[qend:]


class MemoParse:
    """dnspython's from_wire, memoized on the reply's skeleton; a parse error is raised every
    time it is met."""

    def __init__(self, limit: int = 400_000):
        self.seen: dict[bytes, dns.message.Message] = {}
        self.limit = limit
        self.parsed = 0

    def __call__(self, data: bytes) -> dns.message.Message:
        key = _skeleton(data)
        m = self.seen.get(key)
        if m is None:
            m = read_reply(data)
            self.parsed += 1
            if len(self.seen) < self.limit:
                self.seen[key] = m
        m.id = (data[0] << 8) | data[1]
        return m


def check(wire: bytes, reply: bytes | None, tcp: bool, responder, parse=read_reply):
    """The property for one message and pop53's reply to it."""
    if len(wire) < 12 or wire[2] & 0x80:
        assert reply is None, "a message shorter than a header or with QR=1 is dropped"
        return
    msg = check_reply(wire, reply, parse)
    if not tcp:
        assert len(reply) <= (responder.edns_max if msg.edns >= 0 else 512), "UDP size limit"


# ---------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------


def _failure(i: int, wire: bytes, exc: BaseException) -> str:
    return f"#{i} ({wire.hex()}): {type(exc).__name__}: {exc}"


@pytest.mark.timeout(900)
def test_bulk_in_process():
    parse = MemoParse()
    failures: list[str] = []
    gen = packets(SEED)
    t0, c0 = time.monotonic(), time.process_time()
    opcodes = set()
    for i in range(PACKETS):
        wire = next(gen)
        if len(wire) >= 12:
            opcodes.add(wire[2])
        tcp = bool(i & 1)
        responder = RESPONDERS[(i >> 1) & 3]
        try:
            check(wire, pop53.answer(IMAGE, wire, CLIENT, tcp=tcp, responder=responder), tcp,
                  responder, parse)
        except (AssertionError, dns.exception.DNSException, ValueError) as e:
            failures.append(_failure(i, wire, e))
            if len(failures) >= 20:
                break
    elapsed, cpu = time.monotonic() - t0, time.process_time() - c0
    assert not failures, f"seed {SEED}: " + "\n".join(failures)
    # the memo must not hide the work: many distinct replies were really parsed
    assert parse.parsed > PACKETS // 20, (parse.parsed, PACKETS)
    assert {(b >> 3) & 0xF for b in opcodes if not b & 0x80} == set(range(16)), "all 16 opcodes"
    print(f"{PACKETS} messages, {parse.parsed} distinct replies parsed, {elapsed:.1f} s "
          f"({cpu:.1f} s CPU)")


@pytest.fixture(scope="module")
def server():
    from tests.support.refservers import Pop53Server, Zone
    with Pop53Server([Zone.from_file(p) for p in ZONE_FILES], identity="parse-test") as srv:
        yield srv


def _send_udp(addr, wires: list[bytes], expect: int, timeout: float = 2.0) -> dict[int, list[bytes]]:
    """Send a burst (message i carries ID i) and collect the replies by ID: until ``expect``
    have come (then 50 ms more for any extra one) or ``timeout``."""
    got: dict[int, list[bytes]] = {}
    n = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.connect(addr)
        for w in wires:
            try:
                s.send(w)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if n >= expect:
                left = min(left, 0.05)
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except (socket.timeout, ConnectionRefusedError):
                break
            if len(data) >= 2:
                got.setdefault(struct.unpack("!H", data[:2])[0], []).append(data)
                n += 1
    return got


def _send_tcp(addr, wires: list[bytes], timeout: float = 5.0) -> list[bytes]:
    """Pipeline the messages on one connection, half-close, read every reply."""
    out = []
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            try:
                chunk = s.recv(65535)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            buf += chunk
        while len(buf) >= 2:
            n = struct.unpack("!H", buf[:2])[0]
            if len(buf) < n + 2:
                break
            out.append(buf[2:n + 2])
            buf = buf[n + 2:]
    return out


@pytest.mark.timeout(300)
def test_over_udp_and_tcp(server):
    """A share of the stream over real sockets to `pop53 serve`: bursts of 200 over UDP and
    pipelines of 200 on one TCP connection each (message i of a burst carries ID i, so the
    replies are matched).  What the decision table answers gets exactly one reply (a UDP
    datagram lost on the loaded box is sent once more alone), what it drops gets none, and
    what goes to the control plane (NOTIFY, transfers, TSIG) may be answered or not."""
    from tests.support.refservers import udp_query
    responder = pop53.Responder(identity="parse-test")
    parse = MemoParse()
    gen = packets(SEED + 1)
    failures: list[str] = []
    sent = answered = resent = 0
    udp_share = WIRE_PACKETS * 3 // 4
    while sent < WIRE_PACKETS and len(failures) < 20:
        tcp = sent >= udp_share
        burst = []
        while len(burst) < 200:
            w = next(gen)
            if len(w) < 2 or (not tcp and len(w) > 4096):
                continue        # no ID to match; io.pxi drops datagrams over 4096 by design
            burst.append(struct.pack("!H", len(burst)) + w[2:])
        sent += len(burst)
        acts = [_core.answer(IMAGE.view, w, responder, tcp)[0] for w in burst]
        if tcp:
            by_id: dict[int, list[bytes]] = {}
            for r in _send_tcp(server.address, burst):
                by_id.setdefault(struct.unpack("!H", r[:2])[0], []).append(r)
        else:
            by_id = _send_udp(server.address, burst, acts.count(_core.ACTION_REPLY))
        for i, (w, act) in enumerate(zip(burst, acts)):
            rs = by_id.get(i, [])
            if not rs and not tcp and act == _core.ACTION_REPLY:
                r = udp_query(server.address, w, timeout=1.0)
                rs, resent = ([r] if r is not None else []), resent + 1
            try:
                if act == _core.ACTION_DROP:
                    assert not rs, "a dropped message was answered"
                elif act == _core.ACTION_REPLY:
                    assert len(rs) == 1, f"{len(rs)} replies"
                for r in rs:
                    check(w, r, tcp, responder, parse)
                    answered += 1
            except (AssertionError, dns.exception.DNSException, ValueError) as e:
                failures.append(_failure(sent, w, e) + (" tcp" if tcp else " udp"))
    assert not failures, "\n".join(failures)
    assert answered > WIRE_PACKETS // 3 and resent < WIRE_PACKETS // 100
    # and the server still answers
    q = dns.message.make_query("www.example.com.", "A").to_wire()
    for tcp in (False, True):
        r = server.query(q, tcp=tcp)
        assert r is not None and dns.message.from_wire(r).answer
    print(f"{sent} messages over UDP and TCP, {answered} replies, {resent} resent")


FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                max_examples=2000, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.timeout(120)
@FUZZ
@given(st.randoms(use_true_random=False), st.integers(0, 15), st.integers(0, 0x7FF),
       st.lists(st.sampled_from((0, 1, 2, 3, 65535)), min_size=4, max_size=4),
       st.booleans(), st.integers(0, 3))
def test_shrinkable(rng, opcode, flags, counts, tcp, which):
    """A structured message with the header drawn by hypothesis (opcode, flags, counts)."""
    wire = structured(rng)
    wire = wire[:2] + struct.pack("!H", (opcode << 11) | flags) + struct.pack("!4H", *counts) + wire[12:]
    responder = RESPONDERS[which]
    check(wire, pop53.answer(IMAGE, wire, CLIENT, tcp=tcp, responder=responder), tcp, responder)


def test_the_check_can_fail():
    """The property is not vacuous: a reply with a count one too high, or cut short, or an
    answer to a message that must be dropped, is caught; an UPDATE reply is read as QUERY."""
    parse = MemoParse()
    wire = SEEDS[0]
    good = pop53.answer(IMAGE, wire, CLIENT)
    check(wire, good, False, RESPONDERS[0], parse)
    bad_count = good[:6] + struct.pack("!H", struct.unpack("!H", good[6:8])[0] + 1) + good[8:]
    for bad in (bad_count, good[:-1]):
        with pytest.raises((AssertionError, dns.exception.DNSException)):
            check(wire, bad, False, RESPONDERS[0], parse)
    with pytest.raises(AssertionError):
        check(wire[:2] + bytes([wire[2] | 0x80]) + wire[3:], good, False, RESPONDERS[0])
    update = wire[:2] + bytes([(wire[2] & 0x87) | (5 << 3)]) + wire[3:]
    reply = pop53.answer(IMAGE, update, CLIENT)
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(reply)        # dnspython's UPDATE rules: no zone section here
    check(update, reply, False, RESPONDERS[0], parse)
