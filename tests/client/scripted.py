"""A loopback HTTP server that does, connection by connection, what a test says.

For what a real flask-sse-keepalive server will not do on demand: answer
nothing, stall after the head, announce no heartbeat interval, cut an event
in half, answer ``200`` with HTML. Real kernel sockets, one thread per
connection; every connection and thread is closed by :meth:`close`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


@dataclass
class Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float


class Connection:
    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number  # 0 for the first connection
        self.request: Request | None = None
        self.peer_closed_at: float | None = None  # seen by wait_for_peer_to_close

    def read_request(self, timeout: float = 5) -> Request:
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before a request head: {data!r}")
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
        line, *lines = head.split("\r\n")
        target = urlsplit(line.split()[1])
        headers = {}
        for item in lines:
            name, _, value = item.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.request = Request(target.path, parse_qs(target.query), headers, time.monotonic())
        return self.request

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def stream(self, body: bytes = b"") -> None:
        """The head of an event stream (ended by closing), then ``body``."""
        self.send(SSE_HEAD + body)

    def respond(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def wait_for_peer_to_close(self, timeout: float) -> float:
        """Read until EOF; return when it came (monotonic). Fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if self.sock.recv(4096):
                    continue
            except TimeoutError:
                raise AssertionError(f"the client kept the connection for {timeout} s") from None
            except OSError:
                pass  # reset
            self.peer_closed_at = time.monotonic()
            return self.peer_closed_at


Handler = Callable[[Connection], None]


class ScriptedServer:
    """``ScriptedServer(handler)``: ``handler(connection)`` runs for each connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections: list[Connection] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream"

    def requests(self) -> list[Request]:
        with self._lock:
            return [c.request for c in self.connections if c.request is not None]

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closing:
                    sock.close()
                    return
                connection = Connection(sock, len(self.connections))
                self.connections.append(connection)
                thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, connection: Connection) -> None:
        try:
            self._handler(connection)
        except OSError:
            pass  # the client went away or the test closed the server
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            connection.sock.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            connections = list(self.connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() would not
        self._listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        assert not self.errors, self.errors


def park(connection: Connection, seconds: float = 30) -> None:
    """Keep the connection open, silent, until the client closes it (or ``seconds``)."""
    with contextlib.suppress(AssertionError):
        connection.wait_for_peer_to_close(seconds)
