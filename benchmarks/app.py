"""The real server under test: a Flask app using the public API only.

``gunicorn -k gevent -w 1 benchmarks.app:app``. Settings come from ``SSE_*``
environment variables (numbers as text, as the extension accepts them). Besides
the stream blueprint (``/stream``) it has control routes, outside the stream
prefix, that the load generator calls:

* ``POST /bench/publish?n=&rate=&size=&lead=&channel=`` starts a greenlet
  publishing ``n`` numbered, timestamped events with :meth:`SSE.publish`
  (see :mod:`benchmarks.publisher` for ``rate`` and ``lead``);
* ``POST /bench/progress?acked=SEQ``: every stream has received up to ``SEQ``;
* ``POST /bench/stop`` ends the job after the event being published; its status;
* ``GET /bench/stats``: pid, RSS, CPU time, the publisher's state, slow-client
  drops (from the ``client_disconnected`` signal) and ``sse.stats()``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_sse_keepalive import SSE, signals

from .procinfo import cpu_seconds, raise_nofile, rss_bytes
from .publisher import Publisher

__all__ = ["app", "sse"]

raise_nofile()

app = Flask(__name__)
for key, value in os.environ.items():
    if key.startswith("SSE_"):
        app.config[key] = value
sse = SSE(app)

_channel = ["default"]
publisher = Publisher(lambda data: sse.publish(data, channel=_channel[0]), app.app_context)
#: when a slow client was dropped, and the last event published by then
slow_drops: list[dict[str, float]] = []


@signals.client_disconnected.connect_via(app)
def _disconnected(sender: Flask, connection: Any, reason: str) -> None:
    if reason == "slow":
        slow_drops.append({"time": time.time(), "seq": publisher.seq})


@app.post("/bench/publish")
def publish() -> ResponseReturnValue:
    args = request.args
    _channel[0] = args.get("channel", "default")
    job = publisher.start(
        int(args["n"]),
        rate=float(args.get("rate", 0)),
        size=int(args.get("size", 64)),
        lead=int(args.get("lead", 0)),
    )
    return jsonify(job)


@app.post("/bench/stop")
def stop() -> ResponseReturnValue:
    return jsonify(publisher.finish())


@app.post("/bench/progress")
def progress() -> ResponseReturnValue:
    publisher.progress(int(request.args["acked"]))
    return jsonify(acked=publisher.acked)


@app.get("/bench/stats")
def stats() -> ResponseReturnValue:
    pid = os.getpid()
    return jsonify(
        server="real",
        pid=pid,
        rss=rss_bytes(pid),
        cpu=cpu_seconds(pid),
        heartbeat_interval=float(app.config["SSE_HEARTBEAT_INTERVAL"]),
        queue_size=int(app.config["SSE_QUEUE_SIZE"]),
        slow_drops=slow_drops,
        publisher=publisher.status(),
        sse=sse.stats() if hasattr(sse, "stats") else None,
    )
