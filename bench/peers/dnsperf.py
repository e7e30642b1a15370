"""Running dnsperf (bounded in time) and reading its report; the readiness probe."""
from __future__ import annotations

import re
import resource
import socket
import subprocess
import time
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype


@dataclass
class Result:
    argv: list[str]
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    runtime: float = 0.0
    latency_avg: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0    # dnsperf's own utime+stime (rusage of the reaped child)
    ok: bool = False
    error: str = ""


_NUM = r"([0-9][0-9.]*)"


def parse(text: str, res: Result) -> Result:
    def grab(label: str, cast=float):
        m = re.search(re.escape(label) + r":\s+" + _NUM, text)
        return cast(m.group(1)) if m else None

    res.sent = grab("Queries sent", int) or 0
    res.completed = grab("Queries completed", int) or 0
    res.lost = grab("Queries lost", int) or 0
    res.qps = grab("Queries per second") or 0.0
    res.runtime = grab("Run time (s)") or 0.0
    res.latency_avg = grab("Average Latency (s)") or 0.0
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        for code, n in re.findall(r"([A-Z]+) ([0-9]+) \(", m.group(1)):
            res.rcodes[code] = int(n)
    res.ok = res.completed > 0 and "Statistics:" in text
    return res


def run(port: int, datafile, duration: float, *, clients: int, outstanding: int,
        threads: int = 1, cpu: int | None = None, max_qps: int | None = None,
        timeout: float = 2.0, edns: bool = False, binary: bool = False) -> Result:
    """One dnsperf run against 127.0.0.1:port, at most ``duration`` seconds (-l), optionally
    pinned to one CPU with taskset.  ``binary``: the data file holds wire-format queries, each
    after a 2-octet length (dnsperf -B), e.g. to carry a different ECS option per query.
    Never raises for a failed run: ``ok``/``error`` say why."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile),
            "-l", f"{duration:g}", "-c", str(clients), "-T", str(threads),
            "-q", str(outstanding), "-t", f"{timeout:g}"]
    if max_qps:
        argv += ["-Q", str(max_qps)]
    if edns:
        argv += ["-e"]
    if binary:
        argv += ["-B"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    res = Result(argv)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 30)
    except subprocess.TimeoutExpired:
        res.error = "dnsperf did not finish in time"
        return res
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    parse(p.stdout + p.stderr, res)
    if not res.ok:
        res.error = (p.stderr.strip() or p.stdout.strip())[-400:]
    return res


def _good(r: dns.message.Message) -> bool:
    return (r.rcode() == dns.rcode.NOERROR and bool(r.flags & dns.flags.AA)
            and any(rr.rdtype == dns.rdatatype.A for rr in r.answer))


def probe(port: int, qname: str, timeout: float = 0.5) -> bool:
    """True if 127.0.0.1:port answers ``qname`` A authoritatively with an answer (the zone is
    loaded and served), False on silence, an error rcode, or an empty answer."""
    q = dns.message.make_query(qname, dns.rdatatype.A)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q.to_wire(), ("127.0.0.1", port))
            wire, _ = s.recvfrom(65535)
            r = dns.message.from_wire(wire)
        except (OSError, dns.exception.DNSException):
            return False
    return r.id == q.id and _good(r)


def wait_ready(proc: subprocess.Popen, port: int, qname: str, limit: float,
               interval: float = 0.01, any_answer: bool = False) -> float:
    """Poll until the server answers ``qname``; returns the monotonic time the first good answer
    arrived.  Raises RuntimeError if the process exits or ``limit`` seconds pass first.

    A connected UDP socket gets ECONNREFUSED at once while nothing is bound to the port, so the
    load time is measured to about ``interval``, not to a receive timeout; an answer to an
    earlier probe that arrives late still counts (it answers for the zone when it arrives)."""
    deadline = time.monotonic() + limit
    sent: set[int] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.settimeout(interval)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with status {proc.returncode} before answering")
            q = dns.message.make_query(qname, dns.rdatatype.A)
            try:
                s.send(q.to_wire())
                sent.add(q.id)
            except ConnectionRefusedError:
                time.sleep(interval)
                continue
            end = time.monotonic() + interval
            while time.monotonic() < end:
                try:
                    wire = s.recv(65535)
                except ConnectionRefusedError:
                    time.sleep(interval)
                    break
                except TimeoutError:
                    break
                now = time.monotonic()
                try:
                    r = dns.message.from_wire(wire)
                except dns.exception.DNSException:
                    continue
                except Exception:  # an echo of our own query parses as a query, not a reply
                    continue
                if r.id in sent and (any_answer or _good(r)):
                    return now
    raise RuntimeError(f"did not answer {qname} within {limit:g} s")
