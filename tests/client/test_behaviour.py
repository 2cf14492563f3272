"""The client against a scripted loopback server: each test runs on both clients.

What a real flask-sse-keepalive server will not do on demand is scripted
here, connection by connection: answer nothing, stall after the head, cut an
event in half, announce no heartbeat interval, refuse in odd ways.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from flask_sse_keepalive.client import Backoff, StreamRefused, StreamUnavailable

from .drivers import Handle, collect, wait_until
from .scripted import Connection, ScriptedServer, park

Open = Callable[..., Handle]
Scripted = Callable[..., ScriptedServer]
QUICK = Backoff(initial=0.05, maximum=0.05)


def test_resume_after_a_cut_event_and_what_every_request_carries(
    open_client: Open, scripted: Scripted
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        if connection.number == 0:
            # The second event is cut short: it must be dropped, not delivered.
            connection.stream(b"id: 1\ndata: a\n\nid: 2\n\nid: 3\ndata: b")
            return
        connection.stream(b"data: c\n\n")
        park(connection)

    server = scripted(handler)
    tokens = iter(range(1, 10))
    handle = open_client(
        server.url + "?static=yes&channel=replaced",
        channels=["prices", "news"],
        last_event_id="e1-0",
        heartbeat=7.5,
        params=lambda: {"token": str(next(tokens))},
        headers={"X-Trace": "t1"},
        backoff=QUICK,
    )
    a = handle.receive(5)
    assert (a.id, a.event, a.data) == ("1", "message", "a")
    c = handle.receive(5)
    # "id: 2" alone, then a blank line, moved the resume point without an
    # event; "b" was cut short by the end of the response and is dropped.
    assert (c.id, c.data) == ("2", "c")
    first, second = server.requests()
    assert first.query == {
        "static": ["yes"],
        "channel": ["prices", "news"],
        "heartbeat": ["7.5"],
        "token": ["1"],
    }
    assert second.query["token"] == ["2"]  # params are asked for at every attempt
    assert first.headers["last-event-id"] == "e1-0"
    assert second.headers["last-event-id"] == "2"
    for request in (first, second):
        assert request.headers["accept"] == "text/event-stream"
        assert request.headers["accept-encoding"] == "identity"
        assert request.headers["x-trace"] == "t1"
    assert [closed.reason for closed in handle.hooks.closed()] == ["eof"]
    assert handle.client.stats.connects == 2


def test_a_head_that_never_comes_is_abandoned_after_timeout(
    open_client: Open, scripted: Scripted
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        if connection.number == 0:
            park(connection, 10)
        else:
            connection.stream(b"data: late\n\n")
            park(connection)

    server = scripted(handler)
    handle = open_client(server.url, timeout=0.5, backoff=QUICK)
    assert handle.receive(8).data == "late"
    [reconnect] = handle.hooks.reconnects()
    assert reconnect.reason == "timeout"
    first, second = server.requests()
    assert 0.45 <= second.at - first.at < 3


def test_silence_shorter_than_the_watchdog_is_not_a_timeout(
    open_client: Open, scripted: Scripted
) -> None:
    """``timeout`` bounds the wait for the head, not the gaps in the body."""

    def handler(connection: Connection) -> None:
        connection.read_request()
        connection.stream(b"retry: 50\n: sse-keepalive heartbeat-interval=1\n\n")
        for _ in range(3):
            time.sleep(0.8)  # > timeout, < 2.5 intervals
            connection.send(b": heartbeat\n\n")
        connection.send(b"data: still here\n\n")
        park(connection)

    server = scripted(handler)
    handle = open_client(server.url, timeout=0.3, backoff=QUICK)
    assert handle.receive(8).data == "still here"
    assert len(server.requests()) == 1
    assert handle.hooks.reconnects() == []
    assert handle.client.heartbeat_interval == 1
    assert handle.client.stats.heartbeats == 3


def test_the_watchdog_reconnects_a_stream_gone_silent(
    open_client: Open, scripted: Scripted
) -> None:
    sent_at: list[float] = []

    def handler(connection: Connection) -> None:
        connection.read_request()
        if connection.number == 0:
            connection.stream(b": sse-keepalive heartbeat-interval=0.2\n\nid: 1\ndata: a\n\n")
            sent_at.append(time.monotonic())
            park(connection)  # silent, and open
        else:
            connection.stream(b": sse-keepalive heartbeat-interval=0.2\n\ndata: b\n\n")
            park(connection)

    server = scripted(handler)
    handle = open_client(server.url, backoff=QUICK)
    assert [e.data for e in collect(handle, 2, 8)] == ["a", "b"]
    closed = handle.hooks.of("close")[0]  # the second stream goes silent too
    assert closed.info.reason == "watchdog"
    # 2.5 intervals of silence, measured from the last bytes sent.
    assert 0.45 <= closed.at - sent_at[0] < 2
    assert server.requests()[1].headers["last-event-id"] == "1"


def test_fallback_interval_for_a_server_that_announces_none(
    open_client: Open, scripted: Scripted
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        connection.stream(b"data: a\n\n")
        park(connection)

    server = scripted(handler)
    guarded = open_client(server.url, fallback_interval=0.2, backoff=QUICK)
    assert [e.data for e in collect(guarded, 2, 8)] == ["a", "a"]
    assert guarded.hooks.closed()[0].reason == "watchdog"
    unguarded = open_client(server.url, backoff=QUICK)
    assert unguarded.receive(5).data == "a"
    with pytest.raises(TimeoutError):
        unguarded.receive(1.5)  # no announced interval, no fallback: no watchdog
    assert unguarded.hooks.closed() == []
    assert unguarded.client.heartbeat_interval is None


@pytest.mark.parametrize(
    ("status", "content_type", "body", "reason"),
    [
        (401, "text/plain", b"token required\n", "token required"),
        (404, "text/plain", b"Not Found", "Not Found"),
        (204, "text/plain", b"", ""),
        (200, "text/html", b"<html>", "not an event stream: Content-Type text/html"),
    ],
)
def test_a_refusal_raises_once_and_is_not_retried(
    open_client: Open,
    scripted: Scripted,
    status: int,
    content_type: str,
    body: bytes,
    reason: str,
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        connection.respond(status, body, {"Content-Type": content_type})

    server = scripted(handler)
    handle = open_client(server.url, backoff=QUICK)
    with pytest.raises(StreamRefused) as refused:
        handle.receive(5)
    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert refused.value.url == server.url
    assert handle.receive(1) is None  # the iteration is over
    assert handle.client.state == "closed"
    time.sleep(0.3)
    assert len(server.requests()) == 1


def test_5xx_is_retried_until_max_attempts(open_client: Open, scripted: Scripted) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        connection.respond(500, b"boom")

    server = scripted(handler)
    handle = open_client(server.url, backoff=Backoff(initial=0.05, maximum=0.05, max_attempts=3))
    with pytest.raises(StreamUnavailable) as gave_up:
        handle.receive(10)
    assert gave_up.value.attempts == 4
    assert gave_up.value.reason == "http"
    assert len(server.requests()) == 4
    assert [r.attempt for r in handle.hooks.reconnects()] == [1, 2, 3]
    assert {r.status for r in handle.hooks.reconnects()} == {500}


def test_give_up_after_bounds_the_time_spent_reconnecting(
    open_client: Open, scripted: Scripted
) -> None:
    server = scripted(lambda connection: None)  # accept, then close at once
    handle = open_client(server.url, backoff=Backoff(initial=0.05, maximum=0.05, give_up_after=0.6))
    started = time.monotonic()
    with pytest.raises(StreamUnavailable) as gave_up:
        handle.receive(10)
    assert gave_up.value.reason == "network"
    assert isinstance(gave_up.value.__cause__, httpx.TransportError)
    assert 0.5 <= time.monotonic() - started < 3
    assert gave_up.value.elapsed < 1.0  # the last attempt began within 0.6 s
    assert len(server.connections) >= 3


def test_retry_after_is_waited_for(open_client: Open, scripted: Scripted) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        if connection.number == 0:
            connection.respond(503, b"busy", {"Retry-After": "1"})
        else:
            connection.stream(b"data: in\n\n")
            park(connection)

    server = scripted(handler)
    handle = open_client(server.url, backoff=QUICK)
    assert handle.receive(8).data == "in"
    [reconnect] = handle.hooks.reconnects()
    assert (reconnect.status, reconnect.retry_after) == (503, 1.0)
    assert 1.0 <= reconnect.delay <= 1.2
    first, second = server.requests()
    assert second.at - first.at >= 1.0


def test_backoff_grows_and_starts_over_after_a_healthy_stream(
    open_client: Open, scripted: Scripted
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        if connection.number == 3:
            # A healthy stream: open for longer than max(1 s, retry).
            connection.stream(b"retry: 20\n\ndata: ok\n\n")
            time.sleep(1.2)
        elif connection.number < 6:
            connection.respond(502)
        else:
            connection.stream(b"data: end\n\n")
            park(connection)

    server = scripted(handler)
    handle = open_client(server.url, backoff=Backoff(initial=0.02, maximum=0.1))
    assert [e.data for e in collect(handle, 2, 10)] == ["ok", "end"]
    attempts = [r.attempt for r in handle.hooks.reconnects()]
    assert attempts == [1, 2, 3, 1, 2, 3]
    assert [r.reason for r in handle.hooks.reconnects()] == ["http"] * 3 + ["eof"] + ["http"] * 2
    # Full jitter under min(maximum, base * 2 ** (attempt - 1)), the base at least 0.1 s.
    assert all(0 <= r.delay <= 0.1 for r in handle.hooks.reconnects())


def test_the_servers_retry_is_the_base_and_shutdown_is_reported(
    open_client: Open, scripted: Scripted
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        if connection.number == 0:
            connection.stream(b"retry: 100\n\ndata: a\n\n: shutdown\nretry: 150\n\n")
        else:
            connection.stream(b"data: b\n\n")
            park(connection)

    server = scripted(handler)
    handle = open_client(server.url, backoff=Backoff(initial=20, maximum=60))
    assert [e.data for e in collect(handle, 2, 5)] == ["a", "b"]
    assert handle.client.retry == 0.15
    [closed] = handle.hooks.closed()
    assert closed.reason == "shutdown"
    [reconnect] = handle.hooks.reconnects()
    assert reconnect.delay <= 0.15  # not Backoff.initial: the server said 150 ms
    first, second = server.requests()
    assert second.at - first.at < 1.5


def test_a_receive_timeout_keeps_the_connection(open_client: Open, scripted: Scripted) -> None:
    go = threading.Event()

    def handler(connection: Connection) -> None:
        connection.read_request()
        connection.stream(b": sse-keepalive heartbeat-interval=0.2\n\n")
        while not go.wait(0.15):
            connection.send(b": heartbeat\n\n")
        connection.send(b"data: now\n\n")
        park(connection)

    server = scripted(handler)
    handle = open_client(server.url, backoff=QUICK)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            handle.receive(0.3)
    go.set()
    assert handle.receive(5).data == "now"
    assert len(server.requests()) == 1
    assert handle.client.stats.heartbeats >= 3


def test_wait_subscribed_keeps_the_events_that_came_first(
    open_client: Open, scripted: Scripted
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        connection.stream(b"id: 1\ndata: replayed\n\n")
        time.sleep(0.3)
        connection.send(b": sse-keepalive subscribed\n\n")
        park(connection)

    server = scripted(handler)
    handle = open_client(server.url)
    handle.wait_subscribed(5)
    assert handle.client.subscribed
    assert handle.receive(1).data == "replayed"
    silent = open_client(scripted(lambda c: (c.read_request(), c.stream(), park(c))).url)
    with pytest.raises(TimeoutError):
        silent.wait_subscribed(0.5)


@pytest.mark.parametrize("phase", ["reading", "backoff", "head"])
def test_close_from_another_thread_ends_iteration_promptly(
    open_client: Open, scripted: Scripted, phase: str
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        if phase == "reading":
            connection.stream(b"data: a\n\n")
        elif phase == "backoff":
            connection.respond(503, b"", {"Retry-After": "30"})  # 30 s at least
            return
        park(connection, 20)

    server = scripted(handler)
    handle = open_client(server.url, timeout=3, backoff=Backoff(initial=30, maximum=30))
    if phase == "reading":
        assert handle.receive(5).data == "a"
    results: list[object] = []
    iterating = threading.Thread(target=lambda: results.append(handle.receive(None)))
    iterating.start()
    wait_until(server.requests, 5, "the request")
    if phase == "backoff":
        wait_until(handle.hooks.reconnects, 5, "the reconnect scheduled in 30-36 s")
    time.sleep(0.2)
    closed_at = time.monotonic()
    handle.close()  # from this thread, while the other one waits
    iterating.join(1.5)
    assert results == [None], "iteration did not end within 1.5 s of close()"
    assert time.monotonic() - closed_at < 1.5
    assert handle.client.state == "closed"
    if phase == "reading":
        # The connection itself is let go, not just the iteration.
        wait_until(lambda: server.connections[0].peer_closed_at, 2, "the server to see EOF")
        assert [c.reason for c in handle.hooks.closed()] == ["closed"]


def test_one_reader_at_a_time(open_client: Open, scripted: Scripted) -> None:
    server = scripted(lambda c: (c.read_request(), c.stream(), park(c)))
    handle = open_client(server.url)
    errors: list[BaseException] = []

    def second_reader() -> None:
        try:
            handle.receive(2)
        except BaseException as exc:
            errors.append(exc)

    def first_reader() -> None:
        with pytest.raises(TimeoutError):
            handle.receive(1.5)

    first = threading.Thread(target=first_reader)
    first.start()
    wait_until(server.requests, 5, "the first reader's request")
    second = threading.Thread(target=second_reader)
    second.start()
    second.join(5)
    first.join(5)
    assert [type(e) for e in errors] == [RuntimeError]
    assert "already reading" in str(errors[0])


def test_a_callers_httpx_client_is_used_and_left_open(
    flavour: str, open_client: Open, scripted: Scripted
) -> None:
    def handler(connection: Connection) -> None:
        connection.read_request()
        connection.stream(b"data: a\n\n")
        park(connection)

    server = scripted(handler)
    headers = {"Authorization": "Bearer s3cret"}
    own: httpx.Client | httpx.AsyncClient = (
        httpx.Client(headers=headers) if flavour == "sync" else httpx.AsyncClient(headers=headers)
    )
    handle = open_client(server.url, client=own)
    assert handle.receive(5).data == "a"
    handle.close()
    assert not own.is_closed
    assert server.requests()[0].headers["authorization"] == "Bearer s3cret"
    if isinstance(own, httpx.Client):
        own.close()
    else:
        handle.portal.call(own.aclose)  # type: ignore[attr-defined]


def test_the_async_client_is_iterated_inside_async_with(scripted: Scripted) -> None:
    from anyio.from_thread import start_blocking_portal

    from flask_sse_keepalive.client import AsyncSSEClient

    server = scripted(lambda c: (c.read_request(), c.stream(), park(c)))

    async def outside() -> None:
        client = AsyncSSEClient(server.url)
        with pytest.raises(RuntimeError, match="async with"):
            await client.receive(1)
        assert client.state == "closed"
        await client.aclose()

    with start_blocking_portal() as portal:  # a loop of its own, whatever runs in this thread
        portal.call(outside)
    assert server.requests() == []
