"""The browser client against real servers (gunicorn -k gevent): reconnects,
backoff and its jitter, the heartbeat watchdog, the connect timeout, status
codes (on the page's origin and from another one), resume, stream-reset,
persistence."""

from __future__ import annotations

import socket
import time
from typing import Any

from tests.wire import RawStream

from .helpers import (
    APP,
    FAKE_ORIGIN,
    TRACK_JS,
    get_json,
    open_page,
    publish,
    requests_seen,
    start_client,
    track_client,
    wait_in_page,
    wait_until,
)


def test_watchdog_reconnects_a_silent_connection(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP)
    # The route announces a 0.4 s heartbeat interval, sends one event, then nothing.
    start_client(page, server, build, "/raw/stall?key=w&interval=0.4")
    seen = wait_until(
        lambda: len(requests_seen(server, "w")) >= 2 and requests_seen(server, "w"),
        timeout=10,
        what="a second connection after the first went silent",
    )
    wait_in_page(page, "log.events.length >= 2", 10, "the event of the second connection")
    log = page.evaluate("log")
    assert page.evaluate("client.heartbeatInterval") == 0.4
    watchdog = [error for error in log["errors"] if error["reason"] == "watchdog"]
    assert watchdog, f"no watchdog error: {log['errors']}"
    # The event is the last byte the first connection got: from then on 2.5
    # intervals (1 s) of silence, and not much more (a timer can run late
    # under load; 5 intervals would be 2 s). 10 ms is the clock's rounding.
    silent_ms = watchdog[0]["t"] - log["events"][0]["t"]
    assert 990 <= silent_ms <= 1800, silent_ms
    # The new connection resumes from the event the silent one delivered.
    assert seen[1]["last_event_id"] == "stall-1"
    assert [event["data"] for event in log["events"]][:2] == ["1", "2"]


def test_retry_after_is_honoured_on_503(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP)
    # A 100 ms retry would bring the client back at once if it ignored Retry-After.
    start_client(page, server, build, "/raw/status/503?key=r&retry_after=2", {"retry": 100})
    wait_in_page(page, "client.readyState === 1", 15, "the client to connect after the 503")
    log = page.evaluate("log")
    refused = log["errors"][0]
    assert refused["status"] == 503
    assert refused["willRetry"] is True
    assert refused["delay"] >= 2000
    assert log["events"][0]["data"] == "connected"
    first, second = get_json(server.url + "/control/requests?key=r")[:2]
    assert second["time"] - first["time"] >= 1.5


#: status, path, what the refusal says; each path carries its own ``key``.
REFUSALS = [
    # The real stream route: a malformed channel name, and the authorize hook.
    (400, "/stream?channel=bad%20name&key=s400", "invalid channel name"),
    (403, "/stream?channel=forbidden&key=s403", "Not allowed"),
    # Statuses the stream route does not produce itself here.
    (401, "/raw/status/401?key=s401&times=99", "refused with 401"),
    (404, "/raw/status/404?key=s404&times=99", "refused with 404"),
]
#: Longer than any retry of a client with ``retry: 100`` would take to come.
RETRY_WOULD_HAVE_COME = 0.6


def test_refusals_stop_the_client(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP)
    open_page(page, server, build)
    page.evaluate(TRACK_JS)
    # One client per refusal, side by side in one page: none is navigated
    # away, so a retry of any of them would reach the server.
    page.evaluate(
        """(paths) => {
          window.clients = {};
          window.logs = {};
          for (const [status, path] of paths) {
            clients[status] = new SSEKeepalive(path, {retry: 100});
            logs[status] = track(clients[status]);
          }
        }""",
        [[status, path] for status, path, _ in REFUSALS],
    )
    wait_in_page(page, "Object.values(clients).every((c) => c.readyState === 2)", 10,
                 "every client to stop on its refusal")  # fmt: skip
    time.sleep(RETRY_WOULD_HAVE_COME)
    for status, path, reason in REFUSALS:
        log = page.evaluate(f"logs[{status}]")
        assert [error["status"] for error in log["errors"]] == [status], path
        assert log["errors"][0]["willRetry"] is False
        assert reason in log["errors"][0]["message"]
        assert [state["state"] for state in log["states"]] == ["connecting", "closed"], path
        key = path.split("key=")[1].split("&")[0]
        assert [seen["status"] for seen in requests_seen(server, key)] == [status], path


def hold_the_only_slot(server: Any) -> RawStream:
    """Open a stream (on a server with ``SSE_MAX_CONNECTIONS=1``): the next is refused."""
    holder = RawStream(server.port, "/stream?channel=holder")
    assert holder.status == 200
    holder.wait_for(lambda s: b"subscribed" in s.wire, 10, "the holder's stream to be subscribed")
    return holder


def wait_through_retry_after(page: Any, server: Any, key: str, holder: RawStream) -> None:
    """The client in ``page``, refused with 503 while ``holder`` has the only
    slot, waits at least each ``Retry-After`` before it tries again, and
    connects once the slot is free."""
    wait_in_page(page, "log.errors.length >= 1", 10, "the client to be refused")
    # The server sees the EOF at once; a Retry-After is at least a second.
    holder.close()
    wait_in_page(page, "client.readyState === 1", 20, "the client to connect once the slot is free")
    seen = requests_seen(server, key)
    log = page.evaluate("log")
    assert len(seen) >= 2, seen
    assert [r["status"] for r in seen] == [503] * (len(seen) - 1) + [200], seen
    refusals = log["errors"]
    assert [error["status"] for error in refusals] == [503] * (len(seen) - 1), refusals
    for refused, error, following in zip(seen, refusals, seen[1:], strict=False):
        retry_after = int(refused["retry_after"])
        assert error["willRetry"] is True
        # The client adds up to 20 % of jitter.
        assert retry_after * 1000 <= error["delay"] <= retry_after * 1200, (error, refused)
        waited = following["time"] - refused["time"]
        assert retry_after - 0.05 <= waited <= retry_after * 1.2 + 3, (waited, refused)


def test_retry_after_of_the_stream_route_is_honoured(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP, env={"SSE_MAX_CONNECTIONS": "1"})
    holder = hold_the_only_slot(server)
    # A 100 ms retry would bring the client back at once if it ignored Retry-After.
    start_client(page, server, build, "/stream?channel=busy&key=busy", {"retry": 100})
    wait_through_retry_after(page, server, "busy", holder)


def test_another_origin_sees_a_refusal_and_stops(foreign_page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP, env={"SSE_CORS_ORIGINS": FAKE_ORIGIN})
    # Without CORS headers on the 403 the page would see a network error, and retry.
    track_client(foreign_page, server.url + "/stream?channel=forbidden&key=x403", {"retry": 100})
    first = wait_in_page(foreign_page, "log.errors[0]", 10, "the client to see its refusal")
    assert (first["status"], first["willRetry"]) == (403, False), first
    assert "Not allowed" in first["message"]
    time.sleep(RETRY_WOULD_HAVE_COME)
    log = foreign_page.evaluate("log")
    assert [error["status"] for error in log["errors"]] == [403]
    assert [state["state"] for state in log["states"]] == ["connecting", "closed"]
    seen = requests_seen(server, "x403")
    assert [(r["status"], r["origin"]) for r in seen] == [(403, FAKE_ORIGIN)]


def test_another_origin_reads_retry_after(foreign_page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP, env={"SSE_CORS_ORIGINS": FAKE_ORIGIN, "SSE_MAX_CONNECTIONS": "1"})
    holder = hold_the_only_slot(server)
    track_client(foreign_page, server.url + "/stream?channel=busy&key=x503", {"retry": 100})
    wait_through_retry_after(foreign_page, server, "x503", holder)
    assert {r["origin"] for r in requests_seen(server, "x503")} == {FAKE_ORIGIN}


def test_first_connect_resumes_from_the_last_event_id_option(
    page: Any, gunicorn: Any, build: str
) -> None:
    server = gunicorn(APP)
    ids = publish(server, ["one", "two", "three"], channel="r")
    headers: list[str | None] = []
    page.on(
        "request",
        lambda request: (
            headers.append(request.headers.get("last-event-id"))
            if "/stream" in request.url and "/stream/static/" not in request.url
            else None
        ),
    )
    start_client(page, server, build, "/stream?channel=r", {"lastEventId": ids[0]})
    wait_in_page(page, "log.events.length >= 2", 10, "the replay of two events")
    publish(server, ["four"], channel="r")
    wait_in_page(page, "log.events.length >= 3", 10, "a live event after the replay")
    events = page.evaluate("log.events")
    assert [event["data"] for event in events] == ["two", "three", "four"]
    assert headers == [ids[0]]
    assert page.evaluate("client.lastEventId") == events[-1]["id"]


def test_stream_reset_reaches_the_page(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP)
    ids = publish(server, ["before"], channel="x")
    open_page(page, server, build)
    page.evaluate(TRACK_JS)
    page.evaluate(
        """() => {
          window.resets = [];
          window.client = new SSEKeepalive("/stream?channel=x", {
            lastEventId: "gone-42",
            onReset: (e) => window.resets.push(JSON.parse(e.data)),
          });
          window.log = track(window.client, ["message", "stream-reset"]);
        }"""
    )
    wait_in_page(page, "window.resets.length === 1", 10, "the onReset hook")
    publish(server, ["after"], channel="x")
    wait_in_page(page, "log.events.length >= 2", 10, "a live event after the reset")
    events = page.evaluate("log.events")
    assert [event["type"] for event in events] == ["stream-reset", "message"]
    assert events[0]["id"] == ids[0], "the reset carries the current position"
    assert events[1]["data"] == "after"
    reset = page.evaluate("window.resets[0]")
    assert reset["last_event_id"] == "gone-42"
    assert reset["reason"]
    assert page.evaluate("client.stats.resets") == 1


def test_persisted_id_resumes_after_a_reload(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP)
    start_client(page, server, build, "/stream?channel=p", {"persist": True})
    wait_in_page(page, "client.readyState === 1", 10, "the first connection")
    publish(server, ["seen"], channel="p")
    wait_in_page(page, "log.events.length === 1", 10, "the first event")
    page.goto("about:blank")  # the page (and its stream) goes away
    publish(server, ["missed-1", "missed-2"], channel="p")
    open_page(page, server, build)  # same tab: same sessionStorage
    page.evaluate(TRACK_JS)
    page.evaluate(
        """() => {
          window.client = new SSEKeepalive("/stream?channel=p", {persist: true});
          window.log = track(window.client);
        }"""
    )
    wait_in_page(page, "log.events.length >= 2", 10, "the events missed while away")
    assert [event["data"] for event in page.evaluate("log.events")] == ["missed-1", "missed-2"]


def test_heartbeats_and_resume_across_server_ended_streams(
    page: Any, gunicorn: Any, build: str
) -> None:
    server = gunicorn(
        APP,
        env={
            "SSE_HEARTBEAT_INTERVAL": "0.3",
            "SSE_RETRY_MS": "200",
            # Every stream ends after a second: the client must resume each time.
            "SSE_MAX_STREAM_SECONDS": "1",
        },
    )
    start_client(page, server, build, "/stream?channel=h")
    wait_in_page(page, "client.readyState === 1", 10, "the first connection")
    sent = []
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        sent.append(str(len(sent)))
        publish(server, [sent[-1]], channel="h")
        time.sleep(0.05)
    wait_in_page(page, f"log.events.length >= {len(sent)}", 15, f"all {len(sent)} events to arrive")
    received = [event["data"] for event in page.evaluate("log.events")]
    assert received == sent, "a gap, duplicate or reordering across reconnects"
    wait_in_page(page, "client.stats.heartbeats >= 1", 10, "a heartbeat on the idle stream")
    stats = page.evaluate("client.stats")
    assert stats["reconnects"] >= 2
    assert stats["heartbeats"] >= 1
    assert stats["resets"] == 0
    assert page.evaluate("client.heartbeatInterval") == 0.3


BACKOFF_IN_PAGE = """
async () => {
  const random = Math.random;
  Math.random = () => 0.999;  // the top of each jitter range: the ceilings themselves
  try {
    const client = new SSEKeepalive("/never", {
      retry: 100,
      maxRetry: 400,
      fetch: () => Promise.reject(new TypeError("Failed to fetch")),
    });
    const delays = [];
    return await new Promise((resolve) => {
      client.addEventListener("reconnecting", (e) => {
        delays.push([e.attempt, e.delay, e.reason]);
        if (delays.length === 5) { client.close(); resolve(delays); }
      });
    });
  } finally {
    Math.random = random;
  }
}
"""


def test_backoff_doubles_from_retry_up_to_the_cap(static_site: Any) -> None:
    delays = static_site.page.evaluate(BACKOFF_IN_PAGE)
    assert delays == [
        [1, 100, "network"],
        [2, 200, "network"],
        [3, 400, "network"],
        [4, 400, "network"],
        [5, 400, "network"],
    ]


JITTER_IN_PAGE = """
async () => {
  // Clients that never get through, side by side: 8 x 5 delays in the time of 5.
  const runs = Array.from({length: 8}, () => new Promise((resolve) => {
    const fetches = [];
    const errors = [];
    const client = new SSEKeepalive("/never", {
      retry: 100,
      maxRetry: 400,
      fetch: () => {
        fetches.push(performance.now());
        if (fetches.length > 5) {
          client.close();
          resolve(errors.map((e, i) => ({...e, waited: fetches[i + 1] - e.at})));
        }
        return Promise.reject(new TypeError("Failed to fetch"));
      },
    });
    // "error" comes before the retry is scheduled: `waited` is never short.
    client.addEventListener("error", (e) => {
      errors.push({attempt: e.attempt, delay: e.delay, at: performance.now()});
    });
  }));
  return (await Promise.all(runs)).flat();
}
"""


def test_backoff_delays_are_spread_over_the_full_jitter_range(static_site: Any) -> None:
    samples = static_site.page.evaluate(JITTER_IN_PAGE)
    ceilings = {1: 100, 2: 200, 3: 400, 4: 400, 5: 400}
    assert sorted(sample["attempt"] for sample in samples) == sorted(list(ceilings) * 8)
    for sample in samples:
        assert 0 <= sample["delay"] <= ceilings[sample["attempt"]], sample
        assert sample["waited"] >= sample["delay"] - 2, sample  # the delay is the real one
    # Uniform over [0, ceiling]: 40 draws are all distinct but for a few
    # collisions, and all of them land above 40 % (or below 60 %) of their
    # range with probability 0.6 ** 40, about 1e-9. A constant factor, or
    # delays at the ceilings, fail at once.
    assert len({sample["delay"] for sample in samples}) >= 20, samples
    fractions = [sample["delay"] / ceilings[sample["attempt"]] for sample in samples]
    assert min(fractions) < 0.4, fractions
    assert max(fractions) > 0.6, fractions


def test_connect_timeout_when_no_answer_comes(foreign_page: Any) -> None:
    # A server that accepts connections (the kernel does, into the backlog)
    # and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/stream"
        result = foreign_page.evaluate(
            """async (url) => {
              const client = new SSEKeepalive(url, {connectTimeout: 500, retry: 60000});
              const started = performance.now();
              return await new Promise((resolve) => client.addEventListener("error", (e) => {
                client.close();
                resolve({reason: e.reason, willRetry: e.willRetry,
                         after: performance.now() - started});
              }));
            }""",
            url,
        )
        # The request did reach the server, and the client hung up on it.
        silent.settimeout(5)
        received = b""
        try:
            connection, _ = silent.accept()
            with connection:
                connection.settimeout(5)
                while chunk := connection.recv(65536):
                    received += chunk
        except TimeoutError:
            raise AssertionError(
                f"after {result} the request was not sent, or left open: {received!r}"
            ) from None
    assert received.startswith(b"GET /stream HTTP/1.1\r\n"), received
    assert result["reason"] == "timeout"
    assert result["willRetry"] is True
    # About connectTimeout: not before it, and not much later (twice would be 1 s).
    assert 495 <= result["after"] <= 900, result
