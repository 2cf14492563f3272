"""The browser client's ``token`` option against a real server that requires
subscribe tokens: a function called before every connect (a page's own
endpoint gives a fresh token), one more call after a ``401``, then a stop."""

from __future__ import annotations

from typing import Any

from .helpers import APP, TRACK_JS, open_page, publish, requests_seen, wait_in_page

START = """([path, expiresIn, badFirst, alwaysBad]) => {
  window.asked = 0;
  const token = async () => {
    window.asked += 1;
    if (alwaysBad || (badFirst && window.asked === 1)) return "not-a-token";
    const response = await fetch("/control/token", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({channels: ["a"], expires_in: expiresIn}),
    });
    return (await response.json()).token;
  };
  window.client = new SSEKeepalive(path, {token, retry: 100});
  window.log = track(window.client, ["message"]);
}"""


def start(page: Any, server: Any, build: str, key: str, *, expires_in: float = 600,
          bad_first: bool = False, always_bad: bool = False) -> None:  # fmt: skip
    open_page(page, server, build)
    page.evaluate(TRACK_JS)
    page.evaluate(START, [f"/stream?channel=a&key={key}", expires_in, bad_first, always_bad])


def test_a_token_function_keeps_a_stream_going_across_expiries(
    page: Any, gunicorn: Any, build: str
) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true", "SSE_HEARTBEAT_INTERVAL": "1"})
    start(page, server, build, "renew", expires_in=1.5)
    wait_in_page(page, "client.readyState === 1", 10, "the stream to open")
    publish(server, ["one"], channel="a")
    wait_in_page(page, "log.events.length >= 1", 10, "the first event")
    # Each token lives 1.5 s: the stream ends, the page fetches a new one.
    wait_in_page(page, "window.asked >= 3", 15, "two renewals")
    publish(server, ["two"], channel="a")
    wait_in_page(page, "log.events.length >= 2", 10, "the event after the renewals")
    assert [e["data"] for e in page.evaluate("log.events")] == ["one", "two"]
    seen = requests_seen(server, "renew")
    assert all(request["token"] for request in seen), "every connect carried a token"
    assert len({request["token"] for request in seen}) == len(seen), "a fresh one each time"
    assert all(request["status"] == 200 for request in seen)


def test_a_401_calls_the_function_once_more(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true"})
    start(page, server, build, "once-more", bad_first=True)
    wait_in_page(page, "client.readyState === 1", 10, "the stream to open with the second token")
    assert [request["status"] for request in requests_seen(server, "once-more")] == [401, 200]


def test_a_second_401_in_a_row_stops_the_client(page: Any, gunicorn: Any, build: str) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true"})
    start(page, server, build, "stop", always_bad=True)
    wait_in_page(page, "client.readyState === 2", 10, "the client to stop")
    page.wait_for_timeout(500)  # a 100 ms retry would have come by now
    assert [request["status"] for request in requests_seen(server, "stop")] == [401, 401]
    errors = page.evaluate("log.errors")
    assert errors[-1]["status"] == 401 and errors[-1]["willRetry"] is False
    assert "Token refused" in errors[-1]["message"]
