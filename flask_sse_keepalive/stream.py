"""One client connection: its bounded queue, heartbeats, writes and cleanup.

A :class:`Connection` is the broker's subscriber and the body of the HTTP
response. Events reach it through :meth:`Connection.deliver`, called from the
publisher's fan-out, which must never block; how the bytes then reach the
socket depends on what the server offers:

* **direct** (gunicorn ``-k gevent``, gevent's ``WSGIServer``): the server
  exposes the client socket. After the server has sent the headers and the
  first chunk, the connection writes chunked frames itself: the fan-out tries
  a non-blocking ``send``; only when the socket is full does it queue the
  payload for the handler greenlet, which drains the queue in one write. One
  small greenlet per connection writes heartbeats when the line is idle and
  watches the socket, so a client that closes is released at once, not at the
  next heartbeat.
* **iterator** (no socket exposed, or ``SSE_DIRECT_WRITE = False``): payloads
  are queued and the WSGI iterator yields them, coalesced; the iterator writes
  the heartbeat itself when it has waited an interval in silence.
* **threaded** (the development server): like iterator, with thread-safe
  waiting.

Whatever ends the stream, exactly one ``finally`` (in :meth:`Connection.body`)
releases what it took: the broker subscription, the heartbeat greenlet, the
registry slot, and sends ``client_disconnected`` with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import random
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from .event import Event

if TYPE_CHECKING:
    from .brokers.base import Message
    from .registry import Registry

__all__ = ["Connection"]

log = logging.getLogger("flask_sse_keepalive")

HEARTBEAT = b": heartbeat\n\n"
#: reasons after which the socket is in an unknown state and is cut at once
_ABORT_REASONS = frozenset({"client", "slow", "error"})
_ids = itertools.count(1)


def _frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


#: The last payload framed and its frame: a fan-out hands the same payload
#: object to every subscriber in turn, so it is framed once, not per stream.
_framed: tuple[bytes, bytes] = (b"", _frame(b""))


def _frame_shared(payload: bytes) -> bytes:
    global _framed
    last, frame = _framed
    if payload is not last:
        frame = _frame(payload)
        _framed = (payload, frame)
    return frame


class Connection:
    """One open stream. Created per request by the stream view or ``@sse_stream``.

    Public, read-only attributes (what signal receivers see): ``id`` (unique in
    the process), ``channels``, ``remote_addr``, ``client_key`` (what the
    per-client limit counts by), ``last_event_id`` (what the client resumed
    from, or ``None``) and ``connected_at`` (``time.time()``).
    """

    __slots__ = (
        "__weakref__",
        "_busy",
        "_chunked",
        "_close_reason",
        "_deadline",
        "_hand_over",
        "_heartbeat",
        "_last_seq",
        "_last_write",
        "_live",
        "_partial",
        "_pending",
        "_raw",
        "_readable",
        "_registry",
        "_sock",
        "_wake",
        "channels",
        "client_key",
        "connected_at",
        "id",
        "last_event_id",
        "remote_addr",
    )

    def __init__(
        self,
        registry: Registry,
        channels: Sequence[str],
        *,
        last_event_id: str | None = None,
        remote_addr: str | None = None,
        client_key: str | None = None,
        sock: Any = None,
        chunked: bool = True,
        hand_over: bool = False,
    ) -> None:
        self.id = next(_ids)
        self.channels = tuple(channels)
        self.remote_addr = remote_addr
        self.last_event_id = last_event_id
        self.connected_at = time.time()
        self.client_key = client_key
        self._registry = registry
        # The gevent socket (for blocking writes) and the OS-level socket under
        # it (for non-blocking ones that never switch greenlets).
        self._sock = sock
        self._raw: Any = getattr(sock, "_sock", None) if sock is not None else None
        self._chunked = chunked
        self._pending: list[bytes] = []
        self._partial = b""
        self._busy = False
        self._live = False
        # Wakes the writer: a thread-safe event for the iterator, replaced by
        # a _Waker (a direct greenlet switch) while _serve owns the socket.
        self._wake: threading.Event | _Waker = threading.Event()
        self._readable = False
        self._heartbeat: Any = None
        # gunicorn's own handler can let go of the connection (see body()).
        self._hand_over = hand_over
        self._last_seq = -1
        self._last_write = time.monotonic()
        self._deadline: float | None = None
        self._close_reason: str | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} {','.join(self.channels)} from {self.remote_addr}>"

    # -- what the broker and the registry call --------------------------------

    def deliver(self, message: Message) -> None:
        """Queue or send one event. Never blocks; drops repeats at a resume seam."""
        if message.seq <= self._last_seq:
            return
        self._last_seq = message.seq
        self._registry.stats.delivered += 1
        self._send(message.payload)

    def reset(self, reason: str, position: str, seq: int) -> None:
        """Begin with ``stream-reset``: the client's id cannot be resumed gap-free."""
        self._last_seq = seq
        self._registry.stats.resets += 1
        data = {"reason": reason, "last_event_id": self.last_event_id}
        self._send(Event(data=data, event="stream-reset", id=position).encode())

    def send_event(self, event: Event) -> bool:
        """Send an event made by an ``@sse_stream`` view (no broker, no id order).

        :return: ``False`` once the connection is closing.
        """
        if self._close_reason is not None:
            return False
        self._send(event.encode())
        return True

    @property
    def backlog(self) -> int:
        """Payloads waiting to be written."""
        return len(self._pending) + (1 if self._partial else 0)

    def close(self, reason: str) -> None:
        """End the stream. Idempotent; the first reason wins; never blocks."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        if reason in _ABORT_REASONS and self._live and self._raw is not None:
            # A half-written chunk cannot be finished: cut the connection so
            # that a blocked write returns and the server does not reuse it.
            self._shutdown_socket()
        self._wake.set()

    # -- the write path -------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        if self._close_reason is not None:
            return
        if (
            self._live
            and self._raw is not None
            and not self._busy
            and not self._pending
            and not self._partial
        ):
            data = _frame_shared(payload) if self._chunked else payload
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close("client")
                return
            self._last_write = time.monotonic()
            if sent == len(data):
                return
            self._partial = data[sent:]
            self._wake.set()
            return
        if self._live and len(self._pending) >= self._registry.settings.queue_size:
            self._registry.stats.slow += 1
            log.warning("dropping slow client %s: %d events queued", self, len(self._pending))
            self.close("slow")
            return
        self._pending.append(payload)
        self._wake.set()

    def _take(self) -> bytes:
        # Copy, then delete what was copied: each step is atomic, so an append
        # from another thread (development mode) in between is kept.
        pending = self._pending
        if not pending:
            return b""
        taken = pending[:]
        del pending[: len(taken)]
        return b"".join(taken)

    def _shutdown_socket(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)

    # -- the WSGI iterator ----------------------------------------------------

    def body(self, first: bytes, producer: Producer | None = None) -> Iterator[bytes]:
        """The response body. ``first`` is written at once (``retry`` and a comment).

        :param producer: what feeds an ``@sse_stream`` connection (started
            once the stream is live, stopped where the connection is released).
        """
        registry = self._registry
        reason = "client"
        handed_over = False
        try:
            registry.open(self)
            max_seconds = registry.settings.max_stream_seconds
            if max_seconds:
                # Jitter, so that streams opened together do not all rotate together.
                self._deadline = time.monotonic() + max_seconds * random.uniform(0.9, 1.1)
            if self.channels:
                registry.broker.attach(self, self.last_event_id)
            if self._raw is not None:
                self._set_nodelay()
            # The server sends the head and this first chunk, through every
            # middleware, exactly as for any response.
            yield first + self._take()
            self._last_write = time.monotonic()
            self._live = True
            if self._raw is None:
                if producer is not None:
                    producer.start(self)
                yield from self._run_iterator()
                reason = self._close_reason or "server"
                if reason in ("shutdown", "lifetime"):
                    yield self._farewell(reason)
            elif self._hand_over:
                self._take_socket()
                handed_over = True
                import gevent

                gevent.spawn(self._serve_handed_over, producer)
                raise _HandedOver(errno.EPIPE, "the stream continues in its own greenlet")
            else:
                reason = self._serve(producer)
        except GeneratorExit:
            # The server closed the iterator: the client went away (or the
            # server is stopping, in which case the reason is already set).
            reason = self._close_reason or "client"
            raise
        except _HandedOver:
            raise
        except Exception:
            log.exception("stream %s failed", self)
            self.close("error")
        except BaseException:
            # GreenletExit or SystemExit: the server is killing its handlers.
            reason = self._close_reason or "shutdown"
            raise
        finally:
            if not handed_over:
                self._release(reason, producer)

    def _release(self, reason: str, producer: Producer | None) -> None:
        """The one place where a connection gives back what it took."""
        reason = self._close_reason = self._close_reason or reason
        if producer is not None:
            producer.stop()
        if self.channels:
            self._registry.broker.detach(self)
        self._registry.release(self, reason)

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
        except Exception:
            log.exception("stream %s failed", self)
            self.close("error")
        except BaseException:
            reason = self._close_reason or "shutdown"
            raise
        finally:
            _handed_over.discard(self)
            self._release(reason, producer)
            self._sock.close()

    def _farewell(self, reason: str) -> bytes:
        # Spread reconnects so a restart does not become a stampede.
        retry = int(self._registry.settings.retry_ms * random.uniform(0.5, 1.5))
        return f": {reason}\nretry: {retry}\n\n".encode()

    def _run_iterator(self) -> Iterator[bytes]:
        interval = self._registry.settings.heartbeat_interval
        wake = cast(threading.Event, self._wake)
        while self._close_reason not in _ABORT_REASONS:
            now = time.monotonic()
            due = self._last_write + interval
            if self._deadline is not None and now >= self._deadline:
                self.close("lifetime")
            if self._close_reason is not None and not self._pending:
                break  # what was queued before a clean close has been written
            timeout = due - now
            if self._deadline is not None:
                timeout = min(timeout, self._deadline - now)
            if not self._pending and timeout > 0:
                wake.wait(timeout)
            wake.clear()
            if self._close_reason in _ABORT_REASONS:
                break
            if self._pending:
                chunk = self._take()
            elif time.monotonic() >= due:
                chunk = HEARTBEAT
                self._registry.stats.heartbeats += 1
            else:
                continue
            self._last_write = time.monotonic()
            yield chunk

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
        self._wake = _Waker(waiter, loop)
        if producer is not None:
            producer.start(self)
        send_timeout = self._registry.settings.send_timeout
        reader = loop.io(self._raw.fileno(), 1)
        reader.start(self._on_readable)
        self._arm_heartbeat(loop, self._registry.settings.heartbeat_interval)
        lifetime = None
        if self._deadline is not None:
            lifetime = loop.timer(max(0.0, self._deadline - time.monotonic()))
            lifetime.start(self.close, "lifetime")
        try:
            while self._close_reason not in _ABORT_REASONS:
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
                data += _frame(payload) if self._chunked else payload
            with gevent.Timeout(send_timeout, _SendTimeout):
                self._sock.sendall(data)
            self._last_write = time.monotonic()
        except _SendTimeout:
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
        if reason not in _ABORT_REASONS:
            import gevent

            tail = self._farewell(reason) if reason in ("shutdown", "lifetime") else b""
            data = (_frame(tail) if tail else b"") + b"0\r\n\r\n" if self._chunked else tail
            try:
                # Bounded: a stalled client must not hold up a worker's shutdown.
                with gevent.Timeout(1.0, _SendTimeout):
                    self._sock.sendall(data)
            except (OSError, _SendTimeout):
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


class _Waker:
    """Wakes the greenlet parked in :meth:`Connection._serve`, from anywhere.

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


class _HandedOver(OSError):
    """Raised to the server once the connection owns its socket.

    An ``EPIPE``: gunicorn treats it as a client that went away after the
    response began, logs the request, closes its own descriptor quietly and
    frees its handler; the stream goes on through the duplicate.
    """


#: Streams that run in their own greenlet, for the shutdown at exit.
_handed_over: weakref.WeakSet[Connection] = weakref.WeakSet()


def close_handed_over(timeout: float) -> None:
    """End the streams that run in their own greenlets (at process exit)."""
    import gevent

    streams = list(_handed_over)
    for connection in streams:
        connection.close("shutdown")
    deadline = time.monotonic() + timeout
    while _handed_over and time.monotonic() < deadline:
        gevent.sleep(0.05)


class _SendTimeout(Exception):
    pass


class Producer(Protocol):
    """Feeds a connection from application code (see ``@sse_stream``)."""

    def start(self, connection: Connection) -> None: ...

    def stop(self) -> None: ...
