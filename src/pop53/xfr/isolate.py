"""Heavy control-plane work in a forked child, so the engine's thread keeps the GIL.

Writing a million-name zone snapshot or compiling a million-name image is tens of seconds of pure
Python.  In a thread it shares the GIL with the engine applying the next update (measured for the
snapshot: NOTIFY-to-visible 0.4 s became 1.1 s).  A forked child inherits the data copy-on-write,
does the work, reports "ok" or its error on a pipe and exits without cleanup; the caller's thread
waits in os.waitpid, which releases the GIL.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: a child must not outlive the server and write state behind the back of
    the next one.  (The signal follows the forking thread, which waits for the child.)"""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)     # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:                       # the parent died before the prctl
            os._exit(1)
    except (OSError, AttributeError):
        pass


def run_in_fork(fn: Callable[[], None], what: str, timeout: float) -> None:
    """Run fn() in a forked child and wait for it.  Raises OSError naming `what` with the
    child's error, or when it did not finish in `timeout` seconds (it is killed).  Runs fn()
    in this process when fork itself is not possible."""
    try:
        rfd, wfd = os.pipe()
    except OSError:
        fn()
        return
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        fn()
        return
    if pid == 0:                            # child: work, report, leave without cleanup
        code = 1
        try:
            os.close(rfd)
            _die_with_parent(parent)
            fn()
            os.write(wfd, b"ok")
            code = 0
        except BaseException as exc:        # noqa: BLE001 - report anything to the parent
            try:
                os.write(wfd, f"{type(exc).__name__}: {exc}".encode()[:500])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(wfd)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise OSError(f"{what}: did not finish in {timeout:.0f} s")
            time.sleep(0.05)
        msg = os.read(rfd, 600)
    finally:
        os.close(rfd)
    if os.waitstatus_to_exitcode(status) != 0 or msg != b"ok":
        raise OSError(f"{what}: failed: {msg.decode(errors='replace') or 'no report'}")
