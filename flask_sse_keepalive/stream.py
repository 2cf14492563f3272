"""One client connection: its bounded queue, resume seam, modes and cleanup.

A :class:`Connection` is the broker's subscriber and the body of the HTTP
response. Events reach it through :meth:`Connection.deliver`, called from the
publisher's fan-out, which must never block; how the bytes then reach the
socket depends on what the server offers:

* **direct** (gevent servers that expose the client socket): the connection
  writes chunks itself, without blocking from the fan-out, and one greenlet of
  its own drains a backlog, arms heartbeats and watches for EOF; under
  gunicorn ``-k gevent`` it also takes the socket over from gunicorn's
  request handler. See :mod:`.direct`.
* **iterator** (no socket exposed, TLS or HTTP/2 in the server, or
  ``SSE_DIRECT_WRITE = False``): payloads are queued and the WSGI iterator
  yields them, coalesced; it writes the heartbeat itself after an idle interval.
* **threaded** (the development server, tests): like iterator, with
  thread-safe waiting.

Whatever ends the stream, one method (:meth:`Connection._release`), called
from exactly one ``finally``, gives back what it took: the broker
subscription, the producer of an ``@sse_stream`` view, the registry slot, and
sends ``client_disconnected`` with the reason.
"""

from __future__ import annotations

import errno
import itertools
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from .direct import (
    ABORT_REASONS,
    HEARTBEAT,
    DirectWriter,
    HandedOver,
    Waker,
    frame_shared,
)
from .event import Event
from .runtime import gevent_patched

if TYPE_CHECKING:
    from .brokers.base import Message
    from .registry import Registry

__all__ = ["Connection"]

log = logging.getLogger("flask_sse_keepalive")

_ids = itertools.count(1)

#: Written once the broker has positioned the stream (after any replay or
#: ``stream-reset``): from then on every published event reaches it. With the
#: memory broker it is part of the first bytes; with Redis it follows once
#: Redis has confirmed the subscription. Tests wait for it.
SUBSCRIBED = b": sse-keepalive subscribed\n\n"


class Connection(DirectWriter):
    """One open stream. Created per request by the stream view or ``@sse_stream``.

    Public, read-only attributes (what signal receivers see): ``id`` (unique in
    the process), ``channels``, ``remote_addr``, ``client_key`` (what the
    per-client limit counts by), ``last_event_id`` (what the client resumed
    from, or ``None``), ``connected_at`` (``time.time()``) and ``mode``, how
    its bytes reach the socket: ``"owned"`` (the connection took the socket
    over from gunicorn ``-k gevent``), ``"direct"`` (it writes to the socket
    from the server's handler), ``"iterator"`` (the server writes what the
    WSGI iterator yields) or ``"threaded"`` (development mode).
    """

    __slots__ = (
        "__weakref__",
        "_close_reason",
        "_deadline",
        "_hand_over",
        "_last_seq",
        "_live",
        "_pending",
        "_registry",
        "_subscribed",
        "_wake",
        "channels",
        "client_key",
        "connected_at",
        "id",
        "last_event_id",
        "mode",
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
        self._wake: threading.Event | Waker = threading.Event()
        self._readable = False
        self._heartbeat: Any = None
        # gunicorn's own handler can let go of the connection (see body()).
        self._hand_over = hand_over
        if sock is None:
            self.mode = "iterator" if gevent_patched() else "threaded"
        else:
            self.mode = "owned" if hand_over else "direct"
        self._last_seq = -1
        self._last_write = time.monotonic()
        self._deadline: float | None = None
        self._close_reason: str | None = None
        self._subscribed = False

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

    def ready(self) -> None:
        """Say once that the stream is subscribed (see :data:`SUBSCRIBED`)."""
        if not self._subscribed:
            self._subscribed = True
            self._send(SUBSCRIBED)

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
        if reason in ABORT_REASONS and self._live and self._raw is not None:
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
            data = frame_shared(payload) if self._chunked else payload
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
                raise HandedOver(errno.EPIPE, "the stream continues in its own greenlet")
            else:
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

    def _reason_for(self, exc: BaseException) -> str:
        """Why the stream ends when ``exc`` escapes the code serving it.

        An error is logged and ends the stream cleanly; the caller re-raises
        what is not an :class:`Exception`.
        """
        if isinstance(exc, GeneratorExit):
            # The server closed the iterator: the client went away (or the
            # server is stopping, in which case the reason is already set).
            return self._close_reason or "client"
        if isinstance(exc, Exception):
            log.exception("stream %s failed", self)
            self.close("error")
            return "error"
        # GreenletExit or SystemExit: the server is killing its handlers.
        return self._close_reason or "shutdown"

    def _release(self, reason: str, producer: Producer | None) -> None:
        """The one place where a connection gives back what it took."""
        reason = self._close_reason = self._close_reason or reason
        if producer is not None:
            producer.stop()
        if self.channels:
            self._registry.broker.detach(self)
        self._registry.release(self, reason)

    def _run_iterator(self) -> Iterator[bytes]:
        interval = self._registry.settings.heartbeat_interval
        wake = cast(threading.Event, self._wake)
        while self._close_reason not in ABORT_REASONS:
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
            if self._close_reason in ABORT_REASONS:
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


class Producer(Protocol):
    """Feeds a connection from application code (see ``@sse_stream``)."""

    def start(self, connection: Connection) -> None: ...

    def stop(self) -> None: ...
