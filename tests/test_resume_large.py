"""A resume far larger than a connection's queue, read at a modest pace:
every missed event arrives, in order, on one connection, with either broker.

The replay is 40 times ``SSE_QUEUE_SIZE``: it must be written as the client
takes it, not queued whole (the client would be dropped as slow) and not
cut short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import Server
from tests.slow import SlowReader

QUEUE_SIZE = 50
EVENTS = 2000
#: about 1 KB per event on the wire
DATA = "x" * 1000


@pytest.fixture(autouse=True)
def _close_readers() -> Iterator[None]:
    yield
    SlowReader.close_all()


@pytest.fixture(
    params=[("memory", "loopback"), ("redis", "loopback"), ("memory", "small"), ("redis", "small")],
    ids=lambda p: "-".join(p),
)
def server(request, gunicorn: Callable[..., Server]) -> Server:
    """The app on either broker. ``small``: the server's kernel send buffer
    is kept at 64 KB, as over a real network to a slow client; on loopback
    Linux lets it grow to megabytes and would hold most of the replay."""
    broker, buffers = request.param
    env = {
        "SSE_QUEUE_SIZE": str(QUEUE_SIZE),
        "SSE_HISTORY_SIZE": str(EVENTS),
        "SSE_HEARTBEAT_INTERVAL": "1",
        "TEST_BASE_APP": "tests.apps.basic",
    }
    if broker == "redis":
        redis_server = request.getfixturevalue("redis_server")
        env["SSE_BROKER_URL"] = f"redis://127.0.0.1:{redis_server().port}/0"
        env["TEST_BASE_APP"] = "tests.apps.redis_app"
    if buffers == "small":
        return gunicorn("tests.apps.small_sndbuf:app", env={**env, "TEST_SNDBUF": "65536"})
    return gunicorn(f"{env['TEST_BASE_APP']}:app", env=env)


def publish(server: Server, count: int) -> list[str]:
    body = {"data": DATA, "channel": "big", "count": count}
    response = httpx.post(f"{server.url}/control/publish", json=body, timeout=60)
    response.raise_for_status()
    return list(response.json()["ids"])


def stats(server: Server) -> dict:
    return httpx.get(f"{server.url}/control/stats", timeout=10).json()


def test_a_resume_of_2000_events_arrives_whole_on_one_connection(server: Server) -> None:
    first, *missed = publish(server, 1 + EVENTS)
    reader = SlowReader(server.port, "/stream?channel=big", {"Last-Event-ID": first})
    # About 200 KB/s: 4 KB reads, 20 ms apart; the replay takes some 10 s.
    deadline = time.monotonic() + 60
    while len(reader.parser.events) < EVENTS:
        assert not reader.ended, f"the stream ended after {len(reader.parser.events)} events"
        assert time.monotonic() < deadline, f"only {len(reader.parser.events)} events in 60 s"
        reader.read(4096)
        time.sleep(0.02)
    events = reader.parser.events
    assert [e.type for e in events if e.type != "message"] == []  # no stream-reset
    assert [e.last_event_id for e in events] == missed
    assert all(e.data == DATA for e in events)
    # Live after the replay, on the same connection.
    (live,) = publish(server, 1)
    while len(reader.parser.events) == EVENTS:
        assert not reader.ended, "the stream ended after the replay"
        reader.read(4096)
    assert reader.parser.events[-1].last_event_id == live
    figures = stats(server)
    assert figures["connects"] == 1
    assert figures["disconnects"] == {} and figures["slow"] == 0
    assert figures["connections"] == 1
