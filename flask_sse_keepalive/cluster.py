"""How the figures of many processes add up (see :meth:`SSE.cluster_stats`).

Pure: the figures come from the broker's presence. A figure a process did not
report (a process of another version, during a rolling deploy) counts as zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["totals"]

#: counters summed over the processes
SUMMED = (
    "connections", "published", "delivered", "heartbeats", "resets", "slow", "refused", "connects",
)  # fmt: skip
#: ``{key: count}`` figures summed key by key
SUMMED_BY_KEY = ("channels", "broker", "disconnects", "modes", "heartbeat_intervals")


def totals(processes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of ``processes`` added up, with ``processes`` (how many)
    and ``shutting_down`` (how many of them are stopping)."""
    processes = list(processes)
    result: dict[str, Any] = {
        "processes": len(processes),
        "shutting_down": sum(1 for figures in processes if figures.get("shutting_down")),
    }
    for name in SUMMED:
        result[name] = sum(int(figures.get(name) or 0) for figures in processes)
    for name in SUMMED_BY_KEY:
        summed: Counter[str] = Counter()
        for figures in processes:
            summed.update({key: int(n) for key, n in (figures.get(name) or {}).items()})
        result[name] = dict(sorted(summed.items()))
    return result
