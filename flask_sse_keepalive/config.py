"""The ``SSE_*`` settings: every key with its default, validated once per app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .brokers import check_broker_url

__all__ = ["DEFAULTS", "Settings"]

#: Every config key with its default, set with ``setdefault`` in ``init_app``.
DEFAULTS: dict[str, Any] = {
    "SSE_URL_PREFIX": "/stream",
    "SSE_BROKER_URL": "memory://",
    "SSE_HEARTBEAT_INTERVAL": 15.0,
    "SSE_HEARTBEAT_MIN": 1.0,
    "SSE_HEARTBEAT_MAX": 120.0,
    "SSE_DEAD_PEER_TIMEOUT": None,
    "SSE_RETRY_MS": 3000,
    "SSE_HISTORY_SIZE": 1000,
    "SSE_MAX_CHANNELS": 32,
    "SSE_QUEUE_SIZE": 500,
    "SSE_SEND_TIMEOUT": 10.0,
    "SSE_MAX_CONNECTIONS": None,
    "SSE_MAX_CONNECTIONS_PER_CLIENT": None,
    "SSE_MAX_STREAM_SECONDS": None,
    "SSE_CORS_ORIGINS": None,
    "SSE_CORS_CREDENTIALS": False,
    "SSE_REQUIRE_TOKEN": False,
    "SSE_TOKEN_SALT": "flask-sse-keepalive.token",
    "SSE_DIRECT_WRITE": True,
    "SSE_ALLOW_THREADS": None,
    "SSE_REDIS_PREFIX": "sse:",
    "SSE_REDIS_PROBE_INTERVAL": 5.0,
    "SSE_REPORT_INTERVAL": 5.0,
}


def _number(config: Mapping[str, Any], key: str, *, minimum: float, optional: bool = False) -> Any:
    value = config[key]
    if value is None and optional:
        return None
    if isinstance(value, str):
        try:
            value = float(value) if "." in value else int(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, got {value!r}")
    return value


def _flag(config: Mapping[str, Any], key: str) -> bool | None:
    value = config[key]
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return None if value is None else bool(value)


@dataclass(frozen=True)
class Settings:
    """The ``SSE_*`` config, validated and read once per app (in ``init_app``).

    Values may come as strings (from environment variables): numbers and
    flags are parsed here, and a bad value fails at start, naming the key.
    """

    url_prefix: str
    broker_url: str
    heartbeat_interval: float
    heartbeat_min: float
    heartbeat_max: float
    #: ``None``: each connection's heartbeat interval (at least 1 s)
    dead_peer_timeout: float | None
    retry_ms: int
    history_size: int
    max_channels: int
    queue_size: int
    send_timeout: float
    max_connections: int | None
    max_connections_per_client: int | None
    max_stream_seconds: float | None
    cors_origins: frozenset[str] | None
    cors_credentials: bool
    require_token: bool
    #: the salt of this app's tokens (see :mod:`~flask_sse_keepalive.tokens`)
    token_salt: str
    direct_write: bool
    allow_threads: bool | None
    redis_prefix: str
    #: ``None``: the subscription is never probed
    redis_probe_interval: float | None
    #: seconds between two reports of a process's figures to the cluster view
    report_interval: float

    def dead_peer_seconds(self, heartbeat_interval: float) -> float:
        """How long a connection's sent bytes may stay unacknowledged before
        the peer counts as gone (``TCP_USER_TIMEOUT``)."""
        if self.dead_peer_timeout is not None:
            return self.dead_peer_timeout
        return max(1.0, heartbeat_interval)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Read and check the settings; every key of :data:`DEFAULTS` must be set.

        :raises ValueError: naming the key and what it must be.
        """
        broker_url = str(config["SSE_BROKER_URL"])
        check_broker_url(broker_url)  # fail at start, not at the first publish
        origins = config["SSE_CORS_ORIGINS"]
        if isinstance(origins, str):
            origins = [o.strip() for o in origins.split(",") if o.strip()]
        prefix = config["SSE_REDIS_PREFIX"]
        salt = config["SSE_TOKEN_SALT"]
        if not isinstance(salt, str) or not salt:
            raise ValueError(f"SSE_TOKEN_SALT must be a non-empty str, got {salt!r}")
        heartbeat_min = float(_number(config, "SSE_HEARTBEAT_MIN", minimum=0.01))
        heartbeat_max = float(_number(config, "SSE_HEARTBEAT_MAX", minimum=heartbeat_min))
        dead_peer = _number(config, "SSE_DEAD_PEER_TIMEOUT", minimum=1, optional=True)
        return cls(
            url_prefix=str(config["SSE_URL_PREFIX"]),
            broker_url=broker_url,
            heartbeat_interval=float(_number(config, "SSE_HEARTBEAT_INTERVAL", minimum=0.01)),
            heartbeat_min=heartbeat_min,
            heartbeat_max=heartbeat_max,
            dead_peer_timeout=None if dead_peer is None else float(dead_peer),
            retry_ms=int(_number(config, "SSE_RETRY_MS", minimum=0)),
            history_size=int(_number(config, "SSE_HISTORY_SIZE", minimum=1)),
            max_channels=int(_number(config, "SSE_MAX_CHANNELS", minimum=1)),
            queue_size=int(_number(config, "SSE_QUEUE_SIZE", minimum=1)),
            send_timeout=float(_number(config, "SSE_SEND_TIMEOUT", minimum=0.01)),
            max_connections=_number(config, "SSE_MAX_CONNECTIONS", minimum=1, optional=True),
            max_connections_per_client=_number(
                config, "SSE_MAX_CONNECTIONS_PER_CLIENT", minimum=1, optional=True
            ),
            max_stream_seconds=_number(
                config, "SSE_MAX_STREAM_SECONDS", minimum=0.01, optional=True
            ),
            cors_origins=frozenset(origins) if origins else None,
            cors_credentials=bool(_flag(config, "SSE_CORS_CREDENTIALS")),
            require_token=bool(_flag(config, "SSE_REQUIRE_TOKEN")),
            token_salt=salt,
            direct_write=_flag(config, "SSE_DIRECT_WRITE") is not False,
            allow_threads=_flag(config, "SSE_ALLOW_THREADS"),
            redis_prefix=DEFAULTS["SSE_REDIS_PREFIX"] if prefix is None else str(prefix),
            redis_probe_interval=_number(
                config, "SSE_REDIS_PROBE_INTERVAL", minimum=0.1, optional=True
            ),
            report_interval=float(_number(config, "SSE_REPORT_INTERVAL", minimum=0.05)),
        )
