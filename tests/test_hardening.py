"""Production behaviour on real servers: shutdown, slow and vanished clients,
limits, the wrong server, cross-origin, stats, metrics, CLI and logging."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_for_port
from tests.test_streams import publish, signal_log, stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"


def worker_pids(master_pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master_pid)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


# -- graceful shutdown ------------------------------------------------------------


def test_sigterm_ends_200_streams_and_the_master_exits_within_5_s(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30", "SSE_RETRY_MS": "2000"})
    streams = [RawStream(server.port, f"/stream?channel=c{n % 7}") for n in range(200)]
    wait_until(lambda: stats(server)["connections"] == 200, 10, "200 open streams")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=5)  # graceful_timeout is 30 s: it must not be what ends them
    assert time.monotonic() - started < 5
    retries = set()
    for stream in streams:
        stream.read_to_end(2)
        assert stream.parser.comments[-1] == "shutdown", stream.wire[-100:]
        assert 1000 <= stream.parser.retries[-1] <= 3000
        retries.add(stream.parser.retries[-1])
    assert len(retries) > 20, "reconnect delays are spread, not identical"


def test_a_hup_reload_moves_streams_to_the_new_worker(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30"})
    old_worker = stats(server)["pid"]
    stream = RawStream(server.port, "/stream?channel=a")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    server.proc.send_signal(signal.SIGHUP)
    stream.read_to_end(5)
    assert stream.parser.comments[-1] == "shutdown"
    # Until the old worker closes its listener (gunicorn checks once a second)
    # it may still accept: it answers 503 with Retry-After, and clients retry.
    # The memory broker is per process, so the test waits for the old one to go.
    wait_until(lambda: old_worker not in worker_pids(server.pid), 10, "the old worker to exit")
    deadline = time.monotonic() + 10
    while (again := RawStream(server.port, "/stream?channel=a")).status == 503:
        assert time.monotonic() < deadline, "no worker accepted the stream"
        time.sleep(0.2)
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream on the new worker")
    assert stats(server)["pid"] != old_worker
    publish(server, "after reload", channel="a")
    again.wait_for(lambda s: s.events, 5, "an event from the new worker")
    assert again.data() == ["after reload"]


def test_max_requests_recycling_ends_streams_at_once(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30"}, args=("--max-requests", "3"))
    old_worker = stats(server)["pid"]  # request 1
    stream = RawStream(server.port, "/stream?channel=a")  # request 2
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")  # request 3: recycle
    started = time.monotonic()
    stream.read_to_end(5)
    assert time.monotonic() - started < 2
    assert stream.parser.comments[-1] == "shutdown"
    wait_until(lambda: stats(server)["pid"] != old_worker, 10, "the replacement worker")


def test_after_shutdown_new_streams_get_503_with_retry_after(gunicorn) -> None:
    server = gunicorn(APP)
    stream = RawStream(server.port, "/stream?channel=a")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    httpx.post(f"{server.url}/control/shutdown", timeout=5).raise_for_status()
    stream.read_to_end(3)
    response = httpx.get(f"{server.url}/stream", timeout=5)
    assert response.status_code == 503
    assert 1 <= int(response.headers["retry-after"]) <= 5
    assert "shutting down" in response.text
    reasons = [e["reason"] for e in signal_log(server) if e["signal"] == "disconnected"]
    assert reasons == ["shutdown"]


# -- slow and vanished clients ------------------------------------------------------


def stalled_stream(port: int, path: str) -> socket.socket:
    """A client that asks for a stream and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def count_events(sock: socket.socket, until: int, timeout: float) -> int:
    """Read a stream without parsing, counting ``id:`` lines (cheap for 20 MB)."""
    sock.settimeout(1)
    seen = 0
    tail = b""
    deadline = time.monotonic() + timeout
    while seen < until and time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        seen += (tail + data).count(b"\nid: ")
        tail = data[-8:]
        seen -= tail.count(b"\nid: ")  # counted again with the next read
    return seen + tail.count(b"\nid: ")


def test_a_client_that_never_reads_is_dropped_and_memory_stays_bounded(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_QUEUE_SIZE": "200", "SSE_HISTORY_SIZE": "100"})
    stalled = stalled_stream(server.port, "/stream?channel=a")
    reader = socket.create_connection(("127.0.0.1", server.port))
    reader.sendall(b"GET /stream?channel=a HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: stats(server)["connections"] == 2, 5, "two streams")
    rss_before = stats(server)["rss_kb"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        counted = pool.submit(count_events, reader, 20_000, 60)
        for _ in range(100):  # 20,000 events of 1 KB, in batches
            httpx.post(
                f"{server.url}/control/publish",
                json={"size": 1024, "channel": "a", "count": 200},
                timeout=30,
            ).raise_for_status()
        assert counted.result() == 20_000, "the reading client got every event"
    figures = stats(server)
    assert figures["slow"] == 1 and figures["disconnects"] == {"slow": 1}
    assert figures["connections"] == 1
    growth_mb = (stats(server)["rss_kb"] - rss_before) / 1024
    assert growth_mb < 8, f"worker RSS grew {growth_mb:.1f} MB for one stalled client"
    stalled.close()
    reader.close()


def test_a_peer_that_stops_acknowledging_is_found_by_the_send_timeout(gunicorn) -> None:
    server = gunicorn(
        APP, env={"SSE_QUEUE_SIZE": "1000000", "SSE_SEND_TIMEOUT": "1", "SSE_HISTORY_SIZE": "10"}
    )
    stalled = stalled_stream(server.port, "/stream?channel=a")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    # 8 MB for a client whose window is closed: the write blocks, the queue
    # (1,000,000 events) never overflows, so only the send timeout can act.
    httpx.post(
        f"{server.url}/control/publish",
        json={"size": 2048, "channel": "a", "count": 4000},
        timeout=30,
    ).raise_for_status()
    wait_until(lambda: stats(server)["disconnects"].get("slow") == 1, 5, "the send timeout")
    stalled.close()


# -- limits ---------------------------------------------------------------------------


def test_the_connection_cap_answers_503_with_retry_after(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_MAX_CONNECTIONS": "2"})
    streams = [RawStream(server.port, "/stream") for _ in range(2)]
    wait_until(lambda: stats(server)["connections"] == 2, 5, "two streams")
    refused = RawStream(server.port, "/stream")
    assert refused.status == 503
    assert 1 <= int(refused.headers["retry-after"]) <= 5
    streams[0].close()
    wait_until(lambda: stats(server)["connections"] == 1, 3, "a free slot")
    assert RawStream(server.port, "/stream").status == 200
    assert stats(server)["refused"] == 1


def test_the_per_client_cap(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_MAX_CONNECTIONS_PER_CLIENT": "2"})
    ok = [RawStream(server.port, "/stream") for _ in range(2)]
    assert [s.status for s in ok] == [200, 200]
    response = httpx.get(f"{server.url}/stream", timeout=5)
    assert response.status_code == 503
    assert "too many open streams for this client" in response.text


def test_the_per_client_cap_is_keyed_by_the_client_key_hook(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_MAX_CONNECTIONS_PER_CLIENT": "1"})
    assert RawStream(server.port, "/stream", {"X-Client": "u1"}).status == 200
    assert RawStream(server.port, "/stream", {"X-Client": "u1"}).status == 503
    assert RawStream(server.port, "/stream", {"X-Client": "u2"}).status == 200


def test_max_stream_seconds_rotates_streams_and_resume_is_seamless(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_MAX_STREAM_SECONDS": "1", "SSE_HEARTBEAT_INTERVAL": "0.3"})
    stream = RawStream(server.port, "/stream?channel=a")
    ids = publish(server, "one", channel="a")
    stream.wait_for(lambda s: s.events, 3, "the first event")
    stream.read_to_end(3)
    assert stream.parser.comments[-1] == "lifetime"
    publish(server, "two", channel="a")  # while the client is away
    again = RawStream(server.port, "/stream?channel=a", {"Last-Event-ID": ids[0]})
    again.wait_for(lambda s: s.events, 3, "the missed event")
    assert again.data() == ["two"]
    reasons = [e["reason"] for e in signal_log(server) if e["signal"] == "disconnected"]
    assert reasons[0] == "lifetime"


# -- the wrong server ---------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_a_worker_without_gevent_fails_fast_and_says_why(gunicorn, worker_class) -> None:
    server = gunicorn(APP, worker_class=worker_class)
    started = time.monotonic()
    response = httpx.get(f"{server.url}/stream", timeout=5)
    assert time.monotonic() - started < 2
    assert response.status_code == 500
    assert "gunicorn -k gevent" in response.text
    # the worker is not held: it answers again at once
    assert httpx.get(f"{server.url}/control/log", timeout=5).status_code == 200
    wait_until(lambda: "SSE streams cannot be served" in server.log(), 5, "the start-up warning")
    assert server.log().count("SSE streams cannot be served") == 1


def test_a_preloaded_app_warns_only_when_its_worker_cannot_stream(gunicorn) -> None:
    # The master loads a preloaded app before any worker patches gevent.
    fine = gunicorn(APP, args=("--preload",))
    stream = RawStream(fine.port, "/stream")
    assert stream.status == 200
    assert "SSE streams cannot be served" not in fine.log()
    wrong = gunicorn(APP, worker_class="sync", args=("--preload",))
    assert "SSE streams cannot be served" not in wrong.log()
    assert httpx.get(f"{wrong.url}/stream", timeout=5).status_code == 500
    wait_until(lambda: "SSE streams cannot be served" in wrong.log(), 5, "the warning")


def test_the_memory_broker_under_several_workers_warns_at_start(gunicorn) -> None:
    server = gunicorn(APP, workers=2)
    wait_until(
        lambda: server.log().count("SSE_BROKER_URL=redis://") == 2, 10, "a warning per worker"
    )


def test_flask_run_serves_streams_in_development_mode(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SSE_HEARTBEAT_INTERVAL": "0.2"}
    log = open(tmp_path / "flask.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", APP, "run", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, 15, "flask run", proc)
        stream = RawStream(port, "/stream?channel=a")
        assert stream.status == 200
        stream.wait_for(lambda s: "heartbeat" in s.parser.comments, 3, "a heartbeat")
        httpx.post(
            f"http://127.0.0.1:{port}/control/publish", json={"data": "dev", "channel": "a"}
        ).raise_for_status()
        stream.wait_for(lambda s: s.events, 3, "an event")
        assert stream.data() == ["dev"]
        countdown = RawStream(port, "/countdown?from=2&delay=0.1")
        countdown.read_to_end(5)
        assert countdown.data("count") == ["2", "1"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_flask_test_client_streams_when_testing() -> None:
    from tests.apps.basic import app, sse

    app.testing = True
    try:
        client = app.test_client()
        response = client.get("/countdown?from=2&delay=0", buffered=False)
        assert response.status_code == 200
        body = b"".join(response.response)
        assert b"data: 2\n" in body and b'"done":true' in body
        with app.app_context():
            event_id = sse.publish("x", channel="t")
        response = client.get("/stream?channel=t", headers={"Last-Event-ID": event_id})
        assert response.status_code == 200
        response.close()
    finally:
        app.testing = False


# -- cross-origin -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origins", "credentials", "origin", "expected"),
    [
        (None, None, "https://a.example", {}),
        (
            "https://a.example",
            None,
            "https://a.example",
            {"access-control-allow-origin": "https://a.example"},
        ),
        ("https://a.example", None, "https://evil.example", {}),
        ("*", None, "https://b.example", {"access-control-allow-origin": "*"}),
        (
            "https://a.example,https://b.example",
            "true",
            "https://b.example",
            {
                "access-control-allow-origin": "https://b.example",
                "access-control-allow-credentials": "true",
            },
        ),
    ],
)
def test_cors_headers_for_eventsource(gunicorn, origins, credentials, origin, expected) -> None:
    env = {}
    if origins:
        env["SSE_CORS_ORIGINS"] = origins
    if credentials:
        env["SSE_CORS_CREDENTIALS"] = credentials
    server = gunicorn(APP, env=env)
    stream = RawStream(server.port, "/stream", {"Origin": origin})
    got = {k: v for k, v in stream.headers.items() if k.startswith("access-control-")}
    if expected:
        expected = {**expected, "access-control-expose-headers": "Retry-After"}
    assert got == expected


def test_refusals_are_readable_by_an_allowed_origin(gunicorn) -> None:
    server = gunicorn(
        APP, env={"SSE_CORS_ORIGINS": "https://a.example", "SSE_MAX_CONNECTIONS": "1"}
    )
    allowed = {"Origin": "https://a.example"}
    bad = httpx.get(f"{server.url}/stream?channel=bad%20name", headers=allowed, timeout=5)
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == "https://a.example"
    denied = httpx.get(f"{server.url}/stream?channel=forbidden", headers=allowed, timeout=5)
    assert denied.status_code == 403
    assert denied.headers["access-control-allow-origin"] == "https://a.example"
    assert RawStream(server.port, "/stream").status == 200  # takes the one slot
    full = httpx.get(f"{server.url}/stream", headers=allowed, timeout=5)
    assert full.status_code == 503
    assert full.headers["access-control-allow-origin"] == "https://a.example"
    # Retry-After is not safelisted: the page reads it only if it is exposed.
    assert full.headers["access-control-expose-headers"] == "Retry-After"
    assert int(full.headers["retry-after"]) >= 1
    other = httpx.get(
        f"{server.url}/stream?channel=forbidden", headers={"Origin": "https://evil.example"},
        timeout=5,
    )  # fmt: skip
    assert other.status_code == 403
    assert not [k for k in other.headers if k.startswith("access-control-")]


def test_a_cors_preflight_allows_last_event_id_for_allowed_origins(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_CORS_ORIGINS": "https://a.example"})
    asked = {"Origin": "https://a.example", "Access-Control-Request-Headers": "last-event-id"}
    allowed = httpx.options(f"{server.url}/stream", headers=asked, timeout=5)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://a.example"
    assert "Last-Event-ID" in allowed.headers["access-control-allow-headers"]
    other = httpx.options(
        f"{server.url}/stream", headers={**asked, "Origin": "https://evil.example"}, timeout=5
    )
    assert other.status_code == 204
    assert "access-control-allow-origin" not in other.headers
    assert stats(server)["connects"] == 0


# -- stats, metrics, CLI, logging -------------------------------------------------------


def test_stats_count_what_happened(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "0.2", "SSE_HISTORY_SIZE": "2"})
    ids = publish(server, "x", channel="a", count=4)  # keeps only the last 2
    s1 = RawStream(server.port, "/stream?channel=a&channel=b")
    s2 = RawStream(server.port, "/stream?channel=a", {"Last-Event-ID": ids[0]})  # evicted
    s2.wait_for(lambda s: s.events, 3, "the reset")
    publish(server, "y", channel="a")
    s1.wait_for(lambda s: "heartbeat" in s.parser.comments and s.events, 3, "event and heartbeat")
    figures = stats(server)
    assert figures["connections"] == 2
    assert figures["channels"] == {"a": 2, "b": 1}
    assert figures["published"] == 5
    assert figures["delivered"] == 2
    assert figures["resets"] == 1
    assert figures["heartbeats"] >= 1


def test_prometheus_metrics(gunicorn) -> None:
    server = gunicorn(APP, env={"TEST_METRICS": "1"})
    stream = RawStream(server.port, "/stream?channel=a")
    publish(server, "x", channel="a", count=2)
    stream.wait_for(lambda s: len(s.events) == 2, 3, "two events")
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "sse_connections 1.0" in text
    assert "sse_published_total 2.0" in text
    assert "sse_delivered_total 2.0" in text
    stream.close()
    wait_until(lambda: stats(server)["connections"] == 0, 3, "the disconnect")
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert 'sse_disconnects_total{reason="client"} 1.0' in text


def flask_cli(
    *args: str, env: dict | None = None, timeout: float = 20
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", APP, "sse", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_publish_and_stats() -> None:
    done = flask_cli("publish", "news", '{"a": 1}', "--json", "--event", "story")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("-1")
    stats_out = flask_cli("stats")
    assert json.loads(stats_out.stdout)["connections"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("publish", "bad name", "x"), "invalid channel name"),
        (("publish", "news", "{oops", "--json"), "not valid JSON"),
        (("publish", "news"), "Missing argument"),
        (("tail",), "Missing argument"),
        (("tail", "ok", "--url", "ftp://x"), "not an http"),
        (("tail", "a b"), "invalid channel name"),
    ],
)
def test_cli_bad_arguments_are_usage_errors(args, message) -> None:
    done = flask_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_tail_prints_events_and_resumes(gunicorn) -> None:
    server = gunicorn(APP)
    ids = publish(server, "first", channel="news") + publish(server, "second", channel="news")
    done = flask_cli("tail", "news", "--url", server.url, "--last-event-id", ids[0], "--count", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": ids[1], "event": None, "data": "second"}


def test_connects_and_disconnects_are_logged_at_debug(gunicorn) -> None:
    server = gunicorn(APP, env={"TEST_DEBUG_LOG": "1", "SSE_MAX_CONNECTIONS": "1"})
    stream = RawStream(server.port, "/stream?channel=a&channel=b")
    wait_until(lambda: "opened: channels=a,b" in server.log(), 5, "the connect line")
    assert RawStream(server.port, "/stream").status == 503
    stream.close()
    wait_until(lambda: "closed: reason=client" in server.log(), 5, "the disconnect line")
    assert "refused a stream from 127.0.0.1" in server.log()
