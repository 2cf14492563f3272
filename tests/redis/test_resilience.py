"""Clients that come and go, and a Redis that goes away, while events flow."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis as redis_lib

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


def publish_numbers(url: str, channel: str, numbers: range) -> list[str]:
    """Publish ``{"n": k}`` for each number from a broker made for the
    purpose: a process that has seen nothing before. The ids handed out."""
    broker = RedisBroker(url)
    try:
        return [broker.publish(channel, Event(data=json.dumps({"n": n}))).id for n in numbers]
    finally:
        broker.close()


def test_a_lossy_restart_never_hands_an_id_out_twice(
    redis_server: Callable[..., Server], redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    """Redis comes back from an older snapshot (a crash under RDB or
    ``appendfsync everysec``): the ids of the events it lost had been handed
    out. The first to publish afterwards knows nothing of them, while the
    worker that delivered them is stopped. The new events must get ids of
    their own, and the worker, once back, must tell its client what it lost."""
    redis = redis_server()
    url = f"redis://127.0.0.1:{redis.port}/0"
    server = redis_app(url)
    start = marker(url, "u")
    live = fleet.add(Client(server.port, ["u"], query_last_event_id=start))
    fleet.wait(lambda: live.started and live.pid is not None, 30, "the live stream's first bytes")
    kept = publish_numbers(url, "u", range(1, 41))
    redis_lib.Redis(port=redis.port).save()  # the snapshot Redis will come back with
    lost = publish_numbers(url, "u", range(41, 61))
    fleet.wait(lambda: live.numbers()[-1:] == [60], 30, "events 1 to 60 on the live stream")
    worker = live.pid
    assert worker is not None
    os.kill(worker, signal.SIGSTOP)
    try:
        redis.stop(signal.SIGKILL)
        redis_server(port=redis.port, directory=redis.extra["dir"])  # holds 1 to 40
        reused = publish_numbers(url, "u", range(61, 81))
    finally:
        os.kill(worker, signal.SIGCONT)
    # No id names two events: what Redis lost keeps its ids to itself.
    assert not set(reused) & set(lost), "the ids of lost events were handed out again"
    fleet.wait(lambda: live.resets(), 30, "a stream-reset once the worker meets the new Redis")
    publish_numbers(url, "u", range(81, 91))
    fleet.wait(lambda: live.numbers()[-1:] == [90], 30, "the events after the reset")
    [reset] = [i for i, e in enumerate(live.events) if e.type == "stream-reset"]
    before = [json.loads(e.data)["n"] for e in live.events[:reset]]
    after = [json.loads(e.data)["n"] for e in live.events[reset + 1 :]]
    assert before == list(range(1, 61)) and after == list(range(81, 91))
    assert live.connects == 1
    # A client that held an id of a lost event, and one from before the
    # snapshot (it missed the lost events too), are both told.
    for last in (lost[5], kept[-1]):
        late = fleet.add(Client(server.port, ["u"], last_event_id=last))
        fleet.wait(lambda late=late: late.resets(), 30, f"a stream-reset for {last}")
        assert late.numbers() == []
