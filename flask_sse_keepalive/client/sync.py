"""The blocking client, :class:`SSEClient`: threads, or greenlets where gevent
has patched the standard library.

Each connection attempt gets a reader thread that does its blocking I/O and
hands the head and the body's bytes over through a small bounded channel.
The thread that iterates owns everything else (the :class:`Session`), and
waits on that channel with a deadline: the watchdog, a ``receive`` timeout
and :meth:`SSEClient.close` (which closes the channel) all wake it at once,
whatever the reader is blocked in.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import httpx

from ..parser import ClientEvent
from .backoff import Backoff
from .handover import CHANNEL_SIZE, OUTCOMES, Chunk, End, Head, Item, Sleep, Wait, deadline
from .hooks import Closed, Opened, Reconnect
from .session import REASON_BYTES, Params, Session, classify


class _Channel:
    """A bounded hand-over from a reader to the client; closing it wakes both."""

    def __init__(self, size: int) -> None:
        self._items: deque[Item] = deque()
        self._size = size
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Item) -> bool:
        """Wait for room and add ``item``; ``False`` if the channel was closed."""
        with self._cond:
            while len(self._items) >= self._size and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None) -> Item | None:
        """The next item, or ``None`` once ``timeout`` passed or the channel closed."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closed:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Reader:
    """One attempt's blocking I/O, in a thread of its own."""

    def __init__(self, http: httpx.Client, request: httpx.Request) -> None:
        self.channel = _Channel(CHANNEL_SIZE)
        self._http = http
        self._request = request
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="sse-client-reader", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop, from any thread, and let the connection go now: shutting the
        socket down wakes a read blocked on it."""
        with self._lock:
            self._stopped = True
            if self._socket is not None:
                with contextlib.suppress(OSError):  # the reader closed it meanwhile
                    self._socket.shutdown(socket.SHUT_RDWR)
        self.channel.close()

    def _run(self) -> None:
        try:
            response = self._http.send(self._request, stream=True)
        except Exception as exc:  # handed over: the client decides
            self.channel.put(End(exc))
            return
        try:
            with self._lock:
                if self._stopped:
                    return
                self._socket = _socket_of(response)
            is_stream = classify(response.status_code, response.headers.get("content-type"))
            if is_stream != "stream":
                reason = _read_reason(response) if is_stream == "refuse" else ""
                self.channel.put(Head(response, False, reason))
                return
            _lift_read_timeout(response)
            if not self.channel.put(Head(response, True, "")):
                return
            for chunk in response.iter_bytes():
                if not self.channel.put(Chunk(chunk)):
                    return
            self.channel.put(End(None))
        except Exception as exc:  # handed over: the client decides
            self.channel.put(End(exc))
        finally:
            with self._lock:
                self._socket = None
            response.close()


def _socket_of(response: httpx.Response) -> socket.socket | None:
    """The connection's own socket, where ``shutdown`` wakes a blocked read
    (HTTP/1 only: an HTTP/2 connection is shared by other requests)."""
    if response.http_version not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None


def _lift_read_timeout(response: httpx.Response) -> None:
    """No read timeout on the body: it bounded the wait for the head, but
    silence on an open stream is the watchdog's to judge (httpcore takes the
    request's timeouts when it starts reading the body)."""
    extensions = response.request.extensions
    timeouts = extensions.get("timeout")
    if isinstance(timeouts, dict):
        extensions["timeout"] = {**timeouts, "read": None}


def _read_reason(response: httpx.Response) -> str:
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= REASON_BYTES:
                break
    except httpx.TransportError:
        pass  # the reason is what arrived
    return body[:REASON_BYTES].decode("utf-8", "replace")


class SSEClient(Session[httpx.Client]):
    """Read a server-sent event stream for as long as it takes: reconnect,
    resume, and notice a dead line.

    .. code-block:: python

        with SSEClient("http://host/stream", channels=["prices"]) as client:
            for event in client:
                print(event.id, event.event, event.json())

    Iteration connects, yields every event (:class:`ClientEvent`, a
    ``stream-reset`` included), and reconnects by itself after any drop,
    sending ``Last-Event-ID`` with the last id seen, until :meth:`close`.

    :param url: the stream's URL (``SSE_URL_PREFIX`` on the server); its
        query is kept.
    :param channels: sent as ``?channel=a&channel=b``, replacing any in
        ``url``; ``None`` sends none (the server's ``default``).
    :param last_event_id: resume after this id on the first connect (later
        connects resume after the last id received).
    :param params: more query parameters, or a function returning them,
        called before every attempt.
    :param token: a subscribe token (:meth:`SSE.token
        <flask_sse_keepalive.SSE.token>`), sent as ``?token=``, or a function
        returning one, called before every attempt (so that a service can
        fetch a fresh one). When the server refuses a token with ``401``, a
        function is called once more at once; a second ``401`` before a
        stream opened again, or a ``401`` for a fixed token, raises
        :class:`StreamRefused`. Log lines, :class:`StreamRefused` and
        :class:`Opened` show the token's value as ``redacted``.
    :param headers: more request headers (cookies, auth), or a function
        returning them, called before every attempt.
    :param heartbeat: ask the server for a heartbeat every this many seconds
        (``?heartbeat=``); the server may clamp it or not support it: the
        interval it announces is what the watchdog uses.
    :param client: an ``httpx.Client`` of your own (auth, TLS, proxies,
        cookies); it is used from the reader threads and not closed. By
        default the client makes one that follows redirects.
    :param timeout: seconds an attempt may take to get the stream's first
        bytes (connect, TLS, response head).
    :param backoff: when to reconnect and when to give up (:class:`Backoff`).
    :param watchdog_factor: reconnect when nothing (event or heartbeat)
        arrived for this many heartbeat intervals; ``None`` turns the
        watchdog off.
    :param fallback_interval: the heartbeat interval to assume while the
        server announces none (``: sse-keepalive heartbeat-interval=S``);
        ``None``: no watchdog for such a server.
    :param on_open: called with :class:`Opened` when a stream opens.
    :param on_close: called with :class:`Closed` when an open stream ends.
    :param on_reconnect: called with :class:`Reconnect` when the next attempt
        is scheduled (e.g. to log "reconnecting in 2.3 s").

    Hooks run in the thread that iterates (or in the one calling
    :meth:`close` when none does); an exception from a hook closes the client
    and propagates.

    **Threads and greenlets**: one thread (or greenlet) at a time iterates or
    calls :meth:`receive` and :meth:`wait_subscribed`; a second one gets a
    :class:`RuntimeError`. :meth:`close` may be called from any thread or
    greenlet, any number of times: iteration then ends promptly, whatever it
    was waiting for (a read, a backoff delay, a connect), and the connection
    is released. The properties may be read from any thread. Under gevent
    (``monkey.patch_all()``) the reader threads are greenlets.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: Sequence[str] | None = None,
        last_event_id: str | None = None,
        params: Params | Callable[[], Params] | None = None,
        token: str | Callable[[], str] | None = None,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        heartbeat: float | None = None,
        client: httpx.Client | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        watchdog_factor: float | None = 2.5,
        fallback_interval: float | None = None,
        on_open: Callable[[Opened], object] | None = None,
        on_close: Callable[[Closed], object] | None = None,
        on_reconnect: Callable[[Reconnect], object] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._reader: _Reader | None = None
        self._released = False
        self._reading: int | None = None  # the ident of the thread iterating
        super().__init__(
            url,
            channels=channels,
            last_event_id=last_event_id,
            params=params,
            token=token,
            headers=headers,
            heartbeat=heartbeat,
            client=client,
            timeout=timeout,
            backoff=backoff,
            watchdog_factor=watchdog_factor,
            fallback_interval=fallback_interval,
            on_open=on_open,
            on_close=on_close,
            on_reconnect=on_reconnect,
        )

    def _new_http_client(self) -> httpx.Client:
        return httpx.Client(follow_redirects=True)

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> SSEClient:
        return self

    def __next__(self) -> ClientEvent:
        event = self.receive()
        if event is None:
            raise StopIteration
        return event

    def receive(self, timeout: float | None = None) -> ClientEvent | None:
        """The next event, connecting and reconnecting as needed.

        :param timeout: seconds to wait; ``None`` waits for as long as it takes.
        :returns: the event, or ``None`` once the client is closed.
        :raises TimeoutError: no event within ``timeout`` (the connection stays).
        :raises StreamRefused: the server refused the stream.
        :raises StreamUnavailable: :class:`Backoff` gave up.
        """
        outcome = self._run(self._has_event, deadline(timeout, time.monotonic()))
        if outcome is None:
            raise TimeoutError(f"no event within {timeout} s")
        return self._take_event() if outcome else None

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Read the stream until its server says it is subscribed
        (``: sse-keepalive subscribed``): from then on every event published
        to its channels arrives. Events that arrive meanwhile are kept for
        iteration. Useful in tests, before publishing.

        :raises TimeoutError: not subscribed within ``timeout``.
        :raises RuntimeError: the client is closed.
        """
        outcome = self._run(lambda: self._subscribed, deadline(timeout, time.monotonic()))
        if outcome is None:
            raise TimeoutError(f"the stream was not subscribed within {timeout} s")
        if not outcome:
            raise RuntimeError("the client is closed")

    def close(self) -> None:
        """End iteration and release the connection (from any thread)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            reader = self._reader
            reading = self._reading is not None
        self._wake.set()
        if reader is not None:
            reader.stop()
        if not reading:
            self._release()

    # -- internals ------------------------------------------------------------

    def _run(self, done: Callable[[], bool], deadline: float | None) -> bool | None:
        """Pump until ``done()``: ``True``; ``False`` once closed; ``None`` at the deadline."""
        with self._lock:
            if self._reading is not None:
                raise RuntimeError("another thread is already reading this client")
            self._reading = threading.get_ident()
        try:
            return self._pump(done, deadline)
        except Exception:
            with self._lock:
                self._closed = True
            raise
        finally:
            with self._lock:
                self._reading = None
                closed = self._closed
            if closed:
                self._release()

    def _pump(self, done: Callable[[], bool], deadline: float | None) -> bool | None:
        while True:
            step = self._step(done, deadline)
            if isinstance(step, Wait):
                assert self._reader is not None
                self._received(self._reader.channel.get(step.timeout))
            elif isinstance(step, Sleep):
                self._wake.wait(step.seconds)
            elif step == "connect":
                self._connect()
            else:
                return OUTCOMES[step]

    def _connect(self) -> None:
        request = self._request(read_timeout=self._timeout)
        with self._lock:
            if not self._closed:
                self._reader = _Reader(self._http, request)

    def _has_reader(self) -> bool:
        return self._reader is not None

    def _stop_reader(self) -> None:
        # No lock: close() only ever stops the reader too, and stop() is idempotent.
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._stop_reader()
        self._finish()
        if self._owns_http:
            self._http.close()
