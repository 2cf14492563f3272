"""A connection that writes to its socket itself (gevent servers that expose it).

Where the server exposes the client socket (gunicorn ``-k gevent`` and
``gevent_pywsgi``, gevent's ``WSGIServer``), a :class:`DirectConnection`
writes HTTP/1.1 chunks itself once the server has sent the head and the first
chunk. The fan-out writes without blocking (:meth:`DirectConnection._send`);
only a full socket queues a backlog, which the connection's own greenlet
drains. That greenlet also schedules the heartbeat, watches the socket for
the client's EOF and ends the response.

* **owned** (gunicorn ``-k gevent``): the connection keeps a duplicate of the
  socket and lets gunicorn's request handler (its greenlet, parser and
  environ) go, so an idle stream costs about 10 KB; the stream then runs in a
  greenlet of its own.
* **direct** (``gevent_pywsgi``, gevent's ``WSGIServer``): the connection
  writes from the server's handler greenlet, which it keeps until the end.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator, Sequence
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import Waiter
from gevent.socket import wait as wait_on_watcher

from .heartbeats import GRID, HeartbeatClock, clock_for
from .stream import (
    FAREWELL_REASONS,
    HEARTBEAT,
    CloseReason,
    Connection,
    Producer,
)

if TYPE_CHECKING:
    from .brokers.base import Message
    from .state import AppState

__all__ = ["DirectConnection"]

#: A first chunk (the first bytes and what was queued before them, e.g. a
#: replay) up to this size goes out with the response head; a bigger backlog
#: is written by the connection, under its own send timeout.
FIRST_CHUNK_LIMIT = 16 * 1024
#: A clean close (shutdown, lifetime) that meets a write in progress lets it
#: finish for at most this long, so the goodbye lands on a chunk boundary;
#: then the line is cut without one.
CLOSE_GRACE = 1.0


def frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


#: The last payload framed and its frame: a fan-out hands the same payload
#: object to every subscriber in turn, so it is framed once, not per stream.
_framed: list[bytes] = [b"", frame(b"")]


class DirectConnection(Connection):
    """A stream that writes HTTP/1.x to the client socket itself.

    :param sock: the server's gevent client socket (not TLS).
    :param chunked: frame the body as HTTP/1.1 chunks (not for HTTP/1.0).
    :param hand_over: take the socket over from the server (gunicorn
        ``-k gevent``, which lets a request go whose body raises ``EPIPE``).
    """

    __slots__ = (
        "_broken",
        "_busy",
        "_chunked",
        "_clock",
        "_heartbeat_slot",
        "_partial",
        "_raw",
        "_ready",
        "_waiter",
        "_waker",
        "_writable",
    )

    def __init__(
        self,
        state: AppState,
        channels: Sequence[str],
        *,
        sock: Any,
        chunked: bool = True,
        hand_over: bool = False,
        last_event_id: str | None = None,
        remote_addr: str | None = None,
        client_key: str | None = None,
        heartbeat_interval: float | None = None,
        expires_at: float | None = None,
    ) -> None:
        super().__init__(
            state,
            channels,
            last_event_id=last_event_id,
            remote_addr=remote_addr,
            client_key=client_key,
            cut=sock,
            heartbeat_interval=heartbeat_interval,
            expires_at=expires_at,
        )
        self.mode = "owned" if hand_over else "direct"
        #: the OS-level socket under the server's gevent one: written without
        #: blocking, waited on by this connection's own watchers
        self._raw: Any = sock._sock
        self._chunked = chunked
        #: the unsent end of a chunk the fan-out could only partly write
        self._partial = b""
        #: a blocking write is under way: others queue behind it
        self._busy = False
        #: a write failed part-way: the body's framing cannot be completed
        self._broken = False
        #: the fan-out may send now: live, nothing queued or half-sent, no
        #: write under way, not closing (see _update_ready)
        self._ready = False
        self._heartbeat_slot = 0
        self._writable: Any = None
        hub = gevent.get_hub()
        self._clock: HeartbeatClock = clock_for(hub.loop)
        self._waiter: Any = Waiter(hub)
        self._waker = Waker(self._waiter, hub.loop)

    # -- the write path: from the fan-out, never blocking ------------------------

    def deliver(self, message: Message) -> None:
        # The hot path, once per event per stream: what Connection.deliver and
        # _send do, in one call and a handful of slot reads.
        seq = message.seq
        if seq <= self._last_seq:
            return
        self._last_seq = seq
        self._stats.delivered += 1
        if self._ready:
            self._write_now(message.payload)
        else:
            self._queue(message.payload)

    def _send(self, payload: bytes) -> None:
        if self._ready:
            self._write_now(payload)
        else:
            self._queue(payload)

    def _write_now(self, payload: bytes) -> None:
        """Send without blocking; what the socket does not take waits for
        this connection's greenlet."""
        if not self._chunked:
            data = payload
        elif payload is _framed[0]:
            data = _framed[1]
        else:
            data = _framed[1] = frame(payload)
            _framed[0] = payload
        try:
            sent = self._raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._ready = False
            self._broken = True
            self._failed(exc)
            return
        self._last_write = _monotonic()
        if sent != len(data):
            self._partial = data[sent:]
            self._ready = False
            self._wake()

    def _queue(self, payload: bytes) -> None:
        self._ready = False
        super()._queue(payload)

    def _update_ready(self) -> None:
        self._ready = (
            self._live
            and not self._busy
            and not self._pending
            and not self._partial
            and self._close_reason is None
        )

    def _wake(self) -> None:
        self._waker.set()

    @property
    def backlog(self) -> int:
        """Payloads waiting to be written, a write under way counted as one."""
        return len(self._pending) + (1 if self._partial or self._busy else 0)

    def close(self, reason: CloseReason, *, abort: bool | None = None) -> None:
        if self._close_reason is not None:
            return
        self._ready = False
        super().close(reason, abort=abort)
        if self._busy and not self._aborted:
            # A client that reads slowly is being written to: give the write
            # a moment to end on a chunk boundary, then cut the line.
            grace = self._waker.loop.timer(CLOSE_GRACE)
            grace.start(self._cut_if_busy, grace)

    def _cut_if_busy(self, timer: Any) -> None:
        timer.close()
        if self._busy:
            self.cut()

    # -- the stream's life --------------------------------------------------------

    def body(self, first: bytes, producer: Producer | None = None) -> Iterator[bytes]:
        reason: CloseReason = "client"
        handed_over = False
        try:
            self._begin()
            self._set_nodelay()
            queued = sum(map(len, self._pending))
            # The server sends the head and this first chunk, through every
            # middleware, exactly as for any response.
            yield first + self._take() if queued <= FIRST_CHUNK_LIMIT else first
            self._last_write = time.monotonic()
            self._live = True
            self._update_ready()
            if self.mode == "owned":
                self._take_socket()
                handed_over = True
                gevent.spawn(self._serve_owned, producer)
                raise HandedOver(errno.EPIPE, "the stream continues in its own greenlet")
            reason = self._serve(producer)
        except HandedOver:
            raise
        except BaseException as exc:
            reason = self._reason_for(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if not handed_over:
                self._release(reason, producer)

    def _take_socket(self) -> None:
        """Keep a duplicate of the client socket for this connection alone.

        gunicorn then closes its own descriptor and its handler greenlet ends,
        with the request's parser, environ and stack: an open stream costs this
        object, one greenlet and the socket, not a parked request handler.
        """
        # A plain socket on a duplicate descriptor (its options, TCP_USER_TIMEOUT
        # too, go with it): written without blocking, waited on by watchers of
        # our own, so no gevent socket is needed, nor its cost at close. The
        # OS socket itself: under gevent's patching ``socket.socket`` is
        # gevent's, whose Python-level send() sat on every delivery.
        own = _socket.socket(fileno=os.dup(self._raw.fileno()))
        own.setblocking(False)
        self._raw = self._cut = own

    def _serve_owned(self, producer: Producer | None) -> None:
        reason: CloseReason = "error"
        try:
            reason = self._serve(producer)
        except BaseException as exc:
            reason = self._reason_for(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._release(reason, producer)
            self._raw.close()

    def _set_nodelay(self) -> None:
        # Events are small and latency matters more than packet count; the
        # writes are already coalesced when a backlog forms.
        try:  # noqa: SIM105 (contextlib.suppress costs more, once per stream)
            self._raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP: a unix socket behind a proxy

    def _serve(self, producer: Producer | None) -> CloseReason:
        """Own the socket until the stream ends; return the reason.

        This greenlet owns the connection: it schedules its heartbeat,
        drains the backlog when the fan-out found the socket full, notices the
        client's EOF (a read watcher, so a vanished client is released at
        once, not at the next heartbeat) and ends the stream. On a healthy
        line it does not even wake for a heartbeat: the heartbeat clock
        writes it without blocking, the way the fan-out writes events, and
        wakes the greenlet only if the socket is full. A greenlet switch per
        heartbeat would cost more than the write itself.
        """
        loop = self._waker.loop
        waiter = self._waiter
        if producer is not None:
            producer.start(self)
        self._watch_eof(loop)
        self._heartbeat_slot = self._clock.schedule(self._beat, self.heartbeat_interval)
        lifetime = None
        if self._deadline is not None:
            lifetime = loop.timer(max(0.0, self._deadline - time.monotonic()))
            lifetime.start(self.close, self._deadline_reason)
        try:
            while not self._aborted and not self._broken:
                if self._partial or self._pending:
                    self._flush()
                    continue
                if self._close_reason is not None:
                    break  # a clean close, after what was queued before it
                try:
                    waiter.get()
                finally:
                    waiter.clear()
            reason = self._close_reason or "server"
            self._finish(reason)
        finally:
            if self._writable is not None:
                self._writable.close()
            self._clock.cancel(self._beat, self._heartbeat_slot)
            if lifetime is not None:
                lifetime.close()
        return reason

    def _beat(self) -> None:
        """Called by the heartbeat clock (in the hub): write if the line is idle."""
        if self._close_reason is not None:
            return
        interval = self.heartbeat_interval
        silent = _monotonic() - self._last_write
        # The clock may come up to half a slot early (see heartbeats.GRID).
        if silent >= interval - GRID:
            if self._ready:
                self._stats.heartbeats += 1
                self._write_now(HEARTBEAT)
            silent = 0.0
        self._heartbeat_slot = self._clock.schedule(self._beat, interval - silent)

    def _flush(self) -> None:
        """Write the backlog (blocking this greenlet only) or end the stream."""
        self._busy = True
        self._ready = False
        try:
            data = self._partial
            self._partial = b""
            payload = self._take()
            if payload:
                data += frame(payload) if self._chunked else payload
            self._write(data)
            self._last_write = time.monotonic()
        except SendTimeout:
            self._drop_slow(f"no progress in {self._send_timeout} s")
        except OSError as exc:
            self._failed(exc)
        finally:
            self._busy = False
            self._update_ready()

    def _write(self, data: bytes, timeout: float | None = None) -> None:
        """Write all of ``data``; fail if the socket takes nothing for
        ``timeout`` (``SSE_SEND_TIMEOUT``): a slow reader that makes progress
        is kept."""
        view = memoryview(data)
        try:
            while view:
                try:
                    sent = self._raw.send(view)
                except BlockingIOError:
                    sent = 0
                if sent:
                    view = view[sent:]
                    continue
                if self._writable is None:  # made at the first full socket
                    self._writable = self._waker.loop.io(self._raw.fileno(), 2)
                wait_on_watcher(self._writable, timeout or self._send_timeout, SendTimeout)
        except BaseException:
            self._broken = True
            raise

    def _finish(self, reason: CloseReason) -> None:
        """End the HTTP response ourselves and close the connection.

        Closing (not keeping it alive) makes the client reconnect on a new
        connection, which after a shutdown or a lifetime rotation reaches a
        live, possibly different, worker. The goodbye is written only where
        the body is whole: a write that failed part-way leaves a chunk that
        cannot be finished.
        """
        if not self._aborted and not self._broken and not self._partial:
            data = self._farewell(reason) if reason in FAREWELL_REASONS else b""
            if self._chunked:
                data = (frame(data) if data else b"") + b"0\r\n\r\n"  # the last chunk
            # Bounded: a stalled client must not hold up a worker's shutdown.
            with contextlib.suppress(OSError, SendTimeout):
                self._write(data, CLOSE_GRACE)
        if self.mode != "owned":
            # The server holds the socket too: shut it, so the client sees the
            # end now. An owned socket's close (ours is its only descriptor)
            # sends the FIN by itself.
            self.cut()


class Waker:
    """Wakes the greenlet parked in :meth:`DirectConnection._serve`, from anywhere.

    Cheaper than an event: one callback in the hub that switches straight to
    the parked greenlet (through a :class:`gevent.hub.Waiter`, which keeps
    the value if the greenlet is busy elsewhere, e.g. in a blocking write).
    """

    __slots__ = ("_scheduled", "_waiter", "loop")

    def __init__(self, waiter: Any, loop: Any) -> None:
        self._waiter = waiter
        self.loop = loop
        self._scheduled = False

    def set(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.run_callback(self._fire)

    def _fire(self) -> None:
        self._scheduled = False
        self._waiter.switch(None)


class HandedOver(OSError):
    """Raised to the server once the connection owns its socket.

    An ``EPIPE``: gunicorn treats it as a client that went away after the
    response began, logs the request, closes its own descriptor quietly and
    frees its handler; the stream goes on through the duplicate.
    """


class SendTimeout(Exception):
    """A write made no progress within ``SSE_SEND_TIMEOUT``."""
