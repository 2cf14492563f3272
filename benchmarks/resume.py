"""A client that reconnects as a browser's ``EventSource`` does, for the ``storm`` scenario.

:class:`BrowserStream` is one logical stream over successive connections.
When a connection ends it waits the last ``retry:`` the server sent (the
farewell's, which the server spreads out), then connects again with
``Last-Event-ID`` set to the last id it received. Unlike the counting
:class:`~benchmarks.client.StreamClient` it parses every event: its id, its
type, its data's sequence number (``benchmarks.wire``), so that it can tell
each event lost or received twice across the reconnection.

Times are ``time.time()``: the scenario compares them with the moment it sent
the ``HUP``, and the server's clock is the same machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["DEFAULT_RETRY_MS", "BrowserStream"]

#: What a browser waits before reconnecting when the server never said ``retry``.
DEFAULT_RETRY_MS = 3000
#: The comment the server writes once a stream is positioned: replay delivered, live.
_SUBSCRIBED = b": sse-keepalive subscribed"
_SHUTDOWN = b": shutdown"


class _Line(asyncio.Protocol):
    """One connection of a :class:`BrowserStream`: writes the request, passes bytes on."""

    def __init__(self, owner: BrowserStream, request: bytes) -> None:
        self.owner = owner
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def itself(self) -> _Line:
        """The protocol factory ``create_connection`` wants, for this one connection."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.owner.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class BrowserStream:
    """One ``EventSource``: its connections, what it received, when.

    :param path: the stream's path and query (``/stream?channel=...``).
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.retry_ms = DEFAULT_RETRY_MS
        self.last_id: str | None = None
        #: the last data sequence number received (events of one channel: 1, 2, ...)
        self.last_seq = 0
        self.events = 0
        self.lost = 0
        self.duplicated = 0
        self.resets = 0
        #: connections ended by the server with a farewell (``: shutdown`` + ``retry``)
        self.farewells = 0
        #: connections that ended without one (cut, refused, failed to connect)
        self.broken = 0
        #: how long it waited before each reconnection (the last ``retry`` heard)
        self.waited_ms: list[int] = []
        self.errors: list[str] = []
        #: when each connection was attempted / answered 200 / was positioned / ended
        self.attempted: list[float] = []
        self.opened: list[float] = []
        self.subscribed: list[float] = []
        self.ended: list[float] = []
        self._carry = b""
        self._head = True
        self._farewell = False
        self._line: _Line | None = None
        self._stopping = False

    # -- the connections ------------------------------------------------------------

    def request(self) -> bytes:
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id is not None else ""
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n{resume}\r\n"
        ).encode()

    async def run(self) -> None:
        """Connect, read until the connection ends, wait ``retry``, again; until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._carry, self._head, self._farewell = b"", True, False
            self.attempted.append(time.time())
            line = self._line = _Line(self, self.request())
            try:
                await loop.create_connection(line.itself, self.host, self.port)
                await line.ended
            except OSError as exc:
                self.errors.append(repr(exc))
            finally:
                self._line = None
            if self._stopping:
                break
            self.ended.append(time.time())
            if self._farewell:
                self.farewells += 1
            else:
                self.broken += 1
            self.waited_ms.append(self.retry_ms)
            await asyncio.sleep(self.retry_ms / 1000)

    def stop(self) -> None:
        self._stopping = True
        line = self._line
        if line is not None and line.transport is not None:
            line.transport.abort()

    # -- the bytes ----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        buf = self._carry + data
        if self._head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._carry = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 200 " not in status:
                self.errors.append(f"answered {status!r}")
                self._abort()
                return
            self._head = False
            self.opened.append(time.time())
            buf = buf[end + 4 :]
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._carry = buf
            return
        self._carry = buf[cut + 2 :]
        for block in buf[:cut].split(b"\n\n"):
            self._block(block)

    def _abort(self) -> None:
        if self._line is not None and self._line.transport is not None:
            self._line.transport.abort()

    def _block(self, block: bytes) -> None:
        """One event or comment block (the server frames with ``\\n`` only)."""
        kind = b""
        data: bytes | None = None
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
            elif line.startswith(b"id: "):
                self.last_id = line[4:].decode()
            elif line.startswith(b"retry: "):
                with contextlib.suppress(ValueError):
                    self.retry_ms = int(line[7:])
            elif line.startswith(b"event: "):
                kind = line[7:]
            elif line == _SUBSCRIBED:
                self.subscribed.append(time.time())
            elif line == _SHUTDOWN:
                self._farewell = True
        if data is None:
            return
        if kind == b"stream-reset":
            self.resets += 1
            return
        seq = int(data.split(b" ", 1)[0])
        self.events += 1
        if seq <= self.last_seq:
            self.duplicated += 1
            return
        self.lost += seq - self.last_seq - 1
        self.last_seq = seq
