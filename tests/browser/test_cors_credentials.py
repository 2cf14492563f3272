"""Cross-origin streams with cookies in real Chromium: ``SSE_CORS_ORIGINS``
with ``SSE_CORS_CREDENTIALS`` lets a page on another origin open
``new EventSource(url, {withCredentials: true})``, send its cookie and read
the events; without the credentials setting the browser refuses the stream.

The page comes from a small HTTP server of its own and the stream from a
real ``gunicorn -k gevent``, on two ports of 127.0.0.1: two origins of one
site, so Chromium sends the host's cookies on a credentialed request (as it
does from ``app.example.com`` to ``api.example.com``). Both are on loopback,
so Chromium's local network access rules let the page reach the stream.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.wire import RawStream

from .helpers import wait_in_page, wait_until

APP = "tests.apps.cors_app:app"
COOKIE = "s3cret"


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[str]:
    """The origin of a page that is not the stream server's."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def browser_requests(server: Any) -> list[dict[str, Any]]:
    """The ``Origin`` and cookie of each request for the page's stream (channel
    ``a``; the header checks here ask for channel ``probe``)."""
    seen = get_json(server.url + "/control/seen")
    return [{"origin": s["origin"], "cookie": s["cookie"]} for s in seen if s["channel"] == "a"]


def publish(server: Any, data: str) -> None:
    request = urllib.request.Request(
        server.url + "/control/publish",
        json.dumps({"data": data, "channel": "a"}).encode(),
        {"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5).close()


def open_page(page: Any, origin: str, server: Any, with_credentials: bool) -> None:
    """A page at ``origin``, with the server's cookie in the browser, opens
    an EventSource on the server."""
    page.context.add_cookies([{"name": "session", "value": COOKIE, "url": server.url}])
    page.goto(f"{origin}/")
    page.evaluate(
        """([url, withCredentials]) => {
          window.got = [];
          window.errors = 0;
          window.source = new EventSource(url, {withCredentials});
          source.onmessage = (event) => got.push(event.data);
          source.onerror = () => { errors += 1; };
        }""",
        [f"{server.url}/stream?channel=a", with_credentials],
    )


def receives_events(page: Any, server: Any) -> None:
    wait_in_page(page, "source.readyState === 1", 10, "the stream to open")
    publish(server, "across origins")
    wait_in_page(page, "got.length === 1", 10, "the event")
    assert page.evaluate("got") == ["across origins"]
    assert page.evaluate("errors") == 0


def test_with_credentials_the_page_sends_its_cookie_and_reads_events(
    page, gunicorn, origin
) -> None:
    server = gunicorn(APP, env={"SSE_CORS_ORIGINS": origin, "SSE_CORS_CREDENTIALS": "true"})
    open_page(page, origin, server, with_credentials=True)
    receives_events(page, server)
    assert browser_requests(server) == [{"origin": origin, "cookie": COOKIE}]
    headers = RawStream(server.port, "/stream?channel=probe", {"Origin": origin}).headers
    assert headers["access-control-allow-origin"] == origin
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["vary"] == "Origin"


def test_without_with_credentials_the_cookie_stays_home(page, gunicorn, origin) -> None:
    server = gunicorn(APP, env={"SSE_CORS_ORIGINS": origin, "SSE_CORS_CREDENTIALS": "true"})
    open_page(page, origin, server, with_credentials=False)
    receives_events(page, server)
    assert browser_requests(server) == [{"origin": origin, "cookie": None}]


def test_without_the_credentials_setting_the_browser_refuses_the_stream(
    page, gunicorn, origin
) -> None:
    server = gunicorn(APP, env={"SSE_CORS_ORIGINS": origin})
    open_page(page, origin, server, with_credentials=True)
    # The request went out (with the cookie), but the page may not read the answer.
    wait_until(lambda: browser_requests(server), 10, "the browser's stream request")
    assert browser_requests(server) == [{"origin": origin, "cookie": COOKIE}]
    wait_in_page(page, "errors >= 1 && source.readyState === 2", 10, "the browser to refuse")
    publish(server, "not for this page")
    page.wait_for_timeout(500)
    assert page.evaluate("got") == []
    headers = RawStream(server.port, "/stream?channel=probe", {"Origin": origin}).headers
    assert headers["access-control-allow-origin"] == origin
    assert "access-control-allow-credentials" not in headers


def test_a_wildcard_with_credentials_lets_any_origin_read_with_cookies(
    page, gunicorn, origin
) -> None:
    # "*" with credentials echoes whatever Origin asks: every site on the web
    # may read the streams with the user's cookies.
    server = gunicorn(APP, env={"SSE_CORS_ORIGINS": "*", "SSE_CORS_CREDENTIALS": "true"})
    open_page(page, origin, server, with_credentials=True)
    receives_events(page, server)
    assert browser_requests(server) == [{"origin": origin, "cookie": COOKIE}]
    headers = RawStream(
        server.port, "/stream?channel=probe", {"Origin": "https://evil.example"}
    ).headers
    assert headers["access-control-allow-origin"] == "https://evil.example"
    assert headers["access-control-allow-credentials"] == "true"
