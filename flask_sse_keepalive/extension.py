"""The Flask extension: set-up, publishing, authorization, relays, stats."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from blinker import ANY, Signal
from flask import Flask, current_app, has_app_context, request

from . import server, signals, tokens
from .cli import sse_cli
from .cluster import totals
from .config import DEFAULTS, Settings
from .event import Event, check_channel
from .state import AppState
from .views import current_token, make_blueprint

log = logging.getLogger("flask_sse_keepalive")

F = TypeVar("F", bound=Callable[..., Any])

_PUBLISH_KEYS = frozenset({"data", "event", "channel", "retry"})


class SSE:
    """Server-sent event streams for a Flask app.

    ::

        sse = SSE(app)            # or: sse = SSE(); sse.init_app(app)
        sse.publish({"price": 1.2}, event="tick", channel="prices")

    :param app: the app to set up now; or call :meth:`init_app` later.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._states: weakref.WeakKeyDictionary[Flask, AppState] = weakref.WeakKeyDictionary()
        self._authorize: Callable[[str], bool] | None = None
        self._client_key: Callable[[], Any] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the stream blueprint at ``SSE_URL_PREFIX`` and read the config.

        :raises RuntimeError: if the app already has an SSE extension.
        :raises ValueError: for an invalid ``SSE_*`` setting.
        """
        if "sse" in app.extensions:
            raise RuntimeError(
                "SSE is already set up on this app; call init_app (or SSE(app)) once per app."
            )
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        settings = Settings.from_config(app.config)
        if settings.cors_origins and "*" in settings.cors_origins and settings.cors_credentials:
            log.warning(
                "%s: SSE_CORS_ORIGINS='*' with SSE_CORS_CREDENTIALS lets every site read the "
                "streams of your signed-in users (the origin is echoed); list the origins instead",
                app.name,
            )
        if settings.require_token and not app.secret_key:
            log.warning(
                "%s: SSE_REQUIRE_TOKEN is set but the app has no SECRET_KEY: every stream "
                "is refused (401) until it has one",
                app.name,
            )
        self._states[app] = AppState(app, settings)
        app.extensions["sse"] = self
        app.register_blueprint(make_blueprint(self), url_prefix=settings.url_prefix)
        app.cli.add_command(sse_cli)
        server.check_server(app.name, settings.broker_url, allow_threads=settings.allow_threads)

    def state(self, app: Flask | None = None) -> AppState:
        """The state of ``app`` (default: the current app) in this process:
        its settings, broker, open streams and counters. For tools and tests;
        an app needs only :meth:`publish` and :meth:`stats`.

        :raises RuntimeError: outside an app context without ``app``, or for
            an app this extension is not set up on.
        """
        if app is None:
            if not has_app_context():
                raise RuntimeError(
                    "SSE needs an application context: use it in a request, a CLI command, "
                    "or inside `with app.app_context():`."
                )
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._states[app]
        except KeyError:
            raise RuntimeError(
                "this SSE extension is not set up on the current app: did you forget init_app?"
            ) from None

    def publish(
        self,
        data: Any,
        *,
        event: str | None = None,
        channel: str = "default",
        retry: int | None = None,
    ) -> str:
        """Publish an event to every stream on ``channel`` (in every process that
        shares the broker) and keep it in the channel's history.

        With Redis this is one round trip. It waits at most about a second
        for a connection to Redis; a Redis that accepted the connection but
        does not answer holds it up to the socket timeout (5 s).

        :param data: a ``str`` sent as is, or any JSON-encodable value.
        :param event: the event type; ``None`` for the default ``message``.
        :param channel: the channel name (1-128 of ``A-Z a-z 0-9 _ - . : @``).
        :param retry: a reconnection delay for the clients, in milliseconds.
        :return: the id the broker gave the event.
        :raises ValueError: for an invalid channel, event type or retry.
        :raises BrokerUnavailable: if the broker cannot store the event. When
            Redis failed after the event was sent, it may have been stored
            (and delivered) nonetheless: the message says which case it is.
        """
        check_channel(channel)
        # None is JSON null here: an event without data would never reach a page.
        message_event = Event(data="null" if data is None else data, event=event, retry=retry)
        state = self.state()
        published = state.broker.publish(channel, message_event)
        state.stats.published += 1
        if signals.event_published.receivers:
            state.send(
                signals.event_published, event=message_event.with_id(published.id), channel=channel
            )
        return published.id

    def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish several events at once, with consecutive ids, in order.

        ::

            sse.publish_many([
                {"data": {"price": 1.2}, "event": "tick", "channel": "prices"},
                {"data": "market closed", "channel": "news"},
            ])

        Each item takes :meth:`publish`'s arguments: ``data`` (required),
        ``event``, ``channel`` (``"default"``) and ``retry``. Every item is
        checked before anything is published. With Redis the whole batch is
        one round trip; in every process each stream takes its events of the
        batch in one write. ``event_published`` is sent for each event.

        :return: the ids, in the order of ``events``.
        :raises ValueError: for an invalid item (nothing is published then).
        :raises TypeError: for an item that is not a mapping, lacks ``data``
            or has other keys.
        :raises BrokerUnavailable: as :meth:`publish`; the batch is stored
            whole or not at all.
        """
        batch: list[tuple[str, Event]] = []
        for item in events:
            if not isinstance(item, Mapping):
                raise TypeError(f"publish_many takes mappings, got {type(item).__name__}")
            unknown = set(item) - _PUBLISH_KEYS
            if unknown or "data" not in item:
                raise TypeError(
                    "each event has 'data', and maybe 'event', 'channel' and 'retry';"
                    f" got {sorted(item)}"
                )
            channel = check_channel(item.get("channel", "default"))
            data = item["data"]
            batch.append(
                (
                    channel,
                    Event(
                        data="null" if data is None else data,
                        event=item.get("event"),
                        retry=item.get("retry"),
                    ),
                )
            )
        if not batch:
            return []
        state = self.state()
        published = state.broker.publish_many(batch)
        state.stats.published += len(batch)
        if signals.event_published.receivers:
            for (channel, event), where in zip(batch, published, strict=True):
                state.send(signals.event_published, event=event.with_id(where.id), channel=channel)
        return [where.id for where in published]

    def authorize(self, fn: F) -> F:
        """Register ``fn(channel) -> bool``, asked once per requested channel.

        It runs in the request context (``request``, ``session``, ``g`` work) on
        every connect and resume. ``False`` answers ``403``; an exception is
        logged and answers ``500``.
        """
        self._authorize = fn
        return fn

    def authorized(self, channel: str) -> bool:
        """Whether the current request may subscribe to ``channel``: what the
        :meth:`authorize` hook says (``True`` without one). Exceptions of the
        hook propagate."""
        return True if self._authorize is None else bool(self._authorize(channel))

    def token(
        self,
        channels: str | Iterable[str],
        *,
        expires_in: float | timedelta = 600,
        subject: str | None = None,
    ) -> str:
        """A signed token that opens streams on ``channels`` until it expires,
        for ``GET {SSE_URL_PREFIX}?channel=...&token=...``.

        Signed with the app's ``SECRET_KEY`` (tokens signed with one of
        ``SECRET_KEY_FALLBACKS`` stay valid, for key rotation) under
        ``SSE_TOKEN_SALT``. The stream route checks it before the
        :meth:`authorize` hook; a stream opened with it ends when it
        expires (reason ``"expired"``). ::

            @app.get("/token")
            @login_required
            def stream_token():
                return {"token": sse.token(f"user.{current_user.id}", subject=str(current_user.id))}

        :param channels: a channel name, or several; the stream may ask for
            any of them.
        :param expires_in: seconds (or a :class:`~datetime.timedelta`) from now.
        :param subject: who the token is for, e.g. a user id; the
            :meth:`authorize` hook reads it with :meth:`current_subject`.
        :return: a URL-safe string (letters, digits, ``-``, ``_``, ``.``).
        :raises ValueError: for a bad channel, no channel, an ``expires_in``
            that is not positive, or too many channels for one token.
        :raises RuntimeError: if the app has no ``SECRET_KEY``.

        .. versionadded:: 0.2.0
        """
        state = self.state()
        keys = tokens.signing_keys(state.app.config)
        if not keys:
            raise RuntimeError("sse.token needs the app's SECRET_KEY: set app.config['SECRET_KEY']")
        return tokens.issue(
            keys, state.settings.token_salt, channels, expires_in=expires_in, subject=subject
        )

    def current_subject(self) -> str | None:
        """The ``subject`` of the token the current stream request came with:
        for the :meth:`authorize` hook. ``None`` without a token, for a token
        issued without a subject, and outside the stream route.

        A request that reaches the hook with ``request.args["token"]`` has a
        valid token: every other token is refused before the hook.

        .. versionadded:: 0.2.0
        """
        token = current_token()
        return None if token is None else token.subject

    def client_key(self, fn: F) -> F:
        """Register ``fn() -> str`` naming the client for
        ``SSE_MAX_CONNECTIONS_PER_CLIENT`` (default: the remote address).
        Runs in the request context; ``None`` exempts the request.
        """
        self._client_key = fn
        return fn

    def request_client_key(self) -> str | None:
        """What the current request counts as for ``SSE_MAX_CONNECTIONS_PER_CLIENT``:
        the :meth:`client_key` hook's answer, else the remote address."""
        if self._client_key is not None:
            key = self._client_key()
            return None if key is None else str(key)
        return request.remote_addr

    def relay(
        self,
        signal: Signal,
        *,
        channel: str,
        event: str | None = None,
        data: Callable[..., Any] | None = None,
        sender: Any = ANY,
    ) -> Callable[..., None]:
        """Publish an event whenever ``signal`` is sent.

        :param signal: any blinker signal of the app.
        :param channel: the channel to publish to.
        :param event: the event type.
        :param data: ``(sender, **kwargs) -> data``; default: the kwargs dict.
        :param sender: only relay sends from this sender.
        :return: the receiver, for ``signal.disconnect(receiver)``.
        :raises ValueError: for an invalid channel.
        """
        check_channel(channel)

        def receiver(sent_by: Any, **kwargs: Any) -> None:
            payload = data(sent_by, **kwargs) if data is not None else kwargs
            self.publish(payload, event=event, channel=channel)

        signal.connect(receiver, sender=sender, weak=False)
        return receiver

    def stats(self) -> dict[str, Any]:
        """Figures of this process for the current app.

        ``connections`` (open streams), ``channels`` (local subscribers per
        channel), ``published``, ``delivered``, ``heartbeats``, ``resets``,
        ``slow`` (slow-consumer drops), ``refused`` (503s), ``connects`` and
        ``disconnects`` (by reason), ``modes`` (streams opened by write mode,
        see :attr:`Connection.mode <flask_sse_keepalive.stream.Connection>`),
        ``heartbeat_intervals`` (open streams by their heartbeat interval in
        seconds, e.g. ``{"15": 980, "2": 20}``), ``broker`` (the bus's
        connection in this process: with Redis, ``reconnects`` and
        ``probes_lost``, see :doc:`scaling`), ``shutting_down``; and who
        they are: ``id`` (the process in :meth:`cluster_stats`), ``host``,
        ``pid``, ``app`` (the app's name), ``time`` (when taken, Unix time)
        and ``uptime`` (seconds since the process started).
        """
        return self.state().figures()

    def cluster_stats(self) -> dict[str, Any]:
        """Figures of every live process on the broker, and their totals.

        ``processes``: one :meth:`stats` per process, sorted by host and
        pid; ``totals``: their counters added up, with ``processes`` (how
        many) and ``shutting_down`` (how many are stopping).

        With Redis, each process that has opened a stream reports its
        figures every ``SSE_REPORT_INTERVAL`` seconds, so each entry is at
        most about that old (its ``time`` says when it was taken); this
        process's own are taken now. A process that died without a word is
        listed until its report expires (three intervals). A process that
        serves no stream (this CLI command, a script that publishes) is not
        listed. With the memory broker the one process is the whole cluster:
        its own figures.

        :raises BrokerUnavailable: if Redis cannot be read.
        """
        state = self.state()
        processes = state.broker.presence().processes(state.figures)
        processes.sort(key=lambda p: (str(p.get("host")), int(p.get("pid") or 0), str(p.get("id"))))
        return {"processes": processes, "totals": totals(processes)}

    def subscriber_count(self, channel: str) -> int:
        """Subscribers of ``channel`` in every live process on the broker
        (for a "12 watching" badge); cheap enough for every request.

        This process's subscribers are counted as they are. With Redis, the
        other processes' are what they last reported, cached here for
        ``SSE_REPORT_INTERVAL`` seconds: the figure is at most about two
        intervals behind a change in another process (one until that process
        reports it, one until this cache is read again), and a process that
        died without a word is counted until its report expires (three
        intervals). At most once per interval and channel, a call reads
        Redis (one round trip); while Redis cannot be reached it answers with
        the last figures read, and tries again an interval later.

        :raises ValueError: for an invalid channel name.
        """
        check_channel(channel)
        state = self.state()
        broker = state.broker
        remote = broker.presence().remote_subscribers(channel, state.settings.report_interval)
        return broker.subscriber_count(channel) + remote

    def shutdown(self) -> None:
        """End every open stream of the current app in this process and refuse
        new ones with ``503``. Under gunicorn this happens by itself when the
        worker stops; call it from your own server's shutdown otherwise.
        """
        self.state().shutdown()
