"""Two independent gunicorn servers (separate masters, as on two hosts)
sharing one Redis: one bus, one history, one sequence of ids."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import Server
from tests.wire import RawStream


def publish(server: Server, data: str, channel: str = "shared") -> str:
    response = httpx.post(
        f"{server.url}/control/publish", json={"data": data, "channel": channel}, timeout=10
    )
    response.raise_for_status()
    return str(response.json()["ids"][0])


def subscribed(server: Server, headers: dict[str, str] | None = None) -> RawStream:
    stream = RawStream(server.port, "/stream?channel=shared", headers)
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 10, "subscribed")
    return stream


def test_events_cross_servers_and_a_client_resumes_on_the_other_one(
    redis_url: str, redis_app: Callable[..., Server]
) -> None:
    a, b = redis_app(redis_url), redis_app(redis_url)
    on_a, on_b = subscribed(a), subscribed(b)
    from_a = publish(a, "from A")
    from_b = publish(b, "from B")
    for stream in (on_a, on_b):
        stream.wait_for(lambda s: len(s.events) == 2, 10, "the events of both servers")
        assert [(e.data, e.last_event_id) for e in stream.events] == [
            ("from A", from_a),
            ("from B", from_b),
        ]
    # A client of A goes away; events are published through both meanwhile.
    on_a.close(abort=True)
    missed = [publish(a, "missed 1"), publish(b, "missed 2"), publish(a, "missed 3")]
    # It comes back through another server with the id A gave it.
    moved = subscribed(b, {"Last-Event-ID": on_a.events[-1].last_event_id})
    live = publish(a, "live")
    moved.wait_for(lambda s: len(s.events) == 4, 10, "the three missed events and a live one")
    assert [(e.type, e.data, e.last_event_id) for e in moved.events] == [
        ("message", "missed 1", missed[0]),
        ("message", "missed 2", missed[1]),
        ("message", "missed 3", missed[2]),
        ("message", "live", live),
    ]
    # The stream that stayed on B saw the same events, in the same order.
    on_b.wait_for(lambda s: len(s.events) == 6, 10, "every event on the stream that stayed")
    assert [e.last_event_id for e in on_b.events][2:] == [*missed, live]
