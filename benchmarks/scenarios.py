"""The scenarios, as run by the load generator against one server.

Each scenario is an ``async`` function taking the server's host and port and a
spec (``dict`` of parameters, defaults below) and returning a JSON-able
result: ``{"metrics": ..., "checks": ..., "warnings": [...]}``. Everything a
scenario opens it closes in ``finally``; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from array import array
from collections.abc import Callable, Coroutine
from typing import Any

from .churn import churn
from .client import SlowClient, StreamClient
from .procinfo import nofile_limit, proc_sample
from .publishing import publish
from .session import Session, close_all, count_loss, percentiles
from .storm import storm
from .vanish import vanish

__all__ = ["SCENARIOS", "Scenario", "projection"]

#: ``scenario(host, port, spec)``: the result
Scenario = Callable[[str, int, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]


# -- 1. idle capacity --------------------------------------------------------


async def idle(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Open streams in steps, then watch each step idle: memory, CPU, heartbeats.

    A stream silent for longer than the interval plus ``late_after_s`` (by
    default a quarter of the interval, at least 0.5 s) is late.
    """
    levels: list[int] = spec.get("levels", [1000, 5000, 10000])
    window: float = spec.get("window", 30.0)
    session = Session(host, port, spec)
    stats = await session.stats()
    pid, interval = int(stats["pid"]), float(stats["heartbeat_interval"])
    tolerance = interval + spec.get("late_after_s", max(0.5, 0.25 * interval))
    await session.warm_up()
    base = proc_sample(pid, time.time())
    streams: list[StreamClient] = []
    steps = []
    try:
        for level in levels:
            wanted = level - len(streams)
            ramp_cpu = time.process_time()
            added, failed, elapsed = await session.open_streams(wanted, "idle")
            ramp_cpu = (time.process_time() - ramp_cpu) / max(elapsed, 1e-9)
            streams += added
            await asyncio.sleep(1.0)  # let the server settle before measuring memory
            for stream in streams:
                stream.reset_counts()
            meter = session.meter(pid)
            await asyncio.sleep(window)
            measured = meter.stop()
            now = time.time()
            late = sum(1 for s in streams if max(s.max_gap, now - s.last_rx) > tolerance)
            steps.append(
                {
                    "streams": len(streams),
                    "failed": failed,
                    "ramp_per_s": len(added) / elapsed,
                    # Near 100%: the generator, not the server, set the ramp rate.
                    "ramp_loadgen_cpu_pct": 100 * ramp_cpu,
                    "rss_mb": measured["rss_before"] / 2**20,
                    "rss_per_stream_kb": (measured["rss_before"] - base.rss) / len(streams) / 1024
                    if streams
                    else math.nan,
                    "server_cpu_pct": measured["server_cpu_pct"],
                    "heartbeats": sum(s.heartbeats for s in streams),
                    "heartbeats_expected": int(len(streams) * window / interval),
                    "late_streams": late,
                    "closed_streams": sum(s.closed for s in streams),
                    "max_silence_s": max((s.max_gap for s in streams), default=0.0),
                    "meter": measured,
                }
            )
    finally:
        close_all(streams)
    return {
        "metrics": {
            "heartbeat_interval": interval,
            "window_s": window,
            "late_after_s": tolerance - interval,
            "steps": steps,
        },
        "checks": {
            "all_streams_opened": all(step["failed"] == 0 for step in steps),
            "all_heartbeats": all(
                step["late_streams"] == 0 and step["closed_streams"] == 0 for step in steps
            ),
        },
        "warnings": session.warnings,
    }


async def full(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """The ``idle`` scenario up to a full process, and what its slope says of ``project`` streams.

    Memory and CPU are fitted to a line over the steps (least squares), and the
    line is carried on to ``project`` streams per worker; the heartbeat CPU
    also from what one heartbeat cost at the largest step.
    """
    top = max(spec.get("levels", [1000, 5000, 10000]))
    pid = int((await Session(host, port, spec).stats())["pid"])
    # One descriptor per stream on each side, and a few for everything else.
    short = {
        who: limit
        for who, limit in (("generator", nofile_limit(os.getpid())), ("server", nofile_limit(pid)))
        if limit < top + DESCRIPTOR_MARGIN
    }
    if short:
        return {
            "metrics": {"streams": top, "nofile": short},
            "checks": {"descriptors": False},
            "warnings": [
                f"{top:,} streams need {top + DESCRIPTOR_MARGIN:,} open files, the limit is {short}"
            ],
        }
    result = await idle(host, port, spec)
    steps = result["metrics"]["steps"]
    project: int = spec.get("project", 100_000)
    if len(steps) >= 2:
        result["metrics"]["projection"] = projection(
            steps, project, result["metrics"]["heartbeat_interval"]
        )
    else:
        result["warnings"].append("fewer than two steps: no slope, no projection")
    return result


#: Descriptors a process needs besides one per stream (listening socket,
#: logs, control connections, epoll, pipes).
DESCRIPTOR_MARGIN = 100


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``ys`` against ``xs``."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return slope, mean_y - slope * mean_x


def projection(steps: list[dict[str, Any]], streams: int, interval: float) -> dict[str, Any]:
    """Memory and heartbeat CPU at ``streams`` streams, from the idle ``steps``' slope."""
    counts = [float(step["streams"]) for step in steps]
    rss_slope, rss_base = _fit(counts, [step["meter"]["rss_before"] for step in steps])
    cpu_slope, cpu_base = _fit(counts, [step["server_cpu_pct"] for step in steps])
    top = steps[-1]
    per_heartbeat = top["meter"]["server_cpu_s"] / max(top["heartbeats"], 1)
    return {
        "streams": streams,
        "heartbeat_interval": interval,
        "rss_per_stream_kb": rss_slope / 1024,
        "rss_mb": (rss_base + rss_slope * streams) / 2**20,
        "cpu_pct": cpu_base + cpu_slope * streams,
        "cpu_us_per_heartbeat": 1e6 * per_heartbeat,
        "heartbeat_cpu_pct": 100 * per_heartbeat * streams / interval,
        "heartbeats_per_s": streams / interval,
    }


# -- 2. fan-out throughput ---------------------------------------------------------


async def fanout(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Publish to one channel as fast as the slowest of ``streams`` clients keeps up."""
    count: int = spec.get("streams", 1000)
    size: int = spec.get("size", 64)
    duration: float = spec.get("duration", 8.0)
    warmup: int = spec.get("warmup_events", 200)
    ceiling: int = spec.get("max_events", 1_000_000)
    session = Session(host, port, spec)
    pid, lead = await session.ready(spec.get("lead", 0))
    streams, failed, _ = await session.open_streams(count, "fanout")
    try:
        await session.run_job(
            streams, n=max(warmup, 2 * lead), channel="fanout", size=size, lead=lead
        )
        for stream in streams:
            stream.reset_counts()
        meter = session.meter(pid)
        # Publish for `duration` seconds (at most `max_events`), then wait for the rest.
        job = await session.run_job(
            streams, n=ceiling, channel="fanout", size=size, lead=lead,
            timeout=duration + 60, duration=duration,
        )  # fmt: skip
        measured = meter.stop()
        events = job["last"] - job["first"] + 1
        deliveries = sum(s.events for s in streams)
        loss = count_loss(streams, events)
    finally:
        close_all(streams)
    wall = measured["wall_s"]
    return {
        "metrics": {
            "streams": len(streams),
            "events": events,
            "size": size,
            "lead": lead,
            "deliveries": deliveries,
            "deliveries_per_s": deliveries / wall,
            "cpu_us_per_delivery": 1e6 * measured["server_cpu_s"] / max(deliveries, 1),
            # What one whole core would deliver at that cost: less sensitive
            # than deliveries/s to CPU time taken by other processes.
            "deliveries_per_cpu_s": deliveries / max(measured["server_cpu_s"], 1e-9),
            **loss,
            "meter": measured,
        },
        "checks": {
            "all_streams_opened": failed == 0,
            "no_loss": loss["lost"] == 0 and job["complete"],
        },
        "warnings": session.warnings,
    }


# -- 3. latency ------------------------------------------------------------------


async def latency(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Publish-to-receive time of every event on every stream at a steady rate."""
    count: int = spec.get("streams", 1000)
    rate: float = spec.get("rate", 50.0)
    duration: float = spec.get("duration", 10.0)
    size: int = spec.get("size", 64)
    session = Session(host, port, spec)
    pid, lead = await session.ready(spec.get("lead", 0))
    streams, failed, _ = await session.open_streams(count, "latency")
    latencies: array[float] = array("d")
    events = int(rate * duration)
    try:
        await session.run_job(
            streams, n=max(10, int(rate)), channel="latency", size=size, rate=rate, lead=lead
        )
        for stream in streams:
            stream.reset_counts()
            stream.latencies = latencies
        meter = session.meter(pid)
        job = await session.run_job(
            streams, n=events, channel="latency", size=size, rate=rate, lead=lead,
            timeout=duration + 30,
        )  # fmt: skip
        measured = meter.stop()
        loss = count_loss(streams, events)
        disorder = sum(s.disorder for s in streams)
    finally:
        close_all(streams)
    return {
        "metrics": {
            "streams": len(streams),
            "rate": rate,
            "events": events,
            "samples": len(latencies),
            **percentiles(latencies),
            "disorder": disorder,
            **loss,
            "meter": measured,
        },
        "checks": {
            "all_streams_opened": failed == 0,
            "no_loss": loss["lost"] == 0 and disorder == 0 and job["complete"],
        },
        "warnings": session.warnings,
    }


# -- 4. slow consumer ----------------------------------------------------------


async def slow(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One client stops reading while ``events`` are published to it and ``others``."""
    count: int = spec.get("others", 50)
    events: int = spec.get("events", 20_000)
    size: int = spec.get("size", 1024)
    rate: float = spec.get("rate", 2000.0)
    session = Session(host, port, spec)
    pid, lead = await session.ready(spec.get("lead", 0))
    streams, failed, _ = await session.open_streams(count, "slow")
    stuck = SlowClient(host, port, "/stream?channel=slow")
    latencies: array[float] = array("d")
    peak = 0
    sampling = True

    async def sample_rss() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, proc_sample(pid, 0).rss)
            await asyncio.sleep(0.05)

    sampler: asyncio.Task[None] | None = None
    try:
        # Warm up before the slow client joins, so its buffers start empty.
        await session.run_job(streams, n=200, channel="slow", size=size, rate=rate, lead=lead)
        await stuck.connect(timeout=30)
        for stream in streams:
            stream.reset_counts()
            stream.latencies = latencies
        meter = session.meter(pid)
        peak = meter.start.rss
        sampler = asyncio.create_task(sample_rss())
        job = await session.run_job(
            streams, n=events, channel="slow", size=size, rate=rate, lead=lead,
            timeout=events / rate + 60,
        )  # fmt: skip
        measured = meter.stop()
        loss = count_loss(streams, events)
        after = await session.stats()
        await stuck.drain(timeout=10)
    finally:
        sampling = False
        if sampler is not None:
            await sampler
        stuck.close()
        close_all(streams)
    drops = [d for d in after.get("slow_drops", []) if d["seq"] >= job["first"] - 1]
    started_at = float(after["publisher"]["started_at"])
    dropped = bool(drops)
    return {
        "metrics": {
            "others": len(streams),
            "events": events,
            "size": size,
            "rate": rate,
            "rss_growth_mb": (peak - measured["rss_before"]) / 2**20,
            "rss_growth_end_mb": (measured["rss_after"] - measured["rss_before"]) / 2**20,
            **percentiles(latencies),
            **loss,
            "slow_dropped": dropped,
            "slow_dropped_after_s": drops[0]["time"] - started_at if dropped else None,
            "slow_dropped_after_events": drops[0]["seq"] - job["first"] + 1 if dropped else None,
            "slow_received_events": stuck.events,
            "slow_saw_eof": stuck.eof,
            "meter": measured,
        },
        "checks": {
            "all_streams_opened": failed == 0,
            "others_complete": loss["lost"] == 0 and job["complete"],
            "slow_dropped": dropped and stuck.eof,
        },
        "warnings": session.warnings,
    }


SCENARIOS: dict[str, Scenario] = {
    "idle": idle,
    "fanout": fanout,
    "latency": latency,
    "slow": slow,
    "vanish": vanish,
    "publish": publish,
    "full": full,
    "storm": storm,
    "churn": churn,
}
