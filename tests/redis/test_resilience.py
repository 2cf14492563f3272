"""Clients that come and go, and a Redis that goes away, while events flow."""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.event import Event
from tests.conftest import Server

from .clients import Client, Fleet
from .conftest import Publisher

#: SO_LINGER on with a zero timeout: close() sends RST
RESET_LINGER = b"\x01\x00\x00\x00\x00\x00\x00\x00"


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.close()


def marker(url: str, channel: str) -> str:
    """Publish ``n = 0`` from this (plain) process; clients start after it."""
    broker = RedisBroker(url)
    try:
        return broker.publish(channel, Event(data=json.dumps({"n": 0}))).id
    finally:
        broker.close()


def pump_while(fleet: Fleet, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fleet.pump(0.02)


def test_random_disconnects_lose_nothing(
    redis_url: str,
    redis_app: Callable[..., Server],
    publisher: Callable[..., Publisher],
    fleet: Fleet,
) -> None:
    server = redis_app(redis_url, workers=3)
    start = marker(redis_url, "c1")
    both = [Client(server.port, ["c1", "c2"], query_last_event_id=start) for _ in range(20)]
    c1 = [Client(server.port, ["c1"], query_last_event_id=start) for _ in range(10)]
    for client in both + c1:
        client.reconnect_on_eof = True
        fleet.add(client)
    fleet.wait(lambda: all(c.started for c in fleet.clients), 30, "first bytes on 30 streams")

    run = publisher(redis_url, count=1000, rate=100, channels="c1,c2")  # about 10 s
    rng = random.Random(3)
    away: dict[Client, float] = {}
    deadline = time.monotonic() + 60
    while run.proc.poll() is None:
        assert time.monotonic() < deadline, "the publisher did not finish within 60 s"
        fleet.pump(0.02)
        now = time.monotonic()
        for client, back_at in list(away.items()):
            if now >= back_at:
                del away[client]
                fleet.reconnect(client)  # with Last-Event-ID, to any worker
        if rng.random() < 0.5:
            client = rng.choice(fleet.clients)
            if client not in away and client.sock is not None:
                if rng.random() < 0.3:
                    # RST instead of FIN, as from a crashed client
                    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
                fleet.drop(client)
                away[client] = now + rng.uniform(0, 0.3)
    for client in away:
        fleet.reconnect(client)
    assert run.result(10)["published"] == 1000

    fleet.wait(
        lambda: (
            all(len(c.numbers()) >= 1000 for c in both) and all(len(c.numbers()) >= 500 for c in c1)
        ),
        30,
        lambda: f"every event on every client, got {sorted(len(c.numbers()) for c in both)}",
    )
    for client in both:
        assert client.numbers() == list(range(1, 1001)), client.connects
        assert client.resets() == []
    for client in c1:
        assert client.numbers() == list(range(2, 1001, 2)), client.connects
        assert client.resets() == []
    assert sum(c.connects - 1 for c in fleet.clients) >= 100  # the chaos happened


def test_redis_restart_with_aof_loses_nothing(
    redis_server: Callable[..., Server],
    redis_app: Callable[..., Server],
    publisher: Callable[..., Publisher],
    fleet: Fleet,
) -> None:
    redis = redis_server(appendonly=True)
    url = f"redis://127.0.0.1:{redis.port}/0"
    server = redis_app(url, workers=2)
    start = marker(url, "o1")
    for _ in range(20):
        fleet.add(Client(server.port, ["o1", "o2"], query_last_event_id=start))
    fleet.wait(lambda: all(c.started for c in fleet.clients), 30, "first bytes on 20 streams")

    run = publisher(url, count=500, rate=100, channels="o1,o2")  # about 5 s
    pump_while(fleet, 1.5)
    redis.stop()  # SIGTERM: Redis syncs its append-only file and exits
    pump_while(fleet, 1.5)  # streams stay open meanwhile; publishes fail and are retried
    redis_server(appendonly=True, port=redis.port, directory=redis.extra["dir"])
    report = run.result(60)
    fleet.wait(
        lambda: all(len(c.numbers()) >= 500 for c in fleet.clients),
        30,
        lambda: f"all 500 events, got {sorted(len(c.numbers()) for c in fleet.clients)}",
    )
    assert report["failures"] >= 1  # Redis really was away while publishing
    for client in fleet.clients:
        assert client.numbers() == list(range(1, 501))
        assert client.resets() == []
        assert client.connects == 1  # the streams themselves never broke


def test_redis_restart_empty_resets_every_stream(
    redis_server: Callable[..., Server],
    redis_app: Callable[..., Server],
    publisher: Callable[..., Publisher],
    fleet: Fleet,
) -> None:
    redis = redis_server()
    url = f"redis://127.0.0.1:{redis.port}/0"
    server = redis_app(url, workers=2)
    start = marker(url, "e1")
    for _ in range(10):
        fleet.add(Client(server.port, ["e1", "e2"], query_last_event_id=start))
    fleet.wait(lambda: all(c.started for c in fleet.clients), 30, "first bytes on 10 streams")

    run = publisher(url, count=400, rate=100, channels="e1,e2")
    pump_while(fleet, 1.5)
    redis.stop()
    pump_while(fleet, 1.0)
    redis_server(port=redis.port)  # no AOF: the history is gone
    run.result(60)
    fleet.wait(lambda: all(c.resets() for c in fleet.clients), 30, "a stream-reset on every stream")
    broker = RedisBroker(url)
    try:
        for n in range(401, 411):
            broker.publish("e1" if n % 2 == 0 else "e2", Event(data=json.dumps({"n": n})))
    finally:
        broker.close()
    fleet.wait(
        lambda: all(c.numbers()[-1:] == [410] for c in fleet.clients),
        30,
        "the events after the reset on every stream",
    )
    for client in fleet.clients:
        [reset] = [i for i, e in enumerate(client.events) if e.type == "stream-reset"]
        assert client.resets()[0]["reason"] == "broker-reset"
        before = [json.loads(e.data)["n"] for e in client.events[:reset]]
        after = [json.loads(e.data)["n"] for e in client.events[reset + 1 :]]
        # Gapless up to the outage, told about the gap, gapless from there on.
        assert before == list(range(1, len(before) + 1))
        assert after == list(range(after[0], 411))
        assert client.connects == 1
