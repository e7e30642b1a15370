"""The ECMP / reuseport emulator checked against the running kernel (``pop53 ecmp verify``).

``verify`` builds a PoP in network namespaces (names ``p53e-<tag>-*``): a router
namespace with a multipath route for two anycast addresses per family over veth links to M
machine namespaces, a fixed ``fib_multipath_hash_seed``, and a client namespace.  For each
address family and hash policy it asks the router's kernel for N random flows with
``ip -batch`` ``route get ... iif`` (the forwarding decision), then sends N real UDP DNS
queries (``id.server. CH TXT``) through the router and reads which machine, and which worker
socket inside it, answered.  Each result is compared with :mod:`pop53.ecmp.model` (machine) and
:mod:`pop53.ecmp.reuseport` (worker).  The lab is always torn down.  The last line is
``N of M flows agree``; the exit status is 0 only if every flow agrees.

Every machine runs a small responder: W SO_REUSEPORT UDP sockets per family bound in order,
with :func:`pop53.ecmp.reuseport.attach_cbpf` on worker 0, answering ``m<i> w<j>``.  It stands in
for ``pop53 serve --identity`` (one function, :meth:`EcmpLab._start_machine`), which tells
the machine but not the worker.
"""
from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pop53.errors import Pop53Error

PREFIX = "p53e"
ANYCAST = {4: ["10.53.100.1", "10.53.100.2"], 6: ["fd53:100::1", "fd53:100::2"]}
CLIENT_NET = {4: "10.53.128.0/17", 6: "fd53:c8::/64"}
DEFAULT_SEED = 0x5053E  # any non-zero value; 0 would mean "random"
DEFAULT_FIELDS = 0x37   # policy 3: src/dst IP, IP proto, src/dst port


class LabError(Pop53Error):
    """The namespace lab could not be built or did not answer."""


def _run(cmd: list[str], *, input: str | None = None, timeout: float = 60) -> str:
    try:
        res = subprocess.run(cmd, input=input, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)}: timed out after {timeout}s") from exc
    if res.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def _pythonpath() -> str:
    """The children import pop53 exactly as this process did (installed, editable or from a
    source tree): hand them our module search path."""
    here = str(Path(os.path.abspath(__file__)).parents[2])
    return os.pathsep.join(dict.fromkeys([here, *(p for p in sys.path if p)]))


class EcmpLab:
    """Router + M machines + one client in network namespaces; use as a context manager."""

    def __init__(self, machines: int = 4, workers: int = 4, *, seed: int = DEFAULT_SEED,
                 tag: str | None = None, server: str = "standin"):
        if not 2 <= machines <= 64:
            raise LabError("--machines must be within 2..64")
        if not 1 <= workers <= 64:
            raise LabError("--workers must be within 1..64")
        if os.geteuid() != 0:
            raise LabError("the ECMP lab needs root (network namespaces)")
        if server not in ("standin", "pop53"):
            raise LabError("server must be 'standin' or 'pop53'")
        self.server = server
        self.machines = machines
        self.workers = workers
        self.seed = seed
        self.tag = tag or secrets.token_hex(3)
        self.router = f"{PREFIX}-{self.tag}-r"
        self.client = f"{PREFIX}-{self.tag}-c"
        self.machine_ns = [f"{PREFIX}-{self.tag}-m{i}" for i in range(machines)]
        self.weights = [1] * machines
        self.procs: list[subprocess.Popen] = []
        self.created: list[str] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="p53e-")

    # -- building -----------------------------------------------------------------------
    def __enter__(self) -> "EcmpLab":
        try:
            self.build()
            self.start_machines()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ns(self, ns: str, *args: str) -> str:
        return _run(["ip", "-n", ns, *args])

    def _sysctl(self, ns: str, **values) -> None:
        args = [f"{k.replace('__', '.')}={v}" for k, v in values.items()]
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *args])

    def build(self) -> None:
        for ns in [self.router, self.client, *self.machine_ns]:
            _run(["ip", "netns", "add", ns])
            self.created.append(ns)
            # No duplicate address detection: addresses are usable at once.
            self._sysctl(ns, net__ipv6__conf__all__accept_dad=0,
                         net__ipv6__conf__default__accept_dad=0)
            self._ns(ns, "link", "set", "lo", "up")
        r = self.router
        self._sysctl(r, net__ipv4__ip_forward=1, net__ipv6__conf__all__forwarding=1,
                     net__ipv4__conf__all__rp_filter=0, net__ipv4__conf__default__rp_filter=0,
                     net__ipv4__fib_multipath_hash_seed=self.seed)
        # Client link: router "c" <-> client "eth0".
        self._ns(r, "link", "add", "c", "type", "veth", "peer", "name", "eth0", "netns",
                 self.client)
        self._ns(r, "addr", "add", "10.53.0.1/24", "dev", "c")
        self._ns(r, "addr", "add", "fd53::1/64", "dev", "c", "nodad")
        self._ns(r, "link", "set", "c", "up")
        c = self.client
        self._ns(c, "addr", "add", "10.53.0.2/24", "dev", "eth0")
        self._ns(c, "addr", "add", "fd53::2/64", "dev", "eth0", "nodad")
        self._ns(c, "link", "set", "eth0", "up")
        self._ns(c, "route", "add", "default", "via", "10.53.0.1")
        self._ns(c, "-6", "route", "add", "default", "via", "fd53::1")
        # AnyIP: the whole client range is local, so flows can use any source address; the
        # flow label stays 0 so IPv6 policy 0 sees what `ip route get` sees.
        self._ns(c, "route", "add", "local", CLIENT_NET[4], "dev", "lo")
        self._ns(c, "-6", "route", "add", "local", CLIENT_NET[6], "dev", "lo")
        self._sysctl(c, net__ipv4__ip_nonlocal_bind=1, net__ipv6__ip_nonlocal_bind=1,
                     net__ipv6__auto_flowlabels=0)
        self._ns(r, "route", "add", CLIENT_NET[4], "via", "10.53.0.2", "dev", "c")
        self._ns(r, "-6", "route", "add", CLIENT_NET[6], "via", "fd53::2", "dev", "c")
        for i, m in enumerate(self.machine_ns):
            dev = f"m{i}"
            self._ns(r, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", m)
            self._ns(r, "addr", "add", f"10.53.{10 + i}.1/24", "dev", dev)
            self._ns(r, "addr", "add", f"fd53:0:0:{10 + i:x}::1/64", "dev", dev, "nodad")
            self._ns(r, "link", "set", dev, "up")
            self._ns(m, "addr", "add", f"10.53.{10 + i}.2/24", "dev", "eth0")
            self._ns(m, "addr", "add", f"fd53:0:0:{10 + i:x}::2/64", "dev", "eth0", "nodad")
            self._ns(m, "link", "set", "eth0", "up")
            for a in ANYCAST[4]:
                self._ns(m, "addr", "add", f"{a}/32", "dev", "lo")
            for a in ANYCAST[6]:
                self._ns(m, "addr", "add", f"{a}/128", "dev", "lo", "nodad")
            self._ns(m, "route", "add", "default", "via", f"10.53.{10 + i}.1")
            self._ns(m, "-6", "route", "add", "default", "via", f"fd53:0:0:{10 + i:x}::1")
        for a in ANYCAST[4]:
            hops = []
            for i in range(self.machines):
                hops += ["nexthop", "via", f"10.53.{10 + i}.2", "dev", f"m{i}"]
            self._ns(r, "route", "add", f"{a}/32", *hops)
        for a in ANYCAST[6]:
            hops = []
            for i in range(self.machines):
                hops += ["nexthop", "via", f"fd53:0:0:{10 + i:x}::2", "dev", f"m{i}"]
            self._ns(r, "-6", "route", "add", f"{a}/128", *hops)
        self.check_route_order()

    def check_route_order(self) -> None:
        """The emulator numbers next hops in route order; make sure the kernel's is m0..mN."""
        for fam in (4, 6):
            out = json.loads(self._ns(self.router, "-j", f"-{fam}", "route", "show",
                                      ANYCAST[fam][0]))
            devs = [nh["dev"] for nh in out[0].get("nexthops", [])]
            if devs != [f"m{i}" for i, w in enumerate(self.weights) if w]:
                raise LabError(f"IPv{fam} multipath route has next hops {devs}")

    def set_weights(self, weights) -> None:
        """Replace both families' multipath routes: next hop m<i> gets weight weights[i];
        weight 0 leaves it out (a machine that withdrew its route)."""
        if len(weights) != self.machines or any(w < 0 or w > 256 for w in weights) \
                or not any(weights):
            raise LabError("need one weight in 0..256 per machine, at least one non-zero")
        for fam in (4, 6):
            for a in ANYCAST[fam]:
                hops = []
                for i, w in enumerate(weights):
                    if w:
                        gw = f"10.53.{10 + i}.2" if fam == 4 else f"fd53:0:0:{10 + i:x}::2"
                        hops += ["nexthop", "via", gw, "dev", f"m{i}", "weight", str(w)]
                if fam == 6:
                    # IPv6 multipath routes are sibling lists: replace = delete + add.
                    self._ns(self.router, "-6", "route", "del", f"{a}/128")
                    self._ns(self.router, "-6", "route", "add", f"{a}/128", *hops)
                else:
                    self._ns(self.router, "route", "replace", f"{a}/32", *hops)
        self.weights = list(weights)
        self.check_route_order()

    def set_policy(self, family: int, policy: int, fields: int = DEFAULT_FIELDS) -> None:
        v = "ipv4" if family == 4 else "ipv6"
        self._sysctl(self.router, **{f"net__{v}__fib_multipath_hash_policy": policy,
                                     f"net__{v}__fib_multipath_hash_fields": fields})

    def _spawn(self, ns: str, func: str, *args: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=_pythonpath())
        code = f"from pop53.ecmp.verify import {func}; {func}()"
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        self.procs.append(proc)
        return proc

    def _start_machine(self, index: int) -> subprocess.Popen:
        """Start the answering server of machine ``index``: ``pop53 serve --identity m<i>``
        (answers id.server with ``m<i>``), or the stand-in, which answers ``m<i> w<j>`` and
        so also names the worker socket."""
        if self.server == "pop53":
            listen = [a for fam in (4, 6) for addr in ANYCAST[fam]
                      for a in ("--listen", f"{addr}:53" if fam == 4 else f"[{addr}]:53")]
            env = dict(os.environ, PYTHONPATH=_pythonpath())
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.machine_ns[index], sys.executable, "-m", "pop53",
                 "serve", "--example", "--identity", f"m{index}", "--workers",
                 str(self.workers), *listen],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            self.procs.append(proc)
            return proc
        return self._spawn(self.machine_ns[index], "_responder_main", f"m{index}",
                           str(self.workers), ",".join(ANYCAST[4] + ANYCAST[6]))

    def _listening(self, index: int) -> bool:
        out = _run(["ip", "netns", "exec", self.machine_ns[index], "ss", "-Hlun",
                    "sport = :53"])
        return sum(1 for line in out.splitlines() if line.strip()) >= 4

    def start_machines(self, timeout: float = 20) -> None:
        procs = [self._start_machine(i) for i in range(self.machines)]
        deadline = time.monotonic() + timeout
        if self.server == "pop53":
            for i, p in enumerate(procs):
                while not self._listening(i):
                    if p.poll() is not None or time.monotonic() > deadline:
                        err = p.stderr.read() if p.poll() is not None else "timeout"
                        raise LabError(f"pop53 serve in m{i} did not start: {err.strip()}")
                    time.sleep(0.1)
            return
        for i, p in enumerate(procs):
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = p.stdout.readline() if ready else ""
            if line.strip() != "ready":
                err = p.stderr.read() if p.poll() is not None else ""
                raise LabError(f"machine m{i} did not start: {line.strip()} {err.strip()}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        self.procs.clear()
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()
        self.tmp.cleanup()

    # -- asking the kernel --------------------------------------------------------------
    def route_get(self, flows) -> list[int]:
        """Next-hop index (m<i>) the router's kernel picks per flow, from ``ip route get``
        with ``iif c`` (the forwarding path), in bulk with ``ip -batch``."""
        srcs, dsts = flows.addresses("src"), flows.addresses("dst")
        lines = [f"route get {d} from {s} iif c ipproto udp sport {sp} dport {dp}"
                 for s, d, sp, dp in zip(srcs, dsts, flows.sport.tolist(),
                                         flows.dport.tolist())]
        path = Path(self.tmp.name) / "batch.txt"
        path.write_text("\n".join(lines) + "\n")
        out = _run(["ip", "-n", self.router, "-j", "-batch", str(path)], timeout=300)
        result = []
        for line in out.splitlines():
            line = line.strip()
            if not line:
                continue
            for entry in json.loads(line):
                dev = entry.get("dev", "")
                result.append(int(dev[1:]) if dev.startswith("m") else -1)
        if len(result) != len(lines):
            raise LabError(f"ip route get answered {len(result)} of {len(lines)} lookups")
        return result

    def send_queries(self, flows, timeout: float = 600) -> list[tuple[int, int]]:
        """Send one DNS query per flow from the client namespace; returns (machine, worker)
        that answered, (-1, -1) for no answer."""
        req = Path(self.tmp.name) / "flows.json"
        req.write_text(json.dumps({
            "src": flows.addresses("src"), "dst": flows.addresses("dst"),
            "sport": flows.sport.tolist(), "dport": flows.dport.tolist()}))
        out_path = Path(self.tmp.name) / "answers.json"
        proc = self._spawn(self.client, "_client_main", str(req), str(out_path))
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise LabError(f"client did not finish within {timeout}s")
        if proc.returncode != 0:
            raise LabError(f"client failed: {err.strip()}")
        answers = json.loads(out_path.read_text())
        res = []
        for a in answers:
            try:
                parts = a.split()
                res.append((int(parts[0][1:]),
                            int(parts[1][1:]) if len(parts) > 1 else -1))
            except (AttributeError, ValueError, IndexError):
                res.append((-1, -1))
        return res


# --------------------------------------------------------------------------------------
# Processes inside the namespaces (started with `ip netns exec ... python -c`)
# --------------------------------------------------------------------------------------

MAX_LIFETIME = 900.0  # a responder never outlives a lab by much, even if orphaned


def _responder_main() -> None:
    """Machine stand-in: W reuseport sockets per family on port 53, cBPF on worker 0."""
    import dns.message
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    from pop53.ecmp.reuseport import attach_cbpf

    name, workers, _addrs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    groups = []
    for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        socks = []
        for _ in range(workers):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_addr, 53))
            socks.append(s)
        attach_cbpf(socks[0], workers)   # after all workers are bound, in order
        groups.append(socks)
    where = {s: j for socks in groups for j, s in enumerate(socks)}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", flush=True)
    end = time.monotonic() + MAX_LIFETIME
    while not stop and time.monotonic() < end:
        try:
            ready, _, _ = select.select(list(where), [], [], 0.5)
        except InterruptedError:
            continue
        for s in ready:
            try:
                data, peer = s.recvfrom(4096)
                query = dns.message.from_wire(data)
            except Exception:  # malformed input is dropped, never fatal
                continue
            resp = dns.message.make_response(query)
            if query.question:
                q = query.question[0]
                resp.answer.append(dns.rrset.from_text(q.name, 0, dns.rdataclass.CH,
                                                       dns.rdatatype.TXT,
                                                       f'"{name} w{where[s]}"'))
            s.sendto(resp.to_wire(), peer)


def _client_main() -> None:
    """Send ``id.server. CH TXT`` from each flow's (src, sport); record the TXT answer."""
    import dns.message
    import dns.rdataclass
    import dns.rdatatype

    req = json.loads(Path(sys.argv[1]).read_text())
    n = len(req["src"])
    answers: list[str | None] = [None] * n
    batch = 256
    for attempt in range(3):
        todo = [i for i in range(n) if answers[i] is None]
        if not todo:
            break
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            socks = {}
            for i in chunk:
                fam = socket.AF_INET6 if ":" in req["src"][i] else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_DGRAM)
                try:
                    s.bind((req["src"][i], req["sport"][i]))
                except OSError:
                    s.close()
                    continue
                q = dns.message.make_query("id.server.", dns.rdatatype.TXT,
                                           dns.rdataclass.CH)
                s.sendto(q.to_wire(), (req["dst"][i], req["dport"][i]))
                socks[s] = (i, q)
            deadline = time.monotonic() + 2.0 * (attempt + 1)
            while socks and time.monotonic() < deadline:
                ready, _, _ = select.select(list(socks), [], [],
                                            max(0.0, deadline - time.monotonic()))
                for s in ready:
                    i, q = socks.pop(s)
                    try:
                        resp = dns.message.from_wire(s.recv(4096))
                        if resp.id == q.id and resp.answer:
                            answers[i] = b"".join(resp.answer[0][0].strings).decode()
                    except Exception:
                        pass
                    s.close()
            for s in socks:
                s.close()
    Path(sys.argv[2]).write_text(json.dumps(answers))



def unique_flows(n: int, family: int, rng):
    """``n`` random flows from the client range to the anycast addresses, each with its own
    (source address, source port) so every query gets its own socket."""
    import numpy as np

    from pop53.ecmp.flows import random_flows

    batch = random_flows(n + n // 50 + 16, family=family, src_net=CLIENT_NET[family],
                         dst=ANYCAST[family], rng=rng)
    key = np.concatenate([batch.src, batch.sport.view(np.uint8).reshape(-1, 2)], 1)
    _, first = np.unique(key, axis=0, return_index=True)
    keep = np.sort(first)[:n]
    if len(keep) < n:
        raise LabError("could not draw enough distinct flows")
    return batch.subset(keep)


def verify(*, flows: int, machines: int, workers: int, policies=(0, 1, 3), families=(4, 6),
           fields: int = DEFAULT_FIELDS, seed: int = DEFAULT_SEED, packets: bool = True,
           weights=None, server: str = "standin", rng=None,
           out=print) -> tuple[int, int]:
    """Run the comparison; returns (agreeing, total) over every check."""
    import numpy as np

    from pop53.ecmp import reuseport
    from pop53.ecmp.model import kernel_select

    if flows <= 0:
        raise LabError("--flows must be positive")
    gen = np.random.default_rng(rng)
    agree = total = 0
    with EcmpLab(machines, workers, seed=seed, server=server) as lab:
        out(f"lab {lab.tag}: router {lab.router}, {machines} machines x {workers} workers, "
            f"seed {seed:#x}, answered by {'pop53 serve' if server == 'pop53' else 'stand-in'}")
        if weights is not None:
            lab.set_weights(list(weights))
            out(f"next-hop weights {list(weights)} (0 = withdrawn)")
        nh = lab.weights
        for fam in families:
            batch = unique_flows(flows, fam, gen)
            workers_pred = reuseport.predict_socket_flows(batch, workers)
            for pol in policies:
                lab.set_policy(fam, pol, fields)
                label = f"IPv{fam} policy {pol}" + (f" fields {fields:#x}" if pol == 3 else "")
                # `ip route get iif` hashes an skb for IPv4 but a flow for IPv6.
                pred = kernel_select(batch, nh, policy=pol, seed=seed,
                                     fields=fields, forwarded=(fam == 4))
                got = np.array(lab.route_get(batch))
                ok = int((pred == got).sum())
                out(f"{label}: ip route get: {ok} of {len(batch)} agree")
                agree += ok
                total += len(batch)
                if not packets:
                    continue
                pred = kernel_select(batch, nh, policy=pol, seed=seed,
                                     fields=fields, forwarded=True)
                ans = np.array(lab.send_queries(batch)).reshape(-1, 2)
                answered = int((ans[:, 0] >= 0).sum())
                ok_m = int((ans[:, 0] == pred).sum())
                if server == "pop53":   # pop53 names the machine, not the worker
                    out(f"{label}: packets: {answered} answered by pop53, machine {ok_m} of "
                        f"{len(batch)} agree")
                    agree += ok_m
                    total += len(batch)
                    continue
                ok_w = int(((ans[:, 0] == pred) & (ans[:, 1] == workers_pred)).sum())
                out(f"{label}: packets: {answered} answered, machine {ok_m} of {len(batch)} "
                    f"agree, machine+worker {ok_w} of {len(batch)} agree")
                agree += ok_w
                total += len(batch)
    return agree, total

