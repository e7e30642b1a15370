"""BIND 9 (`named`) as a TSIG-authenticated primary of pop53, for the xfr interop tests.

One named per instance: its own directory (config, zone files, journals, pid and lock files),
127.0.0.1 and a free port, foreground (`-g`), no control channel (rndc is not needed: changes go
in by signed dynamic update, RFC 2136, or by rewriting a zone file and SIGHUP), stopped by PID.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update

from xfr_support import KEYNAME, SECRET, free_port, soa_serial, stop_daemon, tsig_key

NAMED = shutil.which("named") or "/usr/sbin/named"


class Bind:
    """`named -g` on 127.0.0.1:<port> serving `zones` ({origin: zone text}) as primary.

    Every zone NOTIFYs `notify_port` (signed with the xfr key, RFC 1996 + RFC 8945), allows
    transfers only to that key, keeps IXFR diffs (RFC 1995), and, when `dynamic`, takes signed
    dynamic updates."""

    def __init__(self, root: Path, name: str = "bind"):
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "named.conf"
        self.log = self.dir / "named.stderr"   # -g logs everything to stderr
        self.proc: subprocess.Popen | None = None
        self._stderr = None

    def zone_file(self, origin: str) -> Path:
        return self.dir / f"{origin.rstrip('.') or 'root'}.zone"

    def write_conf(self, zones: dict[str, str], notify_port: int, dynamic: bool = True) -> None:
        d = self.dir
        stanzas = []
        for origin, text in zones.items():
            path = self.zone_file(origin)
            path.write_text(text)
            stanzas.append(f"""\
zone "{origin}" {{
    type primary;
    file "{path}";
    journal "{path}.jnl";
    // RFC 1996: NOTIFY only the listed secondary, signed (RFC 8945) so pop53 accepts it.
    notify explicit;
    also-notify {{ 127.0.0.1 port {notify_port} key "{KEYNAME}"; }};
    // RFC 5936 §6: transfers only to holders of the key.
    allow-transfer {{ key "{KEYNAME}"; }};
    // RFC 1995: keep diffs for edits of the file too (SIGHUP reload), not only for updates.
    ixfr-from-differences yes;
    // BIND answers IXFR with a full zone when the diff is bigger than max-ixfr-ratio (default
    // 100%) of the zone; test zones are tiny, so without this most diffs would come as AXFR.
    max-ixfr-ratio unlimited;
    allow-update {{ {f'key "{KEYNAME}";' if dynamic else 'none;'} }};
}};
""")
        self.conf.write_text(f"""\
key "{KEYNAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    lock-file "{d}/named.lock";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    dump-file "{d}/named_dump.db";
    statistics-file "{d}/named.stats";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    empty-zones-enable no;
    allow-query {{ 127.0.0.1; }};
    // Send NOTIFY at once, not after the default 5 s batching delay.
    notify-delay 0;
    notify-source 127.0.0.1;
    transfer-source 127.0.0.1;
}};
controls {{ }};
{''.join(stanzas)}""")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(named wrote no log)"
        return "--- named log ---\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def transfers_out(self, zone: str) -> list[str]:
        """What BIND says it sent, in order: "AXFR", "IXFR" (a real diff) or "AXFR-style IXFR"
        (an IXFR request answered with the whole zone, RFC 1995 §4)."""
        pat = re.compile(rf"transfer of '{re.escape(zone.rstrip('.'))}/IN': (AXFR|IXFR|AXFR-style IXFR) ended")
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [m.group(1) for m in pat.finditer(text)]

    def start(self, zones: list[str], timeout: float = 15.0) -> None:
        """Start named and wait (bounded) until it answers a signed SOA query for each zone."""
        self._stderr = open(self.log, "w")
        # -g: foreground, logs to stderr; -4: IPv4 only; -n 1: one worker thread (2-core box).
        self.proc = subprocess.Popen([NAMED, "-g", "-4", "-n", "1", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"named exited with {self.proc.returncode}:\n{self.log_tail()}")
            if all(self.serial(z) is not None for z in zones):
                return
            time.sleep(0.05)
        raise AssertionError(f"named did not serve {zones} within {timeout}s:\n{self.log_tail()}")

    def serial(self, zone: str) -> int | None:
        return soa_serial(self.port, zone, key=tsig_key(), timeout=0.5)

    def update(self, zone: str, add: tuple = (), delete: tuple = ()) -> None:
        """One signed dynamic update (RFC 2136): `delete` are (name,) or (name, type), `add` are
        (name, ttl, type, rdata).  BIND bumps the SOA serial and journals the diff."""
        u = dns.update.UpdateMessage(zone, keyring={tsig_key().name: tsig_key()},
                                     keyname=tsig_key().name, keyalgorithm=tsig_key().algorithm)
        for d in delete:
            u.delete(*d)
        for name, ttl, rdtype, rdata in add:
            u.add(name, int(ttl), rdtype, rdata)
        r = dns.query.tcp(u, "127.0.0.1", port=self.port, timeout=5)
        if r.rcode() != dns.rcode.NOERROR:
            raise AssertionError(f"update refused: {dns.rcode.to_text(r.rcode())}\n{self.log_tail()}")

    def reload(self, zone_text: str, origin: str) -> None:
        """Rewrite the zone file and reload (SIGHUP = `rndc reload`); with ixfr-from-differences
        BIND computes the diff and serves it by IXFR.  The mtime is pushed forward so the change is
        seen even within the same second as the previous write."""
        path = self.zone_file(origin)
        before = path.stat().st_mtime
        path.write_text(zone_text)
        os.utime(path, (before + 2, before + 2))
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        stop_daemon(self.proc)
        self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
