"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state change
to the unix socket named by $NOTIFY_SOCKET ("@name" is in the abstract namespace).

`pop53 serve` sends READY=1 once every listen socket is bound and the zones are published (a
query sent after systemd starts the next unit is answered), RELOADING=1 / READY=1 around a
reload, STOPPING=1 on SIGTERM, and WATCHDOG=1 at half of $WATCHDOG_USEC when the unit sets
WatchdogSec=.  Without $NOTIFY_SOCKET every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("pop53.sdnotify")


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return None
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(*states: str) -> bool:
    """Send "KEY=VALUE" lines in one datagram.  Returns whether it was sent."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(states).encode(), addr)
        return True
    except OSError as exc:
        # the service keeps running: systemd will time the start out and say why
        log.warning("cannot notify systemd through %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False


class Watchdog:
    """WATCHDOG=1 at half the interval systemd asked for (WatchdogSec=), from the main loop, so
    a wedged main loop is restarted."""

    def __init__(self):
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ok = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.interval = int(usec) / 2e6 if ok else None
        self._next = 0.0

    def tick(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now >= self._next:
            notify("WATCHDOG=1")
            self._next = now + self.interval
