"""The browser client against real servers (gunicorn -k gevent): reconnects,
the heartbeat watchdog, status codes, resume, stream-reset, persistence."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from .helpers import TRACK_JS, wait_in_page, wait_until

APP = "tests.apps.browser_app:app"


def start_client(
    page: Any, server: Any, path: str, options: dict[str, Any] | None = None, types: Any = None
) -> None:
    """Open the test page and start ``window.client`` on ``path``, tracked in ``window.log``."""
    page.goto(server.url + "/")
    page.evaluate(TRACK_JS)
    page.evaluate(
        """([path, options, types]) => {
          window.client = new SSEKeepalive(path, options);
          window.log = track(window.client, types);
        }""",
        [path, options or {}, types or ["message"]],
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def publish(
    server: Any, items: list[Any], channel: str = "default", event: str | None = None
) -> list[str]:
    body = json.dumps({"items": items, "channel": channel, "event": event}).encode()
    request = urllib.request.Request(
        server.url + "/control/publish", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return list(json.load(response)["ids"])


def test_watchdog_reconnects_a_silent_connection(page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP)
    # The route announces a 0.4 s heartbeat interval, sends one event, then nothing.
    start_client(page, server, "/raw/stall?key=w&interval=0.4")
    seen = wait_until(
        lambda: len(get_json(server.url + "/control/requests?key=w")) >= 2 and
        get_json(server.url + "/control/requests?key=w"),
        timeout=10,
        what="a second connection after the first went silent",
    )  # fmt: skip
    wait_in_page(page, "log.events.length >= 2", 10, "the event of the second connection")
    log = page.evaluate("log")
    assert page.evaluate("client.heartbeatInterval") == 0.4
    watchdog = [error for error in log["errors"] if error["reason"] == "watchdog"]
    assert watchdog, f"no watchdog error: {log['errors']}"
    opened = next(state["t"] for state in log["states"] if state["state"] == "open")
    silent_ms = watchdog[0]["t"] - opened
    # 2.5 intervals = 1 s; a loose upper bound for a loaded machine.
    assert 800 <= silent_ms <= 4000, silent_ms
    # The new connection resumes from the event the silent one delivered.
    assert seen[1]["last_event_id"] == "stall-1"
    assert [event["data"] for event in log["events"]][:2] == ["1", "2"]


def test_retry_after_is_honoured_on_503(page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP)
    # A 100 ms retry would bring the client back at once if it ignored Retry-After.
    start_client(page, server, "/raw/status/503?key=r&retry_after=2", {"retry": 100})
    wait_in_page(page, "client.readyState === 1", 15, "the client to connect after the 503")
    log = page.evaluate("log")
    refused = log["errors"][0]
    assert refused["status"] == 503
    assert refused["willRetry"] is True
    assert refused["delay"] >= 2000
    assert log["events"][0]["data"] == "connected"
    first, second = get_json(server.url + "/control/requests?key=r")[:2]
    assert second["time"] - first["time"] >= 1.5


def test_refusals_stop_the_client(page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP)
    cases = [
        # The real stream route: a malformed channel name, and the authorize hook.
        (400, "/stream?channel=bad%20name", "invalid channel name"),
        (403, "/stream?channel=forbidden", "Not allowed"),
        # Statuses the stream route does not produce itself here.
        (401, "/raw/status/401?key=s401&times=99", "refused with 401"),
        (404, "/raw/status/404?key=s404&times=99", "refused with 404"),
    ]
    for status, path, reason in cases:
        start_client(page, server, path, {"retry": 100})
        wait_in_page(page, "client.readyState === 2", 10, f"the client to stop on {status}")
        log = page.evaluate("log")
        assert [error["status"] for error in log["errors"]] == [status]
        assert log["errors"][0]["willRetry"] is False
        assert reason in log["errors"][0]["message"]
        assert [state["state"] for state in log["states"]] == ["connecting", "closed"]
    # Nothing came back after the stop (a 100 ms retry would have by now).
    time.sleep(0.5)
    assert len(get_json(server.url + "/control/requests?key=s401")) == 1
    assert len(get_json(server.url + "/control/requests?key=s404")) == 1


def test_first_connect_resumes_from_the_last_event_id_option(page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP)
    ids = publish(server, ["one", "two", "three"], channel="r")
    headers: list[str | None] = []
    page.on(
        "request",
        lambda request: (
            headers.append(request.headers.get("last-event-id"))
            if "/stream" in request.url and not request.url.endswith(".js")
            else None
        ),
    )
    start_client(page, server, "/stream?channel=r", {"lastEventId": ids[0]})
    wait_in_page(page, "log.events.length >= 2", 10, "the replay of two events")
    publish(server, ["four"], channel="r")
    wait_in_page(page, "log.events.length >= 3", 10, "a live event after the replay")
    events = page.evaluate("log.events")
    assert [event["data"] for event in events] == ["two", "three", "four"]
    assert headers == [ids[0]]
    assert page.evaluate("client.lastEventId") == events[-1]["id"]


def test_stream_reset_reaches_the_page(page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP)
    ids = publish(server, ["before"], channel="x")
    page.goto(server.url + "/")
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


def test_persisted_id_resumes_after_a_reload(page: Any, gunicorn: Any) -> None:
    server = gunicorn(APP)
    start_client(page, server, "/stream?channel=p", {"persist": True})
    wait_in_page(page, "client.readyState === 1", 10, "the first connection")
    publish(server, ["seen"], channel="p")
    wait_in_page(page, "log.events.length === 1", 10, "the first event")
    page.goto("about:blank")  # the page (and its stream) goes away
    publish(server, ["missed-1", "missed-2"], channel="p")
    page.goto(server.url + "/")  # same tab: same sessionStorage
    page.evaluate(TRACK_JS)
    page.evaluate(
        """() => {
          window.client = new SSEKeepalive("/stream?channel=p", {persist: true});
          window.log = track(window.client);
        }"""
    )
    wait_in_page(page, "log.events.length >= 2", 10, "the events missed while away")
    assert [event["data"] for event in page.evaluate("log.events")] == ["missed-1", "missed-2"]


def test_heartbeats_and_resume_across_server_ended_streams(page: Any, gunicorn: Any) -> None:
    server = gunicorn(
        APP,
        env={
            "SSE_HEARTBEAT_INTERVAL": "0.3",
            "SSE_RETRY_MS": "200",
            # Every stream ends after a second: the client must resume each time.
            "SSE_MAX_STREAM_SECONDS": "1",
        },
    )
    start_client(page, server, "/stream?channel=h")
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


def test_connect_timeout_when_no_answer_comes(static_site: Any) -> None:
    result = static_site.page.evaluate(
        """async () => {
          const client = new SSEKeepalive("/never", {
            connectTimeout: 300, retry: 60000, fetch: () => new Promise(() => {}),
          });
          const started = Date.now();
          return await new Promise((resolve) => client.addEventListener("error", (e) => {
            client.close();
            resolve({reason: e.reason, after: Date.now() - started});
          }));
        }"""
    )
    assert result["reason"] == "timeout"
    assert result["after"] >= 250
