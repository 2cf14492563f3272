"""The stream route end to end on a real ``gunicorn -k gevent`` worker."""

from __future__ import annotations

import itertools
import json
import time

import httpx
import pytest
from httpx_sse import connect_sse

from tests.wire import RawStream

APP = "tests.apps.basic:app"
FAST = {"SSE_HEARTBEAT_INTERVAL": "0.2"}


def publish(server, data, channel="default", count=1, event=None) -> list[str]:
    body = {"data": data, "channel": channel, "count": count, "event": event}
    response = httpx.post(f"{server.url}/control/publish", json=body, timeout=10)
    response.raise_for_status()
    return response.json()["ids"]


def stats(server) -> dict:
    return httpx.get(f"{server.url}/control/stats", timeout=10).json()


def signal_log(server) -> list[dict]:
    return httpx.get(f"{server.url}/control/log", timeout=10).json()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def read_first_bytes(stream: RawStream) -> None:
    """Read up to the stream's subscribed marker, so that nothing unread is
    left when the test closes it (a close with unread bytes sends an RST)."""
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "first bytes")


def test_headers_and_first_bytes_arrive_at_once(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_RETRY_MS": "1234", "SSE_HEARTBEAT_INTERVAL": "30"})
    started = time.monotonic()
    stream = RawStream(server.port, "/stream?channel=a")
    stream.wait_for(lambda s: s.parser.comments, 1.0, "the first comment")
    assert time.monotonic() - started < 1.0
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-store"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.wire.startswith(b"retry: 1234\n: sse-keepalive heartbeat-interval=30\n\n")
    assert stream.parser.retries == [1234]
    stream.close()


def heartbeat_times(stream: RawStream) -> list[float]:
    """When each heartbeat arrived (``time.monotonic()``)."""
    pairs = zip(stream.comment_times, stream.parser.comments, strict=True)
    return [t for t, comment in pairs if comment == "heartbeat"]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_a_server_takes_its_settings_from_the_test_alone(gunicorn, monkeypatch) -> None:
    # As if from the shell pytest runs in (the suite drops those at start).
    monkeypatch.setenv("SSE_HEARTBEAT_INTERVAL", "1000")
    monkeypatch.setenv("SSE_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SSE_REQUIRE_REDIS", "1")
    server = gunicorn(APP, env={"SSE_RETRY_MS": "1234"})
    stream = RawStream(server.port, "/stream?channel=a")
    read_first_bytes(stream)
    assert stream.wire.startswith(b"retry: 1234\n: sse-keepalive heartbeat-interval=15\n\n")
    assert publish(server, "on the memory broker", channel="a")[0].endswith("-1")
    stream.wait_for(lambda s: s.events, 5, "the event")


def test_heartbeats_flow_while_idle_and_pause_while_events_flow(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "0.3"})
    stream = RawStream(server.port, "/stream?channel=a")
    stream.wait_for(lambda s: s.parser.comments.count("heartbeat") >= 5, 5, "five heartbeats")
    # Measured as they arrive: the client does nothing but read meanwhile.
    idle = gaps(heartbeat_times(stream))
    assert len(idle) == 4 and all(0.25 <= gap <= 0.6 for gap in idle), idle
    # 40 events, one every 0.05 s: the line is never silent for 0.3 s.
    httpx.post(
        f"{server.url}/control/series?channel=a&count=40&interval=0.05", timeout=10
    ).raise_for_status()
    stream.wait_for(lambda s: len(s.events) == 40, 10, "forty events")
    first, last = stream.event_times[0], stream.event_times[-1]
    assert last - first > 1.5  # five heartbeat intervals and more
    # In the order of the bytes (arrival times tie within one read).
    flowing = stream.wire[stream.wire.index(b"data: 1\n") : stream.wire.index(b"data: 40\n")]
    assert flowing.count(b": heartbeat\n") == 0, "heartbeats while events flowed"
    # Idle again: heartbeats resume, the first one an interval after the last event.
    count = len(heartbeat_times(stream))
    stream.wait_for(
        lambda s: len(heartbeat_times(s)) >= count + 3, 5, "three heartbeats after the events"
    )
    resumed = [last] + [t for t in heartbeat_times(stream) if t > last]
    assert all(0.25 <= gap <= 0.6 for gap in gaps(resumed)), gaps(resumed)
    stream.close()


def test_events_reach_every_subscriber_of_their_channel_only(gunicorn) -> None:
    server = gunicorn(APP)
    a1 = RawStream(server.port, "/stream?channel=a")
    a2 = RawStream(server.port, "/stream?channel=a&channel=b")
    b = RawStream(server.port, "/stream?channel=b")
    wait_until(lambda: stats(server)["connections"] == 3, 5, "three open streams")
    publish(server, {"n": 1}, channel="a")
    publish(server, "multi\nline", channel="b", event="note")
    a1.wait_for(lambda s: len(s.events) == 1, 5, "one event on a")
    a2.wait_for(lambda s: len(s.events) == 2, 5, "two events on a+b")
    b.wait_for(lambda s: len(s.events) == 1, 5, "one event on b")
    assert a1.json() == [{"n": 1}]
    assert [(e.type, e.data) for e in a2.events] == [
        ("message", '{"n":1}'),
        ("note", "multi\nline"),
    ]
    assert b.data("note") == ["multi\nline"]
    for stream in (a1, a2, b):
        stream.close()


def test_httpx_sse_client_sees_types_data_and_ids(gunicorn) -> None:
    server = gunicorn(APP)
    ids = publish(server, "before", channel="news")
    with (
        httpx.Client(timeout=10) as client,
        connect_sse(
            client, "GET", f"{server.url}/stream?channel=news", headers={"Last-Event-ID": ids[0]}
        ) as source,
    ):
        assert source.response.status_code == 200
        later = publish(server, {"headline": "x"}, channel="news", event="story")
        # httpx-sse also yields the first, data-less block (retry + comment)
        event = next(e for e in source.iter_sse() if e.data)
        assert (event.event, json.loads(event.data), event.id) == (
            "story",
            {"headline": "x"},
            later[0],
        )


def test_resume_over_two_channels_gets_exactly_what_was_missed(gunicorn) -> None:
    server = gunicorn(APP)
    first = RawStream(server.port, "/stream?channel=a&channel=b")
    ids = []
    for n in range(6):
        ids += publish(server, f"e{n}", channel="abc"[n % 3])
    first.wait_for(lambda s: len(s.events) == 4, 5, "the a and b events")
    seen = first.events[1].last_event_id  # after e1
    first.close(abort=True)
    again = RawStream(server.port, "/stream?channel=a&channel=b", {"Last-Event-ID": seen})
    again.wait_for(lambda s: len(s.events) == 2, 5, "the replay")
    assert again.data() == ["e3", "e4"]
    assert [e.last_event_id for e in again.events] == [ids[3], ids[4]]
    publish(server, "live", channel="b")
    again.wait_for(lambda s: len(s.events) == 3, 5, "the live event after the replay")
    assert again.data()[-1] == "live"
    again.close()


def test_the_header_wins_over_the_query_parameter(gunicorn) -> None:
    server = gunicorn(APP)
    ids = publish(server, "x", channel="a", count=3)
    path = f"/stream?channel=a&last_event_id={ids[0]}"
    by_query = RawStream(server.port, path)
    by_query.wait_for(lambda s: len(s.events) == 2, 5, "replay after the query id")
    both = RawStream(server.port, path, {"Last-Event-ID": ids[1]})
    both.wait_for(lambda s: len(s.events) == 1, 5, "replay after the header id")
    both.pump(0.3)
    assert [e.last_event_id for e in both.events] == [ids[2]]
    by_query.close()
    both.close()


@pytest.mark.parametrize(
    ("last_id", "reason"),
    [("nope-1", "unknown-epoch"), ("not an id", "unknown-id"), (None, "evicted")],
)
def test_ids_that_cannot_be_resumed_start_with_stream_reset(gunicorn, last_id, reason) -> None:
    server = gunicorn(APP, env={"SSE_HISTORY_SIZE": "3"})
    ids = publish(server, "x", channel="a", count=6)
    last_id = last_id or ids[0]
    stream = RawStream(server.port, "/stream?channel=a", {"Last-Event-ID": last_id})
    stream.wait_for(lambda s: s.events, 5, "the stream-reset event")
    reset = stream.events[0]
    assert reset.type == "stream-reset"
    assert json.loads(reset.data) == {"reason": reason, "last_event_id": last_id}
    assert reset.last_event_id == ids[-1]
    publish(server, "after", channel="a")
    stream.wait_for(lambda s: len(s.events) == 2, 5, "live events after the reset")
    assert stream.data()[1:] == ["after"]  # no replay after a reset
    stream.close()


def test_publish_racing_reconnects_leaves_no_gap_and_no_duplicate(gunicorn) -> None:
    server = gunicorn(APP)
    total = 400
    stream = RawStream(server.port, "/stream?channel=a&channel=b")
    stream.wait_for(lambda s: s.parser.comments, 5, "the first bytes")
    httpx.post(
        f"{server.url}/control/series?channel=a&channel=b&count={total}&interval=0.002", timeout=10
    ).raise_for_status()
    received: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        stream.wait_for(
            lambda s: len(s.events) >= 5 or len(received) + len(s.events) >= total,
            10,
            "a few events",
        )
        stream.close(abort=True)
        if stream.events:
            assert stream.events[0].type == "message", "a reconnect within history must not reset"
            received += stream.data()
            last_id = stream.events[-1].last_event_id
        if len(received) >= total:
            break
        assert time.monotonic() < deadline, f"only {len(received)} of {total} events"
        stream = RawStream(server.port, "/stream?channel=a&channel=b", {"Last-Event-ID": last_id})
    assert received[:total] == [str(n) for n in range(1, total + 1)]


def test_abrupt_disconnects_release_everything(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30"})
    streams = [RawStream(server.port, f"/stream?channel=c{n % 3}") for n in range(20)]
    wait_until(lambda: stats(server)["connections"] == 20, 5, "20 open streams")
    for n, stream in enumerate(streams):
        read_first_bytes(stream)
        stream.close(abort=n % 2 == 0)  # half reset, half FIN
    # Idle channels, a 30 s heartbeat: only watching the socket notices this fast.
    wait_until(lambda: stats(server)["connections"] == 0, 2, "all 20 streams released")
    figures = stats(server)
    assert figures["channels"] == {}
    assert figures["disconnects"] == {"client": 20}
    assert figures["heartbeats"] == 0


def test_the_decorated_generator_is_closed_when_the_client_leaves(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30"})
    stream = RawStream(server.port, "/countdown?from=100000&delay=0.05&marker=m1")
    stream.wait_for(lambda s: len(s.events) >= 3, 5, "three countdown events")
    assert stream.data("count")[:3] == ["100000", "99999", "99998"]
    stream.close(abort=True)
    wait_until(
        lambda: {"signal": "generator-closed", "marker": "m1"} in signal_log(server),
        3,
        "the generator's finally",
    )
    reasons = [e["reason"] for e in signal_log(server) if e["signal"] == "disconnected"]
    assert reasons == ["client"]


def test_the_decorated_view_runs_with_the_request_context_and_ends_cleanly(gunicorn) -> None:
    server = gunicorn(APP, env=FAST)
    stream = RawStream(server.port, "/countdown?from=2&delay=0.3")
    stream.read_to_end(5)
    assert stream.data("count") == ["2", "1"]
    assert stream.json("message") == [{"done": True, "path": "/countdown"}]
    assert "heartbeat" in stream.parser.comments  # flowed while the generator slept
    wait_until(lambda: stats(server)["connections"] == 0, 3, "the stream to be released")
    assert [e.get("reason") for e in signal_log(server) if e["signal"] == "disconnected"] == [
        "server"
    ]


def test_plain_values_from_a_generator(gunicorn) -> None:
    server = gunicorn(APP)
    stream = RawStream(server.port, "/plain")
    stream.read_to_end(5)
    assert stream.data() == ["text", '{"json":[1,2]}', '"pre-encoded"']


def test_an_error_in_the_generator_ends_the_stream_without_a_traceback(gunicorn) -> None:
    server = gunicorn(APP)
    stream = RawStream(server.port, "/countdown?from=1&delay=0&fail=1")
    stream.read_to_end(5)
    assert stream.data("count") == ["1"]
    assert b"Traceback" not in stream.wire
    wait_until(lambda: stats(server)["disconnects"].get("error") == 1, 3, "an error disconnect")
    assert "generator failure (expected by a test)" in server.log()
    # the worker still serves
    assert httpx.get(f"{server.url}/control/stats", timeout=5).status_code == 200


def test_abort_before_the_first_yield_is_an_ordinary_response(gunicorn) -> None:
    server = gunicorn(APP)
    response = httpx.get(f"{server.url}/countdown?deny=1", timeout=5)
    assert response.status_code == 403
    assert stats(server)["connects"] == 0


@pytest.mark.parametrize(
    ("path", "headers", "status", "text"),
    [
        ("/stream?channel=bad%20name", {}, 400, "invalid channel name"),
        ("/stream?channel=" + "x" * 129, {}, 400, "invalid channel name"),
        ("/stream?channel=", {}, 400, "invalid channel name"),
        ("/stream?" + "&".join(f"channel=c{n}" for n in range(4)), {}, 400, "too many channels"),
        ("/stream", {"Last-Event-ID": "x" * 1025}, 400, "too long"),
        ("/stream?last_event_id=%C3%A9", {}, 400, "printable ASCII"),
        ("/stream?channel=ok&channel=forbidden", {}, 403, "forbidden"),
        ("/stream?channel=explode", {}, 500, "Could not check access"),
    ],
)
def test_bad_requests_are_refused_plainly(gunicorn, path, headers, status, text) -> None:
    server = gunicorn(APP, env={"SSE_MAX_CHANNELS": "3"})
    response = httpx.get(f"{server.url}{path}", headers=headers, timeout=5)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/plain")
    assert text in response.text
    assert "Traceback" not in response.text
    assert stats(server)["connects"] == 0


def test_other_methods_are_not_allowed_and_head_does_not_stream(gunicorn) -> None:
    server = gunicorn(APP)
    assert httpx.post(f"{server.url}/stream", timeout=5).status_code == 405
    head = httpx.head(f"{server.url}/stream", timeout=5)
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert stats(server)["connects"] == 0


def test_an_http_1_0_client_gets_an_unchunked_stream(gunicorn) -> None:
    server = gunicorn(APP)
    stream = RawStream(server.port, "/stream?channel=a", http10=True)
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    publish(server, "old client", channel="a")
    stream.wait_for(lambda s: s.events, 5, "the event")
    assert "transfer-encoding" not in stream.headers
    assert stream.data() == ["old client"]
    # Without chunks, the end of the body is the server's FIN: no reset.
    httpx.post(f"{server.url}/control/shutdown", timeout=5).raise_for_status()
    stream.read_to_end(3)
    assert stream.parser.comments[-1] == "shutdown"


def test_signals_report_connects_and_disconnects_with_reasons(gunicorn) -> None:
    server = gunicorn(APP)
    stream = RawStream(server.port, "/stream?channel=x&channel=y")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    stream.close()
    wait_until(lambda: len(signal_log(server)) == 2, 3, "the disconnect signal")
    connected, disconnected = signal_log(server)
    assert connected == {"signal": "connected", "id": connected["id"], "channels": ["x", "y"]}
    assert disconnected == {"signal": "disconnected", "id": connected["id"], "reason": "client"}
