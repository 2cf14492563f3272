"""Streams through real proxies, configured by the docs' snippets.

Each test runs once behind nginx and once behind HAProxy (see
:mod:`tests.proxies`), in front of ``gunicorn -k gevent`` serving the basic
app with ``SSE_HEARTBEAT_INTERVAL=2``; the proxies' idle timeouts are 5 s
(nginx ``proxy_read_timeout``, HAProxy ``timeout server`` and ``timeout
client``). Events are published at the server itself, so what a test times is
the stream's way through the proxy.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.proxies import Proxies, Proxy, find_binary
from tests.test_streams import publish, signal_log, stats, wait_until
from tests.wire import ChunkedBody, RawStream

APP = "tests.apps.basic:app"
HEARTBEAT = 2
IDLE_TIMEOUT = 5
SERVER_ENV = {"SSE_HEARTBEAT_INTERVAL": str(HEARTBEAT)}
#: How long the idle stream must last: six times the proxy's idle timeout.
SURVIVE = 30
#: A stream whose heartbeat (10 s) is longer than the proxy's idle timeout.
CONTROL = "/stream?channel=control&heartbeat=10"
SURVIVOR = "/stream?channel=survivor"
SUBSCRIBED = b": sse-keepalive subscribed\n"


def subscribed(stream: RawStream) -> bool:
    return "sse-keepalive subscribed" in stream.parser.comments


@pytest.fixture(params=["nginx", "haproxy"])
def proxy(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[..., Proxy]]:
    """``proxy(server)``: the parametrized proxy in front of ``server``."""
    find_binary(request.param)  # skip (or fail in CI) before any server starts
    proxies = Proxies(tmp_path)
    try:
        yield proxies.start(request.param)
    finally:
        proxies.stop_all()


def outlived(ended_after: float | None, stream: RawStream, seconds: float) -> str | None:
    """Why ``stream`` did not stay open and busy with heartbeats for ``seconds``, or ``None``."""
    if ended_after is not None:
        return f"the stream ended after {ended_after:.1f} s"
    beats = stream.parser.comments.count("heartbeat")
    if beats < seconds / HEARTBEAT - 2:
        return f"only {beats} heartbeats in {seconds} s"
    return None


def test_an_idle_stream_outlives_the_idle_timeout_and_the_control_does_not(gunicorn, proxy) -> None:
    server = gunicorn(APP, env=SERVER_ENV)
    front = proxy(server)
    # Each stream's clock starts when its last byte before the silence arrived.
    started: dict[str, float] = {}
    streams: dict[str, RawStream] = {}
    for name, path in (("control", CONTROL), ("survivor", SURVIVOR)):
        streams[name] = RawStream(front.port, path)
        streams[name].wait_for(subscribed, 5, f"the {name} stream to be subscribed")
        started[name] = time.monotonic()
    survivor, control = streams["survivor"], streams["control"]
    ended_after: dict[str, float] = {}
    # Both streams side by side, for the whole time: nothing but heartbeats on either.
    while time.monotonic() - started["survivor"] < SURVIVE:
        for name, stream in streams.items():
            if name not in ended_after and not stream.pump(0.05):
                ended_after[name] = time.monotonic() - started[name]

    assert outlived(ended_after.get("survivor"), survivor, SURVIVE) is None
    assert survivor.events == []
    assert set(survivor.parser.comments) == {
        "sse-keepalive heartbeat-interval=2",
        "sse-keepalive subscribed",
        "heartbeat",
    }
    # The same check fails for the control: the proxy cut it at its idle timeout.
    assert outlived(ended_after.get("control"), control, SURVIVE) is not None
    assert IDLE_TIMEOUT - 0.5 <= ended_after["control"] <= IDLE_TIMEOUT + 4, ended_after
    assert "heartbeat" not in control.parser.comments
    assert front.idle_timeout_cut(CONTROL), front.log()
    assert not front.idle_timeout_cut(SURVIVOR), front.log()

    # At the server: one stream, the survivor's, open all along.
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the control's stream released")
    figures = stats(server)
    assert figures["channels"] == {"survivor": 1}
    assert figures["connects"] == 2
    log = signal_log(server)
    connected = {tuple(e["channels"]): e["id"] for e in log if e["signal"] == "connected"}
    assert len(connected) == 2 and connected[("survivor",)] != connected[("control",)]
    assert [(e["id"], e["reason"]) for e in log if e["signal"] == "disconnected"] == [
        (connected[("control",)], "client")
    ]
    # ... and it still carries events.
    (event_id,) = publish(server, "still here", channel="survivor")
    survivor.wait_for(lambda s: len(s.events) == 1, 5, "an event after 30 idle seconds")
    assert (survivor.events[0].data, survivor.events[0].last_event_id) == ("still here", event_id)


class Arrivals:
    """Reads a stream in a thread of its own and notes when each event arrived."""

    def __init__(self, stream: RawStream) -> None:
        self.stream = stream
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set() and self.stream.pump(0.05):
            now = time.monotonic()
            while len(self.times) < len(self.stream.events):
                self.times.append(now)

    def wait(self, count: int, timeout: float) -> float:
        """When the ``count``-th event arrived; fail after ``timeout`` s."""
        wait_until(lambda: len(self.times) >= count, timeout, f"event {count} at the client")
        return self.times[count - 1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the reader thread did not stop"


def test_an_event_passes_the_proxy_at_once(gunicorn, proxy) -> None:
    server = gunicorn(APP, env=SERVER_ENV)
    front = proxy(server)
    stream = RawStream(front.port, "/stream?channel=live")
    stream.wait_for(subscribed, 5, "the stream to be subscribed")
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    arrivals = Arrivals(stream)
    try:
        delays = []
        for n in range(1, 6):
            time.sleep(0.3)  # events apart, each its own write through the proxy
            before = time.monotonic()
            publish(server, f"e{n}", channel="live")
            returned = time.monotonic()
            arrived = arrivals.wait(n, 10)
            # From just before the publish request to the event at the client, less
            # the publish request's own time: what the way through the proxy adds.
            delays.append((arrived - before) - (returned - before))
    finally:
        arrivals.stop()
    assert stream.data() == ["e1", "e2", "e3", "e4", "e5"]
    assert max(delays) < 0.1, delays


def test_resume_through_the_proxy_gets_exactly_the_missed_events(gunicorn, proxy) -> None:
    server = gunicorn(APP, env=SERVER_ENV)
    front = proxy(server)
    first = RawStream(front.port, "/stream?channel=news")
    first.wait_for(subscribed, 5, "the first stream to be subscribed")
    seen = publish(server, "a", channel="news") + publish(server, "b", channel="news")
    first.wait_for(lambda s: len(s.events) == 2, 5, "the first two events")
    assert first.events[-1].last_event_id == seen[-1]
    first.close(abort=True)
    missed = [publish(server, f"m{n}", channel="news")[0] for n in range(3)]

    again = RawStream(front.port, "/stream?channel=news", {"Last-Event-ID": seen[-1]})
    again.wait_for(subscribed, 5, "the resumed stream to be subscribed")
    live = publish(server, "live", channel="news")
    again.wait_for(lambda s: len(s.events) == 4, 5, "the missed events and a live one")
    assert [(e.type, e.data, e.last_event_id) for e in again.events] == [
        ("message", "m0", missed[0]),
        ("message", "m1", missed[1]),
        ("message", "m2", missed[2]),
        ("message", "live", live[0]),
    ]


@dataclass
class Response:
    """The first response in bytes read off a connection: ``whole`` once its
    chunked body ended; ``rest`` is what followed it."""

    head: bytes = b""
    body: bytes = b""
    whole: bool = False
    rest: bytes = b""

    @property
    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]


def first_response(received: bytes) -> Response:
    if b"\r\n\r\n" not in received:
        return Response()
    head, data = received.split(b"\r\n\r\n", 1)
    chunks = ChunkedBody()
    body = b""
    # A byte at a time: where the body ends, the next response begins.
    while data and not chunks.ended:
        body += b"".join(chunks.feed(data[:1]))
        data = data[1:]
    return Response(head, body, chunks.ended, data)


class RawConnection:
    """One client connection to a proxy, its answers read as bytes."""

    def __init__(self, port: int, requests: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.received = b""
        self.closed = False  # by the other end
        self.sock.sendall(requests)

    def read(self, until: Callable[[Response], bool], timeout: float, what: str) -> Response:
        """Read until ``until(first response)`` holds or the connection ends."""
        deadline = time.monotonic() + timeout
        while not until(first_response(self.received)) and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue  # the deadline says what was awaited
            self.received += data
            self.closed = not data
        return first_response(self.received)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


def test_a_stream_the_server_ends_is_whole_and_its_connection_is_not_reused(
    gunicorn, proxy
) -> None:
    """A stream ends with the server closing its connection. A request queued
    behind it (here pipelined on the same client connection; another client's,
    or one multiplexed on a browser's HTTP/2 connection, alike) is sent the
    moment the stream ends: a proxy that keeps the stream's connection for it
    sends it into the close (nginx answers 502, HAProxy closes the client's
    connection without an answer)."""
    server = gunicorn(APP, env={**SERVER_ENV, "SSE_MAX_STREAM_SECONDS": "0.01"})
    front = proxy(server)
    publish_body = b'{"data": "x", "channel": "other"}'
    requests = (
        b"GET /stream?channel=rotating HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        b"POST /control/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    ) % (len(publish_body), publish_body)
    rounds = 50
    outcomes: Counter[tuple[bytes, bool, bool, bytes]] = Counter()
    for _ in range(rounds):
        with RawConnection(front.port, requests) as connection:
            stream = connection.read(
                lambda response: response.whole and b"\r\n" in response.rest, 10, "both answers"
            )
        outcomes[
            stream.status_line,
            stream.whole,
            stream.body.endswith(b"\n\n") and b"\n: lifetime\n" in stream.body,
            stream.rest.split(b"\r\n", 1)[0],  # the next status line, or nothing
        ] += 1
    assert outcomes == {(b"HTTP/1.1 200 OK", True, True, b"HTTP/1.1 200 OK"): rounds}
    assert stats(server)["published"] == rounds


def test_a_worker_that_dies_cuts_the_stream_at_the_client(gunicorn, proxy) -> None:
    """The stream is chunked all the way (nginx: ``proxy_http_version 1.1``), so
    a worker that dies mid-stream is a cut at the client, not a stream that ended."""
    server = gunicorn(APP, env=SERVER_ENV)
    front = proxy(server)
    worker = stats(server)["pid"]
    request = b"GET /stream?channel=a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with RawConnection(front.port, request) as connection:
        connection.read(lambda r: SUBSCRIBED in r.body, 5, "the stream to be subscribed")
        os.kill(worker, signal.SIGKILL)
        stream = connection.read(lambda r: r.whole, 10, "the end of the stream")
    assert stream.status_line == b"HTTP/1.1 200 OK"
    assert SUBSCRIBED in stream.body
    assert not stream.whole, "the client saw a complete response from a killed worker"
    # gunicorn replaces the worker; let it finish starting before the server stops.
    wait_until(lambda: stats(server)["pid"] != worker, 20, "a new worker")
