"""The ``storm`` scenario: a ``HUP`` reload under load, and the reconnect storm after it.

The real server runs with two gunicorn workers on the Redis broker (the
runner's ``Run.workers`` and ``Run.broker``). The load generator opens
``streams`` :class:`~benchmarks.resume.BrowserStream`\\ s, spread over
``channels`` channels, and waits until every one is positioned; then it
starts :mod:`benchmarks.feeder` in a process of its own, publishing ``rate``
events per second round-robin over the channels, and after ``before`` seconds
sends ``SIGHUP`` to the gunicorn master (``spec["master_pid"]``). The master
starts two new workers and stops the old ones; each old worker ends its
streams with a farewell whose ``retry`` is spread out, and every client comes
back after that ``retry`` with ``Last-Event-ID``.

Measured from the ``HUP``: when every stream was back (answered by a new
worker) and caught up (positioned again: the replay of what it missed
delivered), the connects per 100 ms, and, once the feeder has stopped and
every stream has its channel's last event, each event lost or received twice
(both must be 0).

Why channels: 100 events/s to one channel of 10,000 streams would be a
million deliveries per second, far beyond the one CPU the server has here;
spread over 100 channels it is 10,000 per second, and the storm is what is
measured.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .feeder import channel_name
from .procinfo import children
from .resume import BrowserStream
from .servers import ROOT
from .session import Session

__all__ = ["curve", "storm"]

BUCKET_S = 0.1
PREFIX = "storm"


async def storm(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    count: int = spec.get("streams", 10_000)
    channels: int = spec.get("channels", 100)
    rate: float = spec.get("rate", 100.0)
    before: float = spec.get("before", 3.0)
    after: float = spec.get("after", 2.0)
    recover: float = spec.get("recover_timeout", 60.0)
    workers: int = spec.get("workers", 2)
    master = int(spec["master_pid"])
    session = Session(host, port, spec)
    old_workers = await _wait_for_workers(session, master, workers, set(), timeout=30.0)
    await session.warm_up()
    streams = [
        BrowserStream(host, port, f"/stream?channel={channel_name(PREFIX, n % channels)}")
        for n in range(count)
    ]
    tasks: list[asyncio.Task[None]] = []
    feeder: asyncio.subprocess.Process | None = None
    published: dict[str, Any] = {}
    hup = math.nan
    new_workers: set[int] = set()
    feeder_pid: int | None = None
    try:
        gate = asyncio.Semaphore(200)

        async def start(stream: BrowserStream) -> None:
            async with gate:
                tasks.append(asyncio.create_task(stream.run()))
                await _until(lambda: bool(stream.subscribed or stream.ended), 60.0)

        began = time.monotonic()
        await asyncio.gather(*(start(s) for s in streams))
        opened_s = time.monotonic() - began
        positioned = sum(1 for s in streams if s.subscribed and not s.ended)
        if positioned < count:
            session.warnings.append(f"only {positioned} of {count} streams positioned")
        feeder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.feeder",
            "--rate", str(rate), "--channels", str(channels), "--prefix", PREFIX,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "SSE_BROKER_URL": spec["redis_url"]}, cwd=ROOT,
        )  # fmt: skip
        feeder_pid = feeder.pid
        assert feeder.stdout is not None and feeder.stdin is not None
        async with asyncio.timeout(30):
            line = await feeder.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the feeder did not start: {line!r}")
        await asyncio.sleep(before)
        hup = time.time()
        os.kill(master, signal.SIGHUP)
        # Every 0.1 s: looking at 10,000 streams is work the generator takes from them.
        back = await _until(lambda: all(_caught_up(s, hup) for s in streams), recover, 0.1)
        if not back:
            late = sum(1 for s in streams if not _caught_up(s, hup))
            session.warnings.append(f"{late} streams not back {recover} s after the HUP")
        new_workers = await _wait_for_workers(session, master, workers, old_workers, 30.0)
        await asyncio.sleep(after)
        feeder.stdin.write(b"stop\n")
        await feeder.stdin.drain()
        async with asyncio.timeout(30):
            out, _ = await feeder.communicate()
        published = json.loads(out)
        counts: dict[str, int] = published["published"]
        channel_of = [channel_name(PREFIX, n % channels) for n in range(count)]
        await _until(
            lambda: all(s.last_seq >= counts[c] for s, c in zip(streams, channel_of, strict=True)),
            30.0,
            0.1,
        )
        short = sum(counts[c] - s.last_seq for s, c in zip(streams, channel_of, strict=True))
    finally:
        for stream in streams:
            stream.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if feeder is not None and feeder.returncode is None:
            feeder.kill()
            await feeder.wait()
    return _result(
        streams, session, hup, published, short, opened_s,
        old_workers=old_workers, new_workers=new_workers, feeder_pid=feeder_pid,
    )  # fmt: skip


def _caught_up(stream: BrowserStream, hup: float) -> bool:
    """Answered again after the ``HUP`` and positioned on that connection."""
    return bool(stream.ended) and bool(stream.subscribed) and stream.subscribed[-1] > hup


async def _until(done: Callable[[], bool], timeout: float, every: float = 0.01) -> bool:
    """Poll ``done()`` every ``every`` s for at most ``timeout`` s; whether it came true."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


async def _wait_for_workers(
    session: Session, master: int, workers: int, old: set[int], timeout: float
) -> set[int]:
    """The master's ``workers`` live children, none of them in ``old`` (once they answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = set(children(master))
        if len(found) == workers and not found & old:
            return found
        if time.monotonic() > deadline:
            session.warnings.append(f"workers after {timeout} s: {sorted(found)}, not {workers}")
            return found - old
        await asyncio.sleep(0.1)


def curve(times: Sequence[float], start: float, bucket: float = BUCKET_S) -> list[int]:
    """How many of ``times`` fall in each ``bucket``-second slot from ``start`` on."""
    later = [t - start for t in times if t >= start]
    if not later:
        return []
    counts = [0] * (int(max(later) / bucket) + 1)
    for t in later:
        counts[int(t / bucket)] += 1
    return counts


def _result(
    streams: Sequence[BrowserStream],
    session: Session,
    hup: float,
    published: dict[str, Any],
    short: int,
    opened_s: float,
    *,
    old_workers: set[int],
    new_workers: set[int],
    feeder_pid: int | None,
) -> dict[str, Any]:
    back = sorted(next((t for t in s.opened if t > hup), math.inf) - hup for s in streams)
    caught = sorted(next((t for t in s.subscribed if t > hup), math.inf) - hup for s in streams)
    reconnects = [t for s in streams for t in s.opened if t > hup]
    counts = published.get("published", {})
    lost = sum(s.lost for s in streams) + max(0, short)
    duplicated = sum(s.duplicated for s in streams)
    n = len(streams)

    def at(values: list[float], q: float) -> float:
        return values[min(n - 1, int(q * n))] if values else math.nan

    metrics = {
        "streams": n,
        "open_s": opened_s,
        "published": sum(counts.values()),
        "channels": len(counts),
        "events": sum(s.events for s in streams),
        "lost": lost,
        "duplicated": duplicated,
        "resets": sum(s.resets for s in streams),
        "farewells": sum(s.farewells for s in streams),
        "broken": sum(s.broken for s in streams),
        "connect_errors": sum(len(s.errors) for s in streams),
        "back_p50_s": at(back, 0.5),
        "back_max_s": back[-1] if back else math.nan,
        "caught_up_p50_s": at(caught, 0.5),
        "caught_up_max_s": caught[-1] if caught else math.nan,
        # What the clients waited before reconnecting: the farewells' spread-out retry.
        "waited_ms_min": min((w for s in streams for w in s.waited_ms), default=0),
        "waited_ms_max": max((w for s in streams for w in s.waited_ms), default=0),
        "bucket_s": BUCKET_S,
        "farewells_per_bucket": curve([t for s in streams for t in s.ended], hup),
        "reconnects_per_bucket": curve(reconnects, hup),
        "hup_at": hup,
    }
    errors = [e for s in streams for e in s.errors][:3]
    if errors:
        session.warnings.append(f"connection errors, the first: {errors}")
    if published.get("failures"):
        session.warnings.append(f"the feeder failed to publish: {published['failures'][:3]}")
    return {
        "metrics": metrics,
        "checks": {
            "all_back": math.isfinite(metrics["caught_up_max_s"]),
            "no_loss": lost == 0 and metrics["published"] > 0,
            "no_duplicates": duplicated == 0,
            "no_resets": metrics["resets"] == 0,
            "every_farewell": metrics["farewells"] == n and metrics["broken"] == 0,
            "workers_replaced": bool(new_workers) and not new_workers & old_workers,
        },
        "pids": {
            "workers_before": sorted(old_workers),
            "workers_after": sorted(new_workers),
            "feeder": feeder_pid,
        },
        "warnings": session.warnings,
    }
