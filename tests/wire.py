"""Test code: a raw-socket SSE client, and what it reads with the package's parser.

The client tells how a response ended (:attr:`RawStream.end`): ``"complete"``
(the last chunk of a chunked body, all of a ``Content-Length`` body, or the
server's FIN after a body delimited by the connection's close), ``"truncated"``
(the server's FIN before that) or ``"reset"`` (an RST). The chunked decoder
checks the framing and raises :class:`FramingError` at the first wrong byte.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass

from flask_sse_keepalive.parser import ClientEvent, Comment, EventStreamParser, Retry


@dataclass
class Dispatched:
    type: str
    data: str
    last_event_id: str


class Parser:
    """What a stream dispatches, as the package's parser
    (:mod:`flask_sse_keepalive.parser`, the one Python parser of the project)
    reads it: events, comments and ``retry`` values, collected in lists."""

    def __init__(self) -> None:
        self.events: list[Dispatched] = []
        self.comments: list[str] = []
        self.retries: list[int] = []
        self._parser = EventStreamParser()

    @property
    def last_event_id(self) -> str:
        return self._parser.last_event_id

    def feed(self, chunk: bytes) -> None:
        for item in self._parser.feed(chunk):
            if isinstance(item, ClientEvent):
                self.events.append(Dispatched(item.event, item.data, item.id))
            elif isinstance(item, Comment):
                self.comments.append(item.text)
            elif isinstance(item, Retry):
                self.retries.append(item.milliseconds)


class FramingError(ValueError):
    """The body breaks HTTP/1.1 chunked framing (RFC 9112, section 7.1)."""


#: A chunk-size line: hex digits, then optional extensions (never sent by the
#: servers under test, but allowed by the grammar).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?")
#: What a chunk-size line can begin with, to fail at the first wrong byte
#: rather than wait for a CRLF that will not come.
_CHUNK_SIZE_START = re.compile(rb"[0-9A-Fa-f]{0,16}(?:[ \t]*(?:;[^\r\n]*)?)?\r?")
#: A line longer than this without its CRLF is malformed.
MAX_LINE = 1024


class ChunkedBody:
    """Decodes an HTTP/1.1 chunked body fed in pieces of any size.

    Raises :class:`FramingError` as soon as the bytes cannot be a chunked
    body: a size line that is not hex digits ended by CRLF, a chunk not
    followed by CRLF, or bytes after the end (the zero-size chunk and the
    empty line that ends its trailer section).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._size: int | None = None  # the size of the chunk being read
        self._in_trailer = False
        self.ended = False  # the terminating zero-size chunk (and its trailer) arrived

    def feed(self, data: bytes) -> list[bytes]:
        """The chunks completed by ``data``, in order."""
        if self.ended:
            if data:
                raise FramingError(f"bytes after the last chunk: {data[:40]!r}")
            return []
        self._buffer += data
        chunks = []
        while not self.ended:
            if self._size is None:
                line = self._line()
                if line is None:
                    break
                if self._in_trailer:
                    if line == b"":
                        self.ended = True
                        if self._buffer:
                            raise FramingError(f"bytes after the last chunk: {self._buffer[:40]!r}")
                    continue
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise FramingError(f"bad chunk-size line: {line[:40]!r}")
                size = int(match.group(1), 16)
                if size == 0:
                    self._in_trailer = True
                    continue
                self._size = size
            size = self._size
            end = self._buffer[size : size + 2]
            if end != b"\r\n"[: len(end)]:
                raise FramingError(f"no CRLF after a chunk of {size} bytes: got {end!r}")
            if len(end) < 2:
                break  # the rest of the chunk is still on its way
            chunks.append(self._buffer[:size])
            self._buffer = self._buffer[size + 2 :]
            self._size = None
        return chunks

    def _line(self) -> bytes | None:
        """Take one CRLF-ended line off the buffer; ``None`` until it is all there."""
        buffer = self._buffer
        newline = buffer.find(b"\n")
        if newline < 0:
            if not self._in_trailer and not _CHUNK_SIZE_START.fullmatch(buffer):
                raise FramingError(f"bad chunk-size line: {buffer[:40]!r}")
            if len(buffer) > MAX_LINE:
                raise FramingError(f"no CRLF within {MAX_LINE} bytes: {buffer[:40]!r}")
            return None
        if newline == 0 or buffer[newline - 1] != 0x0D:
            raise FramingError(f"a line ended by LF without CR: {buffer[: newline + 1][:40]!r}")
        self._buffer = buffer[newline + 1 :]
        return buffer[: newline - 1]


class RawStream:
    """An SSE request over a plain socket, with chunked decoding by hand.

    Every stream opened is closed at the end of the test (``close_all``).
    """

    opened: list[RawStream] = []

    def __init__(
        self,
        port: int,
        path: str = "/stream",
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 10,
        http10: bool = False,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        RawStream.opened.append(self)
        lines = [f"GET {path} HTTP/1.{0 if http10 else 1}", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.parser = Parser()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.wire = b""  # the decoded body bytes, as the parser saw them
        #: how the response ended: "complete", "truncated", "reset"; None while open
        self.end: str | None = None
        #: when (``time.monotonic()``) each comment and each event arrived
        self.comment_times: list[float] = []
        self.event_times: list[float] = []
        self._buf = b""
        self._chunks: ChunkedBody | None = None
        self._remaining: int | None = None  # of a Content-Length body
        self._read_head(timeout)

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def complete(self) -> bool:
        return self.end == "complete"

    def _recv(self, deadline: float) -> bytes | str | None:
        """What arrives before ``deadline``: bytes, ``b""`` at EOF, ``"reset"``
        for an RST, ``None`` if nothing came."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return "reset"

    def _read_head(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no response head within the timeout")
            data = self._recv(deadline)
            if data == b"" or data == "reset":
                what = "reset" if data else "closed"
                raise ConnectionError(f"{what} before the response head: {self._buf!r}")
            if isinstance(data, bytes):
                self._buf += data
        head, rest = self._buf.split(b"\r\n\r\n", 1)
        self._buf = b""
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding") == "chunked":
            self._chunks = ChunkedBody()
        elif "content-length" in self.headers:
            self._remaining = int(self.headers["content-length"])
        self._feed(rest)

    def _feed(self, data: bytes) -> None:
        if self._chunks is not None:
            chunks = self._chunks.feed(data)
            if self._chunks.ended:
                self.end = "complete"
        elif self._remaining is not None:
            if len(data) > self._remaining:
                raise FramingError(f"{len(data) - self._remaining} bytes past Content-Length")
            self._remaining -= len(data)
            chunks = [data]
            if self._remaining == 0:
                self.end = "complete"
        else:
            chunks = [data]
        for chunk in chunks:
            if not chunk:
                continue
            comments, events = len(self.parser.comments), len(self.parser.events)
            self.wire += chunk
            self.parser.feed(chunk)
            now = time.monotonic()
            self.comment_times += [now] * (len(self.parser.comments) - comments)
            self.event_times += [now] * (len(self.parser.events) - events)

    def pump(self, timeout: float = 0.1) -> bool:
        """Read what arrives within ``timeout``; ``False`` once the response ended."""
        if self.end is not None:
            return False
        data = self._recv(time.monotonic() + timeout)
        if data == "reset":
            self.end = "reset"
        elif data == b"":
            # Only a body delimited by the close is complete at EOF.
            delimited = self._chunks is not None or self._remaining is not None
            self.end = "truncated" if delimited else "complete"
        elif isinstance(data, bytes):
            self._feed(data)
        return self.end is None

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Pump until ``predicate(self)`` is true; fail after ``timeout`` saying ``what``."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; got {self.wire[-500:]!r}"
                )
            if not self.pump(min(0.2, max(0.01, deadline - time.monotonic()))):
                if predicate(self):
                    return
                raise AssertionError(
                    f"the response ended ({self.end}) while waiting for {what}: "
                    f"{self.wire[-500:]!r}"
                )

    def read_until_end(self, timeout: float) -> str:
        """Read until the response ends, however it ends; return how (see :attr:`end`)."""
        deadline = time.monotonic() + timeout
        while self.pump(min(0.2, max(0.01, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise AssertionError(f"the response did not end within {timeout} s")
        assert self.end is not None
        return self.end

    def read_to_end(self, timeout: float) -> None:
        """Read to the end of a response that must be complete (not truncated, not reset)."""
        end = self.read_until_end(timeout)
        assert end == "complete", f"the response ended {end}, not complete: {self.wire[-300:]!r}"

    @property
    def events(self) -> list[Dispatched]:
        return self.parser.events

    def data(self, type_: str | None = None) -> list[str]:
        return [e.data for e in self.events if type_ is None or e.type == type_]

    def json(self, type_: str | None = None) -> list:
        return [json.loads(d) for d in self.data(type_)]

    def close(self, abort: bool = False) -> None:
        if abort:
            # RST instead of FIN: the peer sees a reset, as from a crashed client.
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        self.sock.close()

    @classmethod
    def close_all(cls) -> None:
        while cls.opened:
            cls.opened.pop().sock.close()
