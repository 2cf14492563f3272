"""One client connection: its bounded queue, the resume seam, its end.

A :class:`Connection` is the broker's subscriber and the body of the HTTP
response. Events reach it through :meth:`Connection.deliver`, called from the
publisher's fan-out, which must never block. This class writes through the
WSGI iterator: the server writes what it yields. That serves every server;
under gevent the view uses :class:`~.direct.DirectConnection` instead where
the server exposes the client socket, which writes to the socket itself.

* **iterator** (gevent without a usable socket: TLS in the server, or
  ``SSE_DIRECT_WRITE = False``): payloads are queued and the iterator yields
  them, coalesced; it writes the heartbeat itself after an idle interval. A
  write the server cannot finish within ``SSE_SEND_TIMEOUT``, or a full
  queue, ends the stream as ``slow`` and cuts the socket under the server.
* **threaded** (no gevent: ``flask run``, the test client): the same, with
  thread-safe waiting.

Whatever ends the stream, one method (:meth:`Connection._release`), called
from exactly one ``finally``, gives back what it took: the broker
subscription, the producer of an ``@sse_stream`` view, the state's slot, and
sends ``client_disconnected`` with the reason.
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
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .event import HEARTBEAT_COMMENT, SUBSCRIBED_COMMENT, Event, encode_comment
from .server import bound_dead_peer, gevent_patched

if TYPE_CHECKING:
    from .brokers.base import Message, ResetReason
    from .state import AppState

__all__ = ["ABORT_REASONS", "CloseReason", "Connection", "Mode", "Producer"]

log = logging.getLogger("flask_sse_keepalive")

#: what a socket reports when TCP gave up on a peer that stopped answering
_UNREACHABLE = frozenset(
    (errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN)
)

#: Why a stream ended (``client_disconnected``'s ``reason``): the peer went
#: away, the worker is stopping, the client could not keep up,
#: ``SSE_MAX_STREAM_SECONDS`` was reached, the server failed, an
#: ``@sse_stream`` generator ended, the peer stopped acknowledging
#: (vanished without a word: the dead-peer bound), or the token the stream
#: was opened with expired.
CloseReason = Literal[
    "client", "shutdown", "slow", "lifetime", "error", "server", "timeout", "expired"
]
#: How a stream's bytes reach the socket (see :attr:`Connection.mode`).
Mode = Literal["owned", "direct", "iterator", "threaded"]
#: Reasons after which the line is in an unknown state: it is cut, no goodbye.
ABORT_REASONS: frozenset[CloseReason] = frozenset({"client", "slow", "error", "timeout"})
#: Reasons whose goodbye carries a spread-out ``retry``, so that clients come
#: back at once, to a live worker, without all coming back together.
FAREWELL_REASONS: frozenset[CloseReason] = frozenset({"shutdown", "lifetime", "expired"})

HEARTBEAT = encode_comment(HEARTBEAT_COMMENT)
#: Written once the broker has positioned the stream (after any replay or
#: ``stream-reset``): from then on every published event reaches it. With the
#: memory broker it is part of the first bytes; with Redis it follows once
#: Redis has confirmed the subscription. Tests wait for it.
SUBSCRIBED = encode_comment(SUBSCRIBED_COMMENT)

_ids = itertools.count(1)


class Producer(Protocol):
    """Feeds a connection from application code (see ``@sse_stream``)."""

    def start(self, connection: Connection) -> None: ...

    def stop(self) -> None: ...


class Connection:
    """One open stream. Created per request by the stream view or ``@sse_stream``.

    Public, read-only attributes (what signal receivers see): ``id`` (unique in
    the process), ``channels``, ``remote_addr``, ``client_key`` (what the
    per-client limit counts by), ``last_event_id`` (what the client resumed
    from, or ``None``), ``connected_at`` (``time.time()``) and ``mode``, how
    its bytes reach the socket: ``"owned"`` (the connection took the socket
    over from gunicorn ``-k gevent``), ``"direct"`` (it writes to the socket
    from the server's handler), ``"iterator"`` (the server writes what the
    WSGI iterator yields) or ``"threaded"`` (development mode), and
    ``heartbeat_interval`` (seconds; the client may ask for its own) and
    ``expires_at``: when the token the stream was opened with expires (a
    ``time.time()`` value; ``None`` without a token), at which the stream ends.

    :param cut: the client socket, not to write to: to watch for the client's
        close, to bound a dead peer, and to ``shutdown()`` when the stream
        must end while the server is blocked writing to it.
    :param heartbeat_interval: this stream's interval (default: the setting).
    """

    __slots__ = (
        "__weakref__",
        "_aborted",
        "_close_reason",
        "_cut",
        "_deadline",
        "_deadline_reason",
        "_eof_watcher",
        "_event",
        "_exempt",
        "_last_seq",
        "_last_write",
        "_live",
        "_pending",
        "_queue_size",
        "_replaying",
        "_send_timeout",
        "_state",
        "_stats",
        "_subscribed",
        "channels",
        "client_key",
        "connected_at",
        "expires_at",
        "heartbeat_interval",
        "id",
        "last_event_id",
        "mode",
        "remote_addr",
    )

    def __init__(
        self,
        state: AppState,
        channels: Sequence[str],
        *,
        last_event_id: str | None = None,
        remote_addr: str | None = None,
        client_key: str | None = None,
        cut: Any = None,
        heartbeat_interval: float | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.id = next(_ids)
        self.channels = tuple(channels)
        self.remote_addr = remote_addr
        self.last_event_id = last_event_id
        self.connected_at = time.time()
        self.client_key = client_key
        self.expires_at = expires_at
        self.mode: Mode = "iterator" if gevent_patched() else "threaded"
        self._state = state
        self._stats = state.stats
        settings = state.settings
        self.heartbeat_interval = heartbeat_interval or settings.heartbeat_interval
        self._queue_size = settings.queue_size
        self._send_timeout = settings.send_timeout
        self._cut = getattr(cut, "_sock", cut)  # the OS socket under gevent's
        self._eof_watcher: Any = None
        if self.mode != "threaded":
            bound_dead_peer(self._cut, settings.dead_peer_seconds(self.heartbeat_interval))
        self._pending: list[bytes] = []
        #: queued payloads of a replay: not counted against the queue's bound
        self._exempt = 0
        self._replaying = False
        self._live = False
        self._last_seq = -1
        self._last_write = time.monotonic()
        self._deadline: float | None = None
        self._deadline_reason: CloseReason = "lifetime"
        self._close_reason: CloseReason | None = None
        #: the line is in an unknown state: cut it, write nothing more
        self._aborted = False
        self._subscribed = False
        self._event = threading.Event()

    def __repr__(self) -> str:
        return f"<Connection {self.id} {','.join(self.channels)} from {self.remote_addr}>"

    # -- what the broker calls -------------------------------------------------

    def deliver(self, message: Message) -> None:
        """Queue or send one event. Never blocks; drops repeats at a resume seam."""
        if message.seq <= self._last_seq:
            return
        self._last_seq = message.seq
        self._stats.delivered += 1
        self._send(message.payload)

    def deliver_batch(self, messages: Sequence[Message], payload: bytes) -> None:
        """Queue or send the events of one publish at once (one write)."""
        if messages[0].seq <= self._last_seq:
            fresh = [m for m in messages if m.seq > self._last_seq]
            if not fresh:
                return
            messages, payload = fresh, b"".join(m.payload for m in fresh)
        self._last_seq = messages[-1].seq
        self._state.stats.delivered += len(messages)
        self._send(payload)

    def reset(self, reason: ResetReason, position: str, seq: int) -> None:
        """Begin with ``stream-reset``: the client's id cannot be resumed gap-free."""
        self._last_seq = seq
        self._state.stats.resets += 1
        data = {"reason": reason, "last_event_id": self.last_event_id}
        self._send(Event(data=data, event="stream-reset", id=position).encode())

    def replay(self, messages: list[Message]) -> None:
        """Take a resume's replay: all of it, whatever the queue's bound (the
        history bounds it); the bound applies to what comes after it."""
        self._replaying = True
        try:
            for message in messages:
                self.deliver(message)
        finally:
            self._replaying = False

    def ready(self) -> None:
        """Say once that the stream is subscribed (see :data:`SUBSCRIBED`)."""
        if not self._subscribed:
            self._subscribed = True
            self._send(SUBSCRIBED)

    # -- what the app and the state call ----------------------------------------

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
        return len(self._pending)

    @property
    def closed(self) -> bool:
        """Whether the stream is ending or has ended."""
        return self._close_reason is not None

    def close(self, reason: CloseReason, *, abort: bool | None = None) -> None:
        """End the stream. Idempotent; the first reason wins; never blocks.

        :param abort: cut the line at once, without completing the response
            (default: for the reasons after which the line's state is unknown,
            :data:`ABORT_REASONS`). An app's own failure leaves the line
            intact: ``close("error", abort=False)`` ends it cleanly.
        """
        if self._close_reason is not None:
            return
        self._close_reason = reason
        self._aborted = reason in ABORT_REASONS if abort is None else abort
        if self._aborted and self._live:
            # A half-written chunk cannot be finished: cut the connection so
            # that a blocked write returns and the server does not reuse it.
            self.cut()
        self._wake()

    def cut(self) -> None:
        """Shut the client socket down (no goodbye), if the connection can reach it."""
        if self._cut is not None:
            with contextlib.suppress(OSError):
                self._cut.shutdown(socket.SHUT_RDWR)

    # -- the queue ---------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        self._queue(payload)

    def _queue(self, payload: bytes) -> None:
        if self._close_reason is not None:
            return
        if self._replaying:
            self._exempt += 1
        elif self._live and len(self._pending) - self._exempt >= self._queue_size:
            self._drop_slow(f"{len(self._pending)} events queued")
            return
        self._pending.append(payload)
        self._wake()

    def _wake(self) -> None:
        self._event.set()

    def _take(self) -> bytes:
        # Copy, then delete what was copied: each step is atomic, so an append
        # from another thread (development mode) in between is kept.
        pending = self._pending
        if not pending:
            return b""
        taken = pending[:]
        del pending[: len(taken)]
        self._exempt = 0
        return b"".join(taken)

    def _drop_slow(self, why: str) -> None:
        self._state.stats.slow += 1
        log.warning("dropping slow client %s: %s", self, why)
        self.close("slow")

    def _watch_eof(self, loop: Any) -> None:
        """Notice the client's close (or the dead-peer bound) without a write:
        a read watcher, which only peeks (nothing of the request is read)."""
        if self._cut is None:
            return
        self._eof_watcher = loop.io(self._cut.fileno(), 1)
        self._eof_watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        if not self._check_eof():
            self._eof_watcher.stop()

    def _check_eof(self) -> bool:
        """After the socket turned readable: close on EOF, reset or timeout.

        :return: whether to keep watching. A client that sends bytes (a
            pipelined request, a TLS record) is not watched any further, since
            the socket would stay readable; a write finds it if it leaves.
        """
        try:
            peeked = self._cut.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError as exc:
            self._failed(exc)
            return False
        if not peeked:
            self.close("client")
        return False

    def _failed(self, exc: OSError) -> None:
        """End the stream after its socket failed with ``exc``.

        ``ETIMEDOUT`` is the kernel's dead-peer bound (``TCP_USER_TIMEOUT``):
        nothing sent was acknowledged for that long. When the way to the
        client failed meanwhile (its address stopped answering ARP, a router
        said it is unreachable), Linux reports that error in its place: the
        client vanished all the same. With a backlog waiting, the client may
        be alive with its window shut (Linux applies the bound to window
        probes too): it could not keep up, so it is dropped as ``slow``;
        otherwise it vanished (``timeout``). Anything else: the client went
        away.
        """
        if exc.errno not in _UNREACHABLE:
            self.close("client")
        elif self.backlog:
            self._drop_slow("nothing acknowledged within the dead-peer bound")
        else:
            self.close("timeout")

    def _farewell(self, reason: CloseReason) -> bytes:
        # Spread reconnects so a restart does not become a stampede.
        retry = int(self._state.settings.retry_ms * random.uniform(0.5, 1.5))
        return f": {reason}\nretry: {retry}\n\n".encode()

    # -- the stream's life ---------------------------------------------------------

    def body(self, first: bytes, producer: Producer | None = None) -> Iterator[bytes]:
        """The response body. ``first`` is written at once (``retry`` and a comment).

        :param producer: what feeds an ``@sse_stream`` connection (started
            once the stream is live, stopped where the connection is released).
        """
        reason: CloseReason = "client"
        try:
            self._begin()
            yield from self._bounded(self._stream(first, producer))
            reason = self._close_reason or "server"
        except BaseException as exc:
            reason = self._reason_for(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._release(reason, producer)

    def _stream(self, first: bytes, producer: Producer | None) -> Iterator[bytes]:
        # The server sends the head and this first chunk, through every
        # middleware, exactly as for any response.
        yield first + self._take()
        self._last_write = time.monotonic()
        self._live = True
        if gevent_patched():
            import gevent

            self._watch_eof(gevent.get_hub().loop)
        if producer is not None:
            producer.start(self)
        yield from self._chunks()
        reason = self._close_reason or "server"
        if reason in FAREWELL_REASONS:
            yield self._farewell(reason)

    def _begin(self) -> None:
        """Count the stream in and subscribe it (with its replay)."""
        self._state.open(self)
        now = time.monotonic()
        max_seconds = self._state.settings.max_stream_seconds
        if max_seconds:
            # Jitter, so that streams opened together do not all rotate together.
            self._deadline = now + max_seconds * random.uniform(0.9, 1.1)
        if self.expires_at is not None:
            # A token's stream never outlives it: no jitter past its expiry.
            expiry = now + self.expires_at - time.time()
            if self._deadline is None or expiry < self._deadline:
                self._deadline, self._deadline_reason = expiry, "expired"
        if self.channels:
            self._state.broker.attach(self, self.last_event_id)

    def _reason_for(self, exc: BaseException) -> CloseReason:
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

    def _release(self, reason: CloseReason, producer: Producer | None) -> None:
        """The one place where a connection gives back what it took."""
        reason = self._close_reason = self._close_reason or reason
        if self._eof_watcher is not None:
            self._eof_watcher.close()
            self._eof_watcher = None
        if producer is not None:
            producer.stop()
        if self.channels:
            self._state.broker.detach(self)
        self._state.release(self, reason)

    def _bounded(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, each of which the server must write within
        ``SSE_SEND_TIMEOUT``, or the stream is dropped as slow (under gevent,
        where a timer can watch the server's blocked write)."""
        if not gevent_patched():
            yield from chunks
            return
        import gevent

        timer = gevent.get_hub().loop.timer(self._send_timeout)
        try:
            for chunk in chunks:
                timer.start(self._drop_slow, f"a write took over {self._send_timeout} s")
                try:
                    yield chunk
                finally:
                    timer.stop()
        finally:
            timer.close()

    def _chunks(self) -> Iterator[bytes]:
        """What to write next: the queued events, or a heartbeat when idle."""
        interval = self.heartbeat_interval
        event = self._event
        while not self._aborted:
            now = time.monotonic()
            due = self._last_write + interval
            if self._deadline is not None and now >= self._deadline:
                self.close(self._deadline_reason)
            if self._close_reason is not None and not self._pending:
                break  # what was queued before a clean close has been written
            timeout = due - now
            if self._deadline is not None:
                timeout = min(timeout, self._deadline - now)
            if not self._pending and timeout > 0:
                event.wait(timeout)
            event.clear()
            if self._aborted:
                break
            if self._pending:
                chunk = self._take()
            elif time.monotonic() >= due:
                chunk = HEARTBEAT
                self._state.stats.heartbeats += 1
            else:
                continue
            self._last_write = time.monotonic()
            yield chunk
