"""Helpers for the xfr tests: free loopback ports, real Knot DNS daemons, a scriptable primary,
a publish recorder.  (A uniquely named module: every test directory has its own conftest.)"""
from __future__ import annotations

import base64
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path


try:
    import pop53  # noqa: F401
except Exception:  # pragma: no cover - the data plane is being built in parallel
    # pop53.xfr does not need the compiled data plane; when the package's __init__ cannot load
    # it yet, load the package without its __init__ so the engine can still be tested.
    import types

    for mod in [m for m in sys.modules if m == "pop53" or m.startswith("pop53.")]:
        del sys.modules[mod]
    src = Path(__file__).resolve().parents[2] / "src" / "pop53"
    pkg = types.ModuleType("pop53")
    pkg.__path__ = [str(src)]
    sys.modules["pop53"] = pkg

import dns.flags
import dns.message
import dns.query
import dns.rrset
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring

SECRET = base64.b64encode(b"pop53-xfr-test-secret-0123456789").decode()
OTHER_SECRET = base64.b64encode(b"some-other-secret-abcdefghijklmn").decode()
KEYNAME = "xfr."

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
KNOTC = shutil.which("knotc") or "/usr/sbin/knotc"


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (bind 0, read, close)."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise RuntimeError("no free port")


def tsig_key(secret: str = SECRET, name: str = KEYNAME) -> dns.tsig.Key:
    return dns.tsig.Key(name, secret, dns.tsig.HMAC_SHA256)


def soa_serial(port: int, zone: str, key: dns.tsig.Key | None = None, timeout: float = 2.0) -> int | None:
    q = dns.message.make_query(zone, "SOA")
    if key is not None:
        q.use_tsig(key)
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    except Exception:
        return None
    for rr in r.answer:
        if rr.rdtype == dns.rdatatype.SOA:
            return rr[0].serial
    return None


def query(port: int, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


ZONE_TEXT = """\
$ORIGIN {origin}
$TTL 300
@   IN SOA ns1.{origin} hostmaster.{origin} {serial} {refresh} {retry} {expire} 60
@   IN NS ns1.{origin}
ns1 IN A 127.0.0.1
www IN A 192.0.2.1
mail IN MX 10 www.{origin}
"""


def zone_text(origin="example.org.", serial=1, refresh=3600, retry=600, expire=86400, extra=""):
    return ZONE_TEXT.format(origin=origin, serial=serial, refresh=refresh, retry=retry,
                            expire=expire) + extra


class Knot:
    """One knotd on 127.0.0.1:<port>, configured from a YAML text, stopped by PID."""

    def __init__(self, root: Path, name: str):
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "db").mkdir(exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "knot.conf"
        self.sock = self.dir / "knot.sock"
        self.log = self.dir / "knot.log"
        self.proc: subprocess.Popen | None = None

    def write_conf(self, body: str) -> None:
        head = textwrap.dedent(f"""\
            server:
                rundir: "{self.dir}"
                listen: 127.0.0.1@{self.port}
                pidfile: "{self.dir}/knot.pid"
                tcp-reuseport: on
            database:
                storage: "{self.dir}/db"
            control:
                listen: "{self.sock}"
            log:
              - target: "{self.log}"
                any: debug
            key:
              - id: {KEYNAME}
                algorithm: hmac-sha256
                secret: {SECRET}
            """)
        self.conf.write_text(head + textwrap.dedent(body))

    def start(self) -> None:
        self.proc = subprocess.Popen([KNOTD, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "knotd.stderr", "w"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd exited: {(self.dir / 'knotd.stderr').read_text()}"
                                   f"{self.log.read_text() if self.log.exists() else ''}")
            if self.sock.exists() and self.knotc("status", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("knotd did not come up")

    def knotc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([KNOTC, "-c", str(self.conf), "-s", str(self.sock), "-t", "10", *args],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"knotc {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def change(self, zone: str, *sets: tuple[str, ...], unsets: tuple = ()) -> None:
        """One transaction on the primary: Knot bumps the serial and keeps the diff in its
        journal, so secondaries get IXFR."""
        self.knotc("zone-begin", zone)
        try:
            for s in unsets:
                self.knotc("zone-unset", zone, *s)
            for s in sets:
                self.knotc("zone-set", zone, *s)
            self.knotc("zone-commit", zone)
        except Exception:
            self.knotc("zone-abort", zone, check=False)
            raise

    def stop(self) -> None:
        stop_daemon(self.proc)
        self.proc = None


def stop_daemon(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM to the daemon a test started (by its PID), SIGKILL after `grace` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Recorder:
    """A publish callback that keeps what was published (and can be told to refuse)."""

    def __init__(self):
        self.versions: dict[str, object] = {}
        self.calls: list[tuple[str, int | None]] = []
        self.refuse_serials: set[int] = set()

    def __call__(self, name, version):
        from pop53.errors import ImageError

        if version is not None and version.serial in self.refuse_serials:
            raise ImageError(f"test refuses serial {version.serial}")
        self.versions[name] = version
        self.calls.append((name, version.serial if version is not None else None))

    def serial(self, name):
        v = self.versions.get(name)
        return v.serial if v is not None else None

    def rdata(self, name, owner, rdtype):
        import dns.name

        v = self.versions.get(name)
        if v is None:
            return None
        from pop53.xfr.recversion import dns_zone
        node = dns_zone(v.zone).nodes.get(dns.name.from_text(owner))
        if node is None:
            return None
        rds = node.get_rdataset(1, dns.rdatatype.from_text(rdtype))
        return sorted(r.to_text() for r in rds) if rds else None


# ------------------------------------------------------------------------------------------------
# A scriptable primary: real sockets, real TSIG, but it can serve anything, including bad data.

class FakePrimary:
    """UDP (SOA) + TCP (AXFR/IXFR) on 127.0.0.1:<port>, signing with `key`.  `versions` maps
    serial -> dnspython zone (absolute names); `current` is the serial served.  `xfr_hook(query)`
    may return a list of wire messages to send instead (malformed transfers)."""

    def __init__(self, key: dns.tsig.Key | None = None):
        import threading

        self.key = key
        self.keyring = {key.name: key} if key else None
        self.versions: dict[int, object] = {}
        self.current: int | None = None
        self.xfr_hook = None
        self.ixfr = True
        self.requests: list[str] = []
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.udp.settimeout(0.2)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(8)
        self.tcp.settimeout(0.2)
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._udp_loop, daemon=True),
                        threading.Thread(target=self._tcp_loop, daemon=True)]
        for t in self.threads:
            t.start()

    def set(self, zone) -> None:
        from pop53.xfr import journal

        s = journal.serial_of(zone)
        self.versions[s] = zone
        self.current = s

    def _soa(self):
        from pop53.xfr import journal

        return journal.soa_of(self.versions[self.current])

    def _udp_loop(self):
        while not self._stop.is_set():
            try:
                wire, addr = self.udp.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            try:
                q = dns.message.from_wire(wire, keyring=self.keyring)
            except Exception:
                continue
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            if self.current is not None and q.question and q.question[0].rdtype == dns.rdatatype.SOA:
                name, ttl, rd = self._soa()
                r.find_rrset(r.answer, name, 1, dns.rdatatype.SOA, create=True).add(rd, ttl)
            self.udp.sendto(r.to_wire(), addr)

    def _tcp_loop(self):
        import struct

        while not self._stop.is_set():
            try:
                c, _ = self.tcp.accept()
            except (socket.timeout, OSError):
                continue
            c.settimeout(5)
            try:
                n = struct.unpack("!H", c.recv(2, socket.MSG_WAITALL))[0]
                wire = c.recv(n, socket.MSG_WAITALL)
                q = dns.message.from_wire(wire, keyring=self.keyring)
                self.requests.append(dns.rdatatype.to_text(q.question[0].rdtype))
                out = self.xfr_hook(q) if self.xfr_hook else None
                if out is None:
                    out = self.serve_xfr(q)
                for m in out:
                    c.sendall(struct.pack("!H", len(m)) + m)
            except Exception:
                pass
            finally:
                c.close()

    def serve_xfr(self, q, rrs=None):
        """A correct transfer of the current version (IXFR as one diff when possible)."""
        from pop53.xfr import journal

        zone = self.versions[self.current]
        qtype = q.question[0].rdtype
        if rrs is None:
            soa = journal.soa_of(zone)
            client = q.authority[0][0].serial if qtype == dns.rdatatype.IXFR and q.authority else None
            if client is not None and self.ixfr and client in self.versions and client != self.current:
                d = journal.diff_zones(self.versions[client], zone)
                rrs = [soa, d.old_soa, *d.deleted, d.new_soa, *d.added, soa]
            elif client == self.current:
                rrs = [soa]
            else:
                rrs = [soa] + [r for r in journal.iter_rrs(zone) if r[2].rdtype != dns.rdatatype.SOA] + [soa]
        return self.render(q, [rrs])

    def render(self, q, groups, sign=True):
        """One message per group of (name, ttl, rdata) RRs, TSIG-chained like a real primary."""
        out = []
        ctx = None
        for i, rrs in enumerate(groups):
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            for name, ttl, rd in rrs:
                rs = dns.rrset.RRset(name, 1, rd.rdtype, rd.covers())
                rs.add(rd, ttl)
                r.answer.append(rs)
            if self.key is not None and sign:
                r.use_tsig(self.key)  # our key (make_response would reuse the query's)
                r.request_mac = q.mac
                out.append(r.to_wire(multi=True, tsig_ctx=ctx))
                ctx = r.tsig_ctx
            else:
                if self.key is not None:
                    r.tsig = None
                out.append(r.to_wire())
        return out

    def notify(self, target_port: int, zone: str):
        import dns.opcode

        q = dns.message.make_query(zone, "SOA")
        q.flags = dns.flags.AA
        q.set_opcode(dns.opcode.NOTIFY)
        if self.key is not None:
            q.use_tsig(self.key)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", 0))
            s.sendto(q.to_wire(), ("127.0.0.1", target_port))
        finally:
            s.close()

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


# -- `pop53 serve` as a secondary (the end-to-end tests) ------------------------------------------

def knot_pop53_peer(pop_port: int, action: str) -> str:
    """Knot configuration lines (for Knot.write_conf) naming pop53 on pop_port, with the test
    key, as remote `pop53` and as acl `pop53` allowing `action` (transfer, notify)."""
    return f"""\
        remote:
          - id: pop53
            address: 127.0.0.1@{pop_port}
            key: {KEYNAME}
        acl:
          - id: pop53
            address: 127.0.0.1
            key: {KEYNAME}
            action: {action}
"""


def start_pop53_secondary(workdir: Path, port: int, knot_port: int, zone: str = "example.org.",
                          identity: str = "sec", workers: int = 1, xfr_extra: str = "",
                          file_zone: tuple[str, str] | None = None,
                          server_extra: str = "") -> subprocess.Popen:
    """`pop53 serve -c` with `zone` a TSIG-secured secondary of the Knot at knot_port, its state
    in workdir/state; file_zone = (origin, master-file text) adds a zone served from a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = ""
    if file_zone is not None:
        (workdir / "file.zone").write_text(file_zone[1])
        files = f'[[zone]]\nname = "{file_zone[0]}"\nfile = "file.zone"\n'
    conf = workdir / "pop53.toml"
    conf.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = {workers}\nidentity = "{identity}"\n'
        f'state = "{workdir / "state"}"\n{server_extra}'
        f'[xfr]\nstatus_interval = 0.2\n{xfr_extra}'
        f'[[key]]\nname = "{KEYNAME}"\nalgorithm = "hmac-sha256"\nsecret = "{SECRET}"\n'
        f'[[zone]]\nname = "{zone}"\nprimaries = ["127.0.0.1:{knot_port}"]\nkey = "{KEYNAME}"\n'
        + files)
    return subprocess.Popen([sys.executable, "-m", "pop53", "serve", "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_process(proc: subprocess.Popen) -> str:
    """SIGTERM, then SIGKILL after 5 s; returns what the process printed."""
    stop_daemon(proc, grace=5.0)
    return proc.stdout.read() if proc.stdout else ""


def a_records(port: int, name: str) -> list[str] | None:
    """The A addresses pop53 at port answers for name (None: no answer)."""
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1.0)
    except Exception:
        return None
    return sorted(rd.address for rrset in r.answer for rd in rrset if rrset.rdtype == 1)


def start_secondary(cfg, with_engine: bool = True):
    """secondary.build(cfg), started on port 0 (retried on the port-0 TCP/UDP race); the
    transfer engine too unless with_engine is False.  (server, service)."""
    import errno

    from pop53.xfr import secondary

    for attempt in range(5):
        server, service = secondary.build(cfg)
        try:
            server.start()
            break
        except OSError as exc:
            server.stop()
            if exc.errno != errno.EADDRINUSE or attempt == 4:
                raise
    if with_engine:
        service.start()
    return server, service
