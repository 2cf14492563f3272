"""A test app for cross-origin streams: the stream blueprint, and a record of
the channel, ``Origin`` and ``session`` cookie of every stream request.

Settings come from ``SSE_*`` environment variables. Run one worker: the
record lives in the process.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, jsonify, request

from flask_sse_keepalive import SSE

app = Flask(__name__)
for key, value in os.environ.items():
    if key.startswith("SSE_"):
        app.config[key] = value
sse = SSE(app)

#: what each stream request carried
_seen: list[dict[str, Any]] = []


@sse.authorize
def _record(channel: str) -> bool:
    # Called once per channel on every stream request, before any byte is sent.
    origin, cookie = request.headers.get("Origin"), request.cookies.get("session")
    _seen.append({"channel": channel, "origin": origin, "cookie": cookie})
    return True


@app.post("/control/publish")
def publish() -> Response:
    body = request.get_json()
    return jsonify(id=sse.publish(body["data"], channel=body.get("channel", "default")))


@app.get("/control/seen")
def seen() -> Response:
    return jsonify(_seen)
