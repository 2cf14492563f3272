"""What a client tells its caller about its connections: the hook records,
the counters, the states and the reasons a connection ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import httpx

#: ``connecting`` (the first attempt), ``open``, ``reconnecting``, ``closed``.
ConnectionState: TypeAlias = Literal["connecting", "open", "reconnecting", "closed"]
#: Why a connection (or an attempt) ended:
#: ``eof`` the server ended the response; ``shutdown`` it did so after saying
#: ``: shutdown`` (a worker stopping); ``network`` a connection error;
#: ``timeout`` no stream within ``timeout``; ``watchdog`` silence for
#: ``watchdog_factor`` heartbeat intervals; ``http`` a "try later" status;
#: ``closed`` :meth:`close` was called.
CloseReason: TypeAlias = Literal[
    "eof", "shutdown", "network", "timeout", "watchdog", "http", "closed"
]


@dataclass(frozen=True)
class Opened:
    """``on_open``: a stream was opened.

    :ivar url: the URL requested, with its query, and the value of its
        ``token`` parameter replaced by ``redacted``: an ``on_open`` hook is
        where a URL gets logged or sent to an error tracker, and the caller
        has the token already (it gave it, or its token function returned it).
    :ivar status: always ``200``.
    :ivar headers: the response headers.
    :ivar last_event_id: the resume point sent (``""``: none).
    """

    url: str
    status: int
    headers: httpx.Headers
    last_event_id: str


@dataclass(frozen=True)
class Closed:
    """``on_close``: an open stream ended.

    :ivar reason: a :data:`CloseReason`.
    :ivar lived: seconds the stream was open.
    :ivar error: the exception that ended it, if any.
    """

    reason: CloseReason
    lived: float
    error: BaseException | None


@dataclass(frozen=True)
class Reconnect:
    """``on_reconnect``: the next attempt is scheduled.

    :ivar delay: seconds until it starts.
    :ivar attempt: its number in a row of failures (1 after a healthy stream).
    :ivar reason: why the last attempt or stream ended (a :data:`CloseReason`).
    :ivar status: the HTTP status, for ``reason == "http"``.
    :ivar retry_after: the server's ``Retry-After`` in seconds, if it sent one.
    :ivar error: the exception that ended the last attempt, if any.
    """

    delay: float
    attempt: int
    reason: CloseReason
    status: int | None
    retry_after: float | None
    error: BaseException | None


@dataclass
class ClientStats:
    """Counters since the client was made."""

    #: streams opened
    connects: int = 0
    #: attempts after the first
    reconnects: int = 0
    #: events received (``stream-reset`` included)
    events: int = 0
    #: ``stream-reset`` events received
    resets: int = 0
    #: ``: heartbeat`` comments received
    heartbeats: int = 0
