"""Prometheus metrics from :meth:`SSE.stats` (extra ``metrics``: ``prometheus_client``).

::

    from flask_sse_keepalive.metrics import PrometheusMetrics

    metrics = PrometheusMetrics(sse, app)
    app.add_url_rule("/metrics", view_func=metrics.view)

The figures are copied into ordinary ``prometheus_client`` counters and gauges
every ``interval`` seconds (and at each scrape), never on the hot path. Under
gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (an empty
directory, cleared before start) in the environment: each worker then writes
its values there and :attr:`view` serves the sum over all workers. gunicorn
must then tell ``prometheus_client`` when a worker exits, or a dead worker's
gauges stay in the sums: in ``gunicorn.conf.py``::

    from prometheus_client import multiprocess

    def child_exit(server, worker):
        multiprocess.mark_process_dead(worker.pid)
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from . import server

if TYPE_CHECKING:
    from flask import Flask, Response

    from .extension import SSE

__all__ = ["PrometheusMetrics"]

_COUNTERS = {
    "published": "Events published by this process",
    "delivered": "Events handed to local streams (events x subscribers)",
    "heartbeats": "Heartbeat comments written",
    "resets": "stream-reset events sent",
    "slow": "Streams dropped as slow consumers",
    "refused": "Streams refused with 503",
    "connects": "Streams opened",
}


class PrometheusMetrics:
    """Export one app's SSE figures as Prometheus metrics.

    :param sse: the extension.
    :param app: the app it is set up on.
    :param registry: where to register the metrics (default: the global one).
    :param prefix: metric name prefix.
    :param interval: seconds between copies of the figures.
    """

    def __init__(
        self,
        sse: SSE,
        app: Flask,
        *,
        registry: CollectorRegistry = REGISTRY,
        prefix: str = "sse",
        interval: float = 5.0,
    ) -> None:
        self._sse = sse
        self._app = app
        self._registry = registry
        self._interval = interval
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._counters = {
            name: Counter(f"{prefix}_{name}", help_text, registry=registry)
            for name, help_text in _COUNTERS.items()
        }
        self._disconnects = Counter(
            f"{prefix}_disconnects", "Streams closed, by reason", ["reason"], registry=registry
        )
        self._connections = Gauge(
            f"{prefix}_connections",
            "Open streams",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._channels = Gauge(
            f"{prefix}_channels",
            "Channels with local subscribers",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._intervals = Gauge(
            f"{prefix}_streams_by_heartbeat",
            "Open streams by the heartbeat interval they keep, in seconds",
            ["interval"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._intervals_seen: set[str] = set()
        self._started = False
        self._start_timer()

    def sync(self) -> None:
        """Copy the current figures into the metrics (called by the timer and the view)."""
        with self._lock, self._app.app_context():
            stats = self._sse.stats()
            for name, counter in self._counters.items():
                self._advance(name, stats[name], counter)
            for reason, value in stats["disconnects"].items():
                self._advance(f"disconnects:{reason}", value, self._disconnects.labels(reason))
            self._connections.set(stats["connections"])
            self._channels.set(len(stats["channels"]))
            intervals = stats["heartbeat_intervals"]
            for interval in self._intervals_seen | set(intervals):
                self._intervals.labels(interval).set(intervals.get(interval, 0))
            self._intervals_seen |= set(intervals)
        self._start_timer()

    def _advance(self, key: str, value: float, counter: Any) -> None:
        delta = value - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = value

    def _start_timer(self) -> None:
        if self._started or not server.gevent_patched():
            return
        self._started = True
        import gevent

        def loop() -> None:
            while True:
                gevent.sleep(self._interval)
                self.sync()

        gevent.spawn(loop)

    def view(self) -> Response:
        """A Flask view serving the metrics in the Prometheus text format."""
        from flask import Response

        self.sync()
        registry = self._registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
