"""Many SSE clients in one (unpatched) test process, multiplexed with ``selectors``.

A :class:`Client` is one logical client: it may reconnect (with the last id
it saw as ``Last-Event-ID``, as a browser does) and keeps every event across
its connections. A :class:`Fleet` pumps the sockets of many clients at once.
"""

from __future__ import annotations

import json
import random
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlencode

from tests.wire import ChunkedBody, Dispatched, Parser


class Client:
    """One logical SSE client over raw sockets, reconnecting on request or EOF."""

    def __init__(
        self,
        port: int,
        channels: Iterable[str],
        *,
        last_event_id: str | None = None,
        query_last_event_id: str | None = None,
        reconnect_on_eof: bool = False,
    ) -> None:
        self.port = port
        self.channels = list(channels)
        self.last_event_id = last_event_id
        self.query_last_event_id = query_last_event_id
        self.reconnect_on_eof = reconnect_on_eof
        self.events: list[Dispatched] = []
        #: every comment received, over all connections
        self.comment_lines: list[str] = []
        self.connects = 0
        self.sock: socket.socket | None = None
        self.status = 0
        self.started = False  # the first bytes (``retry:``) arrived
        #: the worker that answers the current connection (``X-Worker-Pid``)
        self.pid: int | None = None
        #: a connection answered by this worker is dropped before its body is
        #: read, and made again (see :meth:`Fleet.reconnect`)
        self.avoid_pid: int | None = None
        #: connections dropped for that reason
        self.avoided = 0
        #: the worker of every connection whose body was read, in order
        self.pids: list[int | None] = []
        self._parser = Parser()
        self._seen = 0
        self._raw = b""
        self._head_done = False
        self._chunks = ChunkedBody()

    # -- connection -------------------------------------------------------

    def connect(self) -> socket.socket:
        query = [("channel", c) for c in self.channels]
        if self.query_last_event_id:
            # Like EventSource, every reconnect reuses the page's URL; the
            # header, once the client has an id, wins over the query.
            query.append(("last_event_id", self.query_last_event_id))
        lines = [f"GET /stream?{urlencode(query)} HTTP/1.1", "Host: 127.0.0.1"]
        if self.last_event_id:
            lines.append(f"Last-Event-ID: {self.last_event_id}")
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.setblocking(False)
        self.sock = sock
        self.connects += 1
        self.status = 0
        self.started = False
        self.pid = None
        self._parser = Parser()
        self._seen = 0
        self._raw = b""
        self._head_done = False
        self._chunks = ChunkedBody()
        return sock

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- reading ----------------------------------------------------------

    def on_readable(self) -> bool:
        """Read what is there; ``False`` on EOF, or when the connection was
        answered by the worker to avoid (the socket is then closed)."""
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return True
            except ConnectionResetError:
                data = b""
            if not data:
                self.disconnect()
                return False
            self._raw += data
            if not self._decode():
                self.avoided += 1
                self.disconnect()
                return False

    @property
    def avoiding(self) -> bool:
        """The last connection was dropped for its worker: make another."""
        return self.sock is None and self.avoid_pid is not None and self.pid == self.avoid_pid

    def _decode(self) -> bool:
        """Decode what was read; ``False`` if the response came from the worker to avoid."""
        if not self._head_done:
            if b"\r\n\r\n" not in self._raw:
                return True
            head, self._raw = self._raw.split(b"\r\n\r\n", 1)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            self.status = int(status_line.split(" ", 2)[1])
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.pid = int(headers["x-worker-pid"]) if "x-worker-pid" in headers else None
            self._head_done = True
            if self.avoid_pid is not None and self.pid == self.avoid_pid:
                return False
            self.pids.append(self.pid)
        data, self._raw = self._raw, b""
        for chunk in self._chunks.feed(data):
            self.started = True
            before = len(self._parser.comments)
            self._parser.feed(chunk)
            self.comment_lines += self._parser.comments[before:]
            new = self._parser.events[self._seen :]
            self._seen += len(new)
            for event in new:
                self.events.append(event)
                if event.last_event_id:
                    self.last_event_id = event.last_event_id
        return True

    # -- what a test reads ------------------------------------------------

    def numbers(self) -> list[int]:
        """The ``n`` of every ordinary event received, in order."""
        return [json.loads(e.data)["n"] for e in self.events if e.type == "message"]

    def data(self) -> list[str]:
        """The data of every ordinary event received, in order."""
        return [e.data for e in self.events if e.type == "message"]

    def comments(self) -> list[str]:
        return list(self.comment_lines)

    def resets(self) -> list[dict]:
        return [json.loads(e.data) for e in self.events if e.type == "stream-reset"]


class Fleet:
    """Pump many clients' sockets with one selector."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.clients: list[Client] = []

    def add(self, client: Client) -> Client:
        self.clients.append(client)
        self.selector.register(client.connect(), selectors.EVENT_READ, client)
        return client

    def reconnect(self, client: Client, *, elsewhere: bool = False) -> None:
        """Connect ``client`` again; ``elsewhere``: until a worker other than
        the one that answered it last does (each connection to that one is
        dropped as soon as its head shows the worker, before any event)."""
        client.avoid_pid = client.pid if elsewhere else None
        self.drop(client)
        self.selector.register(client.connect(), selectors.EVENT_READ, client)

    def drop(self, client: Client) -> None:
        if client.sock is not None:
            self.selector.unregister(client.sock)
            client.disconnect()

    def pump(self, timeout: float = 0.05) -> None:
        for key, _ in self.selector.select(timeout):
            client: Client = key.data
            sock = client.sock
            if not client.on_readable():
                self.selector.unregister(sock)  # type: ignore[arg-type]
                if client.avoiding:
                    self.selector.register(client.connect(), selectors.EVENT_READ, client)
                elif client.reconnect_on_eof:
                    # As EventSource does when a stream ends: come back with the last id.
                    time.sleep(random.uniform(0, 0.05))
                    self.selector.register(client.connect(), selectors.EVENT_READ, client)

    def wait(
        self, predicate: Callable[[], bool], timeout: float, what: Callable[[], str] | str
    ) -> None:
        """Pump until ``predicate()``; fail after ``timeout`` seconds saying what was awaited."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                detail = what() if callable(what) else what
                raise AssertionError(f"timed out after {timeout} s waiting for {detail}")
            self.pump(0.05)

    def close(self) -> None:
        for client in self.clients:
            self.drop(client)
        self.selector.close()
