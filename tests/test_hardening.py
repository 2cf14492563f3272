"""Production behaviour on real servers: shutdown, slow and vanished clients,
limits, the wrong server, cross-origin, stats, metrics, CLI and logging."""

from __future__ import annotations

import concurrent.futures
import json
import os
import selectors
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


def read_all_until_ended(streams: list[RawStream], timeout: float) -> dict[int, float]:
    """Read every stream at once until each has ended; when each ended
    (``time.monotonic()``), by index."""
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for index, stream in enumerate(streams):
            selector.register(stream.sock, selectors.EVENT_READ, index)
        while len(ended) < len(streams) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                index = key.data
                if not streams[index].pump(0.01):
                    ended[index] = time.monotonic()
                    selector.unregister(key.fileobj)
    return ended


def test_sigterm_ends_200_streams_within_about_a_second(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30", "SSE_RETRY_MS": "2000"})
    streams = [RawStream(server.port, f"/stream?channel=c{n % 7}") for n in range(200)]
    wait_until(lambda: stats(server)["connections"] == 200, 10, "200 open streams")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    ended = read_all_until_ended(streams, timeout=10)
    assert len(ended) == 200, f"{200 - len(ended)} streams did not end within 10 s"
    # The watcher polls the worker every 0.2 s; 200 goodbyes take a moment more.
    slowest = max(ended.values()) - started
    assert slowest < 1.5, f"the last stream ended {slowest:.2f} s after SIGTERM"
    server.proc.wait(timeout=5)  # graceful_timeout is 30 s: it must not be what ends them
    retries = set()
    for stream in streams:
        assert stream.parser.comments[-1] == "shutdown", stream.wire[-100:]
        assert 1000 <= stream.parser.retries[-1] <= 3000
        retries.add(stream.parser.retries[-1])
    assert len(retries) > 20, "reconnect delays are spread, not identical"


def test_sigterm_releases_streams_stalled_mid_write(gunicorn) -> None:
    # Clients that stopped reading while a backlog was being written: each
    # stream is cut after the goodbye grace and still counted out and signalled.
    server = gunicorn(
        APP,
        env={"SSE_QUEUE_SIZE": "1000000", "SSE_SEND_TIMEOUT": "60", "TEST_DEBUG_LOG": "1"},
    )
    stalled = [stalled_stream(server.port, "/stream?channel=a") for _ in range(3)]
    wait_until(lambda: stats(server)["connections"] == 3, 5, "three streams")
    httpx.post(
        f"{server.url}/control/publish", json={"size": 2048, "channel": "a", "count": 2000},
        timeout=30,
    ).raise_for_status()  # fmt: skip
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=10)
    assert time.monotonic() - started < 5, "a stalled client must not hold up the shutdown"
    assert server.log().count("closed: reason=shutdown") == 3, server.log()[-3000:]
    for sock in stalled:
        sock.close()


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
    # Request 1 is the fixture's readiness check.
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30"}, args=("--max-requests", "4"))
    old_worker = stats(server)["pid"]  # request 2
    stream = RawStream(server.port, "/stream?channel=a")  # request 3
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")  # request 4: recycle
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


def test_a_client_that_never_reads_is_dropped_at_the_queue_bound(gunicorn) -> None:
    # A send timeout far away: what drops the stalled client here is its queue.
    server = gunicorn(
        APP, env={"SSE_QUEUE_SIZE": "200", "SSE_HISTORY_SIZE": "100", "SSE_SEND_TIMEOUT": "60"}
    )
    stalled = stalled_stream(server.port, "/stream?channel=a")
    stalled_since = time.monotonic()
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
        stalled_for = time.monotonic() - stalled_since
    # Dropped long before the send timeout could act (60 s without progress).
    assert stalled_for < 50, f"the test took {stalled_for:.0f} s: the send timeout may have acted"
    figures = stats(server)
    assert figures["slow"] == 1 and figures["disconnects"] == {"slow": 1}
    assert figures["connections"] == 1
    # Unbounded, the stalled client would hold 20 MB; its queue is 200 KB.
    growth_mb = (stats(server)["rss_kb"] - rss_before) / 1024
    assert growth_mb < 1.5, f"worker RSS grew {growth_mb:.1f} MB for one stalled client"
    stalled.close()
    reader.close()


@pytest.mark.parametrize(
    ("settings", "bursts", "what"),
    [
        # 8 MB the server cannot finish writing, then more than the queue holds
        ({"SSE_QUEUE_SIZE": "1000", "SSE_SEND_TIMEOUT": "60"}, [(16384, 500), (100, 1500)],
         "the queue bound"),
        # 8 MB the server cannot finish writing, and nothing else
        ({"SSE_QUEUE_SIZE": "1000000", "SSE_SEND_TIMEOUT": "1"}, [(16384, 500)],
         "the send timeout"),
    ],
)  # fmt: skip
def test_iterator_mode_drops_a_stalled_client_and_frees_its_stream(
    gunicorn, settings, bursts, what
) -> None:
    # The server writes what the iterator yields and blocks on a stalled
    # client: to end the stream, it must cut the socket under the server.
    server = gunicorn(APP, env={"SSE_DIRECT_WRITE": "false", "SSE_HISTORY_SIZE": "10", **settings})
    stalled = stalled_stream(server.port, "/stream?channel=a")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    assert stats(server)["modes"] == {"iterator": 1}
    for size, count in bursts:
        httpx.post(
            f"{server.url}/control/publish",
            json={"size": size, "channel": "a", "count": count},
            timeout=30,
        ).raise_for_status()
        time.sleep(0.5)  # the iterator takes the burst; the server's write blocks
    wait_until(lambda: stats(server)["slow"] == 1, 10, f"the drop by {what}")
    wait_until(lambda: stats(server)["connections"] == 0, 5, "the stream released")
    assert stats(server)["disconnects"] == {"slow": 1}
    stalled.close()


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


def test_a_client_whose_window_stays_shut_is_dropped_within_the_dead_peer_bound(gunicorn) -> None:
    # Alive (the kernel answers window probes) but reading nothing: Linux
    # applies TCP_USER_TIMEOUT to the probes, so the bound acts before a
    # longer send timeout, and the client is dropped as slow.
    server = gunicorn(
        APP,
        env={"SSE_HEARTBEAT_INTERVAL": "2", "SSE_SEND_TIMEOUT": "60", "SSE_QUEUE_SIZE": "1000000"},
    )
    stalled = stalled_stream(server.port, "/stream?channel=a")
    wait_until(lambda: stats(server)["connections"] == 1, 5, "the stream")
    httpx.post(
        f"{server.url}/control/publish",
        json={"size": 2048, "channel": "a", "count": 4000},
        timeout=30,
    ).raise_for_status()
    started = time.monotonic()
    wait_until(lambda: stats(server)["connections"] == 0, 15, "the drop")
    assert time.monotonic() - started < 8
    assert stats(server)["disconnects"] == {"slow": 1}
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
    assert 1 <= int(response.headers["retry-after"]) <= 5


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


def test_a_preloaded_app_warns_about_the_memory_broker_at_its_first_stream(gunicorn) -> None:
    # The master loads a preloaded app before it has workers: the warning
    # comes from each worker once it serves a stream.
    server = gunicorn(APP, workers=2, args=("--preload",))
    assert "SSE_BROKER_URL=redis://" not in server.log()
    stream = RawStream(server.port, "/stream")
    assert stream.status == 200
    wait_until(lambda: "SSE_BROKER_URL=redis://" in server.log(), 5, "the warning")
    stream.close()


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
    assert allowed.headers["access-control-allow-headers"] == "last-event-id"
    custom = httpx.options(
        f"{server.url}/stream",
        headers={**asked, "Access-Control-Request-Headers": "authorization, x-tenant"},
        timeout=5,
    )
    assert custom.headers["access-control-allow-headers"] == "authorization, x-tenant"
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
    assert 'sse_streams_by_heartbeat{interval="15"} 1.0' in text
    stream.close()
    wait_until(lambda: stats(server)["connections"] == 0, 3, "the disconnect")
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert 'sse_disconnects_total{reason="client"} 1.0' in text


def flask_cli_command(*args: str, app: str = APP) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", app, "sse", *args]


def cli_env(env: dict | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}


def flask_cli(
    *args: str, env: dict | None = None, app: str = APP, timeout: float = 20
) -> subprocess.CompletedProcess:
    return subprocess.run(
        flask_cli_command(*args, app=app),
        cwd=ROOT,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def start_tail():
    """``start_tail(*args, env=..., app=...)``: ``flask sse tail`` in the
    background, killed at the end of the test if still running."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None, app: str = APP) -> subprocess.Popen:
        proc = subprocess.Popen(
            flask_cli_command("tail", *args, app=app),
            cwd=ROOT,
            env=cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"the command did not finish in {timeout} s: {out!r} {err!r}"
        ) from None


REDIS_APP = "tests.apps.redis_app:app"


def test_cli_publish_reaches_a_running_server_through_redis(gunicorn, redis_server) -> None:
    url = f"redis://127.0.0.1:{redis_server().port}/0"
    server = gunicorn(REDIS_APP, env={"SSE_BROKER_URL": url})
    stream = RawStream(server.port, "/stream?channel=news")
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    done = flask_cli("publish", "news", "from the CLI", app=REDIS_APP, env={"SSE_BROKER_URL": url})
    assert done.returncode == 0, done.stderr
    stream.wait_for(lambda s: s.events, 5, "the event published by the CLI")
    assert [(e.data, e.last_event_id) for e in stream.events] == [
        ("from the CLI", done.stdout.strip())
    ]


def test_cli_tail_resumes_across_a_reload(gunicorn, redis_server, start_tail) -> None:
    url = f"redis://127.0.0.1:{redis_server().port}/0"
    server = gunicorn(REDIS_APP, env={"SSE_BROKER_URL": url, "SSE_RETRY_MS": "200"})
    old_worker = httpx.get(f"{server.url}/control/stats", timeout=5).json()["pid"]
    tail = start_tail("news", "--url", server.url, "--count", "3", app=REDIS_APP,
                      env={"SSE_BROKER_URL": url})  # fmt: skip
    wait_until(lambda: stats(server)["connections"] == 1, 10, "tail's stream")
    first = httpx.post(f"{server.url}/control/publish", json={"data": "1", "channel": "news"})
    server.proc.send_signal(signal.SIGHUP)  # tail's stream ends; it reconnects
    wait_until(lambda: old_worker not in worker_pids(server.pid), 10, "the old worker to exit")
    # Published while tail may still be away: the resume replays them.
    ids = first.json()["ids"]
    for data in ("2", "3"):
        ids += httpx.post(
            f"{server.url}/control/publish", json={"data": data, "channel": "news"}, timeout=5
        ).json()["ids"]
    out, err = finish(tail, 20)
    assert tail.returncode == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert [(e["id"], e["data"]) for e in printed] == list(zip(ids, ["1", "2", "3"], strict=True))


def test_cli_tail_waits_out_a_503(gunicorn, start_tail) -> None:
    server = gunicorn(APP, env={"SSE_MAX_CONNECTIONS": "1"})
    occupier = RawStream(server.port, "/stream?channel=other")
    assert occupier.status == 200
    tail = start_tail("news", "--url", server.url, "--count", "1")
    wait_until(lambda: stats(server)["refused"] >= 1, 10, "tail refused with 503")
    occupier.close()
    wait_until(lambda: stats(server)["channels"].get("news") == 1, 15, "tail's stream after 503")
    ids = publish(server, "at last", channel="news")
    out, err = finish(tail, 10)
    assert tail.returncode == 0, err
    assert json.loads(out) == {"id": ids[0], "event": "message", "data": "at last"}
    assert "503" in err


def test_cli_publish_and_stats_of_its_own_process() -> None:
    done = flask_cli("publish", "news", '{"a": 1}', "--json", "--event", "story")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("-1")  # the CLI's own memory broker
    stats_out = flask_cli("stats")
    figures = json.loads(stats_out.stdout)
    assert figures["connections"] == 0 and figures["published"] == 0


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
    assert json.loads(done.stdout) == {"id": ids[1], "event": "message", "data": "second"}


def test_connects_and_disconnects_are_logged_at_debug(gunicorn) -> None:
    server = gunicorn(APP, env={"TEST_DEBUG_LOG": "1", "SSE_MAX_CONNECTIONS": "1"})
    stream = RawStream(server.port, "/stream?channel=a&channel=b")
    wait_until(lambda: "opened: channels=a,b" in server.log(), 5, "the connect line")
    assert RawStream(server.port, "/stream").status == 503
    stream.close()
    wait_until(lambda: "closed: reason=client" in server.log(), 5, "the disconnect line")
    assert "refused a stream from 127.0.0.1" in server.log()
