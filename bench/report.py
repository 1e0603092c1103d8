"""
The benchmark's report: the table (plain text and Markdown), the profiles'
summary, and what was measured on what.
"""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any, Optional

from servers import REPO


BEFORE = "gateway_before"
COLUMNS = ["Scenario", "Metric", "Gateway", "Gateway (before)", "After/before", "Floor", "Bare twisted", "Bare Klein",
           "Ratio / delta", "Goal", "Met", "Driver / notes"]


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.{digits}f}"


def bg(result: dict) -> str:
    """
    The CPU other programs took during a measurement, when notable.
    """
    value = result.get("foreign_cpu_pct")
    return f"; other programs {value:.0f}%" if value and value >= 10 else ""


def client_max(results: dict) -> str:
    """
    The busiest client among the targets of a row, when it is not the
    gateway's: a ceiling measured with a busy client is a low estimate.
    """
    busiest = max(results.items(), key=lambda kv: kv[1].get("client_cpu_pct", 0))
    name, value = busiest[0], busiest[1].get("client_cpu_pct", 0)
    return f"; client CPU {value:.0f}% on {name}" if name != "gateway" and value >= 50 else ""


def header(baseline: bool) -> list[str]:
    """
    The table's columns: "Gateway (before)" and "After/before" only with
    --baseline.
    """
    return [c for c in COLUMNS if baseline or c not in ("Gateway (before)", "After/before")]


def cpu(result: dict, name: str = "gateway") -> str:
    """
    A gateway's CPU% and its worker's during a measurement of it.
    """
    pct = result["server_cpu_pct"]
    return f"{pct.get(name, 0):.0f}%, worker {pct.get('worker', 0):.0f}%"


def before_cpu(results: dict) -> str:
    """
    The gateway before's CPU%, when it was measured.
    """
    return f"; before: gateway {cpu(results[BEFORE], BEFORE)}" if BEFORE in results else ""


def ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_rows(results: dict, s: Any, columns: list[str]) -> list[list[str]]:
    """
    One list of cells per row, in the order of C{columns} (see L{header}).
    The goals are the current gateway's; "After/before" divides the
    gateway's figure by the gateway before's, whatever the metric (for
    latency, gaps and memory, below 1 is better).
    """
    rows: list[dict[str, str]] = []
    sc = results["scenarios"]
    mark = lambda ok: "MET" if ok else "MISSED"  # noqa: E731

    def row(scenario: str, metric: str, gateway: str, before: str, after_before: str, floor: str, twisted: str,
            klein: str, delta: str, goal: str, met: str, notes: str) -> None:
        rows.append(dict(zip(COLUMNS, (scenario, metric, gateway, before, after_before, floor, twisted, klein, delta, goal,
                                       met, notes))))

    if "small" in sc and "error" not in sc["small"]:
        for kind, r in sc["small"].items():
            b = r["best"]
            row(f"1 small {kind}", "req/s @c64",
                fmt(b["gateway"]["rps"]), fmt(b[BEFORE]["rps"]) if BEFORE in b else "-", ratio(r.get("ratio_after_before")),
                fmt(r["floor"]["rps"]), fmt(b["bare_twisted"]["rps"]), fmt(b["bare_klein"]["rps"]),
                f"{r['ratio_vs_klein']:.2f} vs Klein", ">= 0.9", mark(r["ratio_vs_klein"] >= 0.9),
                f"{b['gateway']['tool']} (client CPU {b['gateway']['client_cpu_pct']:.0f}%; gateway {cpu(b['gateway'])}"
                f"{before_cpu(b)}{bg(b['gateway'])}{client_max(b)})")
    if "latency" in sc and "error" not in sc["latency"]:
        ms = lambda x: f"{1000 * x:.3f}"  # noqa: E731

        def lost(r: dict, q: str) -> str:
            if f"ratio_after_before_{q}" not in r:
                return "-"
            return f"{r[f'ratio_after_before_{q}']:.2f} ({r[f'after_minus_before_{q}_us']:+.0f} µs)"

        for kind, r in sc["latency"].items():
            t = r["targets"]
            row(f"2 latency {kind}", "p50 ms @c1",
                ms(t["gateway"]["p50"]), ms(t[BEFORE]["p50"]) if BEFORE in t else "-", lost(r, "p50"),
                ms(t["floor"]["p50"]), ms(t["bare_twisted"]["p50"]), ms(t["bare_klein"]["p50"]),
                f"+{r['added_p50_ms']:.3f} ms vs floor", "added < 0.2 ms", mark(r["added_p50_ms"] < 0.2),
                f"loadclient blocking, blocks of {r['block']} per target (client CPU {r['client_cpu_pct']:.0f}%{bg(r)})")
            row(f"2 latency {kind}", "p99 ms @c1",
                ms(t["gateway"]["p99"]), ms(t[BEFORE]["p99"]) if BEFORE in t else "-", lost(r, "p99"),
                ms(t["floor"]["p99"]), ms(t["bare_twisted"]["p99"]), ms(t["bare_klein"]["p99"]),
                f"+{r['added_p99_ms']:.3f} ms vs floor", "-", "", "")
            i = r.get("interleaved")
            if i:
                t = i["targets"]
                row(f"2 latency {kind}, cold", "p50 ms @c1",
                    ms(t["gateway"]["p50"]), ms(t[BEFORE]["p50"]) if BEFORE in t else "-", lost(i, "p50"),
                    ms(t["floor"]["p50"]), ms(t["bare_twisted"]["p50"]), ms(t["bare_klein"]["p50"]),
                    f"+{i['added_p50_ms']:.3f} ms vs floor", "-", "",
                    f"interleaved request by request (client CPU {i['client_cpu_pct']:.0f}%{bg(i)})")
    if "burst" in sc and "error" not in sc["burst"]:
        r = sc["burst"]
        g = r["gateway"]
        targets = {t: v for t, v in r.items() if isinstance(v, dict)}
        row(f"3a burst {s.burst_streams}x{s.burst_tokens}", "tokens/s",
            fmt(g["tokens_per_s"]), fmt(r[BEFORE]["tokens_per_s"]) if BEFORE in r else "-", ratio(r.get("ratio_after_before")),
            fmt(r["floor"]["tokens_per_s"]), fmt(r["bare_twisted"]["tokens_per_s"]), fmt(r["bare_klein"]["tokens_per_s"]),
            f"{r['ratio_vs_klein']:.2f} vs Klein, {r['ratio_vs_floor']:.2f} vs floor", ">= 300,000",
            mark(g["tokens_per_s"] >= 300000 and g["all_tokens_arrived"]),
            f"loadclient SSE (client CPU {g['client_cpu_pct']:.0f}%; gateway {cpu(g)}{before_cpu(r)}{bg(g)}"
            f"{client_max(targets)}); all arrived: {arrived(r)}")
    if "paced" in sc and "error" not in sc["paced"]:
        top = str(max(s.paced_streams))
        for n, r in sc["paced"].items():
            ms = lambda res: f"{1000 * res['gaps']['p99']:.1f}" + ("" if res["all_tokens_arrived"] else " (lost)")  # noqa: E731
            g = r["gateway"]
            ok = g["all_tokens_arrived"] and g["gaps"]["p99"] < 0.060
            targets = {t: v for t, v in r.items() if isinstance(v, dict)}
            before = f"; before p50 {1000 * r[BEFORE]['gaps']['p50']:.1f}, first token p99 {r[BEFORE]['ttft'].get('p99', 0):.2f} s" if BEFORE in r else ""
            row(f"3b paced {n} streams", "p99 gap ms",
                ms(g), ms(r[BEFORE]) if BEFORE in r else "-", ratio(r.get("ratio_after_before")),
                ms(r["floor"]), ms(r["bare_twisted"]), ms(r["bare_klein"]),
                f"p50 {1000 * g['gaps']['p50']:.1f}, max {1000 * g['gaps']['max']:.0f} ms; first token p99 {g['ttft'].get('p99', 0):.2f} s "
                f"(Klein {r['bare_klein']['ttft'].get('p99', 0):.2f} s){before}",
                "< 60 ms" + ("" if n == top else " (info)"), mark(ok) if n == top else ("ok" if ok else "over"),
                f"loadclient SSE (client CPU {g['client_cpu_pct']:.0f}%; gateway {cpu(g)}{before_cpu(r)}{bg(g)}"
                f"{client_max(targets)}); all arrived: {arrived(r)}")
    if "payloads" in sc and "error" not in sc["payloads"]:
        for name, r in sc["payloads"].items():
            b = r["best"]
            goal = r["goal"]
            row(f"4 {name}", "MB/s",
                fmt(b["gateway"]["mbps"], 1), fmt(b[BEFORE]["mbps"], 1) if BEFORE in b else "-", ratio(r.get("ratio_after_before")),
                fmt(r["floor"]["mbps"], 1) if "floor" in r else "-", fmt(b["bare_twisted"]["mbps"], 1), fmt(b["bare_klein"]["mbps"], 1),
                f"{r['ratio_vs_klein']:.2f} vs Klein", f">= {goal}" if goal else "-", mark(r["ratio_vs_klein"] >= goal) if goal else "",
                f"loadclient c{s.payload_concurrency} (client CPU {b['gateway']['client_cpu_pct']:.0f}%; gateway {cpu(b['gateway'])}"
                f"{before_cpu(b)}{bg(b['gateway'])}{client_max(b)}); {fmt(b['gateway']['rps'], 1)} req/s"
                + (f" (before {fmt(b[BEFORE]['rps'], 1)})" if BEFORE in b else ""))
    if "memory" in sc and "error" not in sc["memory"]:
        r = sc["memory"]
        gw, kl = r["gateway_memory"], r["bare_klein_memory"]
        bf = r.get(f"{BEFORE}_memory")
        warm = r["warm_kb"]
        per = (gw["rss_peak_kb"] - warm["gateway"]) / max(1, gw["streams"])
        per_klein = (kl["rss_peak_kb"] - kl["before_kb"]) / max(1, kl["streams"])
        mb = lambda kb: fmt(kb / 1024, 1)  # noqa: E731
        row("5 memory idle", "RSS MB", mb(r["fresh_idle_kb"]["gateway"]), mb(r["fresh_idle_kb"][BEFORE]) if bf else "-",
            ratio(r.get("ratio_after_before_idle")), "-", "-", mb(kl["before_kb"]),
            f"{warm['gateway'] / 1024:.1f} MB after one stream; worker {warm['worker'] / 1024:.1f} MB"
            + (f" (before: {warm[BEFORE] / 1024:.1f}, worker {warm[f'{BEFORE}_worker'] / 1024:.1f})" if bf else ""), "-", "",
            "fresh processes; /proc/PID/status VmRSS (bare Klein holds the recordings)")
        per_before = f", before +{(bf['rss_peak_kb'] - warm[BEFORE]) / max(1, bf['streams']):.1f}" if bf else ""
        after = r["after_kb"]
        row(f"5 memory {s.memory_streams} streams", "RSS MB peak", mb(gw["rss_peak_kb"]), mb(bf["rss_peak_kb"]) if bf else "-",
            ratio(r.get("ratio_after_before_peak")), "-", "-", mb(kl["rss_peak_kb"]),
            f"+{per:.1f} KB per stream (bare Klein +{per_klein:.1f}{per_before})", "-", "",
            f"gateway {after['gateway'] / 1024:.1f} MB after they closed"
            + (f" (before {after[BEFORE] / 1024:.1f})" if bf else "")
            + f"; all arrived: {fmt(gw['all_tokens_arrived'] and (bf is None or bf['all_tokens_arrived']))}")
    return [[cells.get(c, "") for c in columns] for cells in rows]


def arrived(results: dict) -> str:
    """
    Whether every token of every stream reached the gateway's client (and
    the gateway before's).
    """
    text = fmt(results["gateway"]["all_tokens_arrived"])
    return text + (f" (before: {fmt(results[BEFORE]['all_tokens_arrived'])})" if BEFORE in results else "")


def render_table(columns: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [columns] + rows) for i in range(len(columns) - 1)]
    lines = []
    for row in [columns] + rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


def summarize_profiles(profiles: dict, count: int = 12) -> str:
    lines = []
    for name, p in profiles.items():
        if "error" in p:
            lines.append(f"[{name}] py-spy failed: {p['error']}")
            continue
        lines.append(f"[{name}] {p['samples']} samples, gateway busy {p['busy_pct']}% of the time ({os.path.relpath(p['file'], REPO)})")
        lines.append("  self:      " + "; ".join(f"{f} {pct}%" for f, pct in p["self"][:count]))
        lines.append("  inclusive: " + "; ".join(f"{f} {pct}%" for f, pct in p["inclusive"][:count]))
    return "\n".join(lines)


def git_state(tree: str = REPO) -> dict:
    """
    The commit measured (of C{tree}: this one, or --baseline's), and
    whether its src/ had uncommitted changes.
    """
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "src_changes": git("status", "--porcelain", "src").splitlines()}


def machine() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        model = "?"
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    versions = {}
    for module in ("twisted", "klein", "msgpack", "hfendpoint"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except Exception:
            versions[module] = "?"
    if "twisted" in versions:
        import twisted
        versions["twisted"] = twisted.__version__
    return {"cpus": os.cpu_count(), "cpu_model": model, "loadavg_at_start": load, "python": platform.python_version(),
            "kernel": platform.release(), "versions": versions}

