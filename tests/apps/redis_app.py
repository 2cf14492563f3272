"""A test app on the Redis broker: the stream blueprint and control routes.

Settings come from ``SSE_*`` environment variables (``SSE_BROKER_URL`` names
the test's redis-server; see :mod:`tests.apps.settings`), so that a test can
start it under gunicorn, or import it in a publishing process, with its own
configuration. Every response says which worker process answered it
(``X-Worker-Pid``), streams included.
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify, request

from flask_sse_keepalive import SSE
from tests.apps.settings import sse_settings

app = Flask(__name__)
app.config.update(sse_settings())
sse = SSE(app)


@app.after_request
def _worker_pid(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.post("/control/publish")
def publish():
    body = request.get_json()
    ids = [
        sse.publish(
            body.get("data"), event=body.get("event"), channel=body.get("channel", "default")
        )
        for _ in range(int(body.get("count", 1)))
    ]
    return jsonify(ids=ids)


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
    return jsonify(sse.stats())
