"""Where the known resolvers' slow queries waited: a census of the stalls of one attack bench
run, from its slow-query listing (bench.attack.run --slow) and a trace of CPU 0 (the server's
CPU) taken over the same run.

    perf record -q -k CLOCK_MONOTONIC -C 0 -e sched:sched_switch -e sched:sched_stat_runtime \\
        -e syscalls:sys_enter_recvmmsg -e syscalls:sys_exit_recvmmsg \\
        -e syscalls:sys_enter_sendmmsg -e syscalls:sys_exit_sendmmsg -o trace.data -- \\
        python -m bench.attack.run --servers pop53 --slow 2 ... > run.log
    python -m bench.attack.census run.log trace.data [--min-ms 4] [--out FILE]

A stall is a run of slow known queries sent less than 20 ms apart; it lasts from the send of
its slowest query to that query's answer.  Each stall goes to the first class that fits what
CPU 0 did during it:

- "the host": the vCPU did not run for HOST_MS or more at once.  With paravirt time
  accounting (CONFIG_PARAVIRT_TIME_ACCOUNTING) a task's runtime (sched_stat_runtime) leaves
  out the time the host took, so a task on CPU 0 whose runtime falls that far behind the wall
  clock lost it to the host.  Or CPU 0 was idle for IDLE_MS or more at once: the cap's task
  (the stealer, or the flood on CPU 0 that takes its place) wakes every 1 ms, so an idle
  stretch that long means its timer, and the server's queued work, waited for the vCPU;
- "cap over its slice": the cap's task ran CAP_MS or more at once, against a slice of at most
  0.75 ms (bench/attack/duty.h);
- "one system call": the worker ran CALL_MS or more inside one recvmmsg or sendmmsg (a few
  microseconds usually): kernel work in its context that the kernel's preemption model
  (none here) does not interrupt, such as the softirq processing of packets queued to CPU 0,
  or the vCPU not running while runtime accounting did not catch it;
- "the worker and the cap": none of these, the worker's batches alternating with the cap.

Nothing here asserts a time; it reads what one run did."""
from __future__ import annotations

import argparse
import ast
import bisect
import re
import subprocess
import sys
from pathlib import Path

HOST_MS, IDLE_MS, CAP_MS, CALL_MS = 1.0, 2.0, 2.0, 1.0
CLASSES = ("the host", "cap over its slice", "one system call", "the worker and the cap")
_SLOW = re.compile(r"slow (\d+) (\S+) (.*) (\d+\.\d+) monotonic (\S+) \[(.*)\]$")
_RUNTIME = re.compile(r"pid=(\d+) runtime=(\d+)")
_SWITCH = re.compile(r"prev_comm=(\S*) prev_pid=(\d+) .*==> next_comm=(\S*) next_pid=(\d+)")


def stalls(log: Path, min_ms: float) -> tuple[list[dict], dict]:
    """The stalls of every row in `log` whose slowest query took min_ms or more, and how many
    rows there were without an attack and with one."""
    out, rows = [], {"no attack": 0, "attack": 0}
    for line in log.read_text().splitlines():
        m = _SLOW.match(line.strip())
        if not m:
            continue
        rnd, server, attack, load, m0, items = m.groups()
        rows["no attack" if attack == "no attack" else "attack"] += 1
        cur = None
        for item in ast.literal_eval(f"[{items}]"):      # run.py prints a list of strings
            off, lat = item.split(":")
            off, lat = int(off), (float(lat) if lat != "-" else float("inf"))
            if cur is None or off - cur["last"] > 20:
                cur = {"row": f"{server} {attack} {load}x, round {rnd}", "off": off, "last": off,
                       "worst": -1.0, "n": 0, "calm": attack == "no attack"}
                out.append(cur)
            cur["last"], cur["n"] = off, cur["n"] + 1
            if lat > cur["worst"]:
                cur["worst"], cur["start"] = lat, float(m0) + off / 1000
    found = []
    for s in out:
        if s["worst"] >= min_ms:
            # an unanswered query ("-") has no end: its stall is taken as 20 ms
            s["end"] = s["start"] + min(s["worst"], 20.0) / 1000
            found.append(s)
    return found, rows


def trace(data: Path) -> tuple[list, dict, dict]:
    """From the perf data: CPU 0's runs [(start, end, tid, comm, ran)] (ran: the task's
    runtime in the run, in s; None when the trace has no sched_stat_runtime), each thread's
    system calls on CPU [(start, end)] (split where it was switched out), and the thread that
    made the most recvmmsg calls in each second (the worker).  perf's text is read as it comes
    (a traced run's is gigabytes)."""
    perf = subprocess.Popen(["perf", "script", "-i", str(data), "-F", "tid,time,event,trace"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    runs, calls, recvs = [], {}, {}
    cur, cur_comm, since, ran, has_runtime = None, "", None, 0, False
    inside: dict[int, float] = {}       # tid -> since when it is inside a call and on CPU
    for line in perf.stdout:
        p = line.split(None, 3)
        if len(p) < 3:
            continue
        tid, t, event = int(p[0]), float(p[1].rstrip(":")), p[2]
        if "sched_stat_runtime" in event:
            has_runtime = True
            m = _RUNTIME.search(line)
            if m and int(m.group(1)) == cur:
                ran += int(m.group(2))
        elif "sched_switch" in event:
            m = _SWITCH.search(line)
            if not m:
                continue
            if cur is not None:
                runs.append((since, t, cur, cur_comm, ran / 1e9))
            prev = int(m.group(2))
            if prev in inside:
                start = inside.pop(prev)
                if start >= 0:
                    calls.setdefault(prev, []).append((start, t))
                inside[prev] = -1.0     # still inside, off CPU
            cur, cur_comm, since, ran = int(m.group(4)), m.group(3), t, 0
            if inside.get(cur) == -1.0:
                inside[cur] = t
        elif "sys_enter_" in event:
            inside[tid] = t
            if "recvmmsg" in event:
                sec = int(t)
                recvs.setdefault(sec, {}).setdefault(tid, 0)
                recvs[sec][tid] += 1
        elif "sys_exit_" in event and tid in inside:
            start = inside.pop(tid)
            if start >= 0:
                calls.setdefault(tid, []).append((start, t))
    if perf.wait():
        raise SystemExit(f"perf script -i {data} failed ({perf.returncode})")
    workers = {sec: max(c, key=c.get) for sec, c in recvs.items()}
    if not has_runtime:                 # traced without sched_stat_runtime: nothing to compare
        runs = [r[:4] + (None,) for r in runs]
    return runs, calls, workers


def longest(spans, a: float, b: float) -> float:
    """The longest part of any (start, end) span inside [a, b], in ms."""
    return max((min(e, b) - max(s, a) for s, e in spans if e > a and s < b), default=0.0) * 1000


def classify(s: dict, runs: list, ends: list, calls: dict, workers: dict) -> tuple[str, dict]:
    a, b = s["start"], s["end"]
    i = bisect.bisect_left(ends, a)
    near = []
    while i < len(runs) and runs[i][0] < b:
        near.append(runs[i])
        i += 1
    busy = [r for r in near if not r[3].startswith("swapper")]
    # the host's share of a run: its wall time less the task's runtime (paravirt accounting)
    host = max((r[1] - r[0] - r[4] for r in busy if r[4] is not None), default=0.0)
    host = max(0.0, host) * 1000
    idle = longest([(r[0], r[1]) for r in near if r[3].startswith("swapper")], a, b)
    cap = max((r[1] - r[0] if r[4] is None else r[4] for r in busy
               if r[3] in ("steal", "flood")), default=0.0) * 1000
    worker = workers.get(int(a))
    call = longest(calls.get(worker, ()), a, b) if worker is not None else 0.0
    got = {"host": host, "idle": idle, "cap": cap, "call": call}
    if host >= HOST_MS or idle >= IDLE_MS:
        return CLASSES[0], got
    if cap >= CAP_MS:
        return CLASSES[1], got
    if call >= CALL_MS:
        return CLASSES[2], got
    return CLASSES[3], got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", type=Path, help="bench.attack.run's output, with --slow")
    ap.add_argument("data", type=Path, nargs="?", help="perf record's output over the same "
                    "run (without it: the stalls and their rates, not what CPU 0 did)")
    ap.add_argument("--min-ms", type=float, default=4.0, help="the stalls counted: their "
                    "slowest query took this long or longer")
    ap.add_argument("--seconds", type=int, default=3, help="the run's --seconds (a row's length)")
    ap.add_argument("--out", type=Path, help="markdown (default: printed)")
    args = ap.parse_args(argv)
    found, counts = stalls(args.log, args.min_ms)
    runs, calls, workers = trace(args.data) if args.data else ([], {}, {})
    runs.sort(key=lambda r: r[1])
    for spans in calls.values():
        spans.sort()
    ends = [r[1] for r in runs]
    rows, by = [], {c: [] for c in CLASSES}
    for s in found:
        if not args.data:
            rows.append(f"| {s['row']} | {s['off']} | {s['worst']:.1f} | {s['n']} | - | - |")
            continue
        kind, got = classify(s, runs, ends, calls, workers)
        by[kind].append(s)
        rows.append(f"| {s['row']} | {s['off']} | {s['worst']:.1f} | {s['n']} | {kind} | "
                    f"{got['host']:.1f} / {got['idle']:.1f} / {got['cap']:.1f} / {got['call']:.1f} |")
    calm = sum(1 for s in found if s["calm"])
    lines = [f"Stalls of {args.min_ms:g} ms or more in `{args.log.name}` "
             "(bench/attack/census.py)", "",
             f"Stalls a second: {calm / max(1, counts['no attack'] * args.seconds):.3f} in the "
             f"rows without an attack ({counts['no attack']} rows), "
             f"{(len(found) - calm) / max(1, counts['attack'] * args.seconds):.3f} in the attack "
             f"rows ({counts['attack']})."]
    if args.data:
        lines += ["", "By what CPU 0 did:", "",
                  "| class | stalls | slowest query, ms | slow queries in them |",
                  "|---|---|---|---|"]
        for kind in CLASSES:
            worst = max((s["worst"] for s in by[kind]), default=0.0)
            lines.append(f"| {kind} | {len(by[kind])} | {worst:.1f} | "
                         f"{sum(s['n'] for s in by[kind])} |")
    lines += ["", "Every stall (the longest at once in it, ms: taken by the host from a task on "
              "CPU 0 / CPU 0 idle / the cap's task's runtime / the worker on CPU inside one "
              "system call):", "",
              "| row | offset ms | slowest ms | slow queries | class | host / idle / cap / call |",
              "|---|---|---|---|---|---|"] + rows
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
