"""Flood a stream route from one address, in a process of its own.

``python -m tests.apps.flood PORT SOURCE TOTAL IN_FLIGHT PATH`` sends TOTAL
stream requests to 127.0.0.1:PORT from the address SOURCE, each on a new
connection, IN_FLIGHT at a time. A ``200`` (a stream let in) is kept open,
unread; any other answer is read whole and closed. When all are answered it
prints one JSON line, ``{"statuses": {...}, "retry_after": [...], "errors":
[...], "seconds": ...}``, then holds the streams it got until its standard
input closes. A process of its own, so that the test's own measurements do
not wait for this loop (the GIL). Stdlib only.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from typing import Any


def complete(head: bytes, body: bytes) -> bool:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


class Flood:
    def __init__(self, port: int, source: str, total: int, in_flight: int, path: str) -> None:
        self.port, self.source, self.total, self.in_flight = port, source, total, in_flight
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        self.statuses: dict[int, int] = {}
        self.retry_after: set[str] = set()
        self.errors: list[str] = []
        self.held: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()

    def run(self, timeout: float) -> None:
        started = 0
        deadline = time.monotonic() + timeout
        while started < self.total or self.selector.get_map():
            if time.monotonic() > deadline:
                self.errors.append(f"not all answered within {timeout} s")
                return
            while started < self.total and len(self.selector.get_map()) < self.in_flight:
                sock = socket.socket()
                sock.bind((self.source, 0))
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", self.port))
                self.selector.register(sock, selectors.EVENT_WRITE, [b"", False])
                started += 1
            for key, _ in self.selector.select(timeout=1):
                self._step(key.fileobj, key.data)

    def _step(self, sock: Any, state: list[Any]) -> None:
        if not state[1]:  # connected: send the request
            try:
                sock.sendall(self.request)
            except OSError as exc:
                self._fail(sock, f"send: {exc}")
                return
            state[1] = True
            self.selector.modify(sock, selectors.EVENT_READ, state)
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(sock, f"recv: {exc}")
            return
        if not data:
            self._fail(sock, f"closed after {state[0][:200]!r}")
            return
        state[0] += data
        head, sep, body = state[0].partition(b"\r\n\r\n")
        if not sep:
            return
        status = int(head.split(b" ", 2)[1])
        if status != 200 and not complete(head, body):
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.selector.unregister(sock)
        if status == 200:
            self.held.append(sock)
            return
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"retry-after:"):
                self.retry_after.add(line.split(b":", 1)[1].strip().decode())
        sock.close()

    def _fail(self, sock: Any, why: str) -> None:
        self.errors.append(why)
        self.selector.unregister(sock)
        sock.close()


def main() -> None:
    port, source, total, in_flight = int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:5])
    flood = Flood(port, source, total, in_flight, sys.argv[5])
    started = time.monotonic()
    flood.run(timeout=120)
    result = {
        "statuses": {str(k): v for k, v in sorted(flood.statuses.items())},
        "retry_after": sorted(flood.retry_after),
        "errors": flood.errors[:20],
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(result), flush=True)
    sys.stdin.read()  # hold the streams until the test lets go
    for sock in flood.held:
        sock.close()


if __name__ == "__main__":
    main()
