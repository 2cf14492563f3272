"""The Flask extension: set-up, publishing, authorization, relays, stats."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from blinker import ANY, Signal
from flask import Flask, Response, current_app, has_app_context

from . import runtime, signals
from .cli import sse_cli
from .event import Event
from .registry import DEFAULTS, Registry, Settings
from .views import CHANNEL_NAME, make_blueprint, plain

log = logging.getLogger("flask_sse_keepalive")

F = TypeVar("F", bound=Callable[..., Any])


class SSE:
    """Server-sent event streams for a Flask app.

    ::

        sse = SSE(app)            # or: sse = SSE(); sse.init_app(app)
        sse.publish({"price": 1.2}, event="tick", channel="prices")

    :param app: the app to set up now; or call :meth:`init_app` later.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._registries: weakref.WeakKeyDictionary[Flask, Registry] = weakref.WeakKeyDictionary()
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
        self._registries[app] = Registry(app, settings)
        app.extensions["sse"] = self
        app.register_blueprint(make_blueprint(self), url_prefix=app.config["SSE_URL_PREFIX"])
        app.cli.add_command(sse_cli)
        runtime.check_server(app.name, settings.broker_url)

    def _registry(self, app: Flask) -> Registry:
        try:
            return self._registries[app]
        except KeyError:
            raise RuntimeError(
                "this SSE extension is not set up on the current app: did you forget init_app?"
            ) from None

    def _current_registry(self) -> Registry:
        if not has_app_context():
            raise RuntimeError(
                "SSE needs an application context: use it in a request, a CLI command, "
                "or inside `with app.app_context():`."
            )
        return self._registry(current_app._get_current_object())  # type: ignore[attr-defined]

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

        :param data: a ``str`` sent as is, or any JSON-encodable value.
        :param event: the event type; ``None`` for the default ``message``.
        :param channel: the channel name (1-128 of ``A-Z a-z 0-9 _ - . : @``).
        :param retry: a reconnection delay for the clients, in milliseconds.
        :return: the id the broker gave the event.
        :raises ValueError: for an invalid channel, event type or retry.
        :raises BrokerUnavailable: if the broker cannot store the event.
        """
        if not isinstance(channel, str) or not CHANNEL_NAME.fullmatch(channel):
            raise ValueError(
                f"invalid channel name {channel!r}: use 1-128 characters from A-Z a-z 0-9 _ - . : @"
            )
        # None is JSON null here: an event without data would never reach a page.
        message_event = Event(data="null" if data is None else data, event=event, retry=retry)
        registry = self._current_registry()
        message = registry.broker.publish(channel, message_event)
        registry.stats.published += 1
        if signals.event_published.receivers:
            published = Event(data=message_event.data, event=event, id=message.id, retry=retry)
            try:
                signals.event_published.send(registry.app, event=published, channel=channel)
            except Exception:
                log.exception("a receiver of event-published failed")
        return message.id

    def authorize(self, fn: F) -> F:
        """Register ``fn(channel) -> bool``, asked once per requested channel.

        It runs in the request context (``request``, ``session``, ``g`` work) on
        every connect and resume. ``False`` answers ``403``; an exception is
        logged and answers ``500``.
        """
        self._authorize = fn
        return fn

    def client_key(self, fn: F) -> F:
        """Register ``fn() -> str`` naming the client for
        ``SSE_MAX_CONNECTIONS_PER_CLIENT`` (default: the remote address).
        Runs in the request context; ``None`` exempts the request.
        """
        self._client_key = fn
        return fn

    def _check_authorized(self, channels: list[str]) -> Response | None:
        if self._authorize is None:
            return None
        for channel in channels:
            try:
                allowed = self._authorize(channel)
            except Exception:
                log.exception("the authorize hook failed for channel %r", channel)
                return plain(500, "Could not check access to the requested channels.")
            if not allowed:
                return plain(403, f"Not allowed to subscribe to channel {channel!r}.")
        return None

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
        """
        if not CHANNEL_NAME.fullmatch(channel):
            raise ValueError(f"invalid channel name {channel!r}")

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
        see :attr:`Connection.mode <flask_sse_keepalive.stream.Connection>`)
        and ``pid``.
        """
        registry = self._current_registry()
        stats = registry.stats
        return {
            "pid": os.getpid(),
            "connections": len(registry.connections),
            "channels": registry.broker.subscriber_counts(),
            "published": stats.published,
            "delivered": stats.delivered,
            "heartbeats": stats.heartbeats,
            "resets": stats.resets,
            "slow": stats.slow,
            "refused": stats.refused,
            "connects": stats.connects,
            "disconnects": dict(stats.disconnects),
            "modes": dict(stats.modes),
            "shutting_down": registry.shutting_down,
        }

    def shutdown(self) -> None:
        """End every open stream of the current app in this process and refuse
        new ones with ``503``. Under gunicorn this happens by itself when the
        worker stops; call it from your own server's shutdown otherwise.
        """
        self._current_registry().shutdown()
