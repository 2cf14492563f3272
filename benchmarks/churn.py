"""The ``churn`` scenario: steady streams while others connect and disconnect beside them.

``streams`` steady streams receive ``rate`` events per second each, their
publish-to-receive latency measured on every event as in the ``latency``
scenario: first for ``quiet`` seconds alone, then for ``duration`` seconds
while a :class:`Churner` opens ``churn_rate`` other streams per second (on a
channel of their own, nothing published to it), each closed with a FIN as
soon as its first bytes arrive, the way a page that is left closes its
``EventSource``. Measured: the steady p99 during the churn against the quiet
window (target: at most twice), losses, and the server's RSS and open
descriptors (``/proc/<pid>/fd``) before the quiet window and once the churn
is over, which must come back to where they were.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

from .client import StreamClient, stream_request
from .procinfo import open_fds, rss_bytes
from .session import Session, close_all, count_loss, percentiles

__all__ = ["Churner", "churn"]

#: How often the churner starts its next batch of connections, in seconds.
TICK = 0.01


class Churner:
    """Opens ``rate`` short-lived streams per second for a while; counts how it went."""

    def __init__(self, host: str, port: int, rate: float, channel: str = "churn") -> None:
        self.host = host
        self.port = port
        self.rate = rate
        self.request = stream_request(f"/stream?channel={channel}", host)
        self.opened = 0
        self.failed = 0
        self.errors: list[str] = []
        self._live: set[StreamClient] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, duration: float) -> float:
        """Churn for ``duration`` seconds, then wait for the last ones; the seconds it took."""
        began = time.monotonic()
        started = 0
        while (elapsed := time.monotonic() - began) < duration:
            due = int(elapsed * self.rate) + 1
            for _ in range(due - started):
                task = asyncio.create_task(self._one())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            started = max(started, due)
            await asyncio.sleep(TICK)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)
        return time.monotonic() - began

    async def _one(self) -> None:
        loop = asyncio.get_running_loop()
        client = StreamClient(self.request, loop.create_future())
        self._live.add(client)
        try:
            async with asyncio.timeout(10):
                await loop.create_connection(lambda: client, self.host, self.port)
                await client.ready
            self.opened += 1
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.failed += 1
            if len(self.errors) < 3:
                self.errors.append(repr(exc))
        finally:
            self._live.discard(client)
            if client.transport is not None:
                client.transport.close()  # a FIN, as a browser leaving the page

    def abort_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in list(self._live):
            client.close()


async def churn(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    count: int = spec.get("streams", 5000)
    rate: float = spec.get("rate", 5.0)
    quiet: float = spec.get("quiet", 10.0)
    duration: float = spec.get("duration", 30.0)
    churn_rate: float = spec.get("churn_rate", 2000.0)
    settle: float = spec.get("settle_timeout", 15.0)
    size: int = spec.get("size", 64)
    session = Session(host, port, spec)
    stats = await session.stats()
    pid = int(stats["pid"])
    lead = session.lead_for(stats, spec.get("lead", 0))
    await session.warm_up()
    streams, failed, _ = await session.open_streams(count, "steady")
    churner = Churner(session.host, session.port, churn_rate)
    windows: dict[str, dict[str, Any]] = {}
    try:
        await session.run_job(
            streams, n=max(10, int(rate)), channel="steady", size=size, rate=rate, lead=lead
        )
        await asyncio.sleep(1.0)  # let the server settle before the baseline
        base_rss, base_fds = rss_bytes(pid), open_fds(pid)
        for name, seconds in (("quiet", quiet), ("churn", duration)):
            latencies: array[float] = array("d")
            for stream in streams:
                stream.reset_counts()
                stream.latencies = latencies
            events = max(1, int(rate * seconds))
            meter = session.meter(pid)
            churning = asyncio.create_task(churner.run(seconds)) if name == "churn" else None
            job = await session.run_job(
                streams, n=events, channel="steady", size=size, rate=rate, lead=lead,
                timeout=seconds + 30,
            )  # fmt: skip
            churned_s = await churning if churning is not None else 0.0
            measured = meter.stop()
            windows[name] = {
                "seconds": seconds,
                "events": events,
                "samples": len(latencies),
                **{k: v for k, v in percentiles(latencies).items() if k != "permille_ms"},
                **count_loss(streams, events),
                "disorder": sum(s.disorder for s in streams),
                "complete": job["complete"],
                "churn_s": churned_s,
                "meter": measured,
            }
        # The churned streams are released when the server sees their FIN.
        deadline = time.monotonic() + settle
        while open_fds(pid) > base_fds and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        settled_s = settle - max(0.0, deadline - time.monotonic())
        await asyncio.sleep(1.0)
        after_rss, after_fds = rss_bytes(pid), open_fds(pid)
        connections = int((await session.stats())["sse"]["connections"])
    finally:
        churner.abort_all()
        close_all(streams)
    quiet_w, churn_w = windows["quiet"], windows["churn"]
    steady_ok = all(
        w["lost"] == 0 and w["disorder"] == 0 and w["complete"] for w in windows.values()
    )
    if churner.errors:
        session.warnings.append(f"churned streams that failed, the first: {churner.errors}")
    return {
        "metrics": {
            "streams": len(streams),
            "rate": rate,
            "churn_rate": churn_rate,
            "churn_opened": churner.opened,
            "churn_failed": churner.failed,
            "churn_per_s": churner.opened / max(churn_w["churn_s"], 1e-9),
            "quiet": quiet_w,
            "churn": churn_w,
            "p99_ratio": churn_w["p99_ms"] / quiet_w["p99_ms"] if quiet_w["p99_ms"] else None,
            "rss_before": base_rss,
            "rss_after": after_rss,
            "fds_before": base_fds,
            "fds_after": after_fds,
            "settled_s": settled_s,
            "connections_after": connections,
        },
        "checks": {
            "all_streams_opened": failed == 0,
            "steady_no_loss": steady_ok,
            "every_churned_stream_opened": churner.failed == 0 and churner.opened > 0,
            "fds_back": after_fds <= base_fds,
            "connections_back": connections == len(streams),
        },
        "warnings": session.warnings,
    }
