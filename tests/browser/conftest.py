"""Fixtures for tests that run the browser client in real Chromium.

Chromium is the Debian one at ``/usr/bin/chromium`` (never downloaded). Without
it or without Playwright these tests are skipped with the reason, unless
``SSE_REQUIRE_BROWSER=1`` (as in CI), where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .helpers import FAKE_ORIGIN

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
CLIENT_JS = ROOT / "flask_sse_keepalive" / "static" / "sse-keepalive.js"
CLIENT_MJS = ROOT / "flask_sse_keepalive" / "static" / "sse-keepalive.mjs"
#: The two ways a page loads the client: the classic script (generated) and
#: the ES module (the source). Client tests run against both.
BUILDS = ("script", "module")


def _unavailable(reason: str) -> None:
    if os.environ.get("SSE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} and SSE_REQUIRE_BROWSER=1")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session; each test gets its own context."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install playwright (no browser download)")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found: apt-get install chromium")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A page whose console errors fail the test (they are client bugs)."""
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    yield new_page
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(params=BUILDS)
def build(request: Any) -> str:
    """``"script"`` or ``"module"``: how the test's page loads the client."""
    return str(request.param)


def client_tag(build: str, directory: str = "") -> str:
    """The HTML that loads the client from ``directory``, as ``window.SSEKeepalive``.

    The module defines no global: the page's own module code exposes what it
    imported, so that tests address both builds alike.
    """
    if build == "script":
        return f'<script src="{directory}/sse-keepalive.js"></script>'
    return (
        f'<script type="module">import SSEKeepalive from "{directory}/sse-keepalive.mjs";'
        " window.SSEKeepalive = SSEKeepalive;</script>"
    )


def page_with_client(build: str) -> str:
    return f"<!doctype html><title>t</title>{client_tag(build)}"


def serve_client(route: Any, path: str, build: str = "script") -> bool:
    """Answer ``path`` of :data:`FAKE_ORIGIN` if it is the page or the client; else ``False``.

    ``/`` loads the client as ``build`` says; ``/blank`` is a page without it.
    """
    if path == "/":
        route.fulfill(status=200, content_type="text/html", body=page_with_client(build))
    elif path == "/blank":
        route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>t</title>")
    elif path in ("/sse-keepalive.js", "/sse-keepalive.mjs"):
        source = CLIENT_JS if path.endswith(".js") else CLIENT_MJS
        route.fulfill(status=200, content_type="text/javascript", body=source.read_bytes())
    else:
        return False
    return True


def fake_origin_path(route: Any) -> str:
    return str(route.request.url[len(FAKE_ORIGIN) :].split("?")[0])


@pytest.fixture
def foreign_page(page: Any, build: str) -> Any:
    """A page at :data:`FAKE_ORIGIN` with the client loaded (as ``build``
    says): every server the test starts is another origin to it (same host,
    another port).

    Chromium takes a page that ``page.route`` served for a public one, and
    asks before it lets a public page reach a loopback address (Local Network
    Access): the permission is granted, as a user would.
    """
    page.context.grant_permissions(["local-network-access"], origin=FAKE_ORIGIN)

    def handle(route: Any) -> None:
        if not serve_client(route, fake_origin_path(route), build):
            route.fulfill(status=404, content_type="text/plain", body="not found")

    page.route(f"{FAKE_ORIGIN}/**", handle)
    page.goto(f"{FAKE_ORIGIN}/")
    return page


@dataclass
class StaticSite:
    """A page at :data:`FAKE_ORIGIN` with the client loaded, served by ``page.route``."""

    page: Any
    #: how the page loaded the client
    build: str
    #: path -> bytes answered as ``text/event-stream``
    bodies: dict[str, bytes] = field(default_factory=dict)
    #: every request the page made: path, url, headers
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module", params=BUILDS)
def static_site(browser: Any, request: Any) -> Iterator[StaticSite]:
    """The client in a page whose every request is answered in-process (no
    server), once per build.

    Shared by the tests of a module (pages are cheap to use, slower to make);
    tests use distinct body paths.
    """
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    site = StaticSite(page, request.param)

    def handle(route: Any) -> None:
        sent = route.request
        path = fake_origin_path(route)
        site.requests.append({"path": path, "headers": sent.headers, "url": sent.url})
        if serve_client(route, path, site.build):
            return
        if path in site.bodies:
            route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"},
                body=site.bodies[path],
            )
        else:
            route.fulfill(status=404, content_type="text/plain", body="not found")

    try:
        page.route(f"{FAKE_ORIGIN}/**", handle)
        page.goto(f"{FAKE_ORIGIN}/")
        yield site
    finally:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"
