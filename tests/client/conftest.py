"""Fixtures for the Python client's tests.

``open_client`` is parametrized: every test that uses it runs once with
:class:`SSEClient` and once with :class:`AsyncSSEClient` (on asyncio, in a
loop thread). Clients, servers and relays a test makes are closed after it,
and every reader thread must be gone within a few seconds of that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from tests.redis.conftest import publisher, redis_url  # noqa: F401 (fixtures)

from .drivers import AsyncHandle, Handle, Hooks, SyncHandle
from .relay import FlakyRelay
from .scripted import Handler, ScriptedServer

READER_THREAD = "sse-client-reader"


def reader_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == READER_THREAD}


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_client(flavour: str) -> Iterator[Callable[..., Handle]]:
    """``open_client(url, **options)``: a :class:`Handle` on a new client."""
    before = reader_threads()
    handles: list[Handle] = []
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal()) if flavour == "async" else None

        def open_(url: str, **options: Any) -> Handle:
            hooks = Hooks()
            if portal is None:
                handle: Handle = SyncHandle(url, hooks, **options)
            else:
                handle = AsyncHandle(portal, url, hooks, **options)
            handles.append(handle)
            return handle

        yield open_
        for handle in handles:
            handle.close()
            if isinstance(handle, AsyncHandle):
                handle.leave()
    deadline = time.monotonic() + 5
    while reader_threads() - before:
        assert time.monotonic() < deadline, "reader threads outlived their clients by 5 s"
        time.sleep(0.05)


@pytest.fixture
def scripted() -> Iterator[Callable[[Handler], ScriptedServer]]:
    """``scripted(handler)``: a :class:`ScriptedServer` on a free loopback port."""
    servers: list[ScriptedServer] = []

    def start(handler: Handler) -> ScriptedServer:
        servers.append(ScriptedServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def relay() -> Iterator[Callable[..., FlakyRelay]]:
    """``relay(upstream_port, **options)``: a :class:`FlakyRelay` in front of a server."""
    relays: list[FlakyRelay] = []

    def start(port: int, **options: Any) -> FlakyRelay:
        relays.append(FlakyRelay(port, **options))
        return relays[-1]

    yield start
    for item in relays:
        item.close()
