"""``@sse_stream``: a generator view becomes an SSE stream with heartbeats."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Response, copy_current_request_context, g

from . import server
from .event import to_event
from .stream import CloseReason, Connection
from .views import current_extension, open_stream, refusal, server_problem

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["sse_stream"]

log = logging.getLogger("flask_sse_keepalive")

_NOTHING = object()


def sse_stream(view: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a view that yields events into a ``text/event-stream`` response.

    The view may yield :class:`~flask_sse_keepalive.Event` objects, ``str``
    (sent as the data) or JSON-encodable values. ::

        @app.route("/countdown")
        @sse_stream
        def countdown():
            for n in (3, 2, 1):
                yield Event(data=str(n), event="count")
                gevent.sleep(1)

    * The code before the first ``yield`` runs before any byte is sent, so
      ``abort(403)`` there is an ordinary error response.
    * After that the generator runs in its own greenlet with a copy of the
      request context: ``request`` and ``session`` work, and ``g`` holds what
      the view put there before its first ``yield``. Heartbeats keep the line
      alive meanwhile. The generator is slowed down (not dropped) while the
      client reads slowly, and dropped as ``slow`` after ``SSE_SEND_TIMEOUT``
      without room.
    * When the client goes away (or the worker stops) the generator is closed:
      its ``finally`` runs. An exception in it ends the stream cleanly and is
      logged; the client sees the stream end, not a traceback.
    * A view that returns something else (a :class:`~flask.Response`, a
      string) is passed through unchanged.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        extension = current_extension()
        state = extension.state()
        problem = server_problem(state)
        if problem is not None:
            return problem
        client_key = extension.request_client_key()
        refused = refusal(state, client_key)
        if refused is not None:
            return refused
        result = view(*args, **kwargs)
        if isinstance(result, (Response, str, bytes, dict, tuple)) or not hasattr(
            result, "__next__"
        ):
            return result
        try:
            first = next(result)
        except StopIteration:
            first = _NOTHING
        producer = _GeneratorProducer(result, state.settings)

        def body(connection: Connection, first_bytes: bytes) -> Iterator[bytes]:
            if first is not _NOTHING:
                connection.send_event(to_event(first))
            else:
                producer.finished = True
            return connection.body(first_bytes, producer)

        return open_stream(state, [], None, client_key, body=body)

    return wrapper


class _GeneratorProducer:
    """Runs the view's generator beside the connection, in the request context."""

    def __init__(self, generator: Iterator[Any], settings: Settings) -> None:
        self.generator = generator
        self.finished = False
        # What the view put in g before its first yield, for the copied context
        # (which gets an app context, and a g, of its own).
        values = dict(vars(g._get_current_object()))

        @copy_current_request_context
        def run(connection: Connection) -> None:
            for name, value in values.items():
                setattr(g, name, value)
            self._run(connection)

        self._run_in_context = run
        # Keep a backlog of at most half the queue so heartbeats and the
        # final bytes always fit.
        self._high_water = max(1, settings.queue_size // 2)
        self._send_timeout = settings.send_timeout
        self._runner: Any = None

    def start(self, connection: Connection) -> None:
        if server.gevent_patched():
            import gevent

            self._runner = gevent.spawn(self._run_in_context, connection)
        else:
            self._runner = threading.Thread(
                target=self._run_in_context, args=(connection,), name=f"sse-stream-{connection.id}"
            )
            self._runner.daemon = True
            self._runner.start()

    def stop(self) -> None:
        runner = self._runner
        if runner is None:
            self.generator_close()
            return
        if hasattr(runner, "kill"):
            # GreenletExit is raised where the generator waits: its finally runs.
            runner.kill(block=True, timeout=1)
        # A thread cannot be interrupted; it closes the generator after its
        # next item, when it finds the connection closed.

    def generator_close(self) -> None:
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()

    def _run(self, connection: Connection) -> None:
        reason: CloseReason = "server"
        try:
            if self.finished:
                return
            for item in self.generator:
                if not connection.send_event(to_event(item)):
                    return
                if connection.backlog >= self._high_water and not self._wait_for_room(connection):
                    reason = "slow"
                    return
        except Exception:
            log.exception("the @sse_stream generator of %s failed", connection)
            reason = "error"
        finally:
            try:
                self.generator_close()
            except Exception:
                log.exception("closing the @sse_stream generator of %s failed", connection)
            # The generator's own failure leaves the line intact: end the
            # response cleanly; only a client that cannot keep up is cut.
            connection.close(reason, abort=reason == "slow")

    def _wait_for_room(self, connection: Connection) -> bool:
        deadline = time.monotonic() + self._send_timeout
        while connection.backlog >= self._high_water:
            if connection.closed:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True
