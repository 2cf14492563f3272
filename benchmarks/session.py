"""What every scenario uses: the generator's session with one server, and its meter.

:class:`Session` opens streams, calls the control routes and runs publishing
jobs; :class:`Meter` reads the server's (and the broker's) CPU and RSS from
``/proc`` over an interval, with the generator's own CPU beside them.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from .client import StreamClient, control, stream_request
from .procinfo import busy_fraction, cpu_sample, cpu_seconds, proc_sample, run_delay

__all__ = ["SATURATED", "Meter", "Session", "close_all", "count_loss", "percentiles"]

#: Loadgen CPU share above which its figures are not to be trusted.
SATURATED = 0.9


class Meter:
    """Server CPU and RSS, generator CPU and CPU-wide load over an interval.

    :param others: more processes whose CPU to report, by name (``redis``:
        ``redis_cpu_s`` and ``redis_cpu_pct`` in the result).
    """

    def __init__(self, pid: int, others: Mapping[str, int] | None = None) -> None:
        self.pid = pid
        self.others = dict(others or {})
        self.others_cpu = {name: cpu_seconds(other) for name, other in self.others.items()}
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
        for name, other in self.others.items():
            used = cpu_seconds(other) - self.others_cpu[name]
            result[f"{name}_cpu_s"] = used
            result[f"{name}_cpu_pct"] = 100 * used / wall
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

    def __init__(self, host: str, port: int, spec: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self.port = port
        #: other processes to meter, from the spec (the runner's ``redis_pid``)
        self.others = {"redis": int(spec["redis_pid"])} if spec and "redis_pid" in spec else {}
        self.warnings: list[str] = []

    async def stats(self) -> dict[str, Any]:
        return await self.control("GET", "/bench/stats")

    async def control(self, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
        return await control(self.port, method, path, timeout, host=self.host)

    def meter(self, pid: int) -> Meter:
        """A :class:`Meter` of the server ``pid`` and the broker, if the runner started one."""
        return Meter(pid, self.others)

    async def open_streams(
        self, n: int, channel: str, *, concurrency: int = 200, timeout: float = 120.0
    ) -> tuple[list[StreamClient], int, float]:
        """Open ``n`` streams; return them, how many failed, and the seconds it took.

        A stream counts as open when its first bytes have arrived.
        """
        loop = asyncio.get_running_loop()
        request = stream_request(f"/stream?channel={channel}", self.host)
        gate = asyncio.Semaphore(concurrency)
        clients: list[StreamClient] = []
        errors: list[str] = []

        async def one() -> None:
            async with gate:
                client = StreamClient(request, loop.create_future())
                try:
                    await loop.create_connection(lambda: client, self.host, self.port)
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
        # A stream cut short by the timeout has its wait cancelled, not failed.
        good = [c for c in clients if _opened(c)]
        for client in clients:
            if not _opened(client):
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
                last = int((await self.control("POST", "/bench/stop"))["seq"])
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
                await self.control("POST", f"/bench/progress?acked={low}")
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

    async def ready(self, requested_lead: int = 0) -> tuple[int, int]:
        """Before a scenario that publishes: the worker's pid and the
        publisher's lead (see :meth:`lead_for`), after the warm-up."""
        stats = await self.stats()
        lead = self.lead_for(stats, requested_lead)
        await self.warm_up()
        return int(stats["pid"]), lead

    def lead_for(self, stats: dict[str, Any], requested: int) -> int:
        if requested:
            return requested
        queue_size = int(stats.get("queue_size") or 256)
        return max(1, min(512, queue_size // 2))


def _opened(client: StreamClient) -> bool:
    """Whether its first bytes arrived (an exception, if any, is retrieved)."""
    ready = client.ready
    return ready.done() and not ready.cancelled() and ready.exception() is None


def close_all(streams: Sequence[StreamClient]) -> None:
    for stream in streams:
        stream.close()


def percentiles(values: array[float]) -> dict[str, Any]:
    if not values:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "permille_ms": []}
    ordered = sorted(values)

    def at(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": 1000 * ordered[-1],
        # The distribution, for charts: the 0th to the 1000th permille.
        "permille_ms": [at(q / 1000) for q in range(1000)] + [1000 * ordered[-1]],
    }


def count_loss(streams: Sequence[StreamClient], events: int) -> dict[str, int]:
    received = sum(s.events for s in streams)
    return {
        "lost": events * len(streams) - received,
        "incomplete_streams": sum(1 for s in streams if s.events != events),
    }
