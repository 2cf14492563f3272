"""One scenario, both clients: blocking handles on SSEClient and AsyncSSEClient.

An :class:`AsyncHandle` runs its :class:`AsyncSSEClient` in an event loop
thread (an anyio blocking portal): the client is entered and left in one
task, as ``async with`` does, and every call is a task of that loop. So a
scenario written once against :class:`Handle` drives both clients, and the
async one really runs on asyncio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio.from_thread import BlockingPortal

from flask_sse_keepalive.client import (
    AsyncSSEClient,
    ClientEvent,
    Closed,
    Opened,
    Reconnect,
    SSEClient,
)


@dataclass
class Record:
    """What a client's hooks heard, with the (monotonic) time."""

    kind: str
    at: float
    info: Any


@dataclass
class Hooks:
    """Records every hook call of one client."""

    records: list[Record] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def options(self) -> dict[str, Callable[..., None]]:
        return {"on_open": self._open, "on_close": self._close, "on_reconnect": self._reconnect}

    def _add(self, kind: str, info: Any) -> None:
        with self._lock:
            self.records.append(Record(kind, time.monotonic(), info))

    def _open(self, info: Opened) -> None:
        self._add("open", info)

    def _close(self, info: Closed) -> None:
        self._add("close", info)

    def _reconnect(self, info: Reconnect) -> None:
        self._add("reconnect", info)

    def of(self, kind: str) -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.kind == kind]

    def opened(self) -> list[Opened]:
        return [r.info for r in self.of("open")]

    def closed(self) -> list[Closed]:
        return [r.info for r in self.of("close")]

    def reconnects(self) -> list[Reconnect]:
        return [r.info for r in self.of("reconnect")]


class Handle(Protocol):
    client: SSEClient | AsyncSSEClient
    hooks: Hooks

    def receive(self, timeout: float | None) -> ClientEvent | None: ...

    def wait_subscribed(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class SyncHandle:
    def __init__(self, url: str, hooks: Hooks, **options: Any) -> None:
        self.hooks = hooks
        self.client = SSEClient(url, **{**hooks.options(), **options})

    def receive(self, timeout: float | None) -> ClientEvent | None:
        return self.client.receive(timeout)

    def wait_subscribed(self, timeout: float) -> None:
        self.client.wait_subscribed(timeout)

    def close(self) -> None:
        self.client.close()


class AsyncHandle:
    def __init__(self, portal: BlockingPortal, url: str, hooks: Hooks, **options: Any) -> None:
        self.hooks = hooks
        self.portal = portal
        self.client = AsyncSSEClient(url, **{**hooks.options(), **options})
        self._context: AbstractContextManager[Any] = portal.wrap_async_context_manager(self.client)
        self._context.__enter__()
        self._left = False

    def receive(self, timeout: float | None) -> ClientEvent | None:
        return self.portal.call(self.client.receive, timeout)

    def wait_subscribed(self, timeout: float) -> None:
        self.portal.call(self.client.wait_subscribed, timeout)

    def close(self) -> None:
        # Any thread: aclose() runs as a task of the client's loop.
        self.portal.call(self.client.aclose)

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._context.__exit__(None, None, None)


def collect(handle: Handle, count: int, timeout: float, what: str = "events") -> list[ClientEvent]:
    """Receive ``count`` events, failing after ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    events: list[ClientEvent] = []
    while len(events) < count:
        remaining = deadline - time.monotonic()
        try:
            event = handle.receive(max(0.01, remaining))
        except TimeoutError:
            raise AssertionError(
                f"{len(events)} of {count} {what} within {timeout} s; "
                f"last: {events[-1:]}, hooks: {handle.hooks.records[-5:]}"
            ) from None
        assert event is not None, f"the client closed after {len(events)} {what}"
        events.append(event)
    return events


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.02)
    return value
