"""A raw-socket SSE client that reads as slowly as a test likes, with a small
receive buffer, so that the server really has to wait for it."""

from __future__ import annotations

import socket
import time

from tests.wire import ChunkedBody, Parser

#: The client's receive buffer, asked for small (``tests.apps.producer_app``
#: can make the server's send buffer as small). Linux doubles what is asked,
#: so each may hold up to about 2x this.
BUFFER = 8192


class SlowReader:
    """A stream read by hand, as slowly as the test likes (closed by ``close_all``)."""

    opened: list[SlowReader] = []

    def __init__(
        self, port: int, path: str, headers: dict[str, str] | None = None, rcvbuf: int = BUFFER
    ) -> None:
        self.sock = socket.socket()
        SlowReader.opened.append(self)
        # Before connect, so that the window the client announces is small.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.parser = Parser()
        self.ended = False
        self.last_read = time.time()
        self._head = b""
        self._body: ChunkedBody | None = None

    def read(self, size: int, timeout: float = 5) -> None:
        """One ``recv`` of at most ``size`` bytes (waiting at most ``timeout``)."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(size)
        self.last_read = time.time()
        if not data:
            self.ended = True
            return
        if self._body is None:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, data = self._head.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200"), head
            self._body = ChunkedBody()
        for chunk in self._body.feed(data):
            self.parser.feed(chunk)
        self.ended = self._body.ended

    @property
    def numbers(self) -> list[int]:
        """The number each event's data starts with (``tests.apps.producer_app``)."""
        return [int(event.data.split(" ", 1)[0]) for event in self.parser.events]

    def close(self) -> None:
        self.sock.close()

    @classmethod
    def close_all(cls) -> None:
        while cls.opened:
            cls.opened.pop().close()
