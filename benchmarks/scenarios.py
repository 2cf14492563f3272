"""The scenarios, as run by the load generator against one server.

Each scenario is an ``async`` function taking the server's port and a spec
(``dict`` of parameters, defaults below) and returning a JSON-able result:
``{"metrics": ..., "checks": ..., "warnings": [...]}``. Everything a scenario
opens it closes in ``finally``; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from array import array
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .client import SlowClient, StreamClient, control, stream_request
from .procinfo import busy_fraction, cpu_sample, proc_sample, run_delay

__all__ = ["SCENARIOS", "Session"]

#: Loadgen CPU share above which its figures are not to be trusted.
SATURATED = 0.9


class Meter:
    """Server CPU and RSS, generator CPU and CPU-wide load over an interval."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = proc_sample(pid, time.time())
        self.cpus = cpu_sample()
        self.own = time.process_time()
        self.server_waited = run_delay(pid)
        self.own_waited = run_delay(os.getpid())

    def stop(self) -> dict[str, Any]:
        end = proc_sample(self.pid, time.time())
        cpus = cpu_sample()
        wall = max(end.wall - self.start.wall, 1e-9)
        server = (end.cpu - self.start.cpu) / wall
        loadgen = (time.process_time() - self.own) / wall
        result = {
            "wall_s": wall,
            "server_cpu_s": end.cpu - self.start.cpu,
            "server_cpu_pct": 100 * server,
            "loadgen_cpu_pct": 100 * loadgen,
            # Time spent ready to run while another process had the CPU.
            "server_wait_pct": 100 * (run_delay(self.pid) - self.server_waited) / wall,
            "loadgen_wait_pct": 100 * (run_delay(os.getpid()) - self.own_waited) / wall,
            "rss_before": self.start.rss,
            "rss_after": end.rss,
        }
        # With the server alone on one CPU and the generator alone on another,
        # whatever else kept those CPUs busy is foreign load: noise to report.
        server_cpus = os.sched_getaffinity(self.pid)
        own_cpus = os.sched_getaffinity(0)
        if len(server_cpus) == 1 and len(own_cpus) == 1 and server_cpus != own_cpus:
            (server_cpu,), (own_cpu,) = server_cpus, own_cpus
            result["foreign_server_cpu_pct"] = 100 * max(
                0.0, busy_fraction(self.cpus, cpus, server_cpu) - server
            )
            result["foreign_loadgen_cpu_pct"] = 100 * max(
                0.0, busy_fraction(self.cpus, cpus, own_cpu) - loadgen
            )
        return result


class Session:
    """The generator's view of one server: streams, control calls, jobs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.warnings: list[str] = []

    async def stats(self) -> dict[str, Any]:
        return await control(self.port, "GET", "/bench/stats")

    async def open_streams(
        self, n: int, channel: str, *, concurrency: int = 200, timeout: float = 120.0
    ) -> tuple[list[StreamClient], int, float]:
        """Open ``n`` streams; return them, how many failed, and the seconds it took.

        A stream counts as open when its first bytes have arrived.
        """
        loop = asyncio.get_running_loop()
        request = stream_request(f"/stream?channel={channel}")
        gate = asyncio.Semaphore(concurrency)
        clients: list[StreamClient] = []
        errors: list[str] = []

        async def one() -> None:
            async with gate:
                client = StreamClient(request, loop.create_future())
                try:
                    await loop.create_connection(lambda: client, "127.0.0.1", self.port)
                    clients.append(client)
                    await client.ready
                except (OSError, ConnectionError) as exc:
                    errors.append(repr(exc))

        began = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(one() for _ in range(n)))
        except TimeoutError:
            errors.append(f"timed out after {timeout} s")
        elapsed = time.monotonic() - began
        good = [c for c in clients if c.ready.done() and not c.ready.exception()]
        for client in clients:
            if not client.ready.done() or client.ready.exception():
                client.close()
        failed = n - len(good)
        if failed:
            self.warnings.append(f"{failed} of {n} streams failed to open: {errors[:3]}")
        return good, failed, elapsed

    async def run_job(
        self,
        streams: Sequence[StreamClient],
        *,
        n: int,
        channel: str,
        size: int = 64,
        rate: float = 0.0,
        lead: int = 0,
        timeout: float = 60.0,
        duration: float | None = None,
    ) -> dict[str, Any]:
        """Publish ``n`` events in the server and wait until every stream has them.

        While waiting, report the slowest stream's progress so that a ``lead``
        bounded publisher can go on. With ``duration``, stop the publisher after
        that many seconds and wait for what it had published by then.
        """
        job = await control(
            self.port,
            "POST",
            f"/bench/publish?n={n}&rate={rate}&size={size}&lead={lead}&channel={channel}",
        )
        first, last = int(job["first"]), int(job["last"])
        # A paced job rarely meets its lead: report less often, to disturb it less.
        step = max(1, lead // 2 if rate else lead // 4)
        reported = first - 1
        began = time.monotonic()
        deadline = began + timeout
        checked_closed = began
        complete = False
        stop_at = began + duration if duration is not None else math.inf
        while True:
            low = min((s.last_seq for s in streams), default=last)
            if low >= last:
                complete = True
                break
            now = time.monotonic()
            if now >= stop_at:
                stop_at = math.inf
                last = int((await control(self.port, "POST", "/bench/stop"))["seq"])
                continue
            if now > deadline:
                self.warnings.append(
                    f"job {first}..{last} incomplete after {timeout} s (slowest at {low})"
                )
                break
            if now - checked_closed > 0.1:
                checked_closed = now
                closed = sum(s.closed for s in streams)
                if closed:
                    self.warnings.append(f"{closed} streams closed during job {first}..{last}")
                    break
            if lead and low - reported >= step:
                await control(self.port, "POST", f"/bench/progress?acked={low}")
                reported = low
            await asyncio.sleep(0.002)
        return {
            "first": first,
            "last": last,
            "complete": complete,
            "elapsed": time.monotonic() - began,
        }

    async def warm_up(self) -> None:
        """One stream opened and closed, so lazy imports and first-request work are done."""
        streams, _, _ = await self.open_streams(1, "warmup", timeout=30)
        for stream in streams:
            stream.close()
        await asyncio.sleep(0.3)

    def lead_for(self, stats: dict[str, Any], requested: int) -> int:
        if requested:
            return requested
        queue_size = int(stats.get("queue_size") or 256)
        return max(1, min(512, queue_size // 2))


def _close_all(streams: Sequence[StreamClient]) -> None:
    for stream in streams:
        stream.close()


def _percentiles(values: array[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
    ordered = sorted(values)

    def at(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": 1000 * ordered[-1]}


def _loss(streams: Sequence[StreamClient], events: int) -> dict[str, int]:
    received = sum(s.events for s in streams)
    return {
        "lost": events * len(streams) - received,
        "incomplete_streams": sum(1 for s in streams if s.events != events),
    }


# -- 1. idle capacity --------------------------------------------------------


async def idle(port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Open streams in steps, then watch each step idle: memory, CPU, heartbeats."""
    levels: list[int] = spec.get("levels", [1000, 5000, 10000])
    window: float = spec.get("window", 30.0)
    session = Session(port)
    stats = await session.stats()
    pid, interval = int(stats["pid"]), float(stats["heartbeat_interval"])
    tolerance = interval + max(0.5, 0.25 * interval)
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
            meter = Meter(pid)
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
        _close_all(streams)
    return {
        "metrics": {"heartbeat_interval": interval, "window_s": window, "steps": steps},
        "checks": {
            "all_streams_opened": all(step["failed"] == 0 for step in steps),
            "all_heartbeats": all(
                step["late_streams"] == 0 and step["closed_streams"] == 0 for step in steps
            ),
        },
        "warnings": session.warnings,
    }


# -- 2. fan-out throughput ---------------------------------------------------------


async def fanout(port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Publish to one channel as fast as the slowest of ``streams`` clients keeps up."""
    count: int = spec.get("streams", 1000)
    size: int = spec.get("size", 64)
    duration: float = spec.get("duration", 8.0)
    warmup: int = spec.get("warmup_events", 200)
    ceiling: int = spec.get("max_events", 1_000_000)
    session = Session(port)
    stats = await session.stats()
    pid = int(stats["pid"])
    lead = session.lead_for(stats, spec.get("lead", 0))
    await session.warm_up()
    streams, failed, _ = await session.open_streams(count, "fanout")
    try:
        await session.run_job(
            streams, n=max(warmup, 2 * lead), channel="fanout", size=size, lead=lead
        )
        for stream in streams:
            stream.reset_counts()
        meter = Meter(pid)
        # Publish for `duration` seconds (at most `max_events`), then wait for the rest.
        job = await session.run_job(
            streams, n=ceiling, channel="fanout", size=size, lead=lead,
            timeout=duration + 60, duration=duration,
        )  # fmt: skip
        measured = meter.stop()
        events = job["last"] - job["first"] + 1
        deliveries = sum(s.events for s in streams)
        loss = _loss(streams, events)
    finally:
        _close_all(streams)
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


async def latency(port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Publish-to-receive time of every event on every stream at a steady rate."""
    count: int = spec.get("streams", 1000)
    rate: float = spec.get("rate", 50.0)
    duration: float = spec.get("duration", 10.0)
    size: int = spec.get("size", 64)
    session = Session(port)
    stats = await session.stats()
    pid = int(stats["pid"])
    lead = session.lead_for(stats, spec.get("lead", 0))
    await session.warm_up()
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
        meter = Meter(pid)
        job = await session.run_job(
            streams, n=events, channel="latency", size=size, rate=rate, lead=lead,
            timeout=duration + 30,
        )  # fmt: skip
        measured = meter.stop()
        loss = _loss(streams, events)
        disorder = sum(s.disorder for s in streams)
    finally:
        _close_all(streams)
    return {
        "metrics": {
            "streams": len(streams),
            "rate": rate,
            "events": events,
            "samples": len(latencies),
            **_percentiles(latencies),
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


async def slow(port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One client stops reading while ``events`` are published to it and ``others``."""
    count: int = spec.get("others", 50)
    events: int = spec.get("events", 20_000)
    size: int = spec.get("size", 1024)
    rate: float = spec.get("rate", 2000.0)
    session = Session(port)
    stats = await session.stats()
    pid = int(stats["pid"])
    lead = session.lead_for(stats, spec.get("lead", 0))
    await session.warm_up()
    streams, failed, _ = await session.open_streams(count, "slow")
    stuck = SlowClient(port, "/stream?channel=slow")
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
        meter = Meter(pid)
        peak = meter.start.rss
        sampler = asyncio.create_task(sample_rss())
        job = await session.run_job(
            streams, n=events, channel="slow", size=size, rate=rate, lead=lead,
            timeout=events / rate + 60,
        )  # fmt: skip
        measured = meter.stop()
        loss = _loss(streams, events)
        after = await session.stats()
        await stuck.drain(timeout=10)
    finally:
        sampling = False
        if sampler is not None:
            await sampler
        stuck.close()
        _close_all(streams)
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
            **_percentiles(latencies),
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


SCENARIOS: dict[str, Callable[[int, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "idle": idle,
    "fanout": fanout,
    "latency": latency,
    "slow": slow,
}
