"""A test app for the Python client: the stream route on any broker, and
responses that name the worker process that made them (``X-Worker-Pid``), so
that a test can stop or kill the worker serving a stream.

Settings come from ``SSE_*`` environment variables, as in the other test apps.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from flask import Flask, Response, jsonify, request

from flask_sse_keepalive import SSE

app = Flask(__name__)
for key, value in os.environ.items():
    if key.startswith("SSE_"):
        app.config[key] = value
sse = SSE(app)

#: requests seen by this worker, by path
_requests: Counter[str] = Counter()


@sse.authorize
def _authorize(channel: str) -> bool:
    return channel != "forbidden"


@app.before_request
def _count() -> None:
    _requests[request.path] += 1


@app.after_request
def _name_the_worker(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.post("/control/publish")
def publish():
    body = request.get_json()
    ids = [
        sse.publish(body["data"], event=body.get("event"), channel=body.get("channel", "default"))
        for _ in range(int(body.get("count", 1)))
    ]
    return jsonify(ids=ids)


@app.post("/control/series")
def series():
    """Publish ``{"n": k}`` for k = start .. start + count - 1 in the background."""
    import gevent

    channel = request.args.get("channel", "default")
    start = int(request.args.get("start", 1))
    count = int(request.args.get("count", 100))
    interval = float(request.args.get("interval", 0.002))

    def run() -> None:
        with app.app_context():
            for n in range(start, start + count):
                sse.publish(json.dumps({"n": n}), channel=channel)
                gevent.sleep(interval)

    gevent.spawn(run)
    return jsonify(started=count)


@app.get("/control/requests")
def requests_seen():
    return jsonify(_requests)


@app.get("/control/stats")
def stats():
    return jsonify(sse.stats())
