"""Event buses: :class:`MemoryBroker` (one process) and ``RedisBroker`` (many)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .base import Broker, BrokerUnavailable, Message
from .memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "MemoryBroker",
    "Message",
    "check_broker_url",
    "create_broker",
]

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_broker_url(url: str) -> str:
    """The URL's scheme, if a broker serves it.

    :raises ValueError: naming the schemes that are served.
    """
    scheme = urlsplit(url).scheme
    if scheme != "memory" and scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"SSE_BROKER_URL={url!r}: unknown scheme {scheme!r};"
            " use memory:// or redis://host:port/db (also rediss://, unix://)"
        )
    return scheme


def create_broker(config: Mapping[str, Any]) -> Broker:
    """The broker that ``SSE_BROKER_URL`` names, configured from ``config``."""
    url = config["SSE_BROKER_URL"]
    scheme = check_broker_url(url)
    if scheme == "memory":
        return MemoryBroker.from_config(url, config)
    try:
        from .redis import RedisBroker  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            f"SSE_BROKER_URL={url!r} needs redis-py: pip install 'flask-sse-keepalive[redis]'"
        ) from exc
    broker: Broker = RedisBroker.from_config(url, config)
    return broker
