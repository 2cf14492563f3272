"""The same stream behaviour whichever way the bytes reach the socket, and
what each write mode adds.

The servers, and the write mode each must use (``stats()["modes"]`` counts
the streams opened by mode; every test checks it):

* ``gevent``: gunicorn's async worker; mode ``owned``: the connection takes
  the socket over, and gunicorn's request handler lets go of the request
  (gunicorn logs the hand-over's EPIPE, ``Ignoring EPIPE``, at debug level:
  once per stream, and the tests count it).
* ``gevent_pywsgi``: gunicorn with gevent's WSGI server; mode ``direct``: the
  connection writes to the socket from the server's handler greenlet.
* ``pywsgi``: gevent's own ``WSGIServer``; mode ``direct``.
* ``iterator``: gunicorn's async worker with ``SSE_DIRECT_WRITE = False``;
  mode ``iterator``: the server writes what the WSGI iterator yields.

What every mode guarantees: events, heartbeats and resume; a generator view
ends with a complete response (the last chunk), also when it raises; a worker
shutdown ends the stream with a goodbye, also a complete response.

What the modes guarantee about a client that vanishes (closes, or is reset):
all of them watch the socket, the ``iterator`` mode too where the server
exposes it (it only peeks; the server still does the writing). The stream is
released as soon as the client's FIN or RST arrives, without any write (with
a 30 s heartbeat and no events: within a couple of seconds, no heartbeat
sent). What the ``iterator`` mode adds is tested with the slow clients
(``tests/test_hardening.py``): the server's blocked write is bounded, and the
socket is cut under it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT, Server, free_port, server_environ, wait_for_port
from tests.test_streams import publish, read_first_bytes, stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"


@dataclass(frozen=True)
class Kind:
    #: the gunicorn worker class, or ``None`` for gevent's own WSGIServer
    worker_class: str | None
    settings: dict[str, str]
    #: the write mode its streams must use
    mode: str


SERVERS = {
    "gevent": Kind("gevent", {}, "owned"),
    "gevent_pywsgi": Kind("gevent_pywsgi", {}, "direct"),
    "pywsgi": Kind(None, {}, "direct"),
    "iterator": Kind("gevent", {"SSE_DIRECT_WRITE": "false"}, "iterator"),
}


@pytest.fixture
def serve(request, gunicorn, tmp_path):
    """``serve(name, heartbeat=0.2)``: one of :data:`SERVERS`, started."""

    def start(name: str, *, heartbeat: float = 0.2) -> Server:
        kind = SERVERS[name]
        env = {"SSE_HEARTBEAT_INTERVAL": str(heartbeat), **kind.settings}
        if kind.worker_class is not None:
            return gunicorn(APP, worker_class=kind.worker_class, env=env)
        port = free_port()
        log_path = tmp_path / f"pywsgi-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.apps.pywsgi_server", str(port)],
                cwd=ROOT,
                env=server_environ(env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(proc, port, log_path)
        request.addfinalizer(lambda: server.stop(signal.SIGKILL))
        wait_for_port(port, 15, "the gevent WSGIServer", proc)
        return server

    return start


def assert_mode(server: Server, name: str, streams: int) -> None:
    """All ``streams`` opened so far were written in the mode ``name`` must use."""
    mode = SERVERS[name].mode
    assert stats(server)["modes"] == {mode: streams}
    if mode == "owned":
        # gunicorn's handler let go of each request when the stream took its socket.
        wait_until(
            lambda: server.log().count("Ignoring EPIPE") >= streams,
            5,
            f"gunicorn to log {streams} hand-over(s)",
        )
        assert server.log().count("Ignoring EPIPE") == streams


@pytest.mark.parametrize("name", SERVERS)
def test_events_heartbeats_and_resume(serve, name) -> None:
    server = serve(name)
    stream = RawStream(server.port, "/stream?channel=a&channel=b")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    ids = publish(server, "one", channel="a") + publish(server, "two\nlines", channel="b")
    stream.wait_for(lambda s: len(s.events) == 2, 5, "two events")
    stream.wait_for(lambda s: "heartbeat" in s.parser.comments, 3, "a heartbeat")
    assert stream.data() == ["one", "two\nlines"]
    again = RawStream(server.port, "/stream?channel=a&channel=b", {"Last-Event-ID": ids[0]})
    again.wait_for(lambda s: s.events, 5, "the replay")
    assert again.data() == ["two\nlines"]
    assert_mode(server, name, 2)


@pytest.mark.parametrize("name", SERVERS)
def test_a_vanished_client_is_released_without_a_write(serve, name) -> None:
    server = serve(name, heartbeat=30)
    streams = [RawStream(server.port, "/stream?channel=idle") for _ in range(6)]
    wait_until(lambda: stats(server)["connections"] == 6, 5, "six streams")
    for n, stream in enumerate(streams):
        read_first_bytes(stream)
        stream.close(abort=n % 2 == 0)  # three reset, three closed (FIN)
    # An idle channel and a 30 s heartbeat: only watching the socket can see this.
    wait_until(lambda: stats(server)["connections"] == 0, 3, "all six released")
    figures = stats(server)
    assert figures["disconnects"] == {"client": 6}
    assert figures["heartbeats"] == 0
    assert_mode(server, name, 6)


@pytest.mark.parametrize("name", SERVERS)
def test_a_generator_view_streams_to_its_end(serve, name) -> None:
    server = serve(name)
    stream = RawStream(server.port, "/countdown?from=3&delay=0.05")
    stream.read_to_end(5)
    assert stream.data("count") == ["3", "2", "1"]
    assert stream.end == "complete"
    assert_mode(server, name, 1)


@pytest.mark.parametrize("name", SERVERS)
def test_an_error_in_a_generator_view_ends_the_stream_cleanly(serve, name) -> None:
    server = serve(name)
    stream = RawStream(server.port, "/countdown?from=1&delay=0&fail=1")
    stream.read_to_end(5)
    assert stream.data("count") == ["1"]
    wait_until(lambda: stats(server)["disconnects"] == {"error": 1}, 3, "an error disconnect")
    assert_mode(server, name, 1)


@pytest.mark.parametrize("name", SERVERS)
def test_worker_shutdown_ends_the_stream_with_a_goodbye(serve, name) -> None:
    server = serve(name, heartbeat=30)
    stream = RawStream(server.port, "/stream?channel=a")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    assert_mode(server, name, 1)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    stream.read_to_end(5)
    assert time.monotonic() - started < 3
    assert stream.parser.comments[-1] == "shutdown"
    assert stream.parser.retries[-1] > 0
    server.proc.wait(timeout=10)


def test_streams_behind_wsgi_middleware(gunicorn) -> None:
    """The stream takes the socket over even when middleware wraps the body."""
    server = gunicorn("tests.apps.middleware:app", env={"SSE_HEARTBEAT_INTERVAL": "0.2"})
    stream = RawStream(server.port, "/stream?channel=a", {"X-Forwarded-For": "203.0.113.9"})
    assert stream.headers["x-wrapped"] == "yes"
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    publish(server, "through middleware", channel="a")
    stream.wait_for(lambda s: s.events and "heartbeat" in s.parser.comments, 5, "event + heartbeat")
    assert stream.data() == ["through middleware"]
    assert_mode(server, "gevent", 1)
    stream.close(abort=True)
    wait_until(lambda: stats(server)["connections"] == 0, 3, "the release")
    assert "Traceback" not in server.log()
