"""The browser client on real networks, against gunicorn -k gevent: the
heartbeat it asks for halves after lost lines and doubles back once stable,
within what the server grants; it makes no request while the browser is
offline and reconnects at once when it is back; it fails over to backup URLs
in order, each with its own backoff."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .helpers import (
    APP,
    FAKE_ORIGIN,
    TRACK_JS,
    open_page,
    publish,
    requests_seen,
    track_client,
    wait_in_page,
    wait_until,
)
from .proxy import SilencingProxy


@pytest.fixture
def silencing_proxy() -> Iterator[Any]:
    proxies: list[SilencingProxy] = []

    def start(upstream_port: int) -> SilencingProxy:
        proxies.append(SilencingProxy(upstream_port))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


#: Each time the client leaves a connection: that connection's interval and why.
DROPS_JS = """() => {
  window.drops = [];
  client.addEventListener("reconnecting", (e) => drops.push(
    {interval: client.heartbeatInterval, reason: e.reason, delay: e.delay, t: Date.now()}));
}"""


def test_heartbeat_halves_after_misses_and_doubles_back_once_stable(
    foreign_page: Any, gunicorn: Any, silencing_proxy: Any
) -> None:
    server = gunicorn(
        APP,
        env={
            "SSE_HEARTBEAT_INTERVAL": "1",
            "SSE_HEARTBEAT_MIN": "0.4",
            "SSE_RETRY_MS": "100",
            "SSE_CORS_ORIGINS": FAKE_ORIGIN,
        },
    )
    proxy = silencing_proxy(server.port)
    proxy.silence.set()
    url = f"http://127.0.0.1:{proxy.port}/stream?channel=hb&key=hb"
    # heartbeatMin below the server's minimum: what stops the halving is the
    # server's clamp, which the client must learn from the announcement.
    track_client(foreign_page, url, {"heartbeatMin": 0.1, "stableIntervals": 2})
    foreign_page.evaluate(DROPS_JS)

    # Silenced, each stream's watchdog fires after 2.5 of its intervals:
    # 1 s (the server's default, asked nothing), then half of it, then a
    # quarter, which the server raises to its minimum of 0.4 s.
    wait_until(lambda: len(requests_seen(server, "hb")) >= 4, 20, "four silenced streams")
    proxy.silence.clear()  # the fifth stream gets through
    wait_in_page(foreign_page, "drops.length >= 6", 20, "two doublings after the misses")
    wait_in_page(foreign_page, "client.readyState === 1 && client.heartbeatInterval === 1", 10,
                 "the stream back at the base interval")  # fmt: skip
    # At the base the client stays: two intervals later, no new stream.
    time.sleep(2.5)

    seen = requests_seen(server, "hb")
    drops = foreign_page.evaluate("drops")
    asked = [request["heartbeat"] for request in seen]
    assert asked == [None, "0.5", "0.25", "0.4", "0.4", "0.8", None], (asked, drops)
    assert [(drop["interval"], drop["reason"]) for drop in drops] == [
        (1, "watchdog"),
        (0.5, "watchdog"),
        (0.4, "watchdog"),  # asked 0.25, granted 0.4: the watchdog follows the grant
        (0.4, "watchdog"),
        (0.4, "heartbeat"),
        (0.8, "heartbeat"),
    ], drops
    # The third stream's watchdog waited 2.5 x 0.4 s, not 2.5 x 0.25 s.
    third_silence_ms = drops[2]["t"] - seen[2]["time"] * 1000
    assert third_silence_ms >= 990, third_silence_ms
    # A doubling is a switch, not a failure: at once, with no error event.
    assert [drop["delay"] for drop in drops[4:]] == [0, 0]
    assert [error["reason"] for error in foreign_page.evaluate("log.errors")] == ["watchdog"] * 4
    # Two intervals without a miss (stableIntervals: 2) before each doubling.
    assert drops[4]["t"] - seen[4]["time"] * 1000 >= 2 * 400 - 10
    assert drops[5]["t"] - seen[5]["time"] * 1000 >= 2 * 800 - 10
    assert foreign_page.evaluate("client.state") == "open"


def test_offline_makes_no_request_and_reconnects_when_online(
    page: Any, gunicorn: Any, build: str
) -> None:
    # Streams end after 2 s: the first one ends while the browser is offline.
    server = gunicorn(APP, env={"SSE_MAX_STREAM_SECONDS": "2", "SSE_RETRY_MS": "100"})
    open_page(page, server, build)
    page.evaluate(TRACK_JS)
    page.evaluate(
        """() => {
          window.fetches = [];  // every attempt of either client, through the real fetch
          window.counted = (key) => (url, init) => {
            fetches.push({key, url: String(url), t: Date.now()});
            return fetch(url, init);
          };
          window.client = new SSEKeepalive("/stream?channel=off&key=off", {fetch: counted("off")});
          window.log = track(client);
        }"""
    )
    wait_in_page(page, "client.readyState === 1", 10, "the stream to open")
    publish(server, ["before"], channel="off")  # a resume point
    wait_in_page(page, "log.events.length === 1", 10, "the event before going offline")
    page.context.set_offline(True)
    # A second client, started while offline, must not even try.
    page.evaluate(
        """() => {
          window.late = new SSEKeepalive("/stream?channel=off&key=late", {fetch: counted("late")});
          window.lateLog = track(late);
        }"""
    )
    wait_in_page(page, "client.state === 'offline'", 10, "the stream to end while offline")
    ids = publish(server, ["while offline"], channel="off")
    fetches_before = page.evaluate("fetches.length")
    # With a 100 ms retry a client that kept trying would try ten times here.
    time.sleep(1.2)
    assert page.evaluate("fetches.length") == fetches_before == 1
    assert [r["status"] for r in requests_seen(server, "off")] == [200]
    assert requests_seen(server, "late") == []
    assert [s["state"] for s in page.evaluate("lateLog.states")] == ["connecting", "offline"]

    page.context.set_offline(False)
    online_at = time.time() * 1000
    wait_in_page(page, "client.readyState === 1 && late.readyState === 1", 10,
                 "both clients to connect once online")  # fmt: skip
    wait_in_page(page, "log.events.length >= 2", 10, "the event published while offline")
    log = page.evaluate("log")
    states = [(s["state"], s["reason"]) for s in log["states"]]
    assert states == [
        ("connecting", None),
        ("open", None),
        ("offline", "eof"),
        ("reconnecting", "online"),
        ("open", None),
    ], states
    assert [e["reason"] for e in log["errors"]] == ["eof"]
    assert log["errors"][0]["willRetry"] is True
    # At once: a jitter of at most half a second, and no backoff.
    fetches = page.evaluate("fetches")
    again = [f for f in fetches if f["key"] == "off"][1]
    assert again["t"] - online_at <= 500 + 700, (again, online_at)
    assert [f["key"] for f in fetches].count("late") == 1
    # The reconnect resumed: what was published while offline arrived.
    assert [(e["data"], e["id"]) for e in log["events"]][1:] == [("while offline", ids[0])]
    assert page.evaluate("client.stats.reconnects") == 1


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


RECORD_FETCHES_JS = """([primary, options]) => {
  Math.random = () => 0.999;  // the top of each jitter range: the ceilings themselves
  window.fetches = [];
  options.fetch = (url, init) => {
    fetches.push({url: String(url), t: performance.now()});
    return fetch(url, init);
  };
  window.client = new SSEKeepalive(primary, options);
  window.log = track(client);
}"""


def test_failover_tries_each_url_in_order_with_its_own_backoff(
    page: Any, gunicorn: Any, build: str
) -> None:
    server = gunicorn(APP)
    open_page(page, server, build)
    page.evaluate(TRACK_JS)
    refused = f"http://127.0.0.1:{closed_port()}/stream?channel=f"
    urls = [
        f"{server.url}/raw/status/502?key=fa&times=99",  # answers 502, always
        refused,  # refuses the connection
        f"{server.url}/stream?channel=f&key=fc",  # works
    ]
    options = {"failover": urls[1:], "failoverAfter": 2, "retry": 100}
    page.evaluate(RECORD_FETCHES_JS, [urls[0], options])
    wait_in_page(page, "client.readyState === 1", 15, "the client to reach the third URL")

    fetches = page.evaluate("fetches")
    errors = page.evaluate("log.errors")
    assert [f["url"] for f in fetches] == [urls[0], urls[0], urls[1], urls[1], urls[2]]
    assert [(e["reason"], e["status"]) for e in errors] == [
        ("http", 502),
        ("http", 502),
        ("network", None),
        ("network", None),
    ]
    reconnecting = [s for s in page.evaluate("log.states") if s["state"] == "reconnecting"]
    assert len(reconnecting) == 4
    # Each URL's own backoff: 100 ms, then the next URL starts again at
    # 100 ms (a shared count would make it 200), grows to 200 ms, and the
    # third starts at 100 ms again (not 800).
    delays = [e["delay"] for e in errors]
    assert delays == [100, 100, 200, 100], delays
    for error, before, after in zip(errors, fetches, fetches[1:], strict=False):
        assert after["t"] - before["t"] >= error["delay"] - 2, (error, before, after)
    assert [r["status"] for r in requests_seen(server, "fa")] == [502, 502]
    assert [r["status"] for r in requests_seen(server, "fc")] == [200]
    assert page.evaluate("[client.currentUrl, client.url, client.stats.failovers]") == [
        urls[2],
        urls[0],
        2,
    ]


FAILOVER_CYCLE_IN_PAGE = """
async () => {
  const random = Math.random;
  Math.random = () => 0.999;
  try {
    const tried = [];
    const client = new SSEKeepalive("/primary", {
      failover: ["/backup"],
      failoverAfter: 2,
      retry: 100,
      maxRetry: 10000,
      fetch: (url) => {
        tried.push(new URL(url).pathname);
        return Promise.reject(new TypeError("Failed to fetch"));
      },
    });
    return await new Promise((resolve) => {
      const delays = [];
      client.addEventListener("reconnecting", (e) => {
        delays.push([new URL(e.url).pathname, e.delay, e.failover]);
        if (delays.length === 6) { client.close(); resolve({tried, delays}); }
      });
    });
  } finally {
    Math.random = random;
  }
}
"""


def test_failover_wraps_around_and_each_url_keeps_its_backoff(static_site: Any) -> None:
    result = static_site.page.evaluate(FAILOVER_CYCLE_IN_PAGE)
    assert result["tried"] == ["/primary", "/primary", "/backup", "/backup", "/primary", "/primary"]
    assert result["delays"] == [
        ["/primary", 100, False],
        ["/backup", 100, True],  # the backup's first wait
        ["/backup", 200, False],
        ["/primary", 200, True],  # back at the primary: its own count goes on
        ["/primary", 400, False],
        ["/backup", 400, True],
    ]
