"""The words between a session and its I/O: what a reader hands over, and
what the session asks its I/O class to do next.

A reader (a thread for :class:`~.sync.SSEClient`, a task for
:class:`~.aio.AsyncSSEClient`) makes one connection attempt and hands over
its :class:`Head`, then :class:`Chunk` after chunk, then an :class:`End`.
The I/O class loops on :meth:`Session._step <.session.Session._step>`:
:class:`Sleep`, :class:`Wait` for the reader's next item, ``"connect"``, or
stop with ``"done"``, ``"closed"`` or ``"timeout"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import httpx

#: Body chunks a reader may hold for a client that is busy; beyond that the
#: socket, and then the server, wait (a flask-sse-keepalive server drops a
#: stream that stays stuck, and the client resumes it).
CHANNEL_SIZE = 64


@dataclass(frozen=True)
class Head:
    """The response head. ``reason``: a refusal's body (its start)."""

    response: httpx.Response
    is_stream: bool
    reason: str


@dataclass(frozen=True)
class Chunk:
    """Bytes of the body, as they arrived."""

    data: bytes


@dataclass(frozen=True)
class End:
    """The attempt is over: ``error`` is ``None`` when the server ended the
    response, else what the request or the read raised."""

    error: Exception | None


Item: TypeAlias = Head | Chunk | End


@dataclass(frozen=True)
class Sleep:
    """Wait this long (the backoff), unless the client is closed."""

    seconds: float


@dataclass(frozen=True)
class Wait:
    """Wait at most ``timeout`` seconds (``None``: no limit) for the
    reader's next item, and give it (or ``None``) to ``Session._received``."""

    timeout: float | None


Step: TypeAlias = Sleep | Wait | Literal["connect", "done", "closed", "timeout"]

#: What a pump returns for each step that says stop: done, closed, or the
#: caller's deadline passed.
OUTCOMES: dict[str, bool | None] = {"done": True, "closed": False, "timeout": None}


def deadline(timeout: float | None, now: float) -> float | None:
    return None if timeout is None else now + timeout


def earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
