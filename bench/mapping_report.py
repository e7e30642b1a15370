"""mapping.md (tables: CPU per query static vs mapped per size, load, reload) and mapping.png
from one raw result of ``python -m bench.mapping``."""
from __future__ import annotations

import shlex
from pathlib import Path

from bench.peers.report import _fmt, _med, _ratio

ORDER = ["pop53", "gdnsd", "knot-geoip", "pdns-geoip", "pdns-lua"]
NAMES = {"pop53": "pop53", "gdnsd": "gdnsd 3.8 geoip (nets)", "knot-geoip": "Knot 3.2 mod-geoip",
         "pdns-geoip": "PowerDNS 4.7 geoip backend", "pdns-lua": "PowerDNS 4.7 LUA view()"}
SHORT = {"pop53": "pop53", "gdnsd": "gdnsd 3.8\ngeoip nets", "knot-geoip": "Knot 3.2\nmod-geoip",
         "pdns-geoip": "PowerDNS 4.7\ngeoip backend", "pdns-lua": "PowerDNS 4.7\nLUA view()"}


def _cols(result) -> list[tuple[str, int | None]]:
    sizes = result["params"]["prefixes"]
    return [("static", None)] + [("mapped", n) for n in sizes]


def summarize(result: dict) -> dict:
    out = {}
    for row in result["runs"]:
        if not row.get("ok") or row.get("cpu_us_per_q") is None:
            continue
        k = (row["kind"], row["variant"], row["prefixes"])
        out.setdefault(k, []).append(row)
    summ = {}
    for k, rows in out.items():
        cpu = [r["cpu_us_per_q"] for r in rows]
        qps = [r["qps"] for r in rows]
        other = [r["other_load_server_cpu"] for r in rows]
        summ[k] = {"cpu": _med(cpu), "cpu_range": (min(cpu), max(cpu)), "qps": _med(qps),
                   "other": _med(other), "n": len(rows), "lost": sum(r["lost"] for r in rows),
                   "checks": sorted({r["check"] for r in rows if r.get("check")})}
    return summ


def _size(n) -> str:
    if n is None:
        return "static"
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n % 1000 == 0 else str(n))


def markdown(result: dict) -> str:
    summ = summarize(result)
    m, p = result["machine"], result["params"]
    kinds = [k for k in ORDER if k in p["servers"]]
    cols = _cols(result)
    la0, la1 = result["loadavg_start"], result.get("loadavg_end", ["?"] * 3)
    L = ["# Mapped answers with ECS: pop53 and the mapping peers (dnsperf, one core)\n"]
    L.append(f"- Date (UTC): {result['started']}; took {result.get('elapsed_s', 0) / 60:.1f} min")
    L.append(f"- Command (repository root): `{' '.join(map(shlex.quote, result['argv']))}`")
    L.append(f"- Machine: {m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Debian "
             f"{m['debian']}, dnsperf {m['dnsperf'].replace('Version ', '')}")
    L.append(f"- Load average (1 min) at start {la0[0]:.2f}, at end {la1[0]:.2f}: the machine "
             f"is shared with other engineers' builds and tests; 'other load' below is the "
             f"share of CPU {1} that neither the server nor dnsperf used.")
    L.append(f"- Map: disjoint /24s in 8 regions, default region for the rest (seed {p['seed']}). "
             f"Queries: {p['queries']:,} distinct A queries for the mapped name, each with its "
             f"own ECS option (80% inside mapped /24s with source /24, 20% random addresses "
             f"with source /16-/32), dnsperf -B (binary file), {p['clients']} clients, "
             f"{p['outstanding']} outstanding.")
    L.append(f"- Runs: {p['runs']} per server and column, {p['duration']:g} s each after "
             f"{p['warmup']:g} s warm-up, alternating between servers; medians, min–max in "
             f"brackets. Server pinned to CPU 1 (every thread), dnsperf to CPU 0.")
    if "pdns-lua" in p["servers"]:
        L.append(f"- PowerDNS LUA mapped: map sizes up to {p.get('lua_max')} prefixes only, "
                 f"and paced at {p.get('lua_qps')} q/s (dnsperf -Q): one answer costs "
                 f"milliseconds, an unpaced run only times out.")
    for note in result.get("notes", []):
        L.append(f"- {note}")
    if not result.get("pop53_mapping"):
        L.append("- pop53 mapped: **not measured**: `pop53.mapping` (issue 10) is not in this "
                 "tree yet; pop53 static (ECS ignored) is measured as the baseline.")
    L.append("")
    L.append("## 1. Server CPU per answered query (µs), pinned to one core\n")
    L.append("'static': the mapped name as a plain A RRset (same zone, same ECS queries). "
             "'+µs' is mapped minus the same server's static cost; '×' the ratio.\n")
    head = "| server | " + " | ".join(
        ("static" if v == "static" else f"mapped {_size(n)}") for v, n in cols) + \
        " | " + " | ".join(f"{_size(n)}: +µs / ×" for v, n in cols if v == "mapped") + " |"
    L.append(head)
    L.append("|---" * (1 + len(cols) + len(cols) - 1) + "|")
    for k in kinds:
        cells, extra = [], []
        st = summ.get((k, "static", None), {}).get("cpu")
        for v, n in cols:
            s = summ.get((k, v, n))
            if not s:
                cells.append("n/a (no pop53.mapping)" if k == "pop53" and v == "mapped" else
                             f"not run (> --lua-max {p.get('lua_max')})"
                             if k == "pdns-lua" and v == "mapped" else "not run")
            else:
                warn = " ⚠ " + "; ".join(s["checks"]) if s["checks"] else ""
                if s["lost"]:
                    warn += f" ({s['lost']:,} lost)"
                lo, hi = s["cpu_range"]
                cells.append(f"{s['cpu']:.2f} [{lo:.2f}–{hi:.2f}]{warn}")
            if v == "mapped":
                extra.append(f"{s['cpu'] - st:+.2f} / {_ratio(s['cpu'], st)}"
                             if s and st else "–")
        L.append(f"| {NAMES[k]} | " + " | ".join(cells) + " | " + " | ".join(extra) + " |")
    L.append("")
    L.extend(targets(result, summ))
    L.append("## 2. Answered queries per second (dnsperf on the other core)\n")
    L.append("| server | " + " | ".join(
        ("static" if v == "static" else f"mapped {_size(n)}") for v, n in cols) +
        " | other load on CPU 1 (median) |")
    L.append("|---" * (2 + len(cols)) + "|")
    for k in kinds:
        cells, others = [], []
        for v, n in cols:
            s = summ.get((k, v, n))
            cells.append(f"{s['qps']:,.0f}" if s else "–")
            if s:
                others.append(s["other"])
        oth = f"{100 * _med(others):.0f}%" if others else "–"
        L.append(f"| {NAMES[k]} | " + " | ".join(cells) + f" | {oth} |")
    L.append("")
    L.append("## 3. Load and map reload\n")
    L.append("Load: start to the first answer (config written, data parsed). Reload: one "
             "prefix changes region and the whole map is rewritten (atomic rename), then the "
             "server is told the way it expects (gdnsd: nothing, it watches its nets file; "
             "Knot: `knotc reload`; PowerDNS geoip: `pdns_control reload`; LUA: `pdns_control "
             "bind-reload-now`; pop53: SIGHUP); time "
             "from the rename to the first answer with the new region (polled every 10 ms). "
             "One measurement each.\n")
    L.append("| server | prefixes | load s | PSS after load MiB | reload s | PSS before → "
             "peak during reload MiB | polls unanswered during reload |")
    L.append("|---|---|---|---|---|---|---|")
    loads = {(r["kind"], r["variant"], r["prefixes"]): r for r in result["loads"]}
    reloads = {(r["kind"], r["prefixes"]): r for r in result["reloads"]}
    for k in kinds:
        for v, n in cols:
            ld = loads.get((k, v, n))
            if not ld:
                continue
            rl = reloads.get((k, n)) if v == "mapped" else None
            if rl and rl.get("ok"):
                rs = f"{rl['reload_s']:.2f}"
                mem = f"{rl['pss_kib'] / 1024:.1f} → {rl['peak_pss_kib'] / 1024:.1f}"
                un = str(rl.get("unanswered_polls", 0))
            elif rl:
                rs, mem, un = f"failed: {rl.get('error', '')[:120]}", "–", "–"
            else:
                rs = mem = un = "–"
            L.append(f"| {NAMES[k]} | {_size(n) if n else 'static'} | {ld['load_s']:.2f} | "
                     f"{ld['pss_kib'] / 1024:.1f} | {rs} | {mem} | {un} |")
    if result.get("errors"):
        L.append("\n## Errors\n")
        for e in result["errors"]:
            L.append(f"- {' '.join(str(x) for x in e['key'])}: "
                     f"`{e['error'].strip().splitlines()[-1][:300]}`")
    L.append("\n## How it is measured\n")
    dp = next((r["dnsperf"] for r in result["runs"] if r.get("dnsperf")), "")
    L.append(f"- dnsperf: `{dp}`")
    L.append("- Server CPU: utime+stime of every process of the server (all threads, "
             "/proc/PID/stat) over the run ÷ answered queries (bench/peers/procs.py).")
    L.append("- Every configuration is checked before it is measured: 20 ECS queries for "
             "mapped /24s must get that /24's region (static: the default region); a run with "
             "rcodes other than NOERROR is marked ⚠. Scopes are not checked here: see "
             "bench/results/mapping_scopes.md.")
    L.append("- Noise: with other work on CPU 1 the server gets only part of the core, so the "
             "q/s column measures scheduling as much as the server; CPU per answered query is "
             "the column to compare.")
    L.append("- Configurations: tests/support/mapping_peers.py (one UDP worker each; PowerDNS "
             "with its caches off, since every query has its own ECS address; Knot "
             "`edns-client-subnet: on`).")
    return "\n".join(L) + "\n"


def targets(result: dict, summ: dict) -> list[str]:
    """Issue 10's benchmark targets for pop53, judged from this run's medians."""
    sizes = result["params"]["prefixes"]
    pop = {n: summ.get(("pop53", "mapped", n), {}).get("cpu") for n in sizes}
    static = summ.get(("pop53", "static", None), {}).get("cpu")
    if not static or not any(pop.values()):
        return ["Targets (issue 10): not judged, pop53 mapped was not measured in this run.", ""]
    out = ["Targets (issue 10), judged from the medians above:", ""]

    def line(what, ok, detail):
        out.append(f"- {what}: {'**met**' if ok else '**not met**'} ({detail})")

    for n, c in pop.items():
        if c:
            line(f"mapped {_size(n)} at most 1.10x static", c <= 1.10 * static,
                 f"{c:.2f} vs {static:.2f} µs, {c / static:.2f}x")
            g = summ.get(("gdnsd", "mapped", n), {}).get("cpu")
            if g:
                line(f"mapped {_size(n)} below gdnsd's mapped cost", c < g,
                     f"{c:.2f} vs {g:.2f} µs")
    got = [c for c in pop.values() if c]
    if len(got) > 1:
        line("flat across map sizes (largest ÷ smallest at most 1.10)",
             max(got) <= 1.10 * min(got), f"{max(got) / min(got):.2f}")
    big = max(sizes)
    r = next((r for r in result["reloads"] if r["kind"] == "pop53" and r["prefixes"] == big
              and r.get("ok")), None)
    if r and big >= 1_000_000:
        line(f"reload of {_size(big)} prefixes visible in under 1 s", r["reload_s"] < 1.0,
             f"{r['reload_s']:.2f} s")
    return out + [""]


def chart(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarize(result)
    p = result["params"]
    kinds = [k for k in ORDER if k in p["servers"]]
    cols = _cols(result)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8))
    width = 0.8 / len(cols)
    shades = ["#999999", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    ax1.set_yscale("log")
    for j, (v, n) in enumerate(cols):
        xs, ys = [], []
        for i, k in enumerate(kinds):
            s = summ.get((k, v, n))
            if s:
                xs.append(i + (j - (len(cols) - 1) / 2) * width)
                ys.append(s["cpu"])
        ax1.bar(xs, ys, width, label="static" if v == "static" else f"mapped {_size(n)}",
                color=shades[j % len(shades)])
        for x, y in zip(xs, ys):
            ax1.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(range(len(kinds)), [SHORT[k] for k in kinds], fontsize=8)
    ax1.set_ylabel("server CPU µs per answered query (log)")
    ax1.set_title("CPU per query with ECS, one core (lower is better)", fontsize=10)
    ax1.legend(fontsize=8)
    sizes = [n for v, n in cols if v == "mapped"]
    width = 0.8 / max(1, len(sizes))
    for j, n in enumerate(sizes):
        xs, ys = [], []
        for i, k in enumerate(kinds):
            r = next((r for r in result["reloads"] if r["kind"] == k and r["prefixes"] == n
                      and r.get("ok")), None)
            if r:
                xs.append(i + (j - (len(sizes) - 1) / 2) * width)
                ys.append(r["reload_s"])
        ax2.bar(xs, ys, width, label=f"{_size(n)} prefixes", color=shades[(j + 1) % 5])
        for x, y in zip(xs, ys):
            ax2.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(kinds)), [SHORT[k] for k in kinds], fontsize=8)
    ax2.set_ylabel("seconds (log)")
    ax2.set_title("Map reload: file rename to the new answer (lower is better)", fontsize=10)
    ax2.legend(fontsize=8)
    la = result["loadavg_start"][0]
    fig.suptitle(f"Mapped answers, medians of {p['runs']} runs, {result['started'][:16]}, "
                 f"load average {la:.2f} at start", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "mapping.md").write_text(markdown(result))
    chart(result, out / "mapping.png")
