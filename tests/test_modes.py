"""The same stream behaviour whichever way the bytes reach the socket.

* ``gevent``: gunicorn's async worker; the connection takes over the socket.
* ``gevent_pywsgi``: gunicorn with gevent's WSGI server; the connection writes
  to the socket from the server's handler greenlet.
* ``pywsgi``: gevent's own ``WSGIServer``; like ``gevent_pywsgi``.
* ``iterator``: ``SSE_DIRECT_WRITE = False``; the server writes what the WSGI
  iterator yields.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, Server, free_port, wait_for_port
from tests.test_streams import publish, stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"
MODES = {
    "gevent": ("gevent", {}),
    "gevent_pywsgi": ("gevent_pywsgi", {}),
    "pywsgi": (None, {}),
    "iterator": ("gevent", {"SSE_DIRECT_WRITE": "false"}),
}


@pytest.fixture(params=list(MODES))
def server(request, gunicorn, tmp_path):
    worker_class, env = MODES[request.param]
    env = {"SSE_HEARTBEAT_INTERVAL": "0.2", **env}
    if worker_class is not None:
        return gunicorn(APP, worker_class=worker_class, env=env)
    port = free_port()
    log_path = tmp_path / "pywsgi.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.pywsgi_server", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log_path)
    request.addfinalizer(lambda: server.stop(signal.SIGKILL))
    wait_for_port(port, 15, "the gevent WSGIServer", proc)
    return server


def test_events_heartbeats_and_resume(server) -> None:
    stream = RawStream(server.port, "/stream?channel=a&channel=b")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    ids = publish(server, "one", channel="a") + publish(server, "two\nlines", channel="b")
    stream.wait_for(lambda s: len(s.events) == 2, 5, "two events")
    stream.wait_for(lambda s: "heartbeat" in s.parser.comments, 3, "a heartbeat")
    assert stream.data() == ["one", "two\nlines"]
    again = RawStream(server.port, "/stream?channel=a&channel=b", {"Last-Event-ID": ids[0]})
    again.wait_for(lambda s: s.events, 5, "the replay")
    assert again.data() == ["two\nlines"]


def test_a_vanished_client_is_released(server) -> None:
    streams = [RawStream(server.port, "/stream?channel=idle") for _ in range(5)]
    wait_until(lambda: stats(server)["connections"] == 5, 5, "five streams")
    for stream in streams:
        stream.close(abort=True)
    wait_until(lambda: stats(server)["connections"] == 0, 3, "all five released")
    assert stats(server)["disconnects"] == {"client": 5}


def test_a_generator_view_streams_to_its_end(server) -> None:
    stream = RawStream(server.port, "/countdown?from=3&delay=0.05")
    stream.read_to_end(5)
    assert stream.data("count") == ["3", "2", "1"]
    assert stream.ended


def test_worker_shutdown_ends_the_stream_with_a_goodbye(server) -> None:
    stream = RawStream(server.port, "/stream?channel=a")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
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
    stream.close(abort=True)
    wait_until(lambda: stats(server)["connections"] == 0, 3, "the release")
    assert "Traceback" not in server.log()
