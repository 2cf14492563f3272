"""The plans: which runs make a full benchmark, and which a quick one.

A plan maps each scenario to its runs (:class:`Run`): the spec the load
generator gets, the servers it runs against, and what each server run needs
(heartbeat, descriptor limit, workers, a broker, a network namespace). The full plan is
for figures; the quick plan runs every scenario at tiny scale, for the smoke
test: correctness, not figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .servers import COMPARED, FLOOR, REAL, SEND, SENDALL, SERVERS

__all__ = ["PLANS", "Run"]

CEILINGS = (SEND, SENDALL)


@dataclass(frozen=True)
class Run:
    """One server run: which scenario, which heartbeat, which servers, what spec."""

    scenario: str
    label: str
    spec: dict[str, Any]
    servers: tuple[str, ...] = COMPARED
    heartbeat: float = 15.0
    connections: int = 1000
    timeout: float = 240.0
    #: the generator in a network namespace, the server on the host end (``vanish``)
    netns: bool = False
    #: more settings for the real server
    env: dict[str, str] = field(default_factory=dict)
    #: gunicorn workers of the real server (``-w``)
    workers: int = 1
    #: the broker this run needs, whatever ``--broker`` says (``None``: that one)
    broker: str | None = None


def _full() -> dict[str, list[Run]]:
    levels = [1000, 5000, 10000]
    return {
        "idle": [
            Run("idle", "idle hb=15s", {"levels": levels, "window": 30.0}, (REAL,), 15.0, 10000),
            Run("idle", "idle hb=1s", {"levels": levels, "window": 30.0}, (REAL,), 1.0, 10000),
            # The ceilings at the largest size only, to keep the run under ten minutes.
            # The floor: how fast one worker with Flask accepts streams at all.
            Run(
                "idle",
                "idle hb=15s",
                {"levels": [10000], "window": 30.0},
                (*CEILINGS, FLOOR),
                15.0,
                10000,
            ),
            Run("idle", "idle hb=1s", {"levels": [10000], "window": 30.0}, CEILINGS, 1.0, 10000),
        ],
        "fanout": [
            Run("fanout", "fanout", {"streams": 1000, "duration": 8.0, "read_batch_ms": 10})
        ],
        "latency": [Run("latency", "latency", {"streams": 1000, "rate": 50.0, "duration": 10.0})],
        "slow": [
            Run("slow", "slow", {"others": 50, "events": 20000, "size": 1024, "rate": 2000.0})
        ],
        # No ceiling: the raw server has no dead-peer bound to compare with.
        "vanish": [
            Run("vanish", "vanish", {"streams": 1000}, (REAL,), 2.0, 1000, 120.0, netns=True)
        ],
        # No ceiling: the raw server has no broker and no publish_many.
        "publish": [
            Run(
                "publish",
                "publish",
                {"seconds": 3.0, "batch": 100, "streams": 1000, "rounds": 20, "burst": 10},
                (REAL,),
            )
        ],
        # A full process: 19,000 streams leave room under a 20,000 descriptor
        # limit on both sides. No ceiling: what is projected is the real server.
        "full": [
            Run(
                "full",
                "full hb=15s",
                {"levels": [5000, 10000, 19000], "window": 30.0, "late_after_s": 1.0},
                (REAL,),
                heartbeat=15.0,
                connections=19000,
                timeout=600.0,
            )
        ],
        # Two workers on Redis: a reload hands the streams from one pair to the next.
        "storm": [
            Run(
                "storm",
                "storm",
                {"streams": 10000, "channels": 100, "rate": 100.0, "before": 3.0},
                (REAL,),
                heartbeat=15.0,
                connections=10000,
                timeout=300.0,
                workers=2,
                broker="redis",
            )
        ],
        "churn": [
            Run(
                "churn",
                "churn",
                {
                    "streams": 5000,
                    "rate": 5.0,
                    "quiet": 10.0,
                    "duration": 30.0,
                    "churn_rate": 2000.0,
                },
                (REAL,),
                heartbeat=15.0,
                connections=7000,
                timeout=300.0,
            )
        ],
    }


def _quick() -> dict[str, list[Run]]:
    """Tiny runs for the smoke test: correctness, not figures."""
    fanout = {"streams": 50, "duration": 1.0, "read_batch_ms": 10}
    return {
        "idle": [
            Run("idle", "idle hb=0.5s", {"levels": [50], "window": 2.0}, SERVERS, 0.5, 50, 60.0)
        ],
        "fanout": [Run("fanout", "fanout", fanout, timeout=60.0)],
        "latency": [
            Run(
                "latency",
                "latency",
                {"streams": 50, "rate": 50.0, "duration": 2.0},
                timeout=60.0,
            )
        ],
        "slow": [
            Run(
                "slow",
                "slow",
                # Enough to pass the kernel's send buffer (up to 4 MB) and the queue.
                {"others": 10, "events": 8000, "size": 1024, "rate": 8000.0},
                timeout=60.0,
            )
        ],
        "vanish": [Run("vanish", "vanish", {"streams": 20}, (REAL,), 2.0, 20, 60.0, netns=True)],
        "publish": [
            Run(
                "publish",
                "publish",
                {"seconds": 0.3, "batch": 100, "streams": 20, "rounds": 3, "burst": 10},
                (REAL,),
                timeout=60.0,
            )
        ],
        "full": [
            Run(
                "full",
                "full hb=1s",
                {"levels": [100, 300], "window": 3.0, "late_after_s": 1.0},
                (REAL,),
                heartbeat=1.0,
                connections=300,
                timeout=60.0,
            )
        ],
        "storm": [
            Run(
                "storm",
                "storm",
                {"streams": 100, "channels": 10, "rate": 100.0, "before": 1.0, "after": 1.0},
                (REAL,),
                heartbeat=15.0,
                connections=100,
                timeout=120.0,
                workers=2,
                broker="redis",
            )
        ],
        "churn": [
            Run(
                "churn",
                "churn",
                {"streams": 100, "rate": 5.0, "quiet": 2.0, "duration": 3.0, "churn_rate": 50.0},
                (REAL,),
                heartbeat=15.0,
                connections=300,
                timeout=90.0,
            )
        ],
    }


PLANS: dict[str, Callable[[], dict[str, list[Run]]]] = {"full": _full, "quick": _quick}
