"""The kernel stage of query scoring (issue 13): known resolvers' datagrams go to sockets of
their own, so a flood filling the normal sockets' queues cannot delay or drop them there.

With `[scoring] steer = true` each listen address gets a second block of SO_REUSEPORT sockets,
one per worker (sockets W..2W-1 of the group, each served by its own worker thread), and the
group gets a reuseport program that returns an index in the second block for a known source:
the eBPF program with LPM-trie maps of every known IPv4 /24 and IPv6 /56 (pop53.scoring.ebpf)
when the kernel allows it; else classic BPF, pop53.ecmp.reuseport's program with a prologue
(when the datagram is IPv4 and its source /24 is known, the socket index base is W, else 0; the
flow hash then picks the socket within the block), which compares one /24 per two instructions
within the 4,096 instruction limit, so at most MAX_V4 /24s and no IPv6.  Each worker drains its
priority socket before every batch of its normal one (Worker.set_priority).  The program is
re-attached whenever the known table changes."""
from __future__ import annotations

import logging

from pop53.ecmp import reuseport as rp

log = logging.getLogger("pop53.scoring")

MAX_V4 = 1800
_JA = rp._JMP | 0x00                  # BPF_JA: pc += k


def prologue(base: int, v4_keys) -> list:
    """Instructions leaving `base` in M[1] for an IPv4 datagram from a known /24 (keys: the
    address's top 24 bits), 0 otherwise, then falling through."""
    keys = sorted(v4_keys)[:MAX_V4]
    ins = rp._ins
    head = [
        ins(rp._LD | rp._IMM, 0), ins(rp._ST, 1),                       # M[1] = 0
        ins(rp._LD | rp._B | rp._ABS, rp._SKF_NET_OFF),
        ins(rp._ALU | rp._RSH | rp._K, 4),
        ins(rp._JMP | rp._JEQ | rp._K, 4, 1, 0),                        # IPv4?
    ]
    # layout: head, JA end, load+mask, pairs (JEQ key; JA set), JA end, set (2), end
    n_pairs = 2 * len(keys)
    body = [ins(rp._LD | rp._W | rp._ABS, rp._SKF_NET_OFF + 12), ins(rp._ALU | rp._AND | rp._K, 0xFFFFFF00)]
    set_at = len(head) + 1 + len(body) + n_pairs + 1
    end_at = set_at + 2
    prog = head + [ins(_JA, end_at - (len(head) + 1))] + body
    for key in keys:
        prog.append(ins(rp._JMP | rp._JEQ | rp._K, key << 8, 0, 1))
        prog.append(ins(_JA, set_at - (len(prog) + 1)))
    prog.append(ins(_JA, end_at - (len(prog) + 1)))
    prog += [ins(rp._LD | rp._IMM, base), ins(rp._ST, 1)]
    assert len(prog) == end_at
    return prog


def attach(sock, workers: int, v4_keys, v6_keys=(), trust_fd: int = -1, keys_fd: int = -1,
           wake: tuple[int, int] | None = None, names_fd: int = -1) -> tuple[str, bool]:
    """Attach the steering program to the group of 2 x `workers` sockets `sock` belongs to: the
    eBPF LPM-trie program (pop53.scoring.ebpf: every known /24 and /56) when the kernel allows
    it, else classic BPF (at most MAX_V4 IPv4 /24s, IPv6 not steered) with a warning saying
    so.  With `trust_fd` (ebpf.TrustMap) the eBPF program steers only the trusted addresses of a
    prefix that went over its rate; with `keys_fd` (ebpf.CookieKeys) an address that has sent a
    valid server cookie only, and always, when it sends one again, known or not; with `wake`
    (ebpf.WakeMap's fd, the group's first worker slot) it counts each worker's priority
    datagrams and sends them to the worker's normal socket while it waits there; with
    `names_fd` (ebpf_relay.NameFilter) an address relaying water torture only with a name of
    a served zone.  A kernel that
    refuses the cookie check (before 6.1: no bpf_ktime_get_tai_ns) or the wake words (before
    5.12: no atomic fetch) gets the program without it and a warning.  Returns ("ebpf" or
    "cbpf", whether the wake words are kept)."""
    from pop53.scoring import ebpf
    # everything, then without the cookie check, then without the wake words, then neither,
    # then without the relay check either
    tries = list(dict.fromkeys([(keys_fd, wake, names_fd), (-1, wake, names_fd),
                                (keys_fd, None, names_fd), (-1, None, names_fd), (-1, None, -1)]))
    last = None
    for keys, wk, names in tries:
        try:
            ebpf.attach(sock, workers, v4_keys, v6_keys, trust_fd, keys, wk, names)
        except (ebpf.EbpfUnavailable, RuntimeError) as exc:
            last = exc
            continue
        if names_fd >= 0 and names < 0:
            _warn_once("names", "the kernel refused the steering program's relay check (%s): "
                       "relays' random names reach the priority sockets", _why(last))
        if keys_fd >= 0 and keys < 0:
            _warn_once("cookies", "the kernel refused the steering program's server-cookie "
                       "check (%s): cookie senders are steered by their prefix alone", _why(last))
        if wake is not None and wk is None:
            _warn_once("wake", "the kernel refused the steering program's wake words (%s): "
                       "workers poll both sockets", _why(last))
        return "ebpf", wk is not None
    _warn_once("ebpf", "eBPF steering not allowed (%s): classic BPF steers at most %d known "
               "IPv4 /24s and no IPv6", last, MAX_V4)
    if len(v4_keys) > MAX_V4:
        log.warning("%d known /24s: only the first %d are steered to the priority sockets "
                    "(classic BPF limit)", len(v4_keys), MAX_V4)
    rp.attach_cbpf(sock, 2 * workers, rp.build_program(workers, prologue(workers, v4_keys)))
    return "cbpf", False


def _why(exc) -> str:
    """The verifier's last word on a refused program (its log's closing statistics left out)."""
    why = [line for line in str(exc).splitlines()
           if line.strip() and not line.startswith(("processed ", "verification time"))]
    return why[-1] if why else str(exc)


_warned: set[str] = set()


def _warn_once(what: str, text: str, *args) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(text, *args)
