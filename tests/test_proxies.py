"""Streams through real proxies, configured by the docs' snippets.

Each test runs once behind nginx and once behind HAProxy (see
:mod:`tests.proxies`), in front of ``gunicorn -k gevent`` serving the basic
app with ``SSE_HEARTBEAT_INTERVAL=2``; the proxies' idle timeouts are 5 s
(nginx ``proxy_read_timeout``, HAProxy ``timeout server`` and ``timeout
client``). Events are published at the server itself, so what a test times is
the stream's way through the proxy.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.proxies import Proxies, Proxy, find_binary
from tests.test_streams import publish, signal_log, stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"
HEARTBEAT = 2
IDLE_TIMEOUT = 5
SERVER_ENV = {"SSE_HEARTBEAT_INTERVAL": str(HEARTBEAT)}
#: How long the idle stream must last: six times the proxy's idle timeout.
SURVIVE = 30
#: A stream whose heartbeat (10 s) is longer than the proxy's idle timeout.
CONTROL = "/stream?channel=control&heartbeat=10"
SURVIVOR = "/stream?channel=survivor"


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
    survivor = RawStream(front.port, SURVIVOR)
    control = RawStream(front.port, CONTROL)
    for stream in (survivor, control):
        stream.wait_for(subscribed, 5, "the stream to be subscribed")
    opened = time.monotonic()
    ended_after: dict[str, float] = {}
    # Both streams side by side, for the whole time: nothing but heartbeats on either.
    while time.monotonic() - opened < SURVIVE:
        for name, stream in (("survivor", survivor), ("control", control)):
            if name not in ended_after and not stream.pump(0.05):
                ended_after[name] = time.monotonic() - opened

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
            # the publish request's own time: what the stream's way adds.
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


def test_a_stream_the_server_ends_is_whole_and_its_connection_is_not_reused(
    gunicorn, proxy
) -> None:
    """A stream ends with the server closing its connection: a proxy that keeps
    that connection for another request sends the request into the close (nginx
    answers a POST there with 502, HAProxy closes the client's connection)."""
    server = gunicorn(APP, env={**SERVER_ENV, "SSE_MAX_STREAM_SECONDS": "0.01"})
    front = proxy(server)
    rounds = 150
    outcomes: Counter[tuple[str, object]] = Counter()
    with httpx.Client(base_url=front.url, timeout=10) as client:
        for _ in range(rounds):
            try:
                with client.stream("GET", "/stream?channel=rotating") as response:
                    body = response.read()  # an incomplete chunked body raises
                outcomes["stream", (response.status_code, b"\n: lifetime\n" in body)] += 1
            except httpx.HTTPError as exc:
                outcomes["stream", type(exc).__name__] += 1
            try:
                response = client.post("/control/publish", json={"data": "x", "channel": "other"})
                outcomes["publish", response.status_code] += 1
            except httpx.HTTPError as exc:
                outcomes["publish", type(exc).__name__] += 1
    assert outcomes == {("stream", (200, True)): rounds, ("publish", 200): rounds}
