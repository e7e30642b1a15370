"""The lab's processes and files: constants of the lab network, running commands, a started
process we stop by its PID, the DNS server command for a machine, the lab zone."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from pop53.errors import Pop53Error

NS_PREFIX = "p53a"
SERVICE4 = "10.53.0.53/32"
SERVICE6 = "fd53::53/128"
ROUTER_AS = 65000
MACHINE_AS = 65053
LAB_ZONE = "pop53.lab."
ETCD_PORT = 2379
DNS_PORT = 53


class LabError(Pop53Error):
    """The lab could not be built or an experiment could not run."""


def run_command(cmd: list[str], *, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)}: timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _src_path() -> str:
    """The directory holding the pop53 package, for PYTHONPATH of child processes."""
    import pop53

    return str(Path(pop53.__file__).parent.parent)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = _src_path() + (os.pathsep + env["PYTHONPATH"]
                                        if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- processes ---------------------------------------------------------------------------------

class Proc:
    """A child process stopped by its own PID (never by name: others run the same binaries)."""

    def __init__(self, name: str, cmd: list[str], *, log: Path, netns: str | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd  # exec: same PID
        with open(log, "ab") as f:
            self.popen = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env or child_env(),
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# -- the DNS server in a machine namespace -----------------------------------------------------

_POP53_SERVE: bool | None = None


def pop53_serve_available() -> bool:
    """True once the lead's `pop53 serve` exists (then the lab prefers it over Knot)."""
    global _POP53_SERVE
    if _POP53_SERVE is None:
        # `serve --help` proves the command exists; compiling the lab zone proves the data plane
        # it needs is built (a half-built tree would otherwise fail in every machine at once).
        # Either failing selects the Knot stand-in; the lab's first log line names the server.
        with tempfile.TemporaryDirectory(prefix=f"{NS_PREFIX}-probe-") as d:
            zone = Path(d) / "z.zone"
            write_lab_zone(zone)
            try:
                p = subprocess.run([sys.executable, "-m", "pop53", "serve", "--help"],
                                   capture_output=True, text=True, timeout=30, env=child_env())
                q = subprocess.run([sys.executable, "-c",
                                    f"import pop53; pop53.compile_zones([{str(zone)!r}])"],
                                   capture_output=True, text=True, timeout=60, env=child_env())
                _POP53_SERVE = (p.returncode == 0 and "--identity" in p.stdout
                                and q.returncode == 0)
            except (OSError, subprocess.TimeoutExpired):
                _POP53_SERVE = False
    return _POP53_SERVE


def server_kind() -> str:
    forced = os.environ.get("POP53_LAB_SERVER")
    if forced in ("pop53", "knot"):
        return forced
    return "pop53" if pop53_serve_available() else "knot"


def _fmt_listen(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def dns_server_command(kind: str, *, zone: Path, listens: list[str], identity: str,
                       workdir: Path, port: int = DNS_PORT) -> list[str]:
    """The command that runs one machine's DNS server.  The single switch between the stand-in
    (Knot, with NSID = identity) and pop53 itself."""
    if kind == "pop53":
        cmd = [sys.executable, "-m", "pop53", "serve", "--zone", str(zone), "--identity", identity,
               "--workers", "1"]
        for a in listens:
            cmd += ["--listen", _fmt_listen(a, port)]
        return cmd
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    rundir = workdir / "knot"
    (rundir / "db").mkdir(parents=True, exist_ok=True)
    listen = ", ".join(f"{a}@{port}" for a in listens)
    conf = rundir / "knot.conf"
    conf.write_text(f"""server:
    rundir: "{rundir}"
    pidfile: "{rundir}/knot.pid"
    listen: [ {listen} ]
    identity: "{identity}"
    nsid: "{identity}"
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{rundir}/db"
log:
  - target: stderr
    any: warning
zone:
  - domain: {LAB_ZONE}
    file: "{zone}"
    storage: "{rundir}"
    zonefile-sync: -1
    journal-content: none
""")
    return [knotd, "-c", str(conf)]


def write_lab_zone(path: Path, serial: int = 1) -> None:
    path.write_text(f"""$ORIGIN {LAB_ZONE}
$TTL 300
@   IN SOA ns1 hostmaster {serial} 3600 600 86400 300
@   IN NS ns1
ns1 IN A 10.53.0.53
ns1 IN AAAA fd53::53
www IN A 10.53.200.1
www IN AAAA fd53:200::1
""")


# -- DNS probing with NSID (RFC 5001) ----------------------------------------------------------

