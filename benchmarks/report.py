"""The report: each run's verdict, the warnings, and the text printed.

A run passes when every check passed or it could not run here; the warnings
say which figures not to trust (a saturated load generator, processes that
waited for their CPU) and why a run failed or was skipped.
"""

from __future__ import annotations

import math
from typing import Any

from .servers import FLOOR, LOADGEN_CPU, REAL, REFERENCES, SERVER_CPU
from .session import SATURATED
from .table import meters

__all__ = ["format_report", "passed", "verdict", "warnings"]

#: Share of the time (%) a pinned process waited for its CPU above which figures are noisy.
WAITED = 5.0


def verdict(result: dict[str, Any]) -> str:
    """``ok``, or why not: skipped, an error's first line, or the checks that failed."""
    if "skipped" in result:
        return "skipped: " + str(result["skipped"])
    if "error" in result:
        return "ERROR: " + str(result["error"]).splitlines()[0]
    failed = [name for name, ok in result["checks"].items() if not ok]
    return "ok" if not failed else "FAILED: " + ", ".join(str(name) for name in failed)


def passed(result: dict[str, Any]) -> bool:
    """Every check passed, or the scenario could not run here (said in the warnings)."""
    return "skipped" in result or verdict(result) == "ok"


def warnings(results: list[dict[str, Any]]) -> list[str]:
    """Which figures not to trust and why, then each run's own warnings, skips and errors."""
    out = []
    for result in results:
        where = f"{result['label']} / {result['server']}"
        for meter in meters(result):
            if meter["loadgen_cpu_pct"] > 100 * SATURATED:
                out.append(
                    f"{where}: the load generator used {meter['loadgen_cpu_pct']:.0f}% of its CPU:"
                    " it may be the bottleneck, the server's figures are a lower bound"
                )
            for key, who in (("server_wait_pct", "server"), ("loadgen_wait_pct", "generator")):
                if meter.get(key, 0.0) > WAITED:
                    out.append(
                        f"{where}: the {who} waited for its CPU {meter[key]:.0f}% of the time"
                        " (other processes): noisy figures"
                    )
        meter = result.get("metrics", {}).get("meter", {})
        if result["scenario"] == "fanout" and meter and meter["server_cpu_pct"] < 80:
            out.append(
                f"{where}: the server used only {meter['server_cpu_pct']:.0f}% of its CPU, so"
                " deliveries/s is not its ceiling; deliveries/CPU-s is"
            )
        for step in result.get("metrics", {}).get("steps", []):
            if step["ramp_loadgen_cpu_pct"] > 100 * SATURATED:
                out.append(
                    f"{where}: ramp to {step['streams']}: the generator used"
                    f" {step['ramp_loadgen_cpu_pct']:.0f}% of its CPU, so the ramp rate is its own"
                )
        out += [f"{where}: {w}" for w in result.get("warnings", [])]
        if "skipped" in result:
            out.append(f"{where}: not run: {result['skipped']}")
        if "error" in result:
            out.append(f"{where}: {result['error']}")
    # Several meters of one run may say the same thing.
    return list(dict.fromkeys(out))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    # The floor is measured in few runs: its columns only where it was.
    shown = [r for r in REFERENCES if r != FLOOR or any(FLOOR in row for row in report["rows"])]
    columns = ["metric", REAL, *shown, *(f"real/{other}" for other in shown)]
    table = [columns] + [
        [_fmt(row.get(c, "")) if c != "metric" else row["metric"] for c in columns]
        for row in report["rows"]
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(line)
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    m = report["machine"]
    lines.insert(
        0,
        f"{m['cpu']} x{m['cpus']}, Linux {m['kernel']}, Python {m['python']}, "
        f"gevent {m['versions']['gevent']}, gunicorn {m['versions']['gunicorn']}, "
        f"commit {m['commit']}; server on CPU {SERVER_CPU}, generator on CPU {LOADGEN_CPU}"
        + ("" if m["pinned"] else " (NOT pinned: taskset or a second CPU missing)")
        + f"; broker: {report.get('broker', 'memory')}"
        + (f" (redis-server on CPU {LOADGEN_CPU})" if report.get("broker") == "redis" else "")
        + "".join(
            f"; {r['label']}: {r['broker']}"
            for r in report["results"]
            if r.get("broker", report.get("broker")) != report.get("broker")
        ),
    )
    lines.insert(1, "ratios: real/ceiling (for 'low is better' figures above 1 is worse)")
    lines.insert(2, "")
    if report["targets"]:
        lines += ["", "targets (real server):"]
        for t in report["targets"]:
            mark = {True: "MET ", False: "MISS", None: "?   "}[t["met"]]
            lines.append(f"  [{mark}] {t['target']}: {t['measured']}")
    failed = [
        f"{r['label']} / {r['server']}: {verdict(r)}" for r in report["results"] if not passed(r)
    ]
    if failed:
        lines += ["", "correctness FAILED:"] + [f"  {f}" for f in failed]
    if report["warnings"]:
        lines += ["", "warnings:"] + [f"  {w}" for w in report["warnings"]]
    lines.append("")
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)
