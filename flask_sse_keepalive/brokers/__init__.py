"""Event buses: :class:`MemoryBroker` (one process) and ``RedisBroker`` (many)."""

from __future__ import annotations

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

_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel",
                  "redis+cluster", "rediss+cluster")  # fmt: skip


def check_broker_url(url: str) -> str:
    """The URL's scheme, if a broker serves it.

    :raises ValueError: naming the schemes that are served.
    """
    scheme = urlsplit(url).scheme
    if scheme != "memory" and scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"SSE_BROKER_URL={url!r}: unknown scheme {scheme!r};"
            " use memory:// or redis://host:port/db (also rediss://, unix://,"
            " redis+sentinel://h:26379/service/db, redis+cluster://h:7000)"
        )
    return scheme


def create_broker(
    url: str, *, history_size: int, redis_prefix: str, redis_probe_interval: float | None = 5.0
) -> Broker:
    """The broker that ``url`` (``SSE_BROKER_URL``) names.

    :param history_size: events kept per channel, at least.
    :param redis_prefix: prepended to the Redis broker's keys.
    :param redis_probe_interval: seconds of silence before the Redis broker
        checks its subscription end to end; ``None``: never.
    """
    if check_broker_url(url) == "memory":
        return MemoryBroker(history_size=history_size)
    try:
        from .redis import RedisBroker  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            f"SSE_BROKER_URL={url!r} needs redis-py: pip install 'flask-sse-keepalive[redis]'"
        ) from exc
    broker: Broker = RedisBroker(
        url, history_size=history_size, prefix=redis_prefix, probe_interval=redis_probe_interval
    )
    return broker
