"""A plain (not gevent) process that publishes numbered events through the app.

``python -m tests.redis.publisher --count 200 --rate 100 --channels a,b``
publishes ``{"n": k}`` for k = start .. start + count - 1 (channel by k), at a
steady rate, from ``tests.apps.redis_app`` inside an app context, as a CLI
command or a job would. A publish that raises ``BrokerUnavailable`` is retried
until it succeeds, but only once the stream shows that the failed attempt did
not store the event after all, so that each event is published once, in order.
Prints one JSON line at the end: what was published and how often Redis failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import redis

from flask_sse_keepalive.brokers import BrokerUnavailable


def stored(client: redis.Redis, stream: str, data: str) -> bool | None:
    """Whether the newest entries of ``stream`` hold ``data``; ``None`` if
    Redis cannot tell yet."""
    try:
        entries = client.xrevrange(stream, count=50)
    except redis.RedisError:
        return None
    return any(fields.get(b"d") == data.encode() for _, fields in entries)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0, help="events per second; 0: at once")
    parser.add_argument("--channels", default="default")
    parser.add_argument("--give-up", type=float, default=60, help="seconds to retry one event")
    args = parser.parse_args()
    channels = args.channels.split(",")

    from tests.apps.redis_app import app, sse

    broker = sse.state(app).broker
    prefix = broker.keys.prefix  # type: ignore[attr-defined]
    # Reads the primary, wherever it is (Sentinel, Cluster), as the broker does.
    checker = redis.Redis(
        connection_pool=broker.endpoint.pool(1, timeout=2, socket_timeout=2)  # type: ignore[attr-defined]
    )
    failures = 0
    ids = []
    started = last_ok = time.monotonic()
    longest_pause = 0.0  # between two publishes that succeeded
    with app.app_context():
        for index, n in enumerate(range(args.start, args.start + args.count)):
            if args.rate:
                delay = started + index / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            channel = channels[n % len(channels)]
            data = json.dumps({"n": n})
            deadline = time.monotonic() + args.give_up
            failed = False
            while True:
                if failed:
                    # The failed attempt may have stored the event: never twice.
                    found = stored(checker, f"{prefix}stream:{channel}", data)
                    if found:
                        ids.append(None)
                        break
                    if found is None:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"Redis did not come back for event {n}")
                        time.sleep(0.1)
                        continue
                try:
                    ids.append(sse.publish(data, channel=channel))
                    now = time.monotonic()
                    longest_pause = max(longest_pause, now - last_ok)
                    last_ok = now
                    break
                except BrokerUnavailable:
                    failures += 1
                    failed = True
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
    report = {"published": args.count, "failures": failures, "ids": ids,
              "longest_pause": longest_pause}  # fmt: skip
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
