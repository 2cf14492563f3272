"""Server-Sent Events for Flask that stay alive in production.

Heartbeats on every connection, resume after any disconnect with nothing lost
(or an explicit ``stream-reset``), and one event bus shared by every gunicorn
worker and host.
"""

from __future__ import annotations

from .brokers.base import BrokerUnavailable
from .decorators import sse_stream
from .event import Event
from .extension import SSE

__all__ = ["SSE", "BrokerUnavailable", "Event", "sse_stream"]
__version__ = "0.2.0"
