"""The accept floor: the least a Flask stream route costs under the same worker.

``gunicorn -k gevent -w 1 benchmarks.floor:app``. Its ``/stream`` is a plain
Flask view returning a streaming response: the first bytes at once, then
``: heartbeat`` every ``FLOOR_HEARTBEAT_INTERVAL`` seconds from a generator,
and nothing else: no broker, no validation, no ids, no hand-over. Opening a
stream here costs gunicorn's request parsing and response head and Flask's
dispatch, which the real server's route pays too; the rate at which this
server accepts new streams is what one worker with Flask can reach on the
machine, the real server's route included or not.

``GET /bench/stats`` answers what the ``idle`` scenario reads (pid, the
heartbeat interval).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import gevent
from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue

from .procinfo import cpu_seconds, raise_nofile, rss_bytes

__all__ = ["app"]

raise_nofile()

app = Flask(__name__)
INTERVAL = float(os.environ.get("FLOOR_HEARTBEAT_INTERVAL", "15"))


@app.get("/stream")
def stream() -> ResponseReturnValue:
    def body() -> Iterator[bytes]:
        yield b"retry: 1000\n: stream open\n\n"
        while True:
            gevent.sleep(INTERVAL)
            yield b": heartbeat\n\n"

    return Response(body(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.get("/bench/stats")
def stats() -> ResponseReturnValue:
    pid = os.getpid()
    return jsonify(
        server="flask-floor",
        pid=pid,
        rss=rss_bytes(pid),
        cpu=cpu_seconds(pid),
        heartbeat_interval=INTERVAL,
    )
