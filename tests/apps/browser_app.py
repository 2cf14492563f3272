"""A test app for the browser client: the real stream blueprint plus
test-only routes that misbehave on purpose (stall, refuse with a status).

Settings come from ``SSE_*`` environment variables. Run one worker: the
request log lives in the process. It holds every request to the misbehaving
routes, and every request to the real stream route that carries ``?key=``
(the route ignores parameters it does not know), with the answer's status.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, jsonify, render_template_string, request

from flask_sse_keepalive import SSE

app = Flask(__name__)
app.config["SECRET_KEY"] = "browser-app-secret"  # for subscribe tokens
for key, value in os.environ.items():
    if key.startswith("SSE_"):
        app.config[key] = value
sse = SSE(app)

#: key -> the requests seen: time, Last-Event-ID, Origin, ``?heartbeat=``,
#: then the answer's status and Retry-After
_requests: dict[str, list[dict[str, Any]]] = defaultdict(list)

#: ``/?build=module`` loads the ES module (which defines no global: the page
#: exposes what it imported), anything else the classic script.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>client test page</title>
{% if module %}
<script type="module">
  import SSEKeepalive from "{{ url_for('sse.static', filename='sse-keepalive.mjs') }}";
  window.SSEKeepalive = SSEKeepalive;
</script>
{% else %}
<script src="{{ url_for('sse.static', filename='sse-keepalive.js') }}"></script>
{% endif %}
<p>client test page</p>
"""


@sse.authorize
def _authorize(channel: str) -> bool:
    return channel != "forbidden"


@app.get("/")
def page() -> str:
    return render_template_string(PAGE, module=request.args.get("build") == "module")


@app.post("/control/publish")
def publish() -> Response:
    body = request.get_json()
    ids = [
        sse.publish(data, event=body.get("event"), channel=body.get("channel", "default"))
        for data in body["items"]
    ]
    return jsonify(ids=ids)


@app.post("/control/token")
def token() -> Response:
    """A subscribe token, as a page's own endpoint would give one."""
    body = request.get_json()
    return jsonify(token=sse.token(body["channels"], expires_in=body.get("expires_in", 600)))


@app.get("/control/requests")
def requests_seen() -> Response:
    return jsonify(_requests[request.args["key"]])


def _record() -> int:
    """Log this request under ``?key=``; return how many came before it."""
    seen = _requests[request.args["key"]]
    g.recorded = {
        "time": time.time(),
        "last_event_id": request.headers.get("Last-Event-ID"),
        "origin": request.headers.get("Origin"),
        "heartbeat": request.args.get("heartbeat"),
        "token": request.args.get("token"),
    }
    seen.append(g.recorded)
    return len(seen) - 1


@app.before_request
def _record_stream_request() -> None:
    if request.endpoint == "sse.stream" and request.method == "GET" and "key" in request.args:
        _record()


@app.after_request
def _record_answer(response: Response) -> Response:
    recorded = g.get("recorded")
    if recorded is not None:
        recorded["status"] = response.status_code
        recorded["retry_after"] = response.headers.get("Retry-After")
    return response


def _preamble(interval: float, retry_ms: int) -> bytes:
    return f"retry: {retry_ms}\n: sse-keepalive heartbeat-interval={interval:g}\n\n".encode()


def _worker_alive() -> bool:
    # gunicorn installs its worker's bound method as the SIGTERM handler, and
    # clears ``worker.alive`` when it starts to stop.
    worker = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(worker, "alive", True))


def _hold(seconds: float) -> Iterator[bytes]:
    """Send nothing for ``seconds``, ending early when the worker shuts down
    (so that stopping the server does not wait for the stall)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _worker_alive():
        time.sleep(0.1)
    return
    yield b""  # a generator, for Response


def _event_stream(body: Iterator[bytes]) -> Response:
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return Response(body, mimetype="text/event-stream", headers=headers)


@app.get("/raw/stall")
def stall() -> Response:
    """The preamble and one event, then silence: a half-open connection as a
    client sees it. ``?interval=`` is the heartbeat interval announced."""
    number = _record() + 1
    interval = float(request.args.get("interval", "0.4"))
    hold = float(request.args.get("hold", "6"))

    def body() -> Iterator[bytes]:
        yield _preamble(interval, 100)
        yield f"id: stall-{number}\ndata: {number}\n\n".encode()
        yield from _hold(hold)

    return _event_stream(body())


@app.get("/raw/status/<int:code>")
def status(code: int) -> Response:
    """Answer ``code`` (with ``?retry_after=``) to the first ``?times=``
    requests, then a stream with one event."""
    count = _record()
    hold = float(request.args.get("hold", "5"))
    if count < int(request.args.get("times", "1")):
        headers = {}
        if "retry_after" in request.args:
            headers["Retry-After"] = request.args["retry_after"]
        return Response(
            f"refused with {code}\n", status=code, headers=headers, mimetype="text/plain"
        )

    def body() -> Iterator[bytes]:
        yield _preamble(15, 100)
        yield f"id: ok-{count}\ndata: connected\n\n".encode()
        yield from _hold(hold)

    return _event_stream(body())
