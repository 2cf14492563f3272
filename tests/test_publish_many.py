"""``sse.publish_many``: consecutive ids, all or nothing checked first, one
fan-out in which each stream takes its events of the batch in one write."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask

from flask_sse_keepalive import SSE, Event, signals
from flask_sse_keepalive.brokers.base import parse_id
from flask_sse_keepalive.brokers.redis import RedisBroker
from tests.test_connection import Line, lines, make_state  # noqa: F401 (the fixture)
from tests.test_memory_broker import Collector


def make_app(**config: object) -> tuple[Flask, SSE]:
    app = Flask(__name__)
    app.config.update(config)
    return app, SSE(app)


def test_ids_are_consecutive_and_in_order() -> None:
    app, sse = make_app()
    collector = Collector(("a", "b"))
    sse.state(app).broker.attach(collector, None)
    with app.app_context():
        single = sse.publish("first", channel="a")
        ids = sse.publish_many(
            [{"data": "one", "channel": "a"}, {"data": {"n": 2}, "channel": "b", "event": "t"},
             {"data": "three", "channel": "a", "retry": 10}]
        )  # fmt: skip
    epoch, seq = parse_id(single) or ("", 0)
    assert ids == [f"{epoch}-{seq + n}" for n in (1, 2, 3)]
    assert [m.id for m in collector.messages] == [single, *ids]
    assert collector.messages[2].payload == f'event: t\ndata: {{"n":2}}\nid: {ids[1]}\n\n'.encode()
    with app.app_context():
        assert sse.stats()["published"] == 4


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ([{"data": "x"}, {"data": "y", "channel": "bad name"}], ValueError, "invalid channel"),
        ([{"data": "x"}, {"channel": "a"}], TypeError, "'data'"),
        ([{"data": "x", "colour": "red"}], TypeError, "'data'"),
        ([("a", "x")], TypeError, "mappings"),
        ([{"data": "x", "event": "two\nlines"}], ValueError, "must not contain"),
    ],
)
def test_a_bad_item_publishes_nothing(items: list, error: type, match: str) -> None:
    app, sse = make_app()
    collector = Collector(("default", "a"))
    sse.state(app).broker.attach(collector, None)
    with app.app_context(), pytest.raises(error, match=match):
        sse.publish_many(items)
    assert collector.messages == []
    with app.app_context():
        assert sse.publish_many([]) == []


def test_event_published_is_sent_for_each() -> None:
    app, sse = make_app()
    seen: list[tuple[str | None, str]] = []

    @signals.event_published.connect_via(app)
    def receiver(sender: Flask, event: Event, channel: str) -> None:
        seen.append((event.id, channel))

    try:
        with app.app_context():
            ids = sse.publish_many([{"data": "x", "channel": "a"}, {"data": "y", "channel": "b"}])
    finally:
        signals.event_published.disconnect(receiver, sender=app)
    assert seen == [(ids[0], "a"), (ids[1], "b")]


def test_a_stream_takes_a_batch_in_one_write(lines: Callable[..., Line]) -> None:  # noqa: F811
    state = make_state()
    line = lines(state, ("a",))
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    before = len(line.chunks_seen)
    state.broker.publish_many([("a", Event(data=str(n))) for n in range(10)])
    line.wait_for(lambda: len(line.parser.events) == 10, 2, "the ten events")
    assert [e.data for e in line.parser.events] == [str(n) for n in range(10)]
    assert len(line.chunks_seen) - before == 1, "one chunk for the batch"
    assert state.stats.delivered == 10


@pytest.fixture
def redis_broker(redis_server: Callable) -> Iterator[tuple[RedisBroker, str]]:
    url = f"redis://127.0.0.1:{redis_server().port}/0"
    broker = RedisBroker(url)
    yield broker, url
    broker.close()


def test_with_redis_one_round_trip_and_a_batch_per_subscriber(
    redis_broker: tuple[RedisBroker, str],
) -> None:
    broker, url = redis_broker
    collector = Collector(("a", "b"))
    broker.attach(collector, None)
    deadline = time.monotonic() + 10
    while not collector.ready_at:
        assert time.monotonic() < deadline, "not subscribed within 10 s"
        time.sleep(0.02)
    published = broker.publish_many(
        [("a", Event(data="1")), ("b", Event(data="2", event="t")), ("a", Event(data="3"))]
    )
    seqs = [p.seq for p in published]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    while len(collector.messages) < 3:
        assert time.monotonic() < deadline, f"got {len(collector.messages)} of 3"
        time.sleep(0.02)
    assert [m.id for m in collector.messages] == [p.id for p in published]
    assert collector.batches == [3], "one batch, in id order, for a stream on both channels"
    client = redis.Redis.from_url(url)
    assert client.xlen("sse:stream:a") == 2 and client.xlen("sse:stream:b") == 1
    # A resume from before the batch replays it in id order.
    later = Collector(("a", "b"))
    broker.attach(later, f"{published[0].id.rpartition('-')[0]}-{seqs[0] - 1}")
    while len(later.messages) < 3:
        assert time.monotonic() < deadline, f"replayed {len(later.messages)} of 3"
        time.sleep(0.02)
    assert [m.seq for m in later.messages] == seqs
