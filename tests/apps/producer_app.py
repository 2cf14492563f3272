"""A test app for ``@sse_stream`` flow control: a generator that yields as fast
as it is let, and records how far it got.

Settings come from ``SSE_*`` environment variables. Run one worker: the
progress and the signal log live in the process.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

from flask_sse_keepalive import SSE, Event, signals, sse_stream

app = Flask(__name__)
for key, value in os.environ.items():
    if key.startswith("SSE_"):
        app.config[key] = value
sse = SSE(app)

#: key -> how far the generator of ``/produce?key=`` got
_progress: dict[str, dict[str, Any]] = {}
#: what client_disconnected saw, with the time (``time.time()``)
_log: list[dict[str, Any]] = []


@signals.client_disconnected.connect_via(app)
def _disconnected(sender: Flask, connection: Any, reason: str) -> None:
    _log.append({"id": connection.id, "reason": reason, "time": time.time()})


@app.get("/produce")
@sse_stream
def produce() -> Iterator[Event]:
    """``count`` events numbered from 1, ``size`` bytes of padding each.

    ``?sndbuf=`` sets the server socket's send buffer, so that what the
    kernel holds for the client is small and known.
    """
    key = request.args["key"]
    count = int(request.args.get("count", 1000))
    padding = "x" * int(request.args.get("size", 1000))
    sndbuf = request.args.get("sndbuf")
    sock = request.environ.get("gunicorn.socket")
    if sndbuf and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(sndbuf))
    state = _progress[key] = {"produced": 0, "time": time.time(), "closed": None}
    try:
        for n in range(1, count + 1):
            yield Event(data=f"{n} {padding}", id=str(n))
            # The connection took event n and asks for the next one.
            state["produced"] = n
            state["time"] = time.time()
    finally:
        state["closed"] = time.time()


@app.get("/control/progress")
def progress() -> Response:
    return jsonify(_progress.get(request.args["key"]))


@app.get("/control/log")
def log() -> Response:
    return jsonify(_log)


@app.get("/control/stats")
def stats() -> Response:
    return jsonify(sse.stats())
