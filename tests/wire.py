"""Test code: a WHATWG event-stream parser and a raw-socket SSE client.

The parser is written from the HTML standard's "Parsing an event stream" and
"Interpreting an event stream" sections, independently of the package's
encoder, so that round-trip tests compare two implementations.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field


@dataclass
class Dispatched:
    type: str
    data: str
    last_event_id: str


@dataclass
class Parser:
    """Feed bytes; collects dispatched events, comments and ``retry`` values."""

    events: list[Dispatched] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    last_event_id: str = ""
    _buffer: str = ""
    _data: str = ""
    _type: str = ""
    _decoder_started: bool = False
    _pending_cr: bool = False
    _raw: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self._raw += chunk
        # Decode complete UTF-8 sequences only (a chunk may end mid-character).
        try:
            text = self._raw.decode("utf-8")
            self._raw = b""
        except UnicodeDecodeError as exc:
            text = self._raw[: exc.start].decode("utf-8")
            self._raw = self._raw[exc.start :]
        if not self._decoder_started and text:
            self._decoder_started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        self._buffer += text
        self._split_lines()

    def _split_lines(self) -> None:
        buf = self._buffer
        start = 0
        i = 0
        while i < len(buf):
            ch = buf[i]
            if self._pending_cr:
                self._pending_cr = False
                if ch == "\n" and i == start:
                    start = i + 1
                    i += 1
                    continue
            if ch == "\r":
                self._line(buf[start:i])
                if i + 1 < len(buf):
                    if buf[i + 1] == "\n":
                        i += 1
                else:
                    self._pending_cr = True
                start = i + 1
            elif ch == "\n":
                self._line(buf[start:i])
                start = i + 1
            i += 1
        self._buffer = buf[start:]

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry" and value and all("0" <= c <= "9" for c in value):
            self.retries.append(int(value))

    def _dispatch(self) -> None:
        if self._data == "":
            self._type = ""
            return
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        self.events.append(Dispatched(self._type or "message", data, self.last_event_id))
        self._data = ""
        self._type = ""


class ChunkedBody:
    """Decodes an HTTP/1.1 chunked body fed in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = b""
        self.ended = False  # the terminating zero-size chunk arrived

    def feed(self, data: bytes) -> list[bytes]:
        """The chunks completed by ``data``, in order."""
        self._buffer += data
        chunks = []
        while not self.ended:
            head, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                break
            size = int(head.split(b";")[0], 16)
            if len(rest) < size + 2:
                break
            self._buffer = rest[size + 2 :]
            if size == 0:
                self.ended = True
            else:
                chunks.append(rest[:size])
        return chunks


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
        self.ended = False  # the terminating chunk or EOF was seen
        self._buf = b""
        self._chunked = False
        self._chunks = ChunkedBody()
        self._read_head(timeout)

    def _recv(self, deadline: float) -> bytes:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return b"?"  # nothing this time; not EOF
        except ConnectionResetError:
            return b""
        return data

    def _read_head(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no response head within the timeout")
            data = self._recv(deadline)
            if data == b"":
                raise ConnectionError(f"closed before the response head: {self._buf!r}")
            if data != b"?":
                self._buf += data
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding") == "chunked"
        if "content-length" in self.headers:
            self._content_length = int(self.headers["content-length"])

    def _decode_body(self) -> None:
        data, self._buf = self._buf, b""
        chunks = self._chunks.feed(data) if self._chunked else [data] if data else []
        for chunk in chunks:
            self.wire += chunk
            self.parser.feed(chunk)
        if self._chunks.ended:
            self.ended = True

    def pump(self, timeout: float = 0.1) -> bool:
        """Read what arrives within ``timeout``; ``False`` once the stream ended."""
        if self.ended:
            return False
        self._decode_body()
        deadline = time.monotonic() + timeout
        data = self._recv(deadline)
        if data == b"":
            self.ended = True
            return False
        if data != b"?":
            self._buf += data
            self._decode_body()
        return not self.ended

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
                raise AssertionError(f"stream ended while waiting for {what}: {self.wire[-500:]!r}")

    def read_to_end(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pump(0.2):
            if time.monotonic() > deadline:
                raise AssertionError(f"stream did not end within {timeout} s")

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
