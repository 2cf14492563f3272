"""The ``vanish`` scenario: streams whose clients disappear without a word.

Two halves, on either side of the cut:

* :func:`vanish` runs in the load generator, inside a network namespace
  (:mod:`benchmarks.netns`): it opens the streams, reads the server's RSS
  before and with them, then takes its own end of the veth pair down and
  notes the time. Nothing it does afterwards (closing its sockets, exiting)
  reaches the server.
* :func:`watch_release` runs in the runner, on the server's side of the cut:
  it polls ``/bench/stats`` until the server has released every stream (the
  ``client_disconnected`` signal with reason ``timeout``, recorded with its
  time by ``benchmarks/app.py``), then reads the RSS left.

The release is the dead-peer bound at work: a heartbeat within the heartbeat
interval, unacknowledged for ``SSE_DEAD_PEER_TIMEOUT`` (by default the
heartbeat interval), ends the stream.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from .procinfo import rss_bytes
from .servers import Server
from .session import Session, close_all

__all__ = ["vanish", "watch_release"]


async def vanish(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Open ``streams`` streams, measure, then cut the link (``spec["cut"]``, an argv)."""
    count: int = spec.get("streams", 1000)
    cut: list[str] = spec["cut"]
    session = Session(host, port, spec)
    stats = await session.stats()
    pid, interval = int(stats["pid"]), float(stats["heartbeat_interval"])
    await session.warm_up()
    rss_before = rss_bytes(pid)
    streams, failed, elapsed = await session.open_streams(count, "vanish")
    cut_at = math.nan
    cut_error = ""
    try:
        counted = await _wait_for_connections(session, len(streams), timeout=30.0)
        await asyncio.sleep(1.0)  # let the server settle before measuring memory
        rss_with = rss_bytes(pid)
        cut_at = time.time()
        proc = await asyncio.create_subprocess_exec(
            *cut, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(10):
            _, stderr = await proc.communicate()
        if proc.returncode != 0:
            cut_error = f"{' '.join(cut)} failed ({proc.returncode}): {stderr.decode()[-500:]}"
            session.warnings.append(cut_error)
    finally:
        # After the cut the aborts go nowhere; before it (a failure) they end the streams.
        close_all(streams)
    return {
        "metrics": {
            "streams": len(streams),
            "heartbeat_interval": interval,
            "open_s": elapsed,
            "server_counted": counted,
            "rss_before": rss_before,
            "rss_with": rss_with,
            "cut_at": cut_at,
        },
        "checks": {
            "all_streams_opened": failed == 0 and counted == count,
            "cut": not cut_error,
        },
        "warnings": session.warnings,
    }


async def _wait_for_connections(session: Session, count: int, timeout: float) -> int:
    """Wait until the server counts ``count`` open streams; how many it counted."""
    deadline = time.monotonic() + timeout
    while True:
        counted = int((await session.stats())["sse"]["connections"])
        if counted >= count:
            return counted
        if time.monotonic() > deadline:
            session.warnings.append(
                f"the server counted {counted} of {count} streams after {timeout} s"
            )
            return counted
        await asyncio.sleep(0.1)


def watch_release(server: Server, result: dict[str, Any], *, timeout: float) -> None:
    """After the cut: wait until the server has released every stream; add the figures.

    Waits at most ``timeout`` seconds from the cut, polling ``/bench/stats``
    every 0.2 s, then one second more before it reads the RSS left.
    """
    metrics = result["metrics"]
    expected = int(metrics["streams"])
    cut_at = float(metrics["cut_at"])
    deadline = cut_at + timeout
    while True:
        stats = server.stats()
        released = [float(t) for t in stats["timeouts"]]
        still_open = int(stats["sse"]["connections"])
        if (len(released) >= expected and still_open == 0) or time.time() > deadline:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # freed memory goes back to the allocator, not always to the kernel
    rss_after = rss_bytes(server.worker_pid)
    after = server.stats()
    delays = sorted(t - cut_at for t in released)
    grown = metrics["rss_with"] - metrics["rss_before"]
    metrics.update(
        released=len(delays),
        still_open=int(after["sse"]["connections"]),
        disconnects=after["sse"]["disconnects"],
        release_p50_s=delays[len(delays) // 2] if delays else math.nan,
        release_max_s=delays[-1] if delays else math.nan,
        release_min_s=delays[0] if delays else math.nan,
        rss_after=rss_after,
        rss_per_stream_kb=grown / expected / 1024 if expected else math.nan,
        rss_returned_pct=100 * (metrics["rss_with"] - rss_after) / grown if grown > 0 else math.nan,
    )
    result["checks"].update(
        all_released=len(delays) == expected and metrics["still_open"] == 0,
        released_as_timeout=after["sse"]["disconnects"].get("timeout", 0) == expected,
    )
    if len(delays) < expected:
        result["warnings"].append(
            f"{len(delays)} of {expected} streams released {timeout} s after the cut"
        )
