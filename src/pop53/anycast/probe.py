"""The monitoring agent's probes (paper §4.2.1): a query suite against the local nameserver that
finds missing, wrong and slow answers, and the staleness sources that find answers from stale
data (§4.2.2)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

if TYPE_CHECKING:
    from pop53.anycast.agent_config import AgentConfig, Case, StalenessConfig


FAILURE_KINDS = ("missing", "wrong", "slow", "stale")


# -- staleness sources (pluggable) -------------------------------------------------------------

class StalenessSource(Protocol):
    """Anything that can tell how old each zone's data is (seconds; None = unknown/never)."""

    def ages(self) -> dict[str, float | None]: ...


class NoStaleness:
    def ages(self) -> dict[str, float | None]:
        return {}


class FileMtimeStaleness:
    """Age = now - mtime of a file per zone (the zone file, the compiled image, a stamp file that
    the metadata pipeline touches on every successful update)."""

    def __init__(self, files: dict[str, str]):
        self.files = {(z if z.endswith(".") else z + "."): p for z, p in files.items()}

    def ages(self) -> dict[str, float | None]:
        now = time.time()
        out: dict[str, float | None] = {}
        for z, p in self.files.items():
            try:
                out[z] = max(0.0, now - os.stat(p).st_mtime)
            except OSError:
                out[z] = None
        return out


class XfrStatusStaleness:
    """The transfer engine's state file (`pop53.anycast.staleness`, ``xfr-status.json``): per-zone age.
    A file that is itself not being rewritten makes every zone unknown (the engine is stuck)."""

    def __init__(self, path: str, max_file_age: float = 10.0):
        self.path = path
        self.max_file_age = max_file_age

    def ages(self) -> dict[str, float | None]:
        from pop53.anycast.staleness import read_state

        try:
            st = read_state(self.path)
        except (OSError, ValueError):
            return {"*": None}
        now = time.time()
        zones = st.get("zones") or {}
        if now - float(st.get("time", 0)) > self.max_file_age:
            return {z: None for z in zones} or {"*": None}
        if st.get("role") == "delayed":
            return {}  # input-delayed machines are exempt (§4.2.3)
        out: dict[str, float | None] = {}
        for z, info in zones.items():
            age = info.get("age")
            out[z] = None if age is None else float(age)
        return out


STALENESS_SOURCES: dict[str, Callable[[StalenessConfig], StalenessSource]] = {
    "none": lambda c: NoStaleness(),
    "file-mtime": lambda c: FileMtimeStaleness(c.files),
    "xfr-status": lambda c: XfrStatusStaleness(c.path or "xfr-status.json"),
}


def register_staleness_source(name: str, factory: Callable[[StalenessConfig], StalenessSource]
                              ) -> None:
    """Plug in another source of zone age (for example a metrics endpoint)."""
    STALENESS_SOURCES[name] = factory


# -- probing -----------------------------------------------------------------------------------

@dataclass
class Failure:
    kind: str            # one of FAILURE_KINDS
    what: str            # "udp SOA pop53.lab."
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}: {self.detail}"


@dataclass
class ProbeResult:
    time: float
    ok: bool
    failures: list[Failure]
    queries: int
    max_rtt_ms: float


class Prober:
    """One round of the test suite against the local server (paper §4.2.1)."""

    def __init__(self, cfg: AgentConfig, staleness: StalenessSource | None = None):
        self.cfg = cfg
        self.host, self.port = cfg.server_addr()
        sc = cfg.staleness
        self.staleness = staleness or STALENESS_SOURCES[sc.source](sc)
        # (label, source, max_age): the main one and every listed one; stale if any is
        self.sources: list[tuple[str, StalenessSource, float]] = [("", self.staleness, sc.max_age)]
        for sub in sc.sources:
            label = sub.path or ", ".join(sorted(sub.files.values())) or sub.source
            self.sources.append((label, STALENESS_SOURCES[sub.source](sub), sub.max_age))

    def _query(self, proto: str, qname: str, qtype: str) -> tuple[dns.message.Message | None,
                                                                  float, str | None]:
        q = dns.message.make_query(qname, qtype, use_edns=0)
        t0 = time.monotonic()
        try:
            if proto == "udp":
                r = dns.query.udp(q, self.host, port=self.port, timeout=self.cfg.timeout,
                                  ignore_unexpected=True)
            else:
                r = dns.query.tcp(q, self.host, port=self.port, timeout=self.cfg.timeout)
        except dns.exception.Timeout:
            return None, (time.monotonic() - t0) * 1000, "no answer (timeout)"
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            return None, (time.monotonic() - t0) * 1000, f"no answer ({exc.__class__.__name__}: {exc})"
        return r, (time.monotonic() - t0) * 1000, None

    def run(self) -> ProbeResult:
        fails: list[Failure] = []
        n = 0
        max_rtt = 0.0
        protos = [p for p, on in (("udp", self.cfg.udp), ("tcp", self.cfg.tcp)) if on]
        checks: list[tuple[str, str, Case | None]] = [(z, "SOA", None) for z in self.cfg.zones]
        checks += [(c.qname, c.qtype, c) for c in self.cfg.cases]
        for proto in protos:
            for k, (qname, qtype, case) in enumerate(checks):
                what = f"{proto} {qtype} {qname}"
                r, rtt, err = self._query(proto, qname, qtype)
                n += 1
                max_rtt = max(max_rtt, rtt)
                if r is None:
                    left = len(checks) - k - 1
                    # A server that does not answer one query over this transport will not
                    # answer the next either; waiting out every timeout would only delay the
                    # suspension decision by len(checks) x timeout per round.
                    fails.append(Failure("missing", what, (err or "no answer") +
                                         (f"; {left} more {proto} checks skipped" if left else "")))
                    break
                if rtt > self.cfg.slow_ms:
                    fails.append(Failure("slow", what, f"{rtt:.0f} ms > {self.cfg.slow_ms:.0f} ms"))
                problem = self._check(r, qname, qtype, case)
                if problem:
                    fails.append(Failure("wrong", what, problem))
        for label, source, max_age in self.sources:
            if max_age > 0:
                fails += self._stale(label, source, max_age)
        return ProbeResult(time.time(), not fails, fails, n, max_rtt)

    @staticmethod
    def _stale(label: str, source: StalenessSource, max_age: float) -> list[Failure]:
        out = []
        for zone, age in sorted(source.ages().items()):
            what = f"{zone} ({label})" if label else zone
            if age is None:
                out.append(Failure("stale", what, "age unknown (no data or source silent)"))
            elif age > max_age:
                out.append(Failure("stale", what, f"data is {age:.1f} s old > {max_age:g} s"))
        return out

    @staticmethod
    def _check(r: dns.message.Message, qname: str, qtype: str, case: Case | None) -> str | None:
        want_rcode = dns.rcode.from_text(case.rcode) if case else dns.rcode.NOERROR
        if r.rcode() != want_rcode:
            return f"rcode {dns.rcode.to_text(r.rcode())}, expected {dns.rcode.to_text(want_rcode)}"
        name = dns.name.from_text(qname)
        rdtype = dns.rdatatype.from_text(qtype)
        if case is None:
            # RFC 1034 §4.3.2 / RFC 1035 §4.1.1: the zone's own SOA comes with AA set.
            if not r.flags & dns.flags.AA:
                return "SOA answer without AA (not authoritative for the zone)"
            if not any(rr.name == name and rr.rdtype == dns.rdatatype.SOA for rr in r.answer):
                return "no SOA record in the answer section"
            return None
        if case.expect is None:
            return None
        got = sorted(rd.to_text() for rr in r.answer if rr.name == name and rr.rdtype == rdtype
                     for rd in rr)
        want = sorted(case.expect)
        if got != want:
            return f"answer {got}, expected {want}"
        return None


