"""A test app: the stream blueprint, an ``@sse_stream`` view and control routes.

Settings come from ``SSE_*`` environment variables so that a test can start
it under gunicorn with its own configuration (see :mod:`tests.apps.settings`).
"""

from __future__ import annotations

import json
import logging
import os
import time

from flask import Flask, abort, current_app, jsonify, request

from flask_sse_keepalive import SSE, Event, signals, sse_stream
from tests.apps.settings import sse_settings

if os.environ.get("TEST_DEBUG_LOG"):
    logging.basicConfig(level=logging.DEBUG)

app = Flask(__name__)
app.config.update(sse_settings())
sse = SSE(app)

if os.environ.get("TEST_METRICS"):
    from prometheus_client import CollectorRegistry

    from flask_sse_keepalive.metrics import PrometheusMetrics

    metrics = PrometheusMetrics(sse, app, registry=CollectorRegistry(), interval=0.2)
    app.add_url_rule("/metrics", view_func=metrics.view)

#: what the signals saw, for tests to read through /control/log
_log: list[dict] = []


@signals.client_connected.connect_via(app)
def _connected(sender, connection):
    _log.append({"signal": "connected", "id": connection.id, "channels": list(connection.channels)})


@signals.client_disconnected.connect_via(app)
def _disconnected(sender, connection, reason):
    # current_app works in receivers: the stream sends them in an app context
    assert current_app.name == sender.name
    _log.append({"signal": "disconnected", "id": connection.id, "reason": reason})


@sse.authorize
def _authorize(channel: str) -> bool:
    if channel == "forbidden":
        return False
    if channel == "explode":
        raise RuntimeError("authorize hook failure (expected by a test)")
    return True


@sse.client_key
def _client_key():
    return request.headers.get("X-Client") or request.remote_addr


@app.post("/control/publish")
def publish():
    body = request.get_json()
    if body.get("size"):
        body["data"] = "x" * int(body["size"])
    ids = []
    for _ in range(int(body.get("count", 1))):
        ids.append(
            sse.publish(
                body.get("data"), event=body.get("event"), channel=body.get("channel", "default")
            )
        )
    return jsonify(ids=ids)


@app.post("/control/series")
def series():
    """Publish ``count`` numbered events in the background, ``interval`` apart."""
    import gevent

    channels = request.args.getlist("channel") or ["default"]
    count = int(request.args.get("count", 100))
    interval = float(request.args.get("interval", 0.01))

    def run():
        with app.app_context():
            for n in range(1, count + 1):
                sse.publish(str(n), channel=channels[n % len(channels)])
                gevent.sleep(interval)

    gevent.spawn(run)
    return jsonify(started=count)


@app.get("/control/cluster")
def cluster():
    return jsonify(sse.cluster_stats())


@app.get("/control/count")
def count():
    """``subscriber_count(channel)``, ``repeat`` times in a row (the last answer)."""
    channel = request.args.get("channel", "default")
    answers = [sse.subscriber_count(channel) for _ in range(int(request.args.get("repeat", 1)))]
    return jsonify(count=answers[-1], distinct=sorted(set(answers)))


@app.get("/control/stats")
def stats():
    figures = sse.stats()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                figures["rss_kb"] = int(line.split()[1])
    return jsonify(figures)


@app.post("/control/shutdown")
def shutdown():
    sse.shutdown()
    return jsonify(ok=True)


@app.get("/control/log")
def log():
    return jsonify(_log)


@app.get("/countdown")
@sse_stream
def countdown():
    if request.args.get("deny"):
        abort(403)
    start = int(request.args.get("from", 3))
    delay = float(request.args.get("delay", 0.05))
    marker = request.args.get("marker", "")
    try:
        for n in range(start, 0, -1):
            yield Event(data=str(n), event="count")
            time.sleep(delay)
        if request.args.get("fail"):
            raise RuntimeError("generator failure (expected by a test)")
        yield {"done": True, "path": request.path}
    finally:
        _log.append({"signal": "generator-closed", "marker": marker})


@app.get("/plain")
@sse_stream
def plain_values():
    yield "text"
    yield {"json": [1, 2]}
    yield json.dumps("pre-encoded")
