"""Process bookkeeping for the peer benchmark, all from /proc: process trees, CPU time,
CPU pinning, resident memory, and the busy time of each core (to report the noise from other
work on a shared machine).  Linux only, like the servers it measures."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (NSD forks its servers and xfrd; the others
    are one process with threads)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if Path(f"/proc/{p}").exists():
            out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of every process in ``pids`` (each covers all its threads), in seconds."""
    total = 0
    for p in pids:
        f = _stat_fields(p)
        if f is not None:
            # After the comm split: [0]=state ... utime is field 14 -> index 11, stime 15 -> 12.
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def threads(pids: list[int]) -> list[int]:
    out = []
    for p in pids:
        try:
            out.extend(int(t) for t in os.listdir(f"/proc/{p}/task"))
        except FileNotFoundError:
            pass
    return out


def pin(pids: list[int], cpus: set[int]) -> int:
    """Pin every thread of every process to ``cpus`` (Knot pins its UDP workers itself at start,
    so the affinity given at exec time is not enough).  Returns how many threads were pinned;
    raises if any live thread still runs elsewhere afterwards."""
    n = 0
    for tid in threads(pids):
        try:
            os.sched_setaffinity(tid, cpus)
            n += 1
        except ProcessLookupError:
            continue
    for tid in threads(pids):
        try:
            got = os.sched_getaffinity(tid)
        except ProcessLookupError:
            continue
        if got != cpus:
            raise RuntimeError(f"thread {tid} still has affinity {sorted(got)}, "
                               f"wanted {sorted(cpus)}")
    return n


@dataclass(frozen=True)
class Memory:
    rss_kib: int   # sum of VmRSS over the tree (counts pages shared between NSD's processes twice)
    pss_kib: int   # sum of Pss (smaps_rollup): shared pages split between sharers, the fair total
    processes: int


def memory(pids: list[int]) -> Memory:
    rss = pss = n = 0
    for p in pids:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        n += 1
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss += int(rest.split()[0])
            elif key == "Pss":
                pss += int(rest.split()[0])
    return Memory(rss, pss, n)


def rss_kib(pids: list[int]) -> int:
    """Summed resident memory of `pids` from /proc/PID/statm: the kernel's counters, no walk
    of the page tables (smaps_rollup walks them under the target's mmap lock, which stalls a
    process that maps memory while it is sampled every few ms)."""
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total * PAGE_KIB


def core_busy() -> dict[int, float]:
    """Busy (non-idle, non-iowait) seconds of each core since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            f = line.split()
            vals = [int(x) for x in f[1:]]
            idle = vals[3] + vals[4]
            # guest/guest_nice (8, 9) are already counted in user/nice.
            out[int(f[0][3:])] = (sum(vals[:8]) - idle) / CLK_TCK
    return out


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the server by its PID, SIGKILL it if it has not exited after ``timeout``, then
    SIGKILL any descendant it left behind (by PID; the servers run in their own session)."""
    if proc.poll() is None:
        family = tree(proc.pid)
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        deadline = time.monotonic() + 5
        for p in family[1:]:
            while Path(f"/proc/{p}").exists() and time.monotonic() < deadline:
                if (_stat_fields(p) or ["Z"])[0] == "Z":
                    break
                time.sleep(0.05)
            if Path(f"/proc/{p}").exists() and (_stat_fields(p) or ["Z"])[0] != "Z":
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
