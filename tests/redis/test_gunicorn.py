"""The Redis broker behind real ``gunicorn -k gevent`` workers and raw SSE clients."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis

from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.event import Event
from tests.conftest import Server

from .clients import Client, Fleet
from .conftest import Publisher


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.close()


@pytest.fixture
def test_broker(redis_url: str) -> Iterator[RedisBroker]:
    """A broker in the test process, for publishing markers (plain process)."""
    broker = RedisBroker(redis_url)
    yield broker
    broker.close()


def publish_n(broker: RedisBroker, channel: str, n: int) -> str:
    return broker.publish(channel, Event(data=json.dumps({"n": n}))).id


def serving_workers(url: str) -> Counter[str]:
    """Redis connections per process that serves streams (has a pub/sub
    connection), by client name ``sse:{pid}``; the test process excluded."""
    clients = redis.Redis.from_url(url).client_list()
    mine = f"sse:{os.getpid()}"
    named = [c for c in clients if c["name"].startswith("sse:") and c["name"] != mine]
    serving = {c["name"] for c in named if int(c["sub"]) > 0}
    return Counter(c["name"] for c in named if c["name"] in serving)


def test_fanout_to_60_clients_over_3_workers(
    redis_url: str,
    redis_app: Callable[..., Server],
    publisher: Callable[..., Publisher],
    test_broker: RedisBroker,
    fleet: Fleet,
) -> None:
    server = redis_app(redis_url, workers=3)
    marker = publish_n(test_broker, "fan", 0)
    clients = [
        fleet.add(Client(server.port, ["fan"], query_last_event_id=marker)) for _ in range(60)
    ]
    fleet.wait(lambda: all(c.started for c in clients), 30, "first bytes on all 60 streams")

    def spread() -> bool:
        # The kernel picks a worker for each connection: make sure that events
        # cross processes by having streams (subscriptions) on two at least.
        if len(serving_workers(redis_url)) >= 2:
            return True
        if len(clients) < 200:
            clients.append(fleet.add(Client(server.port, ["fan"], query_last_event_id=marker)))
        return False

    fleet.wait(spread, 30, "streams on two workers at least")
    fleet.wait(lambda: all(c.started for c in clients), 30, "first bytes on every stream")
    assert all(c.status == 200 for c in clients)

    run = publisher(redis_url, count=200, channels="fan")
    fleet.wait(
        lambda: all(len(c.numbers()) >= 200 for c in clients),
        60,
        lambda: f"200 events on every stream, got {sorted(len(c.numbers()) for c in clients)}",
    )
    assert run.result(30)["published"] == 200
    for client in clients:
        assert client.numbers() == list(range(1, 201))
        assert client.resets() == []


def test_resume_across_workers_on_two_channels(
    redis_url: str, redis_app: Callable[..., Server], test_broker: RedisBroker, fleet: Fleet
) -> None:
    server = redis_app(redis_url, workers=3)
    marker = publish_n(test_broker, "left", 0)
    both = [Client(server.port, ["left", "right"], query_last_event_id=marker) for _ in range(12)]
    right = [Client(server.port, ["right"], query_last_event_id=marker) for _ in range(4)]
    for client in both + right:
        fleet.add(client)
    fleet.wait(lambda: all(c.started for c in fleet.clients), 30, "first bytes on 16 streams")

    def publish(numbers: range) -> None:
        for n in numbers:
            publish_n(test_broker, "right" if n % 2 else "left", n)

    def expect(upto: int) -> Callable[[], bool]:
        return lambda: (
            all(len(c.numbers()) >= upto for c in both)
            and all(len(c.numbers()) >= (upto + 1) // 2 for c in right)
        )

    publish(range(1, 41))
    fleet.wait(expect(40), 30, "the first 40 events")
    assert all(c.pid is not None for c in fleet.clients), "X-Worker-Pid on every stream"
    for client in fleet.clients:
        fleet.drop(client)
    publish(range(41, 81))  # missed while away
    for client in fleet.clients:
        # Back with the Last-Event-ID header, to a worker other than the one
        # that served it before (a connection to that one is dropped at its
        # head, before any event, and made again).
        assert client.last_event_id
        fleet.reconnect(client, elsewhere=True)
    fleet.wait(
        lambda: all(c.pid is not None and not c.avoiding for c in fleet.clients),
        30,
        lambda: f"every client on another worker; avoided {[c.avoided for c in fleet.clients]}",
    )
    publish(range(81, 101))  # live after the resume
    fleet.wait(expect(100), 30, "the missed and the new events")
    for client in fleet.clients:
        first, resumed = client.pids
        assert first != resumed, "the resume reached another worker"
        assert client.connects == 2 + client.avoided
    for client in both:
        assert client.numbers() == list(range(1, 101))
        assert client.resets() == []
    for client in right:
        assert client.numbers() == list(range(1, 101, 2))
        assert client.resets() == []


def test_unknown_and_evicted_ids_get_stream_reset(
    redis_url: str, redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    server = redis_app(redis_url, history_size=10)
    # Trimming is done by whoever publishes: every process uses the app's size.
    test_broker = RedisBroker(redis_url, history_size=10)
    old = publish_n(test_broker, "r", 0)
    for n in range(1, 301):  # far more than the history keeps
        publish_n(test_broker, "r", n)
    epoch = old.rsplit("-", 1)[0]
    evicted = fleet.add(Client(server.port, ["r"], last_event_id=old))
    unknown = fleet.add(Client(server.port, ["r"], last_event_id="deadbeef-3"))
    ahead = fleet.add(Client(server.port, ["r"], last_event_id=f"{epoch}-99999"))
    fleet.wait(lambda: all(c.resets() for c in fleet.clients), 20, "a stream-reset on each")
    last = publish_n(test_broker, "r", 301)
    fleet.wait(lambda: all(c.numbers() == [301] for c in fleet.clients), 20, "the next event")
    assert evicted.resets()[0] == {"reason": "evicted", "last_event_id": old}
    assert unknown.resets()[0]["reason"] == "unknown-epoch"
    assert ahead.resets()[0]["reason"] == "ahead"
    for client in fleet.clients:
        # the reset carries the current position: the id of the 300th event
        reset = next(e for e in client.events if e.type == "stream-reset")
        assert reset.last_event_id == f"{epoch}-{int(last.rsplit('-', 1)[1]) - 1}"
    test_broker.close()


def test_redis_connections_per_worker_do_not_grow_with_clients(
    redis_url: str, redis_app: Callable[..., Server], test_broker: RedisBroker, fleet: Fleet
) -> None:
    server = redis_app(redis_url, workers=2)
    channels = [f"c{n}" for n in range(50)]

    def connect(count: int) -> None:
        start = len(fleet.clients)
        for index in range(start, start + count):
            fleet.add(Client(server.port, [channels[index % 50], "all"]))
        fleet.wait(
            lambda: all(c.started for c in fleet.clients),
            60,
            lambda: f"first bytes on {len(fleet.clients)} streams",
        )

    def probe(n: int) -> None:
        # An event every stream receives once its broker has it live.
        expected = len(fleet.clients)

        def received() -> int:
            return sum(1 for c in fleet.clients if n in c.numbers())

        def all_received() -> bool:
            if received() < expected:
                publish_n(test_broker, "all", n)  # again, for streams not live before
            return received() == expected

        fleet.wait(all_received, 60, lambda: f"probe {n} on all streams, got {received()}")

    connect(10)
    probe(1)
    small = serving_workers(redis_url)
    connect(490)
    probe(2)
    large = serving_workers(redis_url)
    # Each serving worker: one pub/sub, one control and one report connection,
    # whatever its number of streams and channels.
    assert set(small.values()) == {3}, small
    assert set(large.values()) == {3}, large
    assert len(large) >= 1
    subscribed = redis.Redis.from_url(redis_url).pubsub_numsub(*[f"sse:live:{c}" for c in channels])
    assert all(1 <= count <= 2 for _, count in subscribed)  # one per worker at most
    for client in list(fleet.clients):
        fleet.drop(client)
    # Channels without local subscribers are unsubscribed.
    fleet.wait(
        lambda: (
            sum(n for _, n in redis.Redis.from_url(redis_url).pubsub_numsub("sse:live:all")) == 0
        ),
        20,
        "the workers to unsubscribe once their streams closed",
    )
