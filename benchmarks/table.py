"""The table of figures: a row per figure, a column per server, the ratios to the ceilings.

Each scenario's metrics become rows of ``(label, better, value)``, ``better``
saying which way is good ("high", "low", or "" for a figure not compared);
the load generator's and the broker's CPU, and how long the server waited for
its CPU, are rows too. A row measured on the real server and a ceiling gets
the real server's ratio to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .servers import REAL, REFERENCES

__all__ = ["meters", "rows"]

#: (row label, better: "high" or "low" or "", value)
Row = tuple[str, str, Any]


def _idle_rows(result: dict[str, Any]) -> list[Row]:
    out = []
    for step in result["metrics"].get("steps", []):
        head = f"{result['label']} n={step['streams']}"
        out += [
            (f"{head} RSS/stream KB", "low", step["rss_per_stream_kb"]),
            (f"{head} ramp conn/s", "high", step["ramp_per_s"]),
            (f"{head} server CPU %", "low", step["server_cpu_pct"]),
            (
                f"{head} heartbeats got/nominal",
                "",
                f"{step['heartbeats']}/{step['heartbeats_expected']}",
            ),
            (f"{head} late+closed streams", "low", step["late_streams"] + step["closed_streams"]),
        ]
    return out


def _vanish_rows(result: dict[str, Any]) -> list[Row]:
    m = result["metrics"]
    if "released" not in m:
        return []
    head = f"{result['label']} n={m['streams']} hb={m['heartbeat_interval']:g}s"
    return [
        (f"{head} released", "", f"{m['released']}/{m['streams']}"),
        (f"{head} release p50 s", "low", m["release_p50_s"]),
        (f"{head} release max s", "low", m["release_max_s"]),
        (f"{head} RSS before/with/after MB", "", "/".join(
            f"{m[key] / 2**20:.1f}" for key in ("rss_before", "rss_with", "rss_after")
        )),
        (f"{head} RSS returned %", "high", m["rss_returned_pct"]),
    ]  # fmt: skip


def _publish_rows(result: dict[str, Any]) -> list[Row]:
    m = result["metrics"]
    label = result["label"]
    out: list[Row] = []
    for mode, name in (("single", "single"), ("many", f"many x{m['batch']}")):
        rate = m["rates"][mode]
        out += [
            (f"{label} {name} events/s", "high", rate["events_per_s"]),
            (f"{label} {name} server CPU us/event", "low", rate["server_cpu_us_per_event"]),
        ]
        if "redis_cpu_us_per_event" in rate:
            out.append(
                (f"{label} {name} redis CPU us/event", "low", rate["redis_cpu_us_per_event"])
            )
    burst = m["burst"]
    head = f"{label} burst {burst['events']}x{burst['streams']}"
    out += [
        (f"{head} as 1 publish_many CPU ms", "low", burst["many_cpu_ms"]),
        (f"{head} as {burst['events']} publish CPU ms", "low", burst["single_cpu_ms"]),
        (f"{head} many/single CPU", "low", burst["many_over_single"]),
    ]
    if "many_redis_cpu_ms" in burst:
        out += [
            (f"{head} as 1 publish_many redis CPU ms", "low", burst["many_redis_cpu_ms"]),
            (
                f"{head} as {burst['events']} publish redis CPU ms",
                "low",
                burst["single_redis_cpu_ms"],
            ),
        ]
    out.append((f"{head} lost", "low", burst["lost"]))
    return out


def _full_rows(result: dict[str, Any]) -> list[Row]:
    out = _idle_rows(result)
    p = result["metrics"].get("projection")
    if p:
        head = f"{result['label']} projected to n={p['streams']:,}"
        out += [
            (f"{head} RSS MB", "low", p["rss_mb"]),
            (f"{head} RSS/stream KB (slope)", "low", p["rss_per_stream_kb"]),
            (f"{head} server CPU % (slope)", "low", p["cpu_pct"]),
            (f"{head} heartbeat CPU % (us/heartbeat)", "low", p["heartbeat_cpu_pct"]),
            (f"{result['label']} CPU us/heartbeat", "low", p["cpu_us_per_heartbeat"]),
        ]
    return out


def _storm_rows(result: dict[str, Any]) -> list[Row]:
    m = result["metrics"]
    head = f"{result['label']} n={m['streams']} {m['channels']}ch"
    return [
        (f"{head} back p50/max s", "", f"{m['back_p50_s']:.2f}/{m['back_max_s']:.2f}"),
        (f"{head} caught up p50 s", "low", m["caught_up_p50_s"]),
        (f"{head} caught up max s", "low", m["caught_up_max_s"]),
        (f"{head} peak reconnects/100ms", "", max(m["reconnects_per_bucket"], default=0)),
        (f"{head} farewells/streams", "", f"{m['farewells']}/{m['streams']}"),
        (f"{head} events published", "", m["published"]),
        (f"{head} lost", "low", m["lost"]),
        (f"{head} duplicated", "low", m["duplicated"]),
    ]


def _churn_rows(result: dict[str, Any]) -> list[Row]:
    m = result["metrics"]
    head = f"{result['label']} n={m['streams']} {m['rate']:g}/s"
    quiet, churned = m["quiet"], m["churn"]
    return [
        (f"{head} quiet p50/p99 ms", "", f"{quiet['p50_ms']:.1f}/{quiet['p99_ms']:.1f}"),
        (f"{head} churn p50/p99 ms", "", f"{churned['p50_ms']:.1f}/{churned['p99_ms']:.1f}"),
        (f"{head} p99 churn/quiet", "low", m["p99_ratio"]),
        (f"{head} churned conn/s", "high", m["churn_per_s"]),
        (f"{head} server CPU ms/churned", "low", m["server_cpu_ms_per_churned"]),
        (f"{head} lost", "low", quiet["lost"] + churned["lost"]),
        (f"{head} RSS before/after MB", "", "/".join(
            f"{m[key] / 2**20:.1f}" for key in ("rss_before", "rss_after")
        )),
        (f"{head} fds before/after", "", f"{m['fds_before']}/{m['fds_after']}"),
    ]  # fmt: skip


#: rows of the scenarios whose metrics are not those of ``latency`` or ``slow``
_ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "full": _full_rows,
    "storm": _storm_rows,
    "churn": _churn_rows,
}


def _metric_rows(result: dict[str, Any]) -> list[Row]:
    m = result["metrics"]
    label = result["label"]
    if not m:
        return []
    if result["scenario"] in _ROWS:
        return _ROWS[result["scenario"]](result)
    if result["scenario"] == "idle":
        return _idle_rows(result)
    if result["scenario"] == "fanout":
        return [
            (f"{label} n={m['streams']} deliveries/s", "high", m["deliveries_per_s"]),
            (f"{label} n={m['streams']} deliveries/CPU-s", "high", m["deliveries_per_cpu_s"]),
            (f"{label} n={m['streams']} CPU us/delivery", "low", m["cpu_us_per_delivery"]),
            (f"{label} n={m['streams']} lost", "low", m["lost"]),
        ]
    if result["scenario"] == "vanish":
        return _vanish_rows(result)
    if result["scenario"] == "publish":
        return _publish_rows(result)
    if result["scenario"] == "latency":
        head = f"{label} n={m['streams']} {m['rate']:g}/s"
        return [
            (f"{head} p50 ms", "low", m["p50_ms"]),
            (f"{head} p99 ms", "low", m["p99_ms"]),
            (f"{head} max ms", "low", m["max_ms"]),
            (f"{head} lost", "low", m["lost"]),
        ]
    head = f"{label} {m['events']}x{m['size']}B"
    after = m["slow_dropped_after_s"]
    return [
        (f"{head} RSS growth MB", "low", m["rss_growth_mb"]),
        (f"{head} others lost", "low", m["lost"]),
        (f"{head} others p99 ms", "low", m["p99_ms"]),
        (f"{head} slow dropped after s", "", after if after is not None else "never"),
    ]


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table: a dict per figure, its value under each server's name, ratios beside."""
    table: dict[str, dict[str, Any]] = {}
    for result in results:
        for label, better, value in _metric_rows(result):
            row = table.setdefault(label, {"metric": label, "better": better})
            row[result["server"]] = value
        readings = meters(result)
        if readings:
            for name, key in (
                ("loadgen CPU %", "loadgen_cpu_pct"),
                ("server waited for CPU %", "server_wait_pct"),
                ("redis CPU %", "redis_cpu_pct"),
            ):
                if not any(key in m for m in readings):
                    continue
                label = f"{result['label']} {name}"
                row = table.setdefault(label, {"metric": label, "better": ""})
                row[result["server"]] = max(m.get(key, math.nan) for m in readings)
    for row in table.values():
        real = row.get(REAL)
        for reference in REFERENCES:
            other = row.get(reference)
            if (
                isinstance(real, (int, float))
                and isinstance(other, (int, float))
                and other
                and row["better"]
            ):
                row[f"real/{reference}"] = real / other
    return list(table.values())


def meters(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every meter reading of a run: one per step, per publish mode, or per phase."""
    metrics = result.get("metrics", {})
    if "steps" in metrics:
        return [step["meter"] for step in metrics["steps"]]
    if "rates" in metrics:
        return [rate["meter"] for rate in metrics["rates"].values()]
    if "quiet" in metrics and "churn" in metrics:
        return [metrics["quiet"]["meter"], metrics["churn"]["meter"]]
    return [metrics["meter"]] if "meter" in metrics else []
