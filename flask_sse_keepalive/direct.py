"""Writing to a socket that the connection owns (gevent servers).

Where the server exposes the client socket (gunicorn ``-k gevent`` and
``gevent_pywsgi``, gevent's ``WSGIServer``), a connection writes HTTP/1.1
chunks itself once the server has sent the head and the first chunk. The
fan-out writes without blocking (:meth:`Connection._send`); only a full socket
queues a backlog, which the connection's own greenlet drains in one write.
That greenlet also arms the heartbeat timer, watches the socket for the
client's EOF and ends the response.

Under gunicorn ``-k gevent`` the connection goes further and keeps a
duplicate of the socket, so that gunicorn's request handler (its greenlet,
parser and environ) is freed: an idle stream then costs about 10 KB.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import time
import weakref
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .registry import Registry
    from .stream import Connection, Producer

log = logging.getLogger("flask_sse_keepalive")

HEARTBEAT = b": heartbeat\n\n"
#: reasons after which the socket is in an unknown state and is cut at once
ABORT_REASONS = frozenset({"client", "slow", "error"})


def frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


#: The last payload framed and its frame: a fan-out hands the same payload
#: object to every subscriber in turn, so it is framed once, not per stream.
_framed: tuple[bytes, bytes] = (b"", frame(b""))


def frame_shared(payload: bytes) -> bytes:
    global _framed
    last, frame_ = _framed
    if payload is not last:
        chunk = frame(payload)
        _framed = (payload, chunk)
        return chunk
    return frame_


class DirectWriter:
    """The socket-owning half of :class:`~.stream.Connection` (a mixin)."""

    __slots__ = (
        "_busy",
        "_chunked",
        "_heartbeat",
        "_last_write",
        "_partial",
        "_raw",
        "_readable",
        "_sock",
    )

    #: the gevent socket (for blocking writes) ...
    _sock: Any
    #: ... and the OS-level socket under it (for writes that never switch)
    _raw: Any
    _chunked: bool
    #: the unsent end of a chunk the fan-out could only partly write
    _partial: bytes
    #: a blocking write is under way: others queue behind it
    _busy: bool
    _readable: bool
    _heartbeat: Any
    _last_write: float

    if TYPE_CHECKING:
        _pending: list[bytes]
        _wake: Any
        _deadline: float | None
        _close_reason: str | None
        _registry: Registry

        def close(self, reason: str) -> None: ...
        def _send(self, payload: bytes) -> None: ...
        def _take(self) -> bytes: ...
        def _release(self, reason: str, producer: Producer | None) -> None: ...
        def _reason_for(self, exc: BaseException) -> str: ...

    def _farewell(self, reason: str) -> bytes:
        # Spread reconnects so a restart does not become a stampede.
        retry = int(self._registry.settings.retry_ms * random.uniform(0.5, 1.5))
        return f": {reason}\nretry: {retry}\n\n".encode()

    def _wire(self, payload: bytes) -> bytes:
        """``payload`` as it goes on the socket: one chunk, unless HTTP/1.0."""
        return frame(payload) if self._chunked else payload

    def _shutdown_socket(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)

    def _take_socket(self) -> None:
        """Keep a duplicate of the client socket for this connection alone.

        gunicorn then closes its own descriptor and its handler greenlet ends,
        with the request's parser, environ and stack: an open stream costs this
        object, one greenlet and the socket, not a parked request handler.
        """
        own = self._sock.dup()
        self._sock = own
        self._raw = own._sock
        _handed_over.add(self)

    def _serve_handed_over(self, producer: Producer | None) -> None:
        reason = "error"
        try:
            reason = self._serve(producer)
        except BaseException as exc:
            reason = self._reason_for(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            _handed_over.discard(self)
            self._release(reason, producer)
            self._sock.close()

    def _set_nodelay(self) -> None:
        # Events are small and latency matters more than packet count; the
        # writes are already coalesced when a backlog forms.
        with contextlib.suppress(OSError):  # not TCP: a unix socket behind a proxy
            self._raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self, producer: Producer | None) -> str:
        """Own the socket until the stream ends; return the reason.

        This greenlet owns the connection: it arms the heartbeat timer,
        drains the backlog when the fan-out found the socket full, notices the
        client's EOF (a read watcher, so a vanished client is released at
        once, not at the next heartbeat) and ends the stream. On a healthy
        line it does not even wake for a heartbeat: the timer's callback
        writes it without blocking, the way the fan-out writes events, and
        wakes the greenlet only if the socket is full. A greenlet switch per
        heartbeat would cost more than the write itself.
        """
        import gevent
        from gevent.hub import Waiter

        hub = gevent.get_hub()
        loop = hub.loop
        waiter: Any = Waiter(hub)
        self._wake = Waker(waiter, loop)
        if producer is not None:
            producer.start(cast("Connection", self))
        send_timeout = self._registry.settings.send_timeout
        reader = loop.io(self._raw.fileno(), 1)
        reader.start(self._on_readable)
        self._arm_heartbeat(loop, self._registry.settings.heartbeat_interval)
        lifetime = None
        if self._deadline is not None:
            lifetime = loop.timer(max(0.0, self._deadline - time.monotonic()))
            lifetime.start(self.close, "lifetime")
        try:
            while self._close_reason not in ABORT_REASONS:
                if self._partial or self._pending:
                    self._flush(send_timeout)
                    continue
                if self._close_reason is not None:
                    break  # a clean close, after what was queued before it
                try:
                    waiter.get()
                finally:
                    waiter.clear()
                if self._readable:
                    self._readable = False
                    if not self._check_eof():
                        reader.stop()
        finally:
            reader.close()
            self._heartbeat.close()
            if lifetime is not None:
                lifetime.close()
        reason = self._close_reason or "server"
        self._finish(reason)
        return reason

    def _arm_heartbeat(self, loop: Any, delay: float) -> None:
        self._heartbeat = timer = loop.timer(delay)
        timer.start(self._beat, loop)

    def _beat(self, loop: Any) -> None:
        """The heartbeat timer's callback (in the hub): write if the line is idle."""
        self._heartbeat.close()
        if self._close_reason is not None:
            return
        interval = self._registry.settings.heartbeat_interval
        silent = time.monotonic() - self._last_write
        # A timer may fire a hair before the clock reaches its due time;
        # without the slack that would cost a second wake-up.
        if silent >= interval * 0.99:
            if not (self._busy or self._pending or self._partial):
                self._registry.stats.heartbeats += 1
                self._send(HEARTBEAT)
            silent = 0.0
        self._arm_heartbeat(loop, interval - silent)

    def _on_readable(self) -> None:
        self._readable = True
        self._wake.set()

    def _flush(self, send_timeout: float) -> None:
        import gevent

        self._busy = True
        try:
            data = self._partial
            self._partial = b""
            payload = self._take()
            if payload:
                data += self._wire(payload)
            with gevent.Timeout(send_timeout, SendTimeout):
                self._sock.sendall(data)
            self._last_write = time.monotonic()
        except SendTimeout:
            self._registry.stats.slow += 1
            log.warning("dropping slow client %s: no progress in %s s", self, send_timeout)
            self.close("slow")
        except OSError:
            self.close("client")
        finally:
            self._busy = False

    def _finish(self, reason: str) -> None:
        """End the HTTP response ourselves and close the connection.

        Closing (not keeping it alive) makes the client reconnect on a new
        connection, which after a shutdown or a lifetime rotation reaches a
        live, possibly different, worker.
        """
        if reason not in ABORT_REASONS:
            import gevent

            data = self._wire(self._farewell(reason)) if reason in ("shutdown", "lifetime") else b""
            if self._chunked:
                data += b"0\r\n\r\n"  # the last chunk: the response is complete
            try:
                # Bounded: a stalled client must not hold up a worker's shutdown.
                with gevent.Timeout(1.0, SendTimeout):
                    self._sock.sendall(data)
            except (OSError, SendTimeout):
                pass
        self._shutdown_socket()

    def _check_eof(self) -> bool:
        """After the socket turned readable: close on EOF or reset.

        :return: whether to keep watching. A client that sends bytes (a
            pipelined request) is not watched any further, since the socket
            would stay readable; the heartbeat's write finds it if it leaves.
        """
        try:
            peeked = self._raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            self.close("client")
            return False
        if not peeked:
            self.close("client")
        return False


class Waker:
    """Wakes the greenlet parked in :meth:`DirectWriter._serve`, from anywhere.

    Cheaper than an event: one callback in the hub that switches straight to
    the parked greenlet (through a :class:`gevent.hub.Waiter`, which keeps
    the value if the greenlet is busy elsewhere, e.g. in a blocking write).
    """

    __slots__ = ("_loop", "_scheduled", "_waiter")

    def __init__(self, waiter: Any, loop: Any) -> None:
        self._waiter = waiter
        self._loop = loop
        self._scheduled = False

    def set(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._fire)

    def _fire(self) -> None:
        self._scheduled = False
        self._waiter.switch(None)


class HandedOver(OSError):
    """Raised to the server once the connection owns its socket.

    An ``EPIPE``: gunicorn treats it as a client that went away after the
    response began, logs the request, closes its own descriptor quietly and
    frees its handler; the stream goes on through the duplicate.
    """


#: Streams that run in their own greenlet, for the shutdown at exit.
_handed_over: weakref.WeakSet[DirectWriter] = weakref.WeakSet()


def close_handed_over(timeout: float) -> None:
    """End the streams that run in their own greenlets (at process exit)."""
    import gevent

    streams = list(_handed_over)
    for connection in streams:
        connection.close("shutdown")
    deadline = time.monotonic() + timeout
    while _handed_over and time.monotonic() < deadline:
        gevent.sleep(0.05)


class SendTimeout(Exception):
    pass
