"""Settings whose promise needs a real server: ``SSE_ALLOW_THREADS`` (who may
serve streams without gevent) and a non-default ``SSE_URL_PREFIX``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask

from flask_sse_keepalive import SSE, sse_stream
from tests.conftest import ROOT, free_port, wait_for_port
from tests.test_streams import publish, stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"
CLIENT_JS = ROOT / "flask_sse_keepalive" / "static" / "sse-keepalive.js"


# -- SSE_ALLOW_THREADS ----------------------------------------------------------------


def test_allow_threads_true_lets_gthread_serve_streams(gunicorn) -> None:
    # Four threads: one holds the stream, the others serve publish and stats.
    server = gunicorn(
        APP,
        worker_class="gthread",
        args=("--threads", "4"),
        env={"SSE_ALLOW_THREADS": "true", "SSE_HEARTBEAT_INTERVAL": "0.2"},
    )
    stream = RawStream(server.port, "/stream?channel=a")
    assert stream.status == 200
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    publish(server, "from a thread", channel="a")
    stream.wait_for(lambda s: s.events, 5, "the event")
    stream.wait_for(lambda s: "heartbeat" in s.parser.comments, 5, "a heartbeat")
    assert stream.data() == ["from a thread"]
    countdown = RawStream(server.port, "/countdown?from=2&delay=0")
    countdown.read_to_end(5)
    assert countdown.data("count") == ["2", "1"]
    assert stats(server)["modes"] == {"threaded": 2}
    # The start-up warning would tell the operator that streams fail here.
    assert "SSE streams cannot be served" not in server.log()


def test_allow_threads_false_refuses_even_the_development_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SSE_ALLOW_THREADS": "false"}
    with open(tmp_path / "flask.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", APP, "run", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port, 15, "flask run", proc)
        for path in ("/stream?channel=a", "/countdown?from=1&delay=0"):
            response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
            assert response.status_code == 500, path
            assert "gunicorn -k gevent" in response.text
        figures = httpx.get(f"http://127.0.0.1:{port}/control/stats", timeout=5).json()
        assert figures["connects"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "SSE streams cannot be served" in (tmp_path / "flask.log").read_text()


def gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def make_app(allow_threads: object, testing: bool) -> Flask:
    app = Flask(__name__)
    app.testing = testing
    if allow_threads is not None:
        app.config["SSE_ALLOW_THREADS"] = allow_threads
    SSE(app)

    @app.get("/generated")
    @sse_stream
    def generated() -> Iterator[str]:
        yield "one"

    return app


@pytest.mark.parametrize(
    ("allow_threads", "testing", "status"),
    [
        (None, True, 200),  # the default: tests may stream ...
        (None, False, 500),  # ... a server that is neither testing nor `flask run` may not
        (False, True, 500),
        ("no", True, 500),  # a flag from the environment
        (True, False, 200),
        ("yes", False, 200),
    ],
)
def test_allow_threads_under_the_test_client(allow_threads, testing, status) -> None:
    # What is checked here holds only where gevent has not patched the process.
    assert not gevent_patched()
    client = make_app(allow_threads, testing).test_client()
    for path in ("/stream?channel=a", "/generated"):
        response = client.get(path, buffered=False)
        try:
            assert response.status_code == status, path
            if status == 500:
                assert "gunicorn -k gevent" in response.get_data(as_text=True)
            else:
                first = next(iter(response.response))
                assert first.startswith(b"retry: 3000\n")
        finally:
            response.close()


# -- SSE_URL_PREFIX -------------------------------------------------------------------


@pytest.fixture
def prefixed(gunicorn):
    return gunicorn(APP, env={"SSE_URL_PREFIX": "/events/sse"})


def test_a_url_prefix_moves_the_stream_route(prefixed) -> None:
    stream = RawStream(prefixed.port, "/events/sse?channel=a")
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    ids = publish(prefixed, "moved", channel="a", count=2)
    stream.wait_for(lambda s: len(s.events) == 2, 5, "two events")
    resumed = RawStream(prefixed.port, "/events/sse?channel=a", {"Last-Event-ID": ids[0]})
    resumed.wait_for(lambda s: s.events, 5, "the replay on the prefixed route")
    assert resumed.data() == ["moved"] and resumed.events[0].last_event_id == ids[1]
    # The default place is not served any more.
    for path in ("/stream?channel=a", "/stream"):
        assert httpx.get(f"{prefixed.url}{path}", timeout=5).status_code == 404
    wait_until(lambda: stats(prefixed)["connections"] == 2, 5, "only the two prefixed streams")


def test_a_url_prefix_moves_the_browser_client(prefixed) -> None:
    served = httpx.get(f"{prefixed.url}/events/sse/static/sse-keepalive.js", timeout=5)
    assert served.status_code == 200
    assert "javascript" in served.headers["content-type"]
    assert served.content == CLIENT_JS.read_bytes()
    old = httpx.get(f"{prefixed.url}/stream/static/sse-keepalive.js", timeout=5)
    assert old.status_code == 404


def test_flask_sse_tail_appends_the_url_prefix(prefixed) -> None:
    ids = publish(prefixed, "first", channel="news") + publish(prefixed, "second", channel="news")
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", APP, "sse", "tail", "news",
         "--url", prefixed.url, "--last-event-id", ids[0], "--count", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SSE_URL_PREFIX": "/events/sse"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": ids[1], "event": "message", "data": "second"}
