"""The servers under test: how each is configured and started on a loopback port.

Two configurations per server:
  - ``single``: one worker (one UDP thread or process), for the pinned one-core run;
  - ``multi``: the server's stock multi-core setup, one worker per core where the server has a
    knob for it (the table in peers.md names the settings).
Everything a server writes (config, pid file, journal, logs) lives in its own work directory
under bench/results/raw/; nothing touches /etc or the system's own instances.  No server is
given anything to talk to but 127.0.0.1 (no NOTIFY targets, no recursion, PowerDNS's security
poll switched off).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..data import ORIGIN

REPO = Path(__file__).resolve().parents[2]
NCPU = os.cpu_count() or 1


@dataclass
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str] | None = None
    settings: str = ""          # what was configured, for the report


@dataclass
class Peer:
    key: str
    name: str
    binary: str
    modes: tuple[str, ...] = ("pinned", "multi", "memory")
    check_answers: bool = True   # the rcode mix must match the query file
    probe_any: bool = False      # ready when anything answers (no zone to ask about)

    def missing(self) -> str | None:
        """None if the server can run here, else why not (shown in the table)."""
        return None if shutil.which(self.binary) else f"{self.binary} not installed"

    def version(self) -> str:
        return ""

    def launch(self, work: Path, zone: Path, port: int, multi: bool,
               state: Path | None = None) -> Launch:
        """Write the configuration under ``work`` and say how to start the server.  ``state``:
        a directory the server may keep state in across starts (only pop53 uses it)."""
        raise NotImplementedError


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout + r.stderr).strip()


class Knot(Peer):
    def __init__(self):
        super().__init__("knot", "Knot DNS", "knotd")

    def version(self) -> str:
        return (_run(["knotd", "-V"]).splitlines() or [""])[0]

    def launch(self, work, zone, port, multi, state=None):
        # Stock defaults for everything but paths; the single config caps the worker pools
        # (udp-workers defaults to one per CPU).  zonefile-sync -1: never write the zone back.
        workers = ("" if multi else
                   "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n")
        (work / "db").mkdir(exist_ok=True)
        (work / "knot.conf").write_text(
            f"server:\n    rundir: \"{work}\"\n    listen: 127.0.0.1@{port}\n{workers}"
            f"log:\n  - target: stderr\n    any: warning\n"
            f"database:\n    storage: \"{work / 'db'}\"\n"
            f"template:\n  - id: default\n    storage: \"{work}\"\n    zonefile-sync: -1\n"
            f"    zonefile-load: whole\n    journal-content: none\n"
            f"zone:\n  - domain: {ORIGIN}\n    file: \"{zone}\"\n")
        return Launch(["knotd", "-c", str(work / "knot.conf")], work,
                      settings=("stock (udp-workers = CPUs)" if multi
                                else "udp-workers 1, tcp-workers 1, background-workers 1"))


    def launch_slots(self, work, zone, port, slots: int) -> Launch:
        """The single configuration with room for ``slots`` TCP clients held 120 s."""
        launch = self.launch(work, zone, port, False)
        conf = work / "knot.conf"
        conf.write_text(conf.read_text().replace(
            "log:\n", f"    tcp-max-clients: {slots}\n    tcp-idle-timeout: 120s\nlog:\n", 1))
        launch.settings += f", tcp-max-clients {slots}, tcp-idle-timeout 120s"
        return launch


class NSD(Peer):
    def __init__(self):
        super().__init__("nsd", "NSD", "nsd")

    def version(self) -> str:
        return (_run(["nsd", "-v"]).splitlines() or [""])[0]

    def launch(self, work, zone, port, multi, state=None):
        # Debian's NSD build enables response rate limiting by default: rrl-ratelimit 0
        # switches it off (a benchmark from one source address would otherwise be rate
        # limited).  database "" serves straight from the zone file (no nsd.db).
        count = NCPU if multi else 1
        reuse = "    reuseport: yes\n" if multi else ""
        (work / "nsd.conf").write_text(
            f"server:\n    server-count: {count}\n{reuse}    ip-address: 127.0.0.1@{port}\n"
            f"    do-ip6: no\n    username: \"\"\n    chroot: \"\"\n    zonesdir: \"{work}\"\n"
            f"    database: \"\"\n    zonelistfile: \"{work / 'zone.list'}\"\n"
            f"    xfrdfile: \"{work / 'xfrd.state'}\"\n    xfrdir: \"{work}\"\n"
            f"    pidfile: \"{work / 'nsd.pid'}\"\n    logfile: \"{work / 'nsd.log'}\"\n"
            f"    verbosity: 0\n    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n"
            f"    tcp-count: 1024\n"
            f"remote-control:\n    control-enable: no\n"
            f"zone:\n    name: {ORIGIN}\n    zonefile: \"{zone}\"\n")
        return Launch(["nsd", "-d", "-c", str(work / "nsd.conf")], work,
                      settings=(f"server-count {count}, reuseport yes, RRL off, tcp-count 1024"
                                if multi else "server-count 1, RRL off, tcp-count 1024"))


    def launch_slots(self, work, zone, port, slots: int) -> Launch:
        """The single configuration with room for ``slots`` TCP clients held 120 s."""
        launch = self.launch(work, zone, port, False)
        conf = work / "nsd.conf"
        conf.write_text(conf.read_text().replace(
            "    tcp-count: 1024\n", f"    tcp-count: {slots}\n    tcp-timeout: 120\n", 1))
        launch.settings = f"server-count 1, RRL off, tcp-count {slots}, tcp-timeout 120"
        return launch


class Bind(Peer):
    def __init__(self):
        super().__init__("bind", "BIND", "named")

    def version(self) -> str:
        return _run(["named", "-v"])

    def launch(self, work, zone, port, multi, state=None):
        (work / "named.conf").write_text(
            "options {\n"
            f"  directory \"{work}\";\n  pid-file \"{work / 'named.pid'}\";\n"
            f"  session-keyfile \"{work / 'session.key'}\";\n"
            f"  managed-keys-directory \"{work}\";\n"
            f"  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n"
            "  recursion no;\n  dnssec-validation no;\n  notify no;\n  allow-query { any; };\n"
            "};\ncontrols { };\n"
            f"zone \"{ORIGIN}\" {{ type primary; file \"{zone}\"; }};\n")
        argv = ["named", "-g", "-c", str(work / "named.conf")]
        if not multi:
            argv += ["-n", "1"]   # worker threads (default: one per CPU)
        return Launch(argv, work, settings="stock (-n = CPUs)" if multi else "-n 1")


class PowerDNS(Peer):
    def __init__(self):
        super().__init__("pdns", "PowerDNS", "pdns_server")

    def missing(self):
        why = super().missing()
        if why:
            return why
        mods = list(Path("/usr/lib").glob("*/pdns/libbindbackend.so")) + \
            list(Path("/usr/lib/powerdns").glob("libbindbackend.so"))
        return None if mods else "pdns-backend-bind not installed"

    def version(self) -> str:
        m = re.search(r"PowerDNS Authoritative Server [0-9.]+", _run(["pdns_server", "--version"]))
        return m.group(0) if m else ""

    def launch(self, work, zone, port, multi, state=None):
        (work / "named.conf").write_text(
            f"zone \"{ORIGIN}\" {{ type master; file \"{zone}\"; }};\n")
        # security-poll-suffix= : no version check against the internet (loopback only).
        threads = (f"receiver-threads={NCPU}\nreuseport=yes\n" if multi else
                   "receiver-threads=1\n")
        (work / "pdns.conf").write_text(
            "launch=bind\n"
            f"bind-config={work / 'named.conf'}\nbind-check-interval=0\n"
            f"local-address=127.0.0.1\nlocal-port={port}\n"
            f"socket-dir={work}\nsetuid=\nsetgid=\n"
            "daemon=no\nguardian=no\ndisable-syslog=yes\nloglevel=3\n"
            "webserver=no\napi=no\nprimary=no\nsecondary=no\ndisable-axfr=yes\n"
            "security-poll-suffix=\n" + threads)
        return Launch(["pdns_server", f"--config-dir={work}"], work,
                      settings=(f"receiver-threads {NCPU}, reuseport yes "
                                "(rest stock, packet cache on)"
                                if multi else "receiver-threads 1 (rest stock, packet cache on)"))


class Pop53(Peer):
    def __init__(self):
        super().__init__("pop53", "pop53", sys.executable)

    def missing(self):
        try:
            r = subprocess.run([sys.executable, "-m", "pop53", "serve", "--help"],
                               capture_output=True, text=True, timeout=60, cwd=REPO)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"not yet available (`python -m pop53 serve --help`: {exc})"
        if r.returncode != 0:
            return "not yet available (`python -m pop53 serve --help` fails)"
        return None

    def version(self) -> str:
        out = _run([sys.executable, "-c", "import pop53; print(getattr(pop53, '__version__', ''))"])
        git = _run(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
        return f"pop53 {out} (git {git if git and ' ' not in git else 'uncommitted'})"

    def launch(self, work, zone, port, multi, state=None):
        n = NCPU if multi else 1
        argv = [sys.executable, "-m", "pop53", "serve", "--zone", str(zone),
                "--listen", f"127.0.0.1:{port}", "--workers", str(n)]
        settings = f"--workers {n}"
        if state is not None:
            # The memory run starts pop53 with an empty state directory: a cold start that
            # parses and compiles the zone file (and saves the image there before serving).
            argv += ["--state", str(state)]
            settings += ", --state (empty: cold start)"
        return Launch(argv, REPO, settings=settings)


    def launch_slots(self, work, zone, port, slots: int) -> Launch:
        """One worker with room for ``slots`` TCP connections (the idle-connection run)."""
        conf = work / "pop53.toml"
        conf.write_text(
            f"[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n"
            f"tcp_max_connections = {slots}\ntcp_max_per_ip = 0\ntcp_idle_timeout = 120.0\n"
            f"[[zone]]\nname = \"{ORIGIN}\"\nfile = \"{zone}\"\n")
        return Launch([sys.executable, "-m", "pop53", "serve", "-c", str(conf)], REPO,
                      settings=f"workers 1, tcp_max_connections {slots}, tcp_max_per_ip 0, "
                               f"tcp_idle_timeout 120")


class Pop53Restart(Pop53):
    """pop53 restarted on the state directory its cold start left behind: it maps the saved
    image instead of parsing the zone file again (memory run only, right after pop53's)."""

    def __init__(self):
        Peer.__init__(self, "pop53-restart", "pop53 (restart, saved image)", sys.executable,
                      modes=("memory",))

    def launch(self, work, zone, port, multi, state=None):
        launch = super().launch(work, zone, port, multi, state)
        launch.settings = (f"--workers {NCPU if multi else 1}, "
                           "--state (image saved by the cold start)")
        return launch


class PyServer(Peer):
    def __init__(self):
        super().__init__("pyserver", "asyncio+dnspython", sys.executable)

    def missing(self):
        try:
            import dns.version  # noqa: F401
        except ImportError:
            return "dnspython not installed"
        return None

    def version(self) -> str:
        import dns.version
        return f"Python {sys.version.split()[0]}, dnspython {dns.version.version}"

    def launch(self, work, zone, port, multi, state=None):
        return Launch([sys.executable, "-m", "bench.peers.pyserver", "--zone", str(zone),
                       "--listen", f"127.0.0.1:{port}"], REPO,
                      settings="one asyncio loop (single-threaded)")


class Echo(Peer):
    """Not a DNS server: the recvmmsg/sendmmsg echo in echo.c, the floor of the socket path."""

    def __init__(self):
        super().__init__("echo", "recvmmsg/sendmmsg echo (floor)", "gcc",
                         modes=("pinned",), check_answers=False, probe_any=True)

    def version(self) -> str:
        return "bench/peers/echo.c, " + (_run(["gcc", "--version"]).splitlines() or [""])[0]

    def launch(self, work, zone, port, multi, state=None):
        exe = work.parent / "echo"
        if not exe.exists():
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe),
                            str(Path(__file__).with_name("echo.c"))], check=True, timeout=120)
        return Launch([str(exe), str(port)], work, settings="batches of 64")


def all_peers() -> list[Peer]:
    return [Knot(), NSD(), Bind(), PowerDNS(), Pop53(), Pop53Restart(), PyServer(), Echo()]
