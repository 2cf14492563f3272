"""The ceiling: the least a gevent server must do to serve the same streams.

No WSGI, no framework, no broker: accept, read the request, send the headers
and the first bytes, then write one pre-encoded buffer per event. Two ways to
write, so that the real server can be compared with both:

* ``sendall``: a greenlet per connection waits on its queue (with the
  heartbeat interval as timeout) and ``sendall``\\ s each event;
* ``send``: no greenlet per connection once the headers are out. The
  publisher calls a non-blocking ``send`` on each socket; what does not fit
  goes to a per-socket backlog flushed by a write watcher. Heartbeats come
  from one libev timer per connection.

Both drop a connection whose queue (backlog) passes ``--queue-size`` events,
as the real server does. The control routes (``/bench/publish``,
``/bench/progress``, ``/bench/stop``, ``/bench/stats``) behave as in ``benchmarks/app.py``, so
the load generator is the same for both servers.

Run: ``python -m benchmarks.ceiling --port 8000 --mode send --heartbeat 15``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gevent
import gevent.event
from gevent.hub import get_hub
from gevent.server import StreamServer

from .procinfo import cpu_seconds, raise_nofile, rss_bytes
from .publisher import Publisher

__all__ = ["CeilingServer", "main"]

HEARTBEAT = b": heartbeat\n\n"
_STREAM_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Accel-Buffering: no\r\n"
    b"Connection: close\r\n\r\n"
)


class _Conn:
    """State shared by both write modes."""

    __slots__ = ("channels", "closed", "io", "last_write", "queue", "sock", "timer", "wake")

    def __init__(self, sock: Any, channels: list[str]) -> None:
        self.sock = sock
        self.channels = channels
        self.queue: deque[bytes] = deque()
        self.closed = False
        self.last_write = 0.0
        #: the write watcher (send mode)
        self.io: Any = None
        #: the heartbeat timer (send mode)
        self.timer: Any = None
        #: wakes the writer greenlet (sendall mode)
        self.wake = gevent.event.Event()


class CeilingServer:
    def __init__(self, port: int, mode: str, heartbeat: float, queue_size: int) -> None:
        if mode not in ("send", "sendall"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.heartbeat = heartbeat
        self.queue_size = queue_size
        self.epoch = secrets.token_hex(4)
        self.channels: dict[str, set[_Conn]] = {}
        self.connections = 0
        self.disconnects: dict[str, int] = {}
        #: when a slow client was dropped: ``{"time": time.time(), "seq": last published}``
        self.slow_drops: list[dict[str, float]] = []
        self.delivered = 0
        self.heartbeats = 0
        self.publisher = Publisher(self._publish_default)
        self._channel = "default"
        self.loop = get_hub().loop
        self.server = StreamServer(("127.0.0.1", port), self._handle, backlog=4096)

    # -- HTTP ----------------------------------------------------------------

    def _handle(self, sock: Any, address: Any) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(8192)
            if not chunk or len(data) > 65536:
                sock.close()
                return
            data += chunk
        method, target = data.split(b" ", 2)[:2]
        url = urlsplit(target.decode("latin-1"))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/stream" and method == b"GET":
            self._stream(sock, parse_qs(url.query).get("channel", ["default"]))
            return
        try:
            body = self._control(url.path, query)
            status = b"200 OK" if body is not None else b"404 Not Found"
        except (KeyError, ValueError) as exc:
            body, status = {"error": repr(exc)}, b"400 Bad Request"
        payload = json.dumps(body).encode()
        sock.sendall(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, len(payload), payload)
        )
        sock.close()

    def _control(self, path: str, query: dict[str, str]) -> dict[str, Any] | None:
        if path == "/bench/publish":
            self._channel = query.get("channel", "default")
            return self.publisher.start(
                int(query["n"]),
                rate=float(query.get("rate", 0)),
                size=int(query.get("size", 64)),
                lead=int(query.get("lead", 0)),
            )
        if path == "/bench/stop":
            return self.publisher.finish()
        if path == "/bench/progress":
            self.publisher.progress(int(query["acked"]))
            return {"acked": self.publisher.acked}
        if path == "/bench/stats":
            return self.stats()
        return None

    def stats(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "server": f"ceiling-{self.mode}",
            "pid": pid,
            "rss": rss_bytes(pid),
            "cpu": cpu_seconds(pid),
            "heartbeat_interval": self.heartbeat,
            "queue_size": self.queue_size,
            "connections": self.connections,
            "disconnects": self.disconnects,
            "slow_drops": self.slow_drops,
            "delivered": self.delivered,
            "heartbeats": self.heartbeats,
            "publisher": self.publisher.status(),
        }

    # -- streams ---------------------------------------------------------------

    def _stream(self, sock: Any, channels: list[str]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, channels)
        first = b"retry: 3000\n: sse-keepalive heartbeat-interval=%s\n\n" % (
            repr(self.heartbeat).removesuffix(".0").encode()
        )
        try:
            sock.sendall(_STREAM_HEADERS + first)
        except OSError:
            sock.close()
            return
        # Subscribed only now, so that no event can be written before the headers.
        for name in channels:
            self.channels.setdefault(name, set()).add(conn)
        self.connections += 1
        conn.last_write = self.loop.now()
        if self.mode == "sendall":
            self._writer(conn)
            return
        # The handler greenlet ends here (and the server closes its socket
        # object): the connection lives on as a plain non-blocking socket in
        # the channel sets, served by libev watchers only.
        conn.sock = socket.socket(fileno=sock.detach())
        conn.sock.setblocking(False)
        self._arm_heartbeat(conn, self.heartbeat)

    def _close(self, conn: _Conn, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        for name in conn.channels:
            self.channels[name].discard(conn)
        self.connections -= 1
        self.disconnects[reason] = self.disconnects.get(reason, 0) + 1
        if reason == "slow":
            self.slow_drops.append({"time": time.time(), "seq": self.publisher.seq})
        for watcher in (conn.io, conn.timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        conn.io = conn.timer = None
        conn.queue.clear()
        conn.wake.set()
        conn.sock.close()

    def _publish_default(self, data: str) -> None:
        self.publish(data, self._channel)

    def publish(self, data: str, channel: str) -> None:
        seq = self.publisher.seq + 1  # the publisher counts it once this returns
        payload = b"data: %s\nid: %s-%d\n\n" % (data.encode(), self.epoch.encode(), seq)
        subscribers = self.channels.get(channel)
        if not subscribers:
            return
        deliver = self._deliver_sendall if self.mode == "sendall" else self._deliver_send
        for conn in tuple(subscribers):
            deliver(conn, payload)
        self.delivered += len(subscribers)

    # -- sendall mode ------------------------------------------------------------

    def _deliver_sendall(self, conn: _Conn, payload: bytes) -> None:
        if len(conn.queue) >= self.queue_size:
            self._close(conn, "slow")  # wakes the writer: its socket is closed
            return
        conn.queue.append(payload)
        conn.wake.set()

    def _writer(self, conn: _Conn) -> None:
        wake = conn.wake
        queue = conn.queue
        sock = conn.sock
        try:
            while not conn.closed:
                if not wake.wait(self.heartbeat) and not queue:
                    sock.sendall(HEARTBEAT)
                    self.heartbeats += 1
                    continue
                wake.clear()
                while queue and not conn.closed:
                    sock.sendall(queue.popleft())
        except OSError:
            pass
        finally:
            self._close(conn, "client")

    # -- send mode ----------------------------------------------------------------

    def _deliver_send(self, conn: _Conn, payload: bytes) -> None:
        queue = conn.queue
        if queue:
            if len(queue) >= self.queue_size:
                self._close(conn, "slow")
            else:
                queue.append(payload)
            return
        try:
            sent = conn.sock.send(payload)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn, "client")
            return
        conn.last_write = self.loop.now()
        if sent < len(payload):
            queue.append(payload[sent:])
            conn.io = self.loop.io(conn.sock.fileno(), 2)
            conn.io.start(self._flush, conn)

    def _flush(self, conn: _Conn) -> None:
        queue = conn.queue
        raw = conn.sock
        try:
            while queue:
                head = queue[0]
                sent = raw.send(head)
                if sent < len(head):
                    queue[0] = head[sent:]
                    break
                queue.popleft()
        except BlockingIOError:
            pass
        except OSError:
            self._close(conn, "client")
            return
        conn.last_write = self.loop.now()
        if not queue and conn.io is not None:
            conn.io.stop()
            conn.io.close()
            conn.io = None

    def _arm_heartbeat(self, conn: _Conn, delay: float) -> None:
        if conn.timer is not None:
            conn.timer.close()
        conn.timer = self.loop.timer(delay)
        conn.timer.start(self._beat, conn)

    def _beat(self, conn: _Conn) -> None:
        if conn.closed:
            return
        silent = self.loop.now() - conn.last_write
        if silent >= self.heartbeat and not conn.queue:
            self._deliver_send(conn, HEARTBEAT)
            self.heartbeats += 1
            if conn.closed:
                return
            silent = 0.0
        self._arm_heartbeat(conn, max(self.heartbeat - silent, 0.001))

    def serve_forever(self) -> None:
        self.server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("send", "sendall"), default="send")
    parser.add_argument("--heartbeat", type=float, default=15.0)
    parser.add_argument("--queue-size", type=int, default=1000)
    args = parser.parse_args(argv)
    raise_nofile()
    server = CeilingServer(args.port, args.mode, args.heartbeat, args.queue_size)
    server.serve_forever()


if __name__ == "__main__":
    main()
