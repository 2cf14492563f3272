"""The benchmark's event payload, shared by both servers and the load generator.

Each event's data is ``"{seq} {publish time} {padding}"``: the sequence number
lets the generator check that nothing was lost or reordered, and the publish
time (``time.time()`` on the server, same machine clock) gives the latency.
The padding is ``x`` characters so that the generator's pattern search for
``data: `` can never match inside it.
"""

from __future__ import annotations

import time

__all__ = ["event_data", "publish_time"]


def event_data(seq: int, size: int) -> str:
    """The data of event ``seq``, stamped now, padded to ``size`` characters."""
    head = f"{seq} {time.time():.6f} "
    return head + "x" * max(0, size - len(head))


def publish_time(data: bytes) -> float:
    """The publish time in ``event_data`` output (as bytes)."""
    return float(data.split(b" ", 2)[1])
