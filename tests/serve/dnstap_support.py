"""Reading dnstap output back with the real tools: `dnstap-read` (bind9-dnsutils) decodes a Frame
Streams file; `fstrm_capture` (fstrm-bin) is the reader on a unix socket."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
from pathlib import Path

# 03-Dec-2026 10:32:41.455 AQ 127.0.0.1:33435 -> 127.0.0.1:58873 UDP 35b www.integ.example/IN/A
# (an address dnstap does not carry is printed as "?")
_LINE = re.compile(r"^\S+ \S+ ([ARCFST][QR]) (\S+):(\d+) (->|<-) (?:(\S+):(\d+)|\?) (UDP|TCP) "
                   r"(\d+)b (\S+)/(\S+)/(\S+)$")


@dataclasses.dataclass(frozen=True)
class Tap:
    kind: str          # "AQ" (AUTH_QUERY), "AR" (AUTH_RESPONSE), "RQ"/"RR" (RESOLVER_*), ...
    client: str
    client_port: int
    server: str | None
    server_port: int | None
    proto: str
    size: int
    qname: str         # as dnstap-read prints it: no trailing dot
    qtype: str


def read(path: str | Path) -> list[Tap]:
    """Every message of a dnstap file, decoded by dnstap-read (which fails on a bad frame)."""
    out = subprocess.run(["dnstap-read", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    taps = []
    for line in out.stdout.splitlines():
        m = _LINE.match(line)
        assert m, f"dnstap-read printed an unexpected line: {line!r}"
        g = m.groups()
        taps.append(Tap(g[0], g[1], int(g[2]), g[4], int(g[5]) if g[5] else None, g[6], int(g[7]),
                        g[8], g[10]))
    return taps


def read_yaml_field(path: str | Path, field: str) -> list[str]:
    """The values of one field (at any depth) of every message in `dnstap-read -y` output."""
    out = subprocess.run(["dnstap-read", "-y", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [ln.split(":", 1)[1].strip() for ln in out.stdout.splitlines()
            if ln.lstrip().startswith(field + ":")]


class Capture:
    """fstrm_capture reading dnstap on a unix socket into a file; stopped by PID."""

    def __init__(self, sock: Path, out: Path):
        self.sock, self.out = sock, out
        self.proc = subprocess.Popen(["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", "-u", str(sock),
                                      "-w", str(out)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline, "fstrm_capture did not create its socket"
            time.sleep(0.02)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGINT: fstrm_capture closes its output file (a complete Frame Streams file)."""
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
