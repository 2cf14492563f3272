"""Blinker signals that connect application code to the streams.

The sender is always the Flask application. Connect receivers as usual::

    from flask_sse_keepalive import signals

    @signals.client_disconnected.connect_via(app)
    def log_leave(app, connection, reason):
        app.logger.info("stream %s ended: %s", connection.id, reason)

Receivers run in the greenlet of the connection (or publisher) that sent the
signal; keep them short. An exception in a receiver is logged and does not
break the stream's cleanup.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["client_connected", "client_disconnected", "event_published"]

_signals = Namespace()

#: Sent when a stream starts, before its first byte.
#: Keyword arguments: ``connection`` (a :class:`~flask_sse_keepalive.stream.Connection`:
#: ``id``, ``channels``, ``remote_addr``, ``last_event_id``).
client_connected = _signals.signal("client-connected")

#: Sent once when a stream ends, after its resources are released.
#: Keyword arguments: ``connection`` and ``reason``, one of ``"client"`` (the
#: peer closed), ``"timeout"`` (the peer acknowledged nothing for the
#: dead-peer bound: it vanished), ``"shutdown"`` (the worker is stopping),
#: ``"slow"`` (the client could not keep up), ``"lifetime"``
#: (``SSE_MAX_STREAM_SECONDS`` reached), ``"expired"`` (the token the stream
#: was opened with expired), ``"error"`` (the server failed) or ``"server"``
#: (an ``@sse_stream`` generator ended).
client_disconnected = _signals.signal("client-disconnected")

#: Sent by :meth:`SSE.publish` after the broker stored the event.
#: Keyword arguments: ``event`` (the :class:`~flask_sse_keepalive.Event`, with
#: its id) and ``channel``.
event_published = _signals.signal("event-published")
