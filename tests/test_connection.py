"""A connection on real kernel sockets, in process: seconds, not a spawned server.

A :class:`DirectConnection` writes to one end of a ``socketpair()`` and a
client reads the other end, as under gevent's WSGI server ("direct" mode;
the gunicorn hand-over is tested under gunicorn). The base
:class:`Connection` (iterator and development modes) is driven by a thread,
as a threaded server would. Nothing is mocked: the memory broker, the app's
state and the kernel's socket buffers are the real ones.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from flask import Flask

from flask_sse_keepalive import SSE, Event
from flask_sse_keepalive.brokers.base import Message
from flask_sse_keepalive.direct import DirectConnection, frame
from flask_sse_keepalive.state import AppState
from flask_sse_keepalive.stream import Connection
from tests.wire import ChunkedBody, Parser

FIRST = b"retry: 100\n\n"


def make_state(**config: Any) -> AppState:
    app = Flask("connection-tests")
    app.config.update({"SSE_HEARTBEAT_INTERVAL": 30, **config})
    return SSE(app).state(app)


class Line:
    """A direct connection on one end of a socketpair; the test is the client.

    A greenlet plays the server: it writes the body's first chunk (framed)
    and then lets the connection serve itself, as gevent's WSGI server does.
    """

    def __init__(
        self,
        state: AppState,
        channels: tuple[str, ...] = ("a",),
        *,
        buffer: int | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.state = state
        self.server, self.client = gevent.socket.socketpair()
        if buffer is not None:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        self.connection = DirectConnection(state, channels, sock=self.server, expires_at=expires_at)
        self.chunks = ChunkedBody()
        self.parser = Parser()
        self.raw = b""  # everything received, framing included
        self.chunks_seen: list[bytes] = []  # every chunk received, in order
        self.eof = False
        self.serving = gevent.spawn(self._serve)

    def _serve(self) -> None:
        body = self.connection.body(FIRST)
        try:
            for chunk in body:
                self.server.sendall(frame(chunk))
        finally:
            body.close()

    def read(self, seconds: float, *, size: int = 65536) -> bytes:
        """What arrives within ``seconds`` (one read), fed to the decoders."""
        self.client.settimeout(seconds)
        try:
            data = self.client.recv(size)
        except TimeoutError:
            return b""
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.raw += data
        for chunk in self.chunks.feed(data):
            self.chunks_seen.append(chunk)
            self.parser.feed(chunk)
        return data

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            if not self.eof:
                self.read(0.05)
            else:
                gevent.sleep(0.02)

    def publish(self, data: str, channel: str = "a") -> str:
        return self.state.broker.publish(channel, Event(data=data)).id

    def close(self) -> None:
        self.client.close()
        self.serving.join(timeout=3)
        self.server.close()


@pytest.fixture
def lines() -> Iterator[Callable[..., Line]]:
    made: list[Line] = []

    def make(state: AppState, *args: Any, **kwargs: Any) -> Line:
        made.append(Line(state, *args, **kwargs))
        return made[-1]

    yield make
    for line in made:
        line.close()


def released(state: AppState) -> dict[str, int]:
    return dict(state.stats.disconnects)


def test_first_bytes_then_subscribed_then_live_events(lines: Callable[..., Line]) -> None:
    state = make_state()
    line = lines(state)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    assert line.parser.retries == [100]
    event_id = line.publish("one")
    line.wait_for(lambda: line.parser.events, 2, "the event")
    assert [(e.data, e.last_event_id) for e in line.parser.events] == [("one", event_id)]
    assert line.connection.mode == "direct"
    assert state.stats.modes == {"direct": 1}


def test_a_repeat_at_the_resume_seam_is_sent_once(lines: Callable[..., Line]) -> None:
    state = make_state()
    line = lines(state)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    first = Message(7, "e-7", "a", Event(data="seven", id="e-7").encode())
    line.connection.deliver(first)
    line.connection.deliver(first)  # replayed and live at once
    line.connection.deliver(Message(6, "e-6", "a", Event(data="six", id="e-6").encode()))
    line.connection.deliver(Message(8, "e-8", "a", Event(data="eight", id="e-8").encode()))
    line.wait_for(lambda: len(line.parser.events) >= 2, 2, "two events")
    line.read(0.2)
    assert [e.data for e in line.parser.events] == ["seven", "eight"]
    assert state.stats.delivered == 2


def test_heartbeats_come_only_while_the_line_is_idle(lines: Callable[..., Line]) -> None:
    state = make_state(SSE_HEARTBEAT_INTERVAL=0.1)
    line = lines(state)
    line.wait_for(lambda: line.parser.comments.count("heartbeat") >= 3, 2, "three heartbeats")
    before = line.parser.comments.count("heartbeat")
    # Events every 40 ms, for half a second: the line is never idle for 0.1 s.
    for n in range(12):
        line.publish(str(n))
        line.read(0.04)
    assert line.parser.comments.count("heartbeat") == before
    assert [e.data for e in line.parser.events] == [str(n) for n in range(12)]
    line.wait_for(lambda: line.parser.comments.count("heartbeat") > before, 1, "a heartbeat")


def test_a_client_that_closes_is_released_without_a_write(lines: Callable[..., Line]) -> None:
    state = make_state(SSE_HEARTBEAT_INTERVAL=30)
    line = lines(state)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    line.client.close()
    deadline = time.monotonic() + 1
    while not released(state) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert released(state) == {"client": 1}
    assert state.connections == set()
    assert state.broker.subscriber_counts() == {}


def test_a_full_queue_drops_the_client_as_slow(lines: Callable[..., Line]) -> None:
    # A send timeout far away: only the queue bound can act within a second.
    state = make_state(SSE_QUEUE_SIZE=20, SSE_SEND_TIMEOUT=60)
    line = lines(state, buffer=4096)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    started = time.monotonic()
    for _ in range(200):
        line.publish("x" * 4096)
        gevent.sleep(0)
    deadline = time.monotonic() + 1
    while not released(state) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert released(state) == {"slow": 1}
    assert time.monotonic() - started < 1
    assert state.stats.slow == 1


def test_no_progress_for_the_send_timeout_drops_the_client(lines: Callable[..., Line]) -> None:
    state = make_state(SSE_QUEUE_SIZE=1_000_000, SSE_SEND_TIMEOUT=0.3)
    line = lines(state, buffer=4096)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    for _ in range(100):
        line.publish("x" * 4096)
    started = time.monotonic()
    deadline = started + 3
    while not released(state) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert released(state) == {"slow": 1}
    assert 0.25 < time.monotonic() - started < 2


def test_a_slow_reader_that_makes_progress_is_kept(lines: Callable[..., Line]) -> None:
    # 200 KB at about 40 KB/s takes 5 s: ten times the send timeout, but the
    # socket takes some bytes every 0.1 s, so the client is slow, not stalled.
    state = make_state(SSE_QUEUE_SIZE=1_000_000, SSE_SEND_TIMEOUT=0.5)
    line = lines(state, buffer=4096)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    for n in range(50):
        line.publish(f"{n:04d}" + "x" * 4092)
    deadline = time.monotonic() + 30
    while len(line.parser.events) < 50:
        assert time.monotonic() < deadline, f"{len(line.parser.events)} of 50 events in 30 s"
        assert not released(state), f"dropped: {released(state)}"
        line.read(0.1, size=4096)
        gevent.sleep(0.1)
    assert [e.data[:4] for e in line.parser.events] == [f"{n:04d}" for n in range(50)]
    assert state.stats.slow == 0


def test_shutdown_says_goodbye_and_completes_the_body(lines: Callable[..., Line]) -> None:
    state = make_state(SSE_RETRY_MS=1000)
    line = lines(state)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    line.publish("last words")
    state.shutdown()
    line.wait_for(lambda: line.chunks.ended, 2, "the terminating chunk")
    assert line.parser.comments[-1] == "shutdown"
    assert 500 <= line.parser.retries[-1] <= 1500
    assert [e.data for e in line.parser.events] == ["last words"]
    assert released(state) == {"shutdown": 1}


def test_lifetime_ends_the_stream_with_a_goodbye(lines: Callable[..., Line]) -> None:
    state = make_state(SSE_MAX_STREAM_SECONDS=0.3)
    line = lines(state)
    started = time.monotonic()
    line.wait_for(lambda: line.chunks.ended, 3, "the end of the stream")
    assert 0.25 < time.monotonic() - started < 1.5
    assert line.parser.comments[-1] == "lifetime"
    assert released(state) == {"lifetime": 1}


@pytest.mark.parametrize(
    ("send_timeout", "client_wakes"),
    [
        # The write gives up first, then the client reads again (a phone waking).
        (0.3, True),
        # The close's grace cuts the write first; the client never reads again.
        (30, False),
    ],
)
def test_a_shutdown_during_a_blocked_write_never_writes_inside_a_chunk(
    lines: Callable[..., Line], send_timeout: float, client_wakes: bool
) -> None:
    state = make_state(SSE_QUEUE_SIZE=1_000_000, SSE_SEND_TIMEOUT=send_timeout)
    line = lines(state, buffer=4096)
    line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
    for _ in range(50):
        line.publish("x" * 4096)  # the socket takes part of it; a write blocks
    gevent.sleep(0.05)
    started = time.monotonic()
    state.shutdown()
    if client_wakes:
        gevent.sleep(0.5)  # past the send timeout: that write failed part-way
        while not line.eof:
            line.read(1)
    deadline = started + 5
    while not released(state) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert released(state) == {"shutdown": 1}
    assert time.monotonic() - started < 2, "a shutdown is bounded by about a second"
    while not line.eof:
        line.read(1)
    # Whole chunks, then the cut: no goodbye after half a chunk (the client
    # would take it for the chunk's data), and no end of the body.
    assert b": shutdown" not in line.raw
    assert not line.chunks.ended


class ThreadedLine:
    """The base connection's iterator, consumed by a thread as a threaded server would."""

    def __init__(self, state: AppState, *, expires_at: float | None = None) -> None:
        self.connection = Connection(state, ("a",), expires_at=expires_at)
        self.parser = Parser()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        body = self.connection.body(FIRST)
        try:
            for chunk in body:
                self.parser.feed(chunk)
        finally:
            body.close()
            self.ended.set()


def test_the_iterator_writes_events_heartbeats_and_a_goodbye() -> None:
    state = make_state(SSE_HEARTBEAT_INTERVAL=0.1)
    line = ThreadedLine(state)
    deadline = time.monotonic() + 3
    while line.parser.comments.count("heartbeat") < 2:
        assert time.monotonic() < deadline, "no heartbeats from the iterator"
        time.sleep(0.02)
    assert line.connection.mode == "threaded"
    event_id = state.broker.publish("a", Event(data="one")).id
    while not line.parser.events:
        assert time.monotonic() < deadline, "no event from the iterator"
        time.sleep(0.02)
    assert line.parser.events[0].last_event_id == event_id
    state.shutdown()
    assert line.ended.wait(3)
    assert line.parser.comments[-1] == "shutdown"
    assert released(state) == {"shutdown": 1}


BOUND_SCRIPT = """
import logging, socket, sys
from flask_sse_keepalive.server import bound_dead_peer
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(message)s")
a, b = socket.socketpair()
print("unix", bound_dead_peer(a, 2), bound_dead_peer(b, 2))
listener = socket.create_server(("127.0.0.1", 0))
tcp = socket.create_connection(listener.getsockname())
print("tcp", bound_dead_peer(tcp, 2.5),
      tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
"""


def test_the_dead_peer_bound_is_set_on_tcp_and_said_once_where_it_cannot_be() -> None:
    # A fresh process: the warning is said once per process and cause.
    done = subprocess.run(
        [sys.executable, "-c", BOUND_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1, lines  # two unix sockets, one warning
    assert "SSE_SEND_TIMEOUT" in warnings[0] and "not TCP" in warnings[0]
    assert "unix False False" in lines
    # The control: on TCP the option is set, in milliseconds, and nothing is said.
    assert "tcp True 2500" in lines
