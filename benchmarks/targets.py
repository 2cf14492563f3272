"""The targets the real server is meant to meet, against what was measured.

Each target says what was measured and whether it was met. They are set for
one worker on two cores at full scale: quick runs are too small for them to
mean anything, so the runner judges full runs only.
"""

from __future__ import annotations

import math
from typing import Any

from .servers import FLOOR, REAL, SEND

__all__ = ["targets"]


def _find(
    results: list[dict[str, Any]], scenario: str, server: str, label: str | None = None
) -> dict[str, Any] | None:
    for result in results:
        if (
            result["scenario"] == scenario
            and result["server"] == server
            and result.get("metrics")
            and (label is None or result["label"] == label)
        ):
            return result
    return None


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real server's targets (one worker, two cores) against what was measured."""
    out: list[dict[str, Any]] = []

    def target(name: str, value: Any, ok: bool | None) -> None:
        out.append({"target": name, "measured": value, "met": ok})

    def step_at(result: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
        steps = result["metrics"]["steps"] if result else []
        return next((s for s in steps if s["streams"] == n), None)

    idle15 = step_at(_find(results, "idle", REAL, "idle hb=15s"), 10000)
    if idle15:
        kb = idle15["rss_per_stream_kb"]
        target("memory per idle stream at 10,000 <= 14 KB", f"{kb:.1f} KB", kb <= 14)
        ramp = idle15["ramp_per_s"]
        floor = step_at(_find(results, "idle", FLOOR, "idle hb=15s"), 10000)
        beside = f" (a bare Flask stream route: {floor['ramp_per_s']:,.0f}/s)" if floor else ""
        target(
            "new streams accepted >= 5,000/s on one worker (ramp to 10,000)",
            f"{ramp:,.0f}/s{beside}",
            ramp >= 5000,
        )
    idle1 = step_at(_find(results, "idle", REAL, "idle hb=1s"), 10000)
    if idle1:
        cpu, missed = idle1["server_cpu_pct"], idle1["late_streams"] + idle1["closed_streams"]
        target(
            "heartbeats at 10,000 / 1 s all delivered at <= 15% of a core",
            f"{cpu:.1f}% CPU, {missed} streams late or closed",
            cpu <= 15 and missed == 0,
        )
    fan = _find(results, "fanout", REAL)
    if fan:
        rate = fan["metrics"]["deliveries_per_s"]
        ceiling = _find(results, "fanout", SEND)
        # Compared per CPU-second: deliveries/s also depends on how much of
        # its CPU each server got, which other processes can change.
        ratio = (
            fan["metrics"]["deliveries_per_cpu_s"] / ceiling["metrics"]["deliveries_per_cpu_s"]
            if ceiling
            else math.nan
        )
        target(
            "fan-out >= 200,000 deliveries/s at 1,000 streams and >= 0.75x the send ceiling",
            f"{rate:,.0f}/s, {ratio:.2f}x the ceiling's deliveries per CPU-second",
            rate >= 200_000 and (ceiling is None or ratio >= 0.75),
        )
    lat = _find(results, "latency", REAL)
    if lat:
        p99 = lat["metrics"]["p99_ms"]
        target("latency p99 <= 40 ms at 1,000 streams x 50 events/s", f"{p99:.1f} ms", p99 <= 40)
    slow = _find(results, "slow", REAL)
    if slow:
        m = slow["metrics"]
        target(
            "slow consumer: RSS growth <= 5 MB, the others complete",
            f"{m['rss_growth_mb']:.1f} MB, {m['lost']} lost",
            m["rss_growth_mb"] <= 5 and slow["checks"].get("others_complete", False),
        )
    gone = _find(results, "vanish", REAL)
    if gone and "released" in gone["metrics"]:
        m = gone["metrics"]
        # A heartbeat within the interval, then the dead-peer bound (the interval again).
        bound = 4 * m["heartbeat_interval"]
        target(
            f"vanished peers: all {m['streams']:,} released within {bound:g} s of the cut",
            f"{m['released']:,} released, the last after {m['release_max_s']:.1f} s",
            m["released"] == m["streams"] and m["release_max_s"] <= bound,
        )
    full = _find(results, "full", REAL)
    if full and full["metrics"].get("steps"):
        top = full["metrics"]["steps"][-1]
        late = top["late_streams"] + top["closed_streams"]
        target(
            f"{top['streams']:,} idle streams on one worker: every heartbeat at most"
            f" {full['metrics']['late_after_s']:g} s past due",
            f"{late} streams late or closed, {top['heartbeats']:,}/"
            f"{top['heartbeats_expected']:,} heartbeats, {top['server_cpu_pct']:.1f}% CPU",
            late == 0 and full["checks"].get("all_streams_opened", False),
        )
    storm = _find(results, "storm", REAL)
    if storm:
        m = storm["metrics"]
        target(
            f"reconnect storm: all {m['streams']:,} streams back and caught up within 10 s"
            " of the HUP, nothing lost or duplicated",
            f"the last after {m['caught_up_max_s']:.1f} s, {m['lost']} lost,"
            f" {m['duplicated']} duplicated",
            m["caught_up_max_s"] <= 10 and m["lost"] == 0 and m["duplicated"] == 0,
        )
    churned = _find(results, "churn", REAL)
    if churned:
        m = churned["metrics"]
        # The p99 target means little if the churn asked for was not reached.
        target(
            f"{m['churn_rate']:,.0f} connects+disconnects/s reached beside the steady streams",
            f"{m['churn_per_s']:,.0f}/s ({m['server_cpu_ms_per_churned']:.2f} ms server CPU each)",
            m["churn_per_s"] >= 0.95 * m["churn_rate"],
        )
        ratio = m["p99_ratio"]
        target(
            f"steady p99 during the churn ({m['churn_per_s']:,.0f}/s) <= 2x the quiet p99",
            f"{ratio:.2f}x ({m['quiet']['p99_ms']:.1f} -> {m['churn']['p99_ms']:.1f} ms)"
            if ratio is not None
            else "no samples",
            ratio is not None and ratio <= 2,
        )
        grown = (m["rss_after"] - m["rss_before"]) / m["rss_before"]
        target(
            "after the churn: descriptors back to baseline, RSS within 5% of it",
            f"fds {m['fds_before']} -> {m['fds_after']}, RSS {100 * grown:+.1f}%",
            m["fds_after"] <= m["fds_before"] and grown <= 0.05,
        )
    published = _find(results, "publish", REAL)
    if published:
        ratio = published["metrics"]["burst"]["many_over_single"]
        target(
            "a burst of 10 events to 1,000 streams as one publish_many costs <= 0.5x ten publishes",
            f"{ratio:.2f}x",
            ratio <= 0.5,
        )
        rates = published["metrics"]["rates"]
        if "redis_cpu_us_per_event" in rates["single"]:  # the Redis path (--broker redis)
            single, many = rates["single"]["events_per_s"], rates["many"]["events_per_s"]
            target("Redis: single publishes >= 5,000/s", f"{single:,.0f}/s", single >= 5000)
            target("Redis: publish_many >= 50,000 events/s", f"{many:,.0f}/s", many >= 50000)
    return out
