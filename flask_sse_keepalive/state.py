"""What one app's streams share in one process: the broker, the open streams,
the counters, and the shutdown that ends them.

An :class:`AppState` is made by ``init_app`` and found with
:meth:`SSE.state <flask_sse_keepalive.SSE.state>`. It holds the app by a weak
reference only, so an app (and its state) can be freed like any other object.

Under gunicorn one greenlet per process watches the worker: when it starts to
shut down (SIGTERM, a ``HUP`` reload, ``--max-requests``) every app's streams
end at once, with a goodbye, instead of holding the worker until
``graceful_timeout``. At process exit whatever is still open is ended too,
within a bounded time.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import server, signals
from .brokers import Broker, create_broker
from .brokers.base import Figures
from .config import Settings

if TYPE_CHECKING:
    from blinker import NamedSignal
    from flask import Flask

    from .stream import CloseReason, Connection

__all__ = ["AppState", "Stats"]

log = logging.getLogger("flask_sse_keepalive")

#: How often the shutdown watcher looks at the gunicorn worker, in seconds.
SHUTDOWN_POLL = 0.2
#: At process exit: how long open streams get to say goodbye, then how long
#: the ones still blocked (a stalled client) get once their sockets are cut.
EXIT_GOODBYE_SECONDS = 1.5
EXIT_CUT_SECONDS = 0.5


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


class AppState:
    """Everything one app's streams share in one process.

    :ivar settings: the validated ``SSE_*`` settings.
    :ivar stats: the counters.
    :ivar connections: the open streams.
    :ivar shutting_down: new streams are refused with ``503``.
    """

    def __init__(self, app: Flask, settings: Settings) -> None:
        self._app = weakref.ref(app)
        self.name = app.name
        self.settings = settings
        self.stats = Stats()
        self.connections: set[Connection] = set()
        self.per_client: Counter[str] = Counter()
        #: open streams by heartbeat interval
        self.intervals: Counter[float] = Counter()
        self.shutting_down = False
        self._broker: Broker | None = None
        self._checked_pid = 0
        #: this state's name in the cluster view, per process: (pid, token)
        self._identity = (0, "")
        self._lock = threading.Lock()
        _every_state.add(self)

    @property
    def app(self) -> Flask:
        app = self._app()
        if app is None:
            raise RuntimeError(f"the app {self.name!r} of this SSE state no longer exists")
        return app

    @property
    def broker(self) -> Broker:
        """The broker, made in the process that uses it (a forked child makes its own)."""
        broker = self._broker
        if broker is None:
            with self._lock:
                if self._broker is None:
                    settings = self.settings
                    self._broker = create_broker(
                        settings.broker_url,
                        history_size=settings.history_size,
                        redis_prefix=settings.redis_prefix,
                        redis_probe_interval=settings.redis_probe_interval,
                    )
                broker = self._broker
        return broker

    def forget_broker(self) -> None:
        """Make a new broker at the next use: in a forked child, the parent's
        connections, threads and memory history are not this process's."""
        self._broker = None

    def figures(self) -> Figures:
        """This process's figures for the app: what :meth:`SSE.stats` returns,
        and what the process reports to the cluster view. Safe to call from
        another thread."""
        stats = self.stats
        pid = os.getpid()
        if self._identity[0] != pid:
            self._identity = (pid, secrets.token_hex(3))
        now = time.time()
        return {
            "id": f"{_HOST}:{pid}:{self._identity[1]}",
            "host": _HOST,
            "pid": pid,
            "app": self.name,
            "time": round(now, 3),
            "uptime": round(now - _process_started, 3),
            "connections": len(self.connections),
            "channels": self.broker.subscriber_counts(),
            "broker": self.broker.health(),
            "published": stats.published,
            "delivered": stats.delivered,
            "heartbeats": stats.heartbeats,
            "resets": stats.resets,
            "slow": stats.slow,
            "refused": stats.refused,
            "connects": stats.connects,
            # dict() copies in one step: a stream may open meanwhile.
            "disconnects": dict(stats.disconnects),
            "modes": dict(stats.modes),
            "heartbeat_intervals": {f"{i:g}": n for i, n in sorted(dict(self.intervals).items())},
            "shutting_down": self.shutting_down,
        }

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
        """Count a new stream in and tell ``client_connected``."""
        if self._checked_pid != os.getpid():
            # A preloaded app's worker meets its first stream: check it now.
            self._checked_pid = os.getpid()
            settings = self.settings
            server.check_server(
                self.name, settings.broker_url, allow_threads=settings.allow_threads
            )
            _watch(self)
            # A process that serves streams is in the cluster view from now on.
            self.broker.presence().start(self.figures, self.settings.report_interval)
        self.connections.add(connection)
        self.intervals[connection.heartbeat_interval] += 1
        client_key = connection.client_key
        if client_key is not None:
            self.per_client[client_key] += 1
        self.stats.connects += 1
        self.stats.modes[connection.mode] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "stream %s opened: channels=%s last_event_id=%s mode=%s",
                connection.id,
                ",".join(connection.channels),
                connection.last_event_id,
                connection.mode,
            )
        self.send(signals.client_connected, connection=connection)

    def release(self, connection: Connection, reason: CloseReason) -> None:
        """Count a stream out and tell ``client_disconnected``. Called once per stream."""
        self.connections.discard(connection)
        self.intervals[connection.heartbeat_interval] -= 1
        if self.intervals[connection.heartbeat_interval] <= 0:
            del self.intervals[connection.heartbeat_interval]
        client_key = connection.client_key
        if client_key is not None:
            self.per_client[client_key] -= 1
            if self.per_client[client_key] <= 0:
                del self.per_client[client_key]
        self.stats.disconnects[reason] += 1
        log.debug("stream %s closed: reason=%s", connection.id, reason)
        self.send(signals.client_disconnected, connection=connection, reason=reason)

    def shutdown(self) -> None:
        """Refuse new streams and end the open ones (they reconnect elsewhere)."""
        self.shutting_down = True
        for connection in list(self.connections):
            connection.close("shutdown")

    def send(self, signal: NamedSignal, **kwargs: Any) -> None:
        """Send one of our signals with the app as sender, in an app context."""
        if not signal.receivers:
            return
        app = self._app()
        if app is None:
            return
        try:
            # Streams are written after Flask has popped the request's
            # context: give receivers the app's, so current_app works.
            with app.app_context():
                signal.send(app, **kwargs)
        except Exception:
            log.exception("a receiver of %s failed", signal.name)


# -- the process: its name, worker shutdown and exit ------------------------------

_HOST = socket.gethostname()
#: when this process started (a forked worker: when it was forked)
_process_started = time.time()


def _restart_clock() -> None:
    global _process_started
    _process_started = time.time()


os.register_at_fork(after_in_child=_restart_clock)

#: every state made in this process, so that a forked child makes its own brokers
_every_state: weakref.WeakSet[AppState] = weakref.WeakSet()


def _new_brokers_in_child() -> None:
    # Connections, threads and a memory broker's history belong to the
    # process that made them (a gunicorn master that preloads the app).
    for state in list(_every_state):
        state.forget_broker()


os.register_at_fork(after_in_child=_new_brokers_in_child)

_states: weakref.WeakSet[AppState] = weakref.WeakSet()
_watcher: Any = None


def _watch(state: AppState) -> None:
    """End ``state``'s streams when this gunicorn worker starts to shut down.

    Covers SIGTERM (stop, ``HUP`` reload), ``--max-requests`` recycling and the
    reloader: all of them clear ``worker.alive``. One greenlet per process
    polls it. Outside gunicorn this does nothing; call :meth:`SSE.shutdown`.
    """
    global _watcher
    _states.add(state)
    if _watcher is not None or not server.gevent_patched():
        return
    worker = server.gunicorn_worker()
    if worker is None:
        return
    import gevent

    _watcher = gevent.spawn(_poll_worker, worker)
    # Streams that own their sockets are not in gunicorn's handler pool, so
    # the worker may finish before they said goodbye: end them at exit too.
    atexit.register(_end_streams_at_exit)


def _poll_worker(worker: Any) -> None:
    import gevent

    while worker.alive:
        gevent.sleep(SHUTDOWN_POLL)
    log.info("worker %s is shutting down: ending its streams", worker.pid)
    for state in list(_states):
        state.shutdown()


def _open_streams() -> list[Connection]:
    return [connection for state in list(_states) for connection in list(state.connections)]


def _end_streams_at_exit() -> None:
    """End every stream still open at exit, in bounded time, each released
    (``client_disconnected`` sent) and, where its line allows, with a goodbye."""
    for connection in _open_streams():
        connection.close("shutdown")
    _wait_for_release(EXIT_GOODBYE_SECONDS)
    # Still writing to a client that does not read: cut the line, so that the
    # blocked write fails and the stream is released.
    for connection in _open_streams():
        connection.cut()
    _wait_for_release(EXIT_CUT_SECONDS)


def _wait_for_release(seconds: float) -> None:
    import gevent

    deadline = time.monotonic() + seconds
    while _open_streams() and time.monotonic() < deadline:
        gevent.sleep(0.05)
