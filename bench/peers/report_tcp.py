"""tcp.md and tcp.png for a ``python -m bench.peers --tcp 20,200`` run: DNS over TCP, server
pinned to one core, dnsperf -m tcp with N connections, pop53 against Knot and NSD."""
from __future__ import annotations

import shlex
from pathlib import Path

from .report import _fmt, _name, _peers, _ratio, _why, summarize


def write(result: dict, out: Path, raw_json: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summ = summarize(result)
    (out / "tcp.md").write_text(markdown(result, summ, raw_json))
    chart(result, summ, out / "tcp.png")


def _modes(result) -> list[str]:
    return [f"tcp-{n}" for n in result["params"]["tcp"]]


def markdown(result: dict, summ: dict, raw_json: Path | None) -> str:
    m, p = result["machine"], result["params"]
    argv = ["python", "-m", "bench.peers"] + list(result["argv"][3:])
    L = ["# DNS over TCP: pop53 against Knot and NSD (dnsperf -m tcp, one pinned core)\n"]
    if result.get("quick"):
        L.append("**QUICK MODE (smoke test): not the benchmark result.**\n")
    L.append(f"- Date (UTC): {result['started']}; took {result.get('elapsed_s', 0) / 60:.1f} min")
    L.append(f"- Command (from the repository root): `{' '.join(map(shlex.quote, argv))}`")
    L.append(f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gib']} GiB RAM, Linux "
             f"{m['kernel']}, Python {m['python']}, dnsperf {m['dnsperf'].replace('Version ', '')}")
    L.append("- Servers: " + "; ".join(
        f"{v['name']}: {v['version'] or v['status']}" for v in result["peers"].values()))
    L.append(f"- Load (`uptime`, the machine is shared): at start `{result.get('uptime_start', '')}`;"
             f" at end `{result.get('uptime_end', '')}`")
    L.append(f"- Data: seeded zone of {p['names']:,} names and the same query mix as peers.md. "
             f"Runs: {p['runs']} per server and connection count, servers alternated, "
             f"{p['duration']:g} s measured after {p['warmup']:g} s warm-up; medians, min–max "
             f"in brackets. dnsperf: `-m tcp`, N connections (`-c N`), max({p['outstanding']}, N)"
             f" outstanding queries in all, one thread, pinned to CPU 0; the server (one worker,"
             f" one TCP thread) pinned to CPU 1.")
    L.append("- Read the CPU per query first: when 'other load CPU1' is high, other work on the "
             "shared machine took most of the server's core, and answered q/s says who got the "
             "core when rather than capacity.")
    if raw_json:
        L.append(f"- Raw per-run data: `{raw_json}` (not committed)")
    L.append("")
    for mode in _modes(result):
        n = mode[4:]
        sm = summ.get(mode, {})
        knot, nsd = sm.get("knot", {}), sm.get("nsd", {})
        L.append(f"## {n} connections\n")
        L.append("| server | answered q/s | server CPU µs/query | CPU/q ÷ Knot | CPU/q ÷ NSD | "
                 "q/s ÷ Knot | q/s ÷ NSD | core use server / dnsperf | other load CPU1 | "
                 "runs ok | config |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for k in _peers(result):
            s = sm.get(k)
            if not s or not s.get("ok_runs"):
                L.append(f"| {_name(result, k)} | {_why(result, k, s, 'pinned')} |" + " |" * 9)
                continue
            qr, cr = s["qps_range"], s["cpu_us_per_q_range"]
            use = (f"{100 * s['server_core_use']:.0f}% / {100 * s['client_core_use']:.0f}%"
                   if s.get("server_core_use") is not None else "–")
            note = (" ⚠ " + "; ".join(s["checks"])) if s["checks"] else ""
            other = s.get("other_load_server_cpu")
            L.append(
                f"| {_name(result, k)} | {s['qps']:,.0f} [{qr[0]:,.0f}–{qr[1]:,.0f}] | "
                f"{s['cpu_us_per_q']:.2f} [{cr[0]:.2f}–{cr[1]:.2f}]{note} | "
                f"{_ratio(s['cpu_us_per_q'], knot.get('cpu_us_per_q'))} | "
                f"{_ratio(s['cpu_us_per_q'], nsd.get('cpu_us_per_q'))} | "
                f"{_ratio(s['qps'], knot.get('qps'))} | {_ratio(s['qps'], nsd.get('qps'))} | "
                f"{use} | {_fmt(other and 100 * other, '.0f')}% | {s['ok_runs']}/{s['runs']} | "
                f"{s['settings']} |")
        L.append("")
    idle = [r for r in result["runs"] if r.get("mode") == "idle"]
    if idle:
        L.append("## Idle connections held\n")
        L.append("Each connection: connect, one query answered, then kept open without traffic. "
                 "Resident memory (VmRSS summed over the server's processes; PSS beside it, which "
                 "moves with other processes mapping the same libraries) before and while holding "
                 "them (pop53 allocates its table of connection slots, ~230 bytes each, when it "
                 "starts: that part is already in 'before'); the kernel's TCP "
                 "memory (/proc/net/sockstat, both ends of every loopback connection) is shown "
                 "apart: it is not the server's to save.\n")
        L.append("| server | connections held | RSS before MiB | RSS holding MiB | user-space "
                 "bytes per connection (RSS delta) | PSS before / holding MiB | kernel TCP "
                 "memory delta MiB | time to open s | config |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for r in idle:
            if not r.get("ok"):
                L.append(f"| {_name(result, r['peer'])} | failed: {r.get('error', '')[:200]} |"
                         + " |" * 6)
                continue
            per = (r["rss_kib"] - r["rss_before_kib"]) * 1024 / r["held"]
            L.append(f"| {_name(result, r['peer'])} | {r['held']:,} of {r['wanted']:,} | "
                     f"{r['rss_before_kib'] / 1024:.1f} | {r['rss_kib'] / 1024:.1f} | {per:,.0f} | "
                     f"{r['pss_before_kib'] / 1024:.1f} / {r['pss_kib'] / 1024:.1f} | "
                     f"{r['kernel_tcp_kib_delta'] / 1024:.1f} | {r['open_s']:.1f} | "
                     f"{r['settings']} |")
        L.append("")
    dp = next((s.get("dnsperf") for mode in _modes(result) for s in summ.get(mode, {}).values()
               if s.get("dnsperf")), "")
    L.append("## How it is measured\n")
    L.append(f"- dnsperf command (one of the runs): `{dp}`" if dp else "- dnsperf: not run")
    L.append("- Server CPU: utime+stime of every thread of the server from /proc/PID/stat over "
             "the measured run, divided by the answered queries (bench/peers/run.py, as for "
             "UDP). Answers are checked the same way (rcode mix; ⚠ marks a run that was not).")
    return "\n".join(L) + "\n"


def chart(result: dict, summ: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _peers(result)
    modes = _modes(result)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(keys))
    for j, (metric, title) in enumerate((("cpu_us_per_q", "Server CPU per query, µs (lower is better)"),
                                         ("qps", "Answered queries/s (higher is better)"))):
        ax = axes[j]
        for i, k in enumerate(keys):
            vals = [summ.get(mode, {}).get(k, {}).get(metric) or 0 for mode in modes]
            xs = [x + i * width for x in range(len(modes))]
            color = "#d62728" if k.startswith("pop53") else ("#1f77b4" if k == "knot" else "#7f7f7f")
            ax.bar(xs, vals, width, label=_name(result, k), color=color)
            for x, v in zip(xs, vals):
                if v:
                    ax.text(x, v, f"{v:.1f}" if metric == "cpu_us_per_q" else f"{v / 1000:.0f}k",
                            ha="center", va="bottom", fontsize=8)
        ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(modes))],
                      [f"{m[4:]} connections" for m in modes])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    load = result.get("uptime_start", "").split("load average:")[-1].strip()
    fig.suptitle(f"DNS over TCP, one pinned core, dnsperf -m tcp — medians of "
                 f"{result['params']['runs']} runs, {result['started'][:10]}, load {load}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
