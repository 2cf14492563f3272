"""A publisher in a process of its own, as an application's job runner would be.

``SSE_BROKER_URL=redis://... python -m benchmarks.feeder --rate 100 --channels 100``

It publishes through the Redis broker (``sse.publish``, the public API, in an
app context, no server) at a fixed rate, round-robin over ``channels``
channels named ``{prefix}-{n}``. Event ``i`` goes to channel ``i % channels``
and its data is :func:`~benchmarks.wire.event_data` of its number *on that
channel* (1, 2, ...), so that a client can tell a lost or a repeated event
of its channel. It writes ``ready`` once the first event is published, runs
until a line (or end of file) arrives on its standard input, then prints what
it published as JSON: ``{"pid", "published": {channel: count}, "failures"}``.

The ``storm`` scenario runs it beside the server under test: its events are
what the reconnecting streams must catch up on.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from typing import Any

from flask import Flask

from flask_sse_keepalive import SSE
from flask_sse_keepalive.brokers.base import BrokerUnavailable

from .wire import event_data

__all__ = ["channel_name", "main"]


def channel_name(prefix: str, n: int) -> str:
    return f"{prefix}-{n}"


def _stop_asked(timeout: float) -> bool:
    """Whether the standard input has a line (or its end) within ``timeout`` s."""
    ready, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout))
    return bool(ready)


def feed(rate: float, channels: int, prefix: str, size: int) -> dict[str, Any]:
    app = Flask(__name__)
    app.config["SSE_BROKER_URL"] = os.environ["SSE_BROKER_URL"]
    sse = SSE(app)
    names = [channel_name(prefix, n) for n in range(channels)]
    counts = dict.fromkeys(names, 0)
    failures: list[str] = []
    began = time.monotonic()
    sent = 0
    with app.app_context():
        while True:
            if _stop_asked(began + sent / rate - time.monotonic()):
                break
            channel = names[sent % channels]
            try:
                sse.publish(event_data(counts[channel] + 1, size), channel=channel)
            except BrokerUnavailable as exc:
                failures.append(repr(exc))
                continue  # the same event again, at the next tick
            counts[channel] += 1
            sent += 1
            if sent == 1:
                print("ready", flush=True)
    return {"pid": os.getpid(), "published": counts, "failures": failures[:10]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Publish through the Redis broker at a rate.")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second, all told")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--prefix", default="feed")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    result = feed(args.rate, args.channels, args.prefix, args.size)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
