"""The client against real servers: ``gunicorn -k gevent`` workers, Redis,
and a flaky relay; each scenario runs on both clients.

Workers are killed, stopped and refused under the client while other
processes publish; the client must end with every event exactly once, in
order, or with an explicit ``stream-reset`` where the server could not
resume without a gap.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.client import Backoff, ClientEvent, StreamRefused
from flask_sse_keepalive.event import Event
from tests.conftest import Server
from tests.redis.conftest import Publisher, app_env
from tests.wire import RawStream

from .drivers import Handle, collect, wait_until
from .relay import FlakyRelay

APP = "tests.apps.client_app:app"
Open = Callable[..., Handle]
Gunicorn = Callable[..., Server]


def numbers(events: list[ClientEvent]) -> list[int]:
    return [event.json()["n"] for event in events]


def worker_of(handle: Handle, connection: int = -1) -> int:
    """The pid of the worker that served a stream (the test app names it)."""
    return int(handle.hooks.opened()[connection].headers["x-worker-pid"])


def publish_n(broker: RedisBroker, channel: str, n: int) -> str:
    return broker.publish(channel, Event(data=json.dumps({"n": n}))).id


def test_a_killed_worker_loses_nothing(
    open_client: Open,
    gunicorn: Gunicorn,
    redis_url: str,
    publisher: Callable[..., Publisher],
) -> None:
    server = gunicorn(APP, env=app_env(redis_url, retry_ms=100), workers=2)
    broker = RedisBroker(redis_url)
    try:
        marker = publish_n(broker, "k", 0)
    finally:
        broker.close()
    handle = open_client(
        f"{server.url}/stream", channels=["k"], last_event_id=marker, backoff=Backoff(maximum=0.5)
    )
    handle.wait_subscribed(15)
    run = publisher(redis_url, count=300, rate=150, channels="k")  # another process, 2 s
    events = collect(handle, 60, 15, "events before the kill")
    victim = worker_of(handle)
    os.kill(victim, signal.SIGKILL)
    events += collect(handle, 240, 30, "events after the kill")
    assert run.result(30)["published"] == 300
    assert numbers(events) == list(range(1, 301))
    assert len({event.id for event in events}) == 300
    assert handle.client.stats.resets == 0
    closed = handle.hooks.closed()
    assert closed and closed[0].reason in ("eof", "network")
    assert victim not in [worker_of(handle, n) for n in range(1, len(handle.hooks.opened()))]


def test_history_evicted_while_away_gives_a_stream_reset_then_live_events(
    open_client: Open,
    gunicorn: Gunicorn,
    redis_url: str,
    relay: Callable[..., FlakyRelay],
) -> None:
    server = gunicorn(APP, env=app_env(redis_url, history_size=10, retry_ms=100))
    # Trimming is done by whoever publishes: this process uses the app's size.
    broker = RedisBroker(redis_url, history_size=10)
    line = relay(server.port)  # no random cuts: it goes down when told
    try:
        handle = open_client(
            f"{line.url}/stream", channels=["h"], backoff=Backoff(initial=0.1, maximum=0.3)
        )
        handle.wait_subscribed(15)
        ids = [publish_n(broker, "h", n) for n in range(1, 6)]
        before = collect(handle, 5, 10, "events before the outage")
        line.down()

        def while_away() -> None:
            # Once an attempt has failed against the dead line, publish more
            # than the history keeps, then bring the line back.
            wait_until(lambda: len(handle.hooks.reconnects()) >= 2, 10, "a failed attempt")
            for n in range(6, 306):
                ids.append(publish_n(broker, "h", n))
            line.up()

        away = threading.Thread(target=while_away)
        away.start()
        reset = collect(handle, 1, 15, "the stream-reset")[0]
        away.join(10)
        handle.wait_subscribed(10)
        for n in range(306, 311):
            publish_n(broker, "h", n)
        after = collect(handle, 5, 10, "live events after the reset")
    finally:
        broker.close()
    assert numbers(before) == [1, 2, 3, 4, 5]
    assert reset.event == "stream-reset"
    assert reset.json() == {"reason": "evicted", "last_event_id": ids[4]}
    assert reset.id == ids[-1]  # the current position: live from there
    assert numbers(after) == [306, 307, 308, 309, 310]
    assert handle.client.stats.resets == 1
    assert handle.client.last_event_id == after[-1].id
    # The cut (a chunked body cut short), then an attempt on the dead line.
    assert [r.reason for r in handle.hooks.reconnects()[:2]] == ["network", "network"]


def test_a_stopped_worker_is_left_by_the_watchdog_for_another(
    open_client: Open, gunicorn: Gunicorn, redis_url: str
) -> None:
    interval = 1.0
    server = gunicorn(
        APP, env=app_env(redis_url, heartbeat_interval=interval, retry_ms=200), workers=2
    )
    broker = RedisBroker(redis_url)
    victim = None
    try:
        marker = publish_n(broker, "s", 0)
        handle = open_client(f"{server.url}/stream", channels=["s"], last_event_id=marker)
        handle.wait_subscribed(15)
        assert handle.client.heartbeat_interval == interval
        for n in range(1, 4):
            publish_n(broker, "s", n)
        events = collect(handle, 3, 10, "events before the stop")
        victim = worker_of(handle)
        os.kill(victim, signal.SIGSTOP)  # the connection stays open, and silent
        stopped_at = time.monotonic()
        for n in range(4, 7):  # while the client still waits on the stopped worker
            publish_n(broker, "s", n)
        events += collect(handle, 3, 15, "events after the stop")
    finally:
        broker.close()
        if victim is not None:
            os.kill(victim, signal.SIGCONT)
    assert numbers(events) == [1, 2, 3, 4, 5, 6]
    closed = handle.hooks.of("close")[0]
    assert closed.info.reason == "watchdog"
    # Silence is counted from the last bytes, which came at most one interval
    # before the stop: 2.5 intervals, less up to one, plus slack for a busy machine.
    assert 1.5 * interval - 0.1 <= closed.at - stopped_at <= 2.5 * interval + 1.5
    reconnect = handle.hooks.of("reconnect")[0]
    reopened = handle.hooks.of("open")[1]
    assert reconnect.info.delay <= 0.2  # full jitter under the server's retry
    assert reopened.at - stopped_at <= 2.5 * interval + reconnect.info.delay + 2
    assert worker_of(handle) != victim


def test_503_with_retry_after_is_waited_for(open_client: Open, gunicorn: Gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_MAX_CONNECTIONS": "1", "SSE_HEARTBEAT_INTERVAL": "1"})
    holder = RawStream(server.port, "/stream?channel=x")  # the only place
    wait_until(
        lambda: httpx.get(f"{server.url}/control/stats").json()["connections"] == 1,
        10,
        "the first stream",
    )
    # Without Retry-After this client would be back within 0.1 s.
    handle = open_client(
        f"{server.url}/stream", channels=["x"], backoff=Backoff(initial=0.05, maximum=0.1)
    )

    def free_the_place() -> None:
        wait_until(handle.hooks.reconnects, 10, "the 503")
        holder.close()

    freeing = threading.Thread(target=free_the_place)
    freeing.start()
    handle.wait_subscribed(15)
    freeing.join(10)
    refused = handle.hooks.of("reconnect")[0]
    opened = handle.hooks.of("open")[0]
    assert refused.info.status == 503
    retry_after = refused.info.retry_after
    assert retry_after in (1, 2, 3, 4, 5)
    assert refused.info.delay >= retry_after
    assert opened.at - refused.at >= retry_after


@pytest.mark.parametrize(
    ("path", "channel", "status", "reason"),
    [
        ("/stream", "bad name", 400, "invalid channel name 'bad name'"),
        ("/stream", "forbidden", 403, "Not allowed to subscribe to channel 'forbidden'."),
        ("/nowhere", "x", 404, "Not Found"),
    ],
)
def test_a_refusal_raises_and_is_not_retried(
    open_client: Open, gunicorn: Gunicorn, path: str, channel: str, status: int, reason: str
) -> None:
    server = gunicorn(APP)
    handle = open_client(f"{server.url}{path}", channels=[channel], backoff=Backoff(initial=0.05))
    with pytest.raises(StreamRefused) as refused:
        handle.receive(10)
    assert refused.value.status == status
    assert reason in refused.value.reason
    assert handle.receive(1) is None
    time.sleep(0.5)  # a retry would come within 0.1 s
    assert httpx.get(f"{server.url}/control/requests").json()[path] == 1


def test_2000_events_through_a_line_that_keeps_breaking(
    open_client: Open, gunicorn: Gunicorn, relay: Callable[..., FlakyRelay]
) -> None:
    server = gunicorn(
        APP,
        env={
            "SSE_HISTORY_SIZE": "5000",
            "SSE_HEARTBEAT_INTERVAL": "0.5",
            "SSE_RETRY_MS": "20",
        },
    )
    marker = httpx.post(
        f"{server.url}/control/publish", json={"data": {"n": 0}, "channel": "f"}
    ).json()["ids"][0]
    line = relay(server.port, seed=7, budget=(300, 6000))
    handle = open_client(
        f"{line.url}/stream",
        channels=["f"],
        last_event_id=marker,
        backoff=Backoff(initial=0.02, maximum=0.05),
    )
    handle.wait_subscribed(15)
    httpx.post(f"{server.url}/control/series?channel=f&count=2000&interval=0.002")
    events = collect(handle, 2000, 90, "events through the flaky line")
    assert numbers(events) == list(range(1, 2001))
    assert len({event.id for event in events}) == 2000
    assert handle.client.stats.resets == 0
    assert line.cuts >= 30, "the line broke often"
    assert handle.client.stats.connects >= 30
