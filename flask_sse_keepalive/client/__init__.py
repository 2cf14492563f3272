"""A Python client for server-sent event streams that never loses an event.

.. code-block:: python

    from flask_sse_keepalive.client import SSEClient

    with SSEClient("http://host/stream", channels=["prices"]) as client:
        for event in client:
            print(event.id, event.event, event.json())

It reconnects by itself with backoff and jitter, resumes with
``Last-Event-ID``, yields ``stream-reset`` like any other event, and
reconnects when a flask-sse-keepalive server's heartbeats stop (the
watchdog). Works with any SSE server; built on httpx; the async twin is
:class:`AsyncSSEClient` (asyncio or trio).
"""

from __future__ import annotations

from ..parser import ClientEvent
from .aio import AsyncSSEClient
from .backoff import Backoff
from .errors import StreamError, StreamRefused, StreamUnavailable
from .hooks import ClientStats, Closed, CloseReason, ConnectionState, Opened, Reconnect
from .sync import SSEClient

__all__ = [
    "AsyncSSEClient",
    "Backoff",
    "ClientEvent",
    "ClientStats",
    "CloseReason",
    "Closed",
    "ConnectionState",
    "Opened",
    "Reconnect",
    "SSEClient",
    "StreamError",
    "StreamRefused",
    "StreamUnavailable",
]
