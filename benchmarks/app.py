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
* ``POST /bench/rate?mode=single|many&batch=&seconds=&size=&channel=`` publishes
  for ``seconds`` to a channel nobody listens to, with :meth:`SSE.publish` or
  :meth:`SSE.publish_many` (``batch`` events a call): the publish path alone;
* ``POST /bench/burst?mode=single|many&n=&size=&channel=`` publishes ``n``
  numbered events at once, as one :meth:`SSE.publish_many` or ``n``
  :meth:`SSE.publish` calls;
* ``GET /bench/stats``: pid, RSS, CPU time, the broker's scheme, the
  publisher's state, slow-client drops and vanished-peer releases (from the
  ``client_disconnected`` signal) and ``sse.stats()``.
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
from .wire import event_data

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
#: when each stream whose peer vanished (acknowledged nothing) was released
timeouts: list[float] = []


@signals.client_disconnected.connect_via(app)
def _disconnected(sender: Flask, connection: Any, reason: str) -> None:
    if reason == "slow":
        slow_drops.append({"time": time.time(), "seq": publisher.seq})
    elif reason == "timeout":
        timeouts.append(time.time())


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


@app.post("/bench/rate")
def rate() -> ResponseReturnValue:
    args = request.args
    batched = args.get("mode", "single") == "many"
    batch = int(args.get("batch", 100)) if batched else 1
    seconds = float(args.get("seconds", 1.0))
    channel = args.get("channel", "rate")
    data = event_data(0, int(args.get("size", 64)))
    # The same items each call: what is measured is the publishing, not building them.
    items = [{"data": data, "channel": channel}] * batch
    events = 0
    cpu = time.process_time()
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        if batched:
            sse.publish_many(items)
        else:
            sse.publish(data, channel=channel)
        events += batch
    return jsonify(
        events=events,
        seconds=time.perf_counter() - began,
        cpu_s=time.process_time() - cpu,
    )


@app.post("/bench/burst")
def burst() -> ResponseReturnValue:
    args = request.args
    channel = args.get("channel", "burst")
    size = int(args.get("size", 64))
    seqs = publisher.reserve(int(args.get("n", 10)))
    if args.get("mode", "many") == "many":
        sse.publish_many([{"data": event_data(seq, size), "channel": channel} for seq in seqs])
    else:
        for seq in seqs:
            sse.publish(event_data(seq, size), channel=channel)
    return jsonify(first=seqs[0], last=seqs[-1])


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
        broker=str(app.config["SSE_BROKER_URL"]).split(":", 1)[0],
        slow_drops=slow_drops,
        timeouts=timeouts,
        publisher=publisher.status(),
        sse=sse.stats() if hasattr(sse, "stats") else None,
    )
