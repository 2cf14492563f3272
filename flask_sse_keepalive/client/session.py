"""One logical stream across connections, without I/O: what both clients share.

:class:`Session` decides everything but how to wait and read: the request
(channels, resume point, options), what a response means (a stream, "try
later", or a refusal), what the bytes say (events, heartbeats, the announced
interval, ``retry``), when a silent line is presumed dead (the watchdog),
when to reconnect (:class:`~.backoff.Backoff`), and what hooks hear.
:class:`~.sync.SSEClient` and :class:`~.aio.AsyncSSEClient` add the I/O.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Literal, TypeAlias, TypeVar, overload

import httpx

from ..event import HEARTBEAT_COMMENT, INTERVAL_COMMENT, SUBSCRIBED_COMMENT
from ..parser import ClientEvent, Comment, EventStreamParser, Parsed, Retry
from .backoff import HEALTHY_AFTER, Backoff, parse_retry_after
from .errors import StreamRefused, StreamUnavailable
from .handover import Chunk, Head, Item, Sleep, Step, Wait, earliest
from .hooks import ClientStats, Closed, CloseReason, ConnectionState, Opened, Reconnect
from .redact import redact_text, redact_url

log = logging.getLogger("flask_sse_keepalive.client")

ResponseKind: TypeAlias = Literal["stream", "retry", "refuse"]

#: The comments of a flask-sse-keepalive server that the client acts on.
SHUTDOWN_COMMENT = "shutdown"
_INTERVAL_COMMENT = re.compile(re.escape(INTERVAL_COMMENT) + r"(\S+)")

#: Statuses retried besides ``5xx``: they say "later", not "no".
RETRY_STATUSES = frozenset({408, 425, 429})
#: Characters of a refusal's body kept as :attr:`StreamRefused.reason`.
REASON_LENGTH = 500
#: Bytes of a refusal's body read for its reason.
REASON_BYTES = 2048

Params: TypeAlias = Mapping[str, str | Sequence[str]]
HttpClient = TypeVar("HttpClient", httpx.Client, httpx.AsyncClient)


def classify(status: int, content_type: str | None) -> ResponseKind:
    """What a response means: a ``stream`` to read, ``retry`` later, or ``refuse``."""
    if status == 200:
        media = (content_type or "").split(";")[0].strip().lower()
        return "stream" if media == "text/event-stream" else "refuse"
    if status in RETRY_STATUSES or 500 <= status <= 599:
        return "retry"
    return "refuse"


class Session(Generic[HttpClient]):
    """The state of one logical stream across its connections, and the
    options of both clients (see :class:`~flask_sse_keepalive.client.SSEClient`).
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
        client: HttpClient | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        watchdog_factor: float | None = 2.5,
        fallback_interval: float | None = None,
        on_open: Callable[[Opened], object] | None = None,
        on_close: Callable[[Closed], object] | None = None,
        on_reconnect: Callable[[Reconnect], object] | None = None,
    ) -> None:
        self._url = httpx.URL(url)
        # For log lines and errors: a token in ``url`` as given is a credential too.
        self._redacted_url = redact_url(self._url)
        if self._url.scheme not in ("http", "https") or not self._url.host:
            raise ValueError(f"not an http(s) URL: {redact_url(url)!r}")
        if isinstance(channels, str):
            raise TypeError("channels must be a list of names, not a str")
        self._channels = None if channels is None else list(channels)
        self._params = params
        if token is not None and not (isinstance(token, str) or callable(token)):
            raise TypeError("token must be a str or a function returning one")
        self._token = token
        #: a 401 was answered by asking the token function again
        self._token_renewed = False
        self._headers = headers
        self._heartbeat = _positive("heartbeat", heartbeat)
        self._timeout = _positive("timeout", timeout, optional=False)
        self._backoff = backoff if backoff is not None else Backoff()
        self._watchdog_factor = _positive("watchdog_factor", watchdog_factor)
        self._fallback_interval = _positive("fallback_interval", fallback_interval)
        self._on_open = on_open
        self._on_close = on_close
        self._on_reconnect = on_reconnect
        self._owns_http = client is None
        self._http: HttpClient = client if client is not None else self._new_http_client()

        self._parser = EventStreamParser(last_event_id or "")
        self._last_event_id = last_event_id or ""  # of the last event handed out
        self._pending: deque[ClientEvent] = deque()
        self._state: ConnectionState = "connecting"
        self._stats = ClientStats()
        self._retry = self._backoff.initial
        self._interval: float | None = None  # as announced
        self._attempts = 0  # attempts started
        self._failures = 0  # failed attempts in a row
        self._failing_since: float | None = None
        self._not_before = 0.0  # monotonic time of the next attempt
        # The current attempt / connection:
        self._attempt_started = 0.0
        self._opened_at: float | None = None
        self._got_bytes = False
        self._last_activity = 0.0
        self._subscribed = False
        self._shutdown_said = False
        self._closed = False  # by close(), a refusal, giving up, or a failing hook

    def _new_http_client(self) -> HttpClient:
        raise NotImplementedError

    def _has_reader(self) -> bool:
        """An attempt is under way (the I/O class's reader)."""
        raise NotImplementedError

    def _stop_reader(self) -> None:
        """Stop the current reader, if any, and forget it."""
        raise NotImplementedError

    # -- the public face ------------------------------------------------------

    @property
    def url(self) -> str:
        """The stream's URL, as given (a ``token`` in it included: it is the
        caller's own string; log lines and hook records show it redacted)."""
        return str(self._url)

    @property
    def last_event_id(self) -> str:
        """Where a new client would resume: the id of the last event handed
        out (``""``: none yet). Pass it as ``last_event_id`` to carry on."""
        return self._last_event_id

    @property
    def state(self) -> ConnectionState:
        """``connecting``, ``open``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def stats(self) -> ClientStats:
        """Counters: connects, reconnects, events, resets, heartbeats."""
        return self._stats

    @property
    def heartbeat_interval(self) -> float | None:
        """The heartbeat interval in seconds as the server announced it, or
        ``fallback_interval`` while it has announced none."""
        return self._interval if self._interval is not None else self._fallback_interval

    @property
    def retry(self) -> float:
        """The reconnection time in seconds (the backoff's base): the
        server's last ``retry:``, or ``Backoff.initial``."""
        return self._retry

    @property
    def subscribed(self) -> bool:
        """The current connection's server said ``: sse-keepalive subscribed``:
        from now on every event published to the channels reaches it."""
        return self._subscribed

    # -- for the I/O classes --------------------------------------------------

    def _step(self, done: Callable[[], bool], deadline: float | None) -> Step:
        """What the I/O class does next, to get on until ``done()``."""
        if done():
            return "done"
        if self._closed:
            return "closed"
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "timeout"
        if not self._has_reader():
            if now < self._not_before:
                return Sleep((earliest(self._not_before, deadline) or now) - now)
            return "connect"
        until = earliest(self._watchdog_deadline(), deadline)
        return Wait(None if until is None else until - now)

    def _received(self, item: Item | None) -> None:
        """What a :class:`~.handover.Wait` brought (``None``: nothing in time)."""
        if item is None:
            watchdog = self._watchdog_deadline()
            if watchdog is not None and time.monotonic() >= watchdog:
                self._stop_reader()
                self._lost("watchdog" if self._got_bytes else "timeout")
        elif isinstance(item, Chunk):
            self._feed(item.data)
        elif isinstance(item, Head):
            if not item.is_stream:
                self._stop_reader()
            self._response(item.response, item.reason)
        else:
            self._stop_reader()
            error = item.error
            if error is None:
                self._lost("eof")
            elif isinstance(error, httpx.TimeoutException | TimeoutError):
                self._lost("timeout", error=error)
            elif isinstance(error, httpx.TransportError):
                self._lost("network", error=error)
            else:
                raise error

    def _request(self, read_timeout: float | None) -> httpx.Request:
        """The next attempt's request; the attempt starts now."""
        now = time.monotonic()
        if self._attempts:
            self._stats.reconnects += 1
        self._attempts += 1
        self._attempt_started = now
        self._last_activity = now
        self._got_bytes = False
        self._shutdown_said = False
        url = self._url
        if self._channels is not None:
            url = url.copy_remove_param("channel")
            for channel in self._channels:
                url = url.copy_add_param("channel", channel)
        if self._heartbeat is not None:
            url = url.copy_set_param("heartbeat", f"{self._heartbeat:g}")
        params = self._params() if callable(self._params) else self._params
        if params:
            url = url.copy_merge_params(params)
        if self._token is not None:
            token = self._token() if callable(self._token) else self._token
            if not isinstance(token, str):
                raise TypeError(f"the token function returned {type(token).__name__}, not a str")
            url = url.copy_set_param("token", token)
        headers = httpx.Headers(
            {
                "Accept": "text/event-stream",
                "Cache-Control": "no-cache",
                # A proxy that compresses would also buffer.
                "Accept-Encoding": "identity",
            }
        )
        extra = self._headers() if callable(self._headers) else self._headers
        headers.update(extra or {})
        resume = self._parser.last_event_id
        if resume:
            # Ids are text; browsers send them as UTF-8 (as Headers encodes a str).
            headers["Last-Event-ID"] = resume
        timeout = httpx.Timeout(self._timeout, read=read_timeout)
        return self._http.build_request("GET", url, headers=headers, timeout=timeout)

    def _response(self, response: httpx.Response, reason: str) -> bool:
        """The head arrived: ``True`` if the stream is open. Otherwise a retry
        is scheduled, or :class:`StreamRefused` raised (``reason``: the body)."""
        status = response.status_code
        content_type = response.headers.get("content-type")
        kind = classify(status, content_type)
        if kind == "stream":
            self._opened(response)
            return True
        if kind == "retry":
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._lost("http", status=status, retry_after=retry_after)
            return False
        if status == 401 and callable(self._token) and not self._token_renewed:
            # The token expired or was revoked: a fresh one, at once, once.
            self._token_renewed = True
            self._lost("http", status=status, retry_after=0.0)
            return False
        if status == 200:
            reason = f"not an event stream: Content-Type {content_type or 'missing'}"
        self._state = "closed"
        self._closed = True
        url = response.request.url
        reason = redact_text(reason.strip()[:REASON_LENGTH], url)
        raise StreamRefused(status, reason, redact_url(url))

    def _opened(self, response: httpx.Response) -> None:
        self._token_renewed = False
        self._opened_at = time.monotonic()
        self._state = "open"
        self._stats.connects += 1
        resume = response.request.headers.get("last-event-id", "")
        url = redact_url(response.request.url)
        log.debug("stream opened: %s", url)
        if self._on_open is not None:
            self._on_open(Opened(url, response.status_code, response.headers, resume))

    def _feed(self, chunk: bytes) -> None:
        """Bytes of the open stream, as they arrive."""
        self._got_bytes = True
        self._last_activity = time.monotonic()
        self._take(self._parser.feed(chunk))

    def _take(self, items: list[Parsed]) -> None:
        for item in items:
            if isinstance(item, ClientEvent):
                self._pending.append(item)
                self._stats.events += 1
                if item.event == "stream-reset":
                    self._stats.resets += 1
            elif isinstance(item, Comment):
                self._comment(item.text)
            elif isinstance(item, Retry):
                self._retry = item.milliseconds / 1000

    def _comment(self, text: str) -> None:
        if text == HEARTBEAT_COMMENT:
            self._stats.heartbeats += 1
        elif text == SUBSCRIBED_COMMENT:
            self._subscribed = True
        elif text == SHUTDOWN_COMMENT:
            self._shutdown_said = True
        elif match := _INTERVAL_COMMENT.fullmatch(text):
            try:
                interval = float(match.group(1))
            except ValueError:
                return
            if math.isfinite(interval) and interval > 0:
                self._interval = interval

    def _watchdog_deadline(self) -> float | None:
        """When the line is presumed dead (monotonic time), if nothing arrives.

        Until the first bytes: ``timeout`` after the attempt started. Then
        ``watchdog_factor`` heartbeat intervals after the last bytes were
        taken in; silence is counted from when the client took bytes in, so
        time spent by the caller between events is not silence.
        """
        if not self._got_bytes:
            return self._attempt_started + self._timeout
        interval = self.heartbeat_interval
        if interval is None or self._watchdog_factor is None:
            return None
        return self._last_activity + self._watchdog_factor * interval

    def _lost(
        self,
        reason: CloseReason,
        *,
        error: BaseException | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """The attempt or the stream ended: schedule the next attempt, or
        raise :class:`StreamUnavailable`."""
        now = time.monotonic()
        self._end_stream()
        if self._opened_at is not None:
            lived = now - self._opened_at
            if reason == "eof" and self._shutdown_said:
                reason = "shutdown"
            self._opened_at = None
            if lived >= max(HEALTHY_AFTER, self._retry):
                self._failures = 0
                self._failing_since = None
            log.debug("stream closed after %.1f s: %s", lived, reason)
            if self._on_close is not None:
                self._on_close(Closed(reason, lived, error))
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = now
        elapsed = now - self._failing_since
        delay = self._backoff.delay(self._retry, self._failures, retry_after)
        backoff = self._backoff
        if (backoff.max_attempts is not None and self._failures > backoff.max_attempts) or (
            backoff.give_up_after is not None and elapsed + delay > backoff.give_up_after
        ):
            self._state = "closed"
            self._closed = True
            raise StreamUnavailable(self._failures, elapsed, reason) from error
        self._not_before = now + delay
        self._state = "reconnecting"
        log.info(
            "reconnecting to %s in %.1f s (%s, attempt %d)",
            self._redacted_url,
            delay,
            reason,
            self._failures,
        )
        if self._on_reconnect is not None:
            self._on_reconnect(Reconnect(delay, self._failures, reason, status, retry_after, error))

    def _end_stream(self) -> None:
        # An event cut short by the end of the stream is discarded.
        self._take(self._parser.end())
        self._subscribed = False

    def _finish(self) -> None:
        """The client is closed: the last word for hooks."""
        if self._state == "closed" and self._opened_at is None:
            return
        self._state = "closed"
        self._end_stream()
        if self._opened_at is not None:
            lived = time.monotonic() - self._opened_at
            self._opened_at = None
            if self._on_close is not None:
                self._on_close(Closed("closed", lived, None))

    def _take_event(self) -> ClientEvent | None:
        """The next event received, in order; ``None`` if there is none."""
        if not self._pending:
            return None
        event = self._pending.popleft()
        # Once the caller has every event, a blank line without data may
        # still have moved the last event ID (``id: x`` alone).
        self._last_event_id = event.id if self._pending else self._parser.last_event_id
        return event

    def _has_event(self) -> bool:
        return bool(self._pending)


@overload
def _positive(name: str, value: float | None) -> float | None: ...
@overload
def _positive(name: str, value: float, *, optional: Literal[False]) -> float: ...
def _positive(name: str, value: float | None, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)
