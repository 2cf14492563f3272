"""Small helpers shared by the browser tests."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: An origin that never reaches the network: every request to it is answered
#: by ``page.route`` (nothing listens on the discard port).
FAKE_ORIGIN = "http://127.0.0.1:9"


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns a truthy value, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (gunicorn workers of a master)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def wait_in_page(page: Any, expression: str, timeout: float, what: str, arg: Any = None) -> Any:
    """Wait until ``expression`` (a JS function body's value) is truthy in the page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(expression, arg=arg, timeout=timeout * 1000).json_value()
    except PlaywrightTimeout:
        raise TimeoutError(f"waited {timeout} s in the page for {what} ({expression})") from None


#: ``window.track(client)`` records what a client reports, with wall-clock
#: times (ms) comparable with the server's.
TRACK_JS = """() => {
window.track = (client, types = ["message"]) => {
  const log = {states: [], errors: [], events: []};
  client.addEventListener("statechange", (e) => log.states.push(
    {state: e.state, t: Date.now(), reason: e.reason ?? null, status: e.status ?? null}));
  client.addEventListener("error", (e) => log.errors.push({
    t: Date.now(), reason: e.reason ?? null, status: e.status ?? null,
    message: e.message ?? null, delay: e.delay ?? null, willRetry: e.willRetry}));
  for (const type of types) {
    client.addEventListener(type, (e) => log.events.push(
      {type: e.type, data: e.data, id: e.lastEventId, t: Date.now()}));
  }
  return log;
};
}"""


#: The test app for the client: the real stream route and misbehaving ones.
APP = "tests.apps.browser_app:app"


def track_client(
    page: Any, url: str, options: dict[str, Any] | None = None, types: Any = None
) -> None:
    """Start ``window.client`` on ``url`` in the page as it is, tracked in ``window.log``."""
    page.evaluate(TRACK_JS)
    page.evaluate(
        """([url, options, types]) => {
          window.client = new SSEKeepalive(url, options);
          window.log = track(window.client, types);
        }""",
        [url, options or {}, types or ["message"]],
    )


def open_page(page: Any, server: Any, build: str) -> None:
    """Open the test app's page, with the client loaded as ``build`` says."""
    page.goto(f"{server.url}/?build={build}")


def start_client(
    page: Any,
    server: Any,
    build: str,
    path: str,
    options: dict[str, Any] | None = None,
    types: Any = None,
) -> None:
    """Open the test page and start ``window.client`` on ``path``, tracked in ``window.log``."""
    open_page(page, server, build)
    track_client(page, path, options, types)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def requests_seen(server: Any, key: str) -> list[dict[str, Any]]:
    """What the test app recorded of the requests made with ``?key=``."""
    return list(get_json(f"{server.url}/control/requests?key={key}"))


def publish(
    server: Any, items: list[Any], channel: str = "default", event: str | None = None
) -> list[str]:
    body = json.dumps({"items": items, "channel": channel, "event": event}).encode()
    request = urllib.request.Request(
        server.url + "/control/publish", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return list(json.load(response)["ids"])
