"""Per-app runtime state: settings read once, the broker, open connections, counters."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import runtime, signals
from .brokers import Broker, check_broker_url, create_broker

if TYPE_CHECKING:
    from flask import Flask

    from .stream import Connection

log = logging.getLogger("flask_sse_keepalive")

#: Every config key with its default, set with ``setdefault`` in ``init_app``.
DEFAULTS: dict[str, Any] = {
    "SSE_URL_PREFIX": "/stream",
    "SSE_BROKER_URL": "memory://",
    "SSE_HEARTBEAT_INTERVAL": 15.0,
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
    "SSE_DIRECT_WRITE": True,
    "SSE_ALLOW_THREADS": None,
    "SSE_REDIS_PREFIX": "sse:",
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
    """The ``SSE_*`` config, validated and read once per app."""

    heartbeat_interval: float
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
    direct_write: bool
    allow_threads: bool | None
    broker_url: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        broker_url = str(config["SSE_BROKER_URL"])
        check_broker_url(broker_url)  # fail at start, not at the first publish
        origins = config["SSE_CORS_ORIGINS"]
        if isinstance(origins, str):
            origins = [o.strip() for o in origins.split(",") if o.strip()]
        return cls(
            heartbeat_interval=float(_number(config, "SSE_HEARTBEAT_INTERVAL", minimum=0.01)),
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
            direct_write=_flag(config, "SSE_DIRECT_WRITE") is not False,
            allow_threads=_flag(config, "SSE_ALLOW_THREADS"),
            broker_url=broker_url,
        )


@dataclass
class Stats:
    """Counters of this process since it started (see :meth:`SSE.stats`)."""

    published: int = 0
    delivered: int = 0
    heartbeats: int = 0
    resets: int = 0
    slow: int = 0
    refused: int = 0
    connects: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)


class Registry:
    """Everything one app's streams share in one process."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.stats = Stats()
        self.connections: set[Connection] = set()
        self.per_client: Counter[str] = Counter()
        self.shutting_down = False
        # What the broker reads, with the validated values in place of raw ones
        # (settings from environment variables arrive as strings).
        self._config = {**app.config, "SSE_HISTORY_SIZE": settings.history_size}
        self._broker: Broker | None = None
        self._broker_pid = 0
        self._lock = threading.Lock()

    @property
    def broker(self) -> Broker:
        """The broker, made in the process that uses it (not before a fork)."""
        pid = os.getpid()
        if self._broker is None or self._broker_pid != pid:
            with self._lock:
                if self._broker is None or self._broker_pid != pid:
                    self._broker = create_broker(self._config)
                    self._broker_pid = pid
        return self._broker

    def refusal(self, client_key: str | None) -> str | None:
        """Why a new stream cannot be accepted now, or ``None``."""
        if self.shutting_down:
            return "this worker is shutting down"
        limit = self.settings.max_connections
        if limit is not None and len(self.connections) >= limit:
            return f"too many open streams on this worker ({limit})"
        per_client = self.settings.max_connections_per_client
        if (
            per_client is not None
            and client_key is not None
            and self.per_client[client_key] >= per_client
        ):
            return f"too many open streams for this client ({per_client})"
        return None

    def open(self, connection: Connection) -> None:
        runtime.watch_shutdown(self)
        self.connections.add(connection)
        client_key = connection.client_key
        if client_key is not None:
            self.per_client[client_key] += 1
        self.stats.connects += 1
        self.stats.modes[connection.mode] += 1
        log.debug(
            "stream %s opened: channels=%s last_event_id=%s",
            connection.id,
            ",".join(connection.channels),
            connection.last_event_id,
        )
        self._send(signals.client_connected, connection=connection)

    def release(self, connection: Connection, reason: str) -> None:
        self.connections.discard(connection)
        client_key = connection.client_key
        if client_key is not None:
            self.per_client[client_key] -= 1
            if self.per_client[client_key] <= 0:
                del self.per_client[client_key]
        self.stats.disconnects[reason] += 1
        log.debug("stream %s closed: reason=%s", connection.id, reason)
        self._send(signals.client_disconnected, connection=connection, reason=reason)

    def shutdown(self) -> None:
        """Refuse new streams and end the open ones (they reconnect elsewhere)."""
        self.shutting_down = True
        for connection in list(self.connections):
            connection.close("shutdown")

    def _send(self, signal: Any, **kwargs: Any) -> None:
        if not signal.receivers:
            return
        try:
            # Streams are written after Flask has popped the request's
            # context: give receivers the app's, so current_app works.
            with self.app.app_context():
                signal.send(self.app, **kwargs)
        except Exception:
            log.exception("a receiver of %s failed", signal.name)
