"""The ``publish`` scenario: what publishing costs the process that publishes.

Two parts, both driven by the load generator through control routes of
``benchmarks/app.py``:

* **rates**: ``POST /bench/rate`` publishes for ``seconds`` to a channel no
  stream listens to, once with :meth:`SSE.publish` (one event a call) and once
  with :meth:`SSE.publish_many` (``batch`` events a call): events per second
  and server CPU per event, with the broker's CPU beside them when the runner
  started one (``--broker redis``);
* **burst**: ``streams`` streams on one channel; each round publishes
  ``burst`` events at once (``POST /bench/burst``), as one ``publish_many`` or
  as ``burst`` single publishes, and waits until every stream has them. The
  server's CPU per round, publishing and delivering, is read to the
  nanosecond (:func:`~benchmarks.procinfo.run_time`); the two ways alternate
  round by round so that drift weighs on both alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from .client import StreamClient
from .procinfo import run_time
from .session import Session, close_all, count_loss

__all__ = ["publish"]

MODES = ("many", "single")
WARMUP_TRIES = 10


async def publish(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    seconds: float = spec.get("seconds", 3.0)
    batch: int = spec.get("batch", 100)
    size: int = spec.get("size", 64)
    count: int = spec.get("streams", 1000)
    rounds: int = spec.get("rounds", 20)
    burst: int = spec.get("burst", 10)
    session = Session(host, port, spec)
    stats = await session.stats()
    pid = int(stats["pid"])
    await session.warm_up()
    rates = {}
    for mode in ("single", "many"):
        # A short first call, so the broker's connection and first-call work are done.
        await session.control("POST", f"/bench/rate?mode={mode}&batch={batch}&seconds=0.1")
        meter = session.meter(pid)
        answer = await session.control(
            "POST",
            f"/bench/rate?mode={mode}&batch={batch}&seconds={seconds}&size={size}",
            timeout=seconds + 30,
        )
        measured = meter.stop()
        events = int(answer["events"])
        rate: dict[str, Any] = {
            "events": events,
            "events_per_s": events / answer["seconds"],
            "server_cpu_us_per_event": 1e6 * answer["cpu_s"] / max(events, 1),
            "meter": measured,
        }
        if "redis_cpu_s" in measured:
            rate["redis_cpu_us_per_event"] = 1e6 * measured["redis_cpu_s"] / max(events, 1)
        rates[mode] = rate
    streams, failed, _ = await session.open_streams(count, "burst")
    cpu = dict.fromkeys(MODES, 0.0)
    broker_cpu = dict.fromkeys(MODES, 0.0)
    broker_pid = session.others.get("redis")
    complete = True
    try:
        # Warm-up rounds each way, until one reaches every stream (with Redis a new
        # stream is live once its channel is subscribed); then the measured rounds,
        # alternating the order.
        for mode in MODES:
            for _ in range(WARMUP_TRIES):
                if await _burst(session, streams, mode, burst, size, timeout=3.0, quiet=True):
                    break
            else:
                complete = False
                session.warnings.append(
                    f"no warm-up burst ({mode}) reached every stream in {WARMUP_TRIES} tries"
                )
        for stream in streams:
            stream.reset_counts()
        for n in range(rounds):
            for mode in MODES if n % 2 == 0 else MODES[::-1]:
                began = run_time(pid)
                began_broker = run_time(broker_pid) if broker_pid else 0.0
                complete &= await _burst(session, streams, mode, burst, size)
                cpu[mode] += run_time(pid) - began
                if broker_pid:
                    broker_cpu[mode] += run_time(broker_pid) - began_broker
        lost = count_loss(streams, 2 * rounds * burst)
    finally:
        close_all(streams)
    burst_metrics: dict[str, Any] = {
        "streams": len(streams),
        "events": burst,
        "rounds": rounds,
        **{f"{mode}_cpu_ms": 1000 * cpu[mode] / rounds for mode in MODES},
        "many_over_single": cpu["many"] / cpu["single"] if cpu["single"] else float("nan"),
        **lost,
    }
    if broker_pid:
        burst_metrics.update(
            {f"{mode}_redis_cpu_ms": 1000 * broker_cpu[mode] / rounds for mode in MODES}
        )
    return {
        "metrics": {"batch": batch, "size": size, "rates": rates, "burst": burst_metrics},
        "checks": {
            "published": all(rate["events"] > 0 for rate in rates.values()),
            "all_streams_opened": failed == 0,
            "burst_no_loss": complete and lost["lost"] == 0,
        },
        "warnings": session.warnings,
    }


async def _burst(
    session: Session,
    streams: Sequence[StreamClient],
    mode: str,
    n: int,
    size: int,
    *,
    timeout: float = 30.0,
    quiet: bool = False,
) -> bool:
    """Publish ``n`` events at once; whether every stream had them within ``timeout`` s."""
    job = await session.control("POST", f"/bench/burst?mode={mode}&n={n}&size={size}")
    last = int(job["last"])
    deadline = time.monotonic() + timeout
    while min((s.last_seq for s in streams), default=last) < last:
        if time.monotonic() > deadline:
            if not quiet:
                session.warnings.append(
                    f"burst {job['first']}..{last} ({mode}) incomplete after {timeout} s"
                )
            return False
        await asyncio.sleep(0.001)
    return True
