"""The demo app in Chromium, served by gunicorn -k gevent: chat between two
pages, a worker killed mid-stream, and the screenshot used by the docs
(``SSE_UPDATE_SCREENSHOT=1`` regenerates that one, see below)."""

from __future__ import annotations

import json
import os
import signal
import struct
import threading
import urllib.request
from pathlib import Path
from typing import Any

from .helpers import child_pids, wait_in_page, wait_until

APP = "demo.app:app"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "_static" / "demo.png"
SCREENSHOT_SIZE = (1280, 760)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_chat_message_reaches_another_page(context: Any, gunicorn: Any) -> None:
    server = gunicorn(APP, env={"DEMO_TICK_SECONDS": "0.3"})
    alice, bob = context.new_page(), context.new_page()
    for page in (alice, bob):
        page.goto(server.url + "/")
        wait_in_page(page, "demo.client && demo.client.readyState === 1", 10, "the stream to open")
    alice.fill("#chat-name", "alice")
    alice.fill("#chat-text", "hello from the other window")
    alice.click("#chat-form button")
    for page in (bob, alice):
        page.locator("#messages li", has_text="hello from the other window").wait_for(
            timeout=10_000
        )
    assert bob.locator("#messages li strong").all_inner_texts() == ["alice"]
    # The ticker runs too: ticks reach both pages.
    for page in (alice, bob):
        wait_in_page(page, "Number(document.querySelector('#tick-count').textContent) >= 1", 10,
                     "a tick from the demo's ticker")  # fmt: skip


def test_killed_worker_resumes_without_gap(page: Any, gunicorn: Any, redis_server: Any) -> None:
    redis = redis_server()
    broker_url = f"redis://127.0.0.1:{redis.port}/0"
    server = gunicorn(
        APP,
        env={
            "SSE_BROKER_URL": broker_url,
            "SSE_RETRY_MS": "300",
            "SSE_HEARTBEAT_INTERVAL": "1",
            # The test is the ticker here, from its own process, as a
            # publisher outside the web workers would be.
            "DEMO_TICKER": "0",
        },
    )
    from demo.app import create_app, sse

    publisher_app = create_app({"SSE_BROKER_URL": broker_url, "DEMO_TICKER": "0"})
    page.goto(server.url + "/")
    wait_in_page(page, "demo.client && demo.client.readyState === 1", 10, "the stream to open")
    [worker] = child_pids(server.pid)
    assert get_json(server.url + "/health")["pid"] == worker

    sent: list[int] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def publish_ticks() -> None:
        try:
            with publisher_app.app_context():
                while not stop.is_set():
                    n = len(sent) + 1
                    quote = {"symbol": "ACME", "price": 100 + n / 100, "change": 0.01}
                    sse.publish(
                        {"n": n, "quotes": [quote], "time": 0}, event="tick", channel="ticker"
                    )
                    sent.append(n)
                    stop.wait(0.02)
        except BaseException as error:  # reported by the test, not lost in the thread
            failures.append(error)

    publisher = threading.Thread(target=publish_ticks, name="tick-publisher")
    publisher.start()
    try:
        wait_in_page(page, "demo.events.length >= 20", 10, "live ticks before the kill")
        os.kill(worker, signal.SIGKILL)
        wait_in_page(page, "demo.states.includes('reconnecting')", 10, "the page to notice")
        wait_in_page(page, "demo.client.readyState === 1", 20, "the page to reconnect")
        wait_until(
            lambda: child_pids(server.pid) and child_pids(server.pid) != [worker],
            10,
            "gunicorn to replace the killed worker",
        )
        count = len(sent)
        wait_in_page(page, f"demo.events.length >= {count + 20}", 10, "live ticks after it")
    finally:
        stop.set()
        publisher.join(timeout=10)
    assert not failures, failures
    wait_in_page(page, f"demo.events.length >= {len(sent)}", 15, f"all {len(sent)} ticks")
    events = page.evaluate("demo.events")
    received = [json.loads(event["data"])["n"] for event in events if event["type"] == "tick"]
    assert received == sent, "a gap, duplicate or reordering across the worker's death"
    states = page.evaluate("demo.states")
    assert states[:2] == ["connecting", "open"]
    assert "reconnecting" in states[2:]
    assert states[-1] == "open"
    assert page.evaluate("demo.client.stats.resets") == 0
    assert get_json(server.url + "/health")["pid"] != worker


def png_size(image: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header chunk (which comes first)."""
    assert image[:8] == b"\x89PNG\r\n\x1a\n", image[:8]
    assert image[12:16] == b"IHDR", image[8:16]
    width, height = struct.unpack(">II", image[16:24])
    return width, height


def test_screenshot_for_the_docs(page: Any, gunicorn: Any, tmp_path: Path) -> None:
    """Renders the board with some traffic into a PNG under ``tmp_path``.

    The image in the docs (``docs/_static/demo.png``) is regenerated on
    request only, never by a plain test run::

        SSE_UPDATE_SCREENSHOT=1 python -m pytest tests/browser/test_demo.py -k screenshot
    """
    server = gunicorn(APP, env={"DEMO_TICK_SECONDS": "1", "SSE_HEARTBEAT_INTERVAL": "0.4"})
    page.set_viewport_size({"width": SCREENSHOT_SIZE[0], "height": SCREENSHOT_SIZE[1]})
    page.goto(server.url + "/")
    wait_in_page(page, "demo.client && demo.client.readyState === 1", 10, "the stream to open")
    for name, text in [
        ("ada", "Hello, board!"),
        ("linus", "Killing a worker now; watch the connection panel."),
        ("ada", "Reconnected and nothing missing."),
    ]:
        page.fill("#chat-name", name)
        page.fill("#chat-text", text)
        page.click("#chat-form button")
        page.locator("#messages li", has_text=text).wait_for(timeout=10_000)
    wait_in_page(
        page,
        "demo.client.stats.heartbeats >= 2"
        " && demo.events.filter((e) => e.type === 'tick').length >= 3",
        15,
        "ticks and heartbeats to show",
    )
    page.locator("#chat-text").blur()
    target = tmp_path / "demo.png"
    page.screenshot(path=str(target), animations="disabled")  # no half-faded tick flash
    image = target.read_bytes()
    assert png_size(image) == SCREENSHOT_SIZE
    assert len(image) > 10_000, "a blank page compresses to much less"
    if os.environ.get("SSE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(image)
