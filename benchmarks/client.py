"""The load generator's clients: asyncio protocols that count events cheaply.

A stream client never parses the whole event stream. It looks at complete
events only (up to the last ``\\n\\n`` of what it has), counts ``data: `` and
``: heartbeat`` in them with :meth:`bytes.count` (C speed, one pass per
read), and parses a sequence number only from the last event of each read.
In latency mode it also parses every event's ``seq`` and publish time with one
regular expression per read. Reads coalesce when the generator falls behind,
so the cost per event shrinks as the load grows.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from array import array
from typing import Any

__all__ = ["SlowClient", "StreamClient", "control", "stream_request"]

_EVENT = re.compile(rb"data: (\d+) (\d+\.\d+)")
_DATA = b"data: "
_HEARTBEAT = b": heartbeat\n"


def stream_request(path: str, host: str = "127.0.0.1") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode()


class StreamClient(asyncio.Protocol):
    """One SSE stream, counted on the wire."""

    __slots__ = (
        "carry",
        "closed",
        "disorder",
        "events",
        "heartbeats",
        "last_rx",
        "last_seq",
        "latencies",
        "left",
        "max_gap",
        "ready",
        "request",
        "started",
        "status",
        "transport",
    )

    def __init__(self, request: bytes, ready: asyncio.Future[float]) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.carry = b""
        self.started = False
        #: resolved with the time the first bytes (``retry`` + comment) arrived
        self.ready = ready
        self.status = b""
        self.events = 0
        self.heartbeats = 0
        self.last_seq = 0
        #: events whose seq was not the previous one + 1 (latency mode only)
        self.disorder = 0
        self.last_rx = time.time()
        self.max_gap = 0.0
        self.closed = False
        #: the generator closed it (not the server)
        self.left = False
        #: where latency mode appends (receive time - publish time); ``None``: count only
        self.latencies: array[float] | None = None

    def reset_counts(self) -> None:
        self.events = self.heartbeats = self.disorder = 0
        self.max_gap = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.ready.done():
            return
        if self.left:
            # Nobody waits for a stream the generator gave up on: an exception
            # set now would only be logged as never retrieved.
            self.ready.cancel()
            return
        # Before its first block, everything the server sent is still in carry.
        carry = self.carry
        sent = f"after {len(carry)} bytes {carry[:200]!r}" if carry else "sending nothing"
        how = f"reset ({exc!r})" if exc is not None else "closed (FIN)"
        self.ready.set_exception(
            ConnectionError(f"stream {how} by the server before its first bytes, {sent}")
        )

    def close(self) -> None:
        """Abort: a reset, as a peer that vanished."""
        self._end(abort=True)

    def leave(self) -> None:
        """Close with a FIN, as a browser leaving the page closes its ``EventSource``."""
        self._end(abort=False)

    def _end(self, *, abort: bool) -> None:
        self.left = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        if not self.ready.done():
            self.ready.cancel()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        gap = now - self.last_rx
        if gap > self.max_gap:
            self.max_gap = gap
        self.last_rx = now
        buf = self.carry + data if self.carry else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.carry = buf
            return
        cut += 2
        self.carry = buf[cut:]
        part = buf[:cut] if cut < len(buf) else buf
        if not self.started:
            part = self._start(part, now)
            if not part:
                return
        self.heartbeats += part.count(_HEARTBEAT)
        count = part.count(_DATA)
        if not count:
            return
        self.events += count
        latencies = self.latencies
        if latencies is None:
            start = part.rfind(_DATA) + 6
            self.last_seq = int(part[start : part.index(b" ", start)])
            return
        last = self.last_seq
        for seq_text, published in _EVENT.findall(part):
            seq = int(seq_text)
            if seq != last + 1:
                self.disorder += 1
            last = seq
            latencies.append(now - float(published))
        self.last_seq = last

    def _start(self, part: bytes, now: float) -> bytes:
        """Check the status line and skip the headers and the first block."""
        self.started = True
        self.status = part[: part.find(b"\r\n")]
        if b" 200 " not in self.status:
            self.ready.set_exception(ConnectionError(f"stream answered {self.status!r}"))
            self.close()
            return b""
        self.ready.set_result(now)
        first_end = part.index(b"\n\n") + 2
        return part[first_end:]


class SlowClient:
    """A stream that reads its first bytes and then never reads again.

    Its receive buffer is made as small as the kernel allows before
    connecting, so the server's writes stall almost at once.
    """

    def __init__(self, host: str, port: int, path: str, rcvbuf: int = 1024) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        self.events = 0
        self.eof = False
        self.drained_bytes = 0

    async def connect(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        sock = self.sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (self.host, self.port))
            await loop.sock_sendall(sock, stream_request(self.path, self.host))
            head = b""
            while b"\n\n" not in head:
                chunk = await loop.sock_recv(sock, 1)  # never read past the first block
                if not chunk:
                    raise ConnectionError("slow client: closed before the first bytes")
                head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status:
            raise ConnectionError(f"slow client: {status!r}")

    async def drain(self, timeout: float) -> None:
        """Read everything left, up to EOF, within ``timeout`` seconds."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        tail = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await loop.sock_recv(self.sock, 65536)
                    if not chunk:
                        self.eof = True
                        return
                    self.drained_bytes += len(chunk)
                    # A pattern cut by a read boundary is found in tail + chunk;
                    # the 5-byte tail is too short to hold a whole one.
                    buf = tail + chunk
                    self.events += buf.count(_DATA)
                    tail = buf[-5:]
        except TimeoutError:
            pass
        except OSError:
            self.eof = True  # reset by the server: dropped all the same

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


async def control(
    port: int, method: str, path: str, timeout: float = 10.0, *, host: str = "127.0.0.1"
) -> dict[str, Any]:
    """One request to a control route; the JSON answer."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            response = await reader.read()
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        raise RuntimeError(f"{method} {path}: {status!r} {body[:500]!r}")
    result: dict[str, Any] = json.loads(body)
    return result
