"""The stream route: request -> validated channels and resume point -> response.

Every refusal is a short plain-text response with the right status: ``400``
for malformed input, ``401`` for a bad, expired or missing (with
``SSE_REQUIRE_TOKEN``) token, ``403`` for a channel outside the token or
when :meth:`SSE.authorize` says no (``500`` when the hook fails), ``503``
with ``Retry-After`` when there is no room, and ``500`` naming the fix when
the server cannot hold streams at all.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, g, has_request_context, request

from . import server, tokens
from .direct import DirectConnection
from .event import INTERVAL_COMMENT, channel_problem
from .stream import Connection

if TYPE_CHECKING:
    from .config import Settings
    from .extension import SSE
    from .state import AppState

log = logging.getLogger("flask_sse_keepalive")

#: A Last-Event-ID longer than this is refused; up to 256 is the documented size.
MAX_ID_LENGTH = 1024
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")

#: What ``@sse_stream`` hands the response: ``(connection, first bytes) -> body``.
Body = Callable[[Connection, bytes], Iterator[bytes]]


def current_extension() -> SSE:
    extension: SSE | None = current_app.extensions.get("sse")
    if extension is None:
        raise RuntimeError(
            "flask_sse_keepalive is not set up on this app: did you forget SSE(app) or init_app?"
        )
    return extension


def plain(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A refusal: a short text, never cached, readable by an allowed origin
    (without CORS headers a page on another origin would see a network error
    instead of the status, and could not read ``Retry-After``)."""
    response = Response(message + "\n", status=status, mimetype="text/plain")
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(cors_headers(current_extension().state()))
    return response


def parse_channels(values: list[str], limit: int) -> list[str] | str:
    """The requested channels in order without repeats, or why they are refused."""
    channels = list(dict.fromkeys(values)) or ["default"]
    if len(channels) > limit:
        return f"too many channels: {len(channels)} (at most {limit})"
    for name in channels:
        problem = channel_problem(name)
        if problem is not None:
            return problem
    return channels


def parse_last_event_id() -> str | Response | None:
    """The resume point: the header wins over ``?last_event_id=``."""
    environ = request.environ  # read directly: a missing header costs nothing here
    value = environ.get("HTTP_LAST_EVENT_ID")
    if value is None:
        value = request.args.get("last_event_id")
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH:
        return plain(400, f"Last-Event-ID too long: {len(value)} characters")
    if not _PRINTABLE_ASCII.fullmatch(value):
        return plain(400, "Last-Event-ID must be printable ASCII")
    return value


def parse_heartbeat(settings: Settings) -> float | Response | None:
    """The client's ``?heartbeat=S``, clamped to the allowed range, or ``None``."""
    value = request.args.get("heartbeat")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        return plain(400, f"heartbeat must be a positive number of seconds, got {value[:40]!r}")
    return min(max(seconds, settings.heartbeat_min), settings.heartbeat_max)


def parse_token(state: AppState, channels: list[str]) -> tokens.Token | Response | None:
    """The request's ``?token=``, checked (before the ``authorize`` hook):
    ``401`` if it is bad, expired, or missing under ``SSE_REQUIRE_TOKEN``;
    ``403`` for a requested channel it does not grant."""
    values = request.args.getlist(tokens.TOKEN_PARAMETER)
    if not values:
        if state.settings.require_token:
            return unauthorized("A token is required (?token=).", error=False)
        return None
    redact_token(request.environ)
    if len(values) > 1:
        return unauthorized("Token refused: more than one.")
    # Without a SECRET_KEY no token can have been issued: none is valid.
    keys = tokens.signing_keys(current_app.config)
    try:
        token = tokens.verify(values[0], keys, state.settings.token_salt)
    except tokens.InvalidToken as exc:
        return unauthorized(f"Token refused: {exc}.")
    for channel in channels:
        if channel not in token.channels:
            return plain(403, f"The token does not grant channel {channel!r}.")
    g._sse_token = token
    return token


def current_token() -> tokens.Token | None:
    """The token the current stream request was let in with, if any."""
    if not has_request_context():
        return None
    token: tokens.Token | None = g.get("_sse_token")
    return token


def unauthorized(message: str, *, error: bool = True) -> Response:
    # RFC 6750: no error code when the request carried no credentials at all.
    challenge = 'Bearer error="invalid_token"' if error else "Bearer"
    return plain(401, message, {"WWW-Authenticate": challenge})


def redact_token(environ: MutableMapping[str, Any]) -> None:
    """Take the token out of the request line the server logs.

    gunicorn's access log is formatted from the environ after the response
    (``%(r)s`` is ``RAW_URI``, ``%(q)s`` is ``QUERY_STRING``), so the token,
    a bearer credential until it expires, would be written to it. The
    request object has its own copy of the query: the app is unaffected.
    """
    for key in ("QUERY_STRING", "RAW_URI", "REQUEST_URI"):
        value = environ.get(key)
        if not isinstance(value, str):
            continue
        if key == "QUERY_STRING":
            environ[key] = tokens.redact_query(value)
        else:
            path, mark, query = value.partition("?")
            environ[key] = path + mark + tokens.redact_query(query)


def access_problem(extension: SSE, channels: list[str]) -> Response | None:
    """``403`` for a channel the ``authorize`` hook refuses, ``500`` if it fails."""
    for channel in channels:
        try:
            allowed = extension.authorized(channel)
        except Exception:
            log.exception("the authorize hook failed for channel %r", channel)
            return plain(500, "Could not check access to the requested channels.")
        if not allowed:
            return plain(403, f"Not allowed to subscribe to channel {channel!r}.")
    return None


def stream_headers(state: AppState) -> dict[str, str]:
    headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
    }
    headers.update(cors_headers(state))
    return headers


def cors_headers(state: AppState) -> dict[str, str]:
    """``Access-Control-Allow-*`` for EventSource (which sends no preflight)."""
    origins = state.settings.cors_origins
    origin = request.environ.get("HTTP_ORIGIN")
    if not origins or not origin:
        return {}
    credentials = state.settings.cors_credentials
    if origin in origins or ("*" in origins and credentials):
        # With credentials the origin must be echoed, never "*".
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    elif "*" in origins:
        headers = {"Access-Control-Allow-Origin": "*"}
    else:
        return {}
    if credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    # A refusal's Retry-After is not a CORS-safelisted header.
    headers["Access-Control-Expose-Headers"] = "Retry-After"
    return headers


def preflight(state: AppState) -> Response:
    """Answer a CORS preflight: EventSource sends none, but a ``fetch`` client
    that sets ``Last-Event-ID`` on another origin does."""
    response = Response(status=204)
    response.headers["Allow"] = "GET, HEAD, OPTIONS"
    allowed = cors_headers(state)
    if allowed:
        response.headers.update(allowed)
        response.headers["Access-Control-Allow-Methods"] = "GET"
        # The origin is trusted: it may send what it asks for (a client's own
        # headers, such as an Authorization), besides the resume point.
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        response.headers["Access-Control-Allow-Headers"] = asked or "Last-Event-ID, Cache-Control"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


@functools.lru_cache(maxsize=256)
def _first_bytes(retry_ms: int, heartbeat_interval: float) -> bytes:
    return f"retry: {retry_ms}\n: {INTERVAL_COMMENT}{heartbeat_interval:g}\n\n".encode()


def first_bytes(state: AppState, heartbeat_interval: float) -> bytes:
    """``retry`` and the interval this stream's heartbeats will keep."""
    return _first_bytes(state.settings.retry_ms, heartbeat_interval)


def server_problem(state: AppState) -> Response | None:
    """A response refusing the stream when this server cannot hold it."""
    if server.gevent_patched():
        return None
    allowed = state.settings.allow_threads
    if allowed is None:
        allowed = server.is_dev_server(request.environ) or current_app.testing
    if allowed:
        return None
    server.warn_wrong_server(current_app.name)
    return plain(500, f"This server cannot hold SSE streams: {server.FIX}.")


def refusal(state: AppState, client_key: str | None) -> Response | None:
    reason = state.refusal(client_key)
    if reason is None:
        return None
    state.stats.refused += 1
    log.warning("refused a stream from %s: %s", request.remote_addr, reason)
    retry_after = str(random.randint(1, 5))
    return plain(503, f"Service unavailable: {reason}.", {"Retry-After": retry_after})


def open_stream(
    state: AppState,
    channels: list[str],
    last_event_id: str | None,
    client_key: str | None,
    body: Body | None = None,
    heartbeat_interval: float | None = None,
    expires_at: float | None = None,
) -> Response:
    """The streaming response for a new connection, of the class the server allows."""
    environ = request.environ
    sock = server.client_socket(environ) if state.settings.direct_write else None
    connection: Connection
    if sock is not None:
        connection = DirectConnection(
            state,
            channels,
            sock=sock,
            chunked=environ.get("SERVER_PROTOCOL") != "HTTP/1.0",
            # gunicorn's async workers let go of a request whose body raises EPIPE.
            hand_over="gunicorn.socket" in environ,
            last_event_id=last_event_id,
            remote_addr=request.remote_addr,
            client_key=client_key,
            heartbeat_interval=heartbeat_interval,
            expires_at=expires_at,
        )
    else:
        connection = Connection(
            state,
            channels,
            last_event_id=last_event_id,
            remote_addr=request.remote_addr,
            client_key=client_key,
            cut=server.cuttable_socket(environ),
            heartbeat_interval=heartbeat_interval,
            expires_at=expires_at,
        )
    first = first_bytes(state, connection.heartbeat_interval)
    iterable = body(connection, first) if body else connection.body(first)
    return Response(iterable, headers=stream_headers(state), direct_passthrough=True)


def make_blueprint(extension: SSE) -> Blueprint:
    blueprint = Blueprint("sse", __name__, static_folder="static", static_url_path="/static")

    @blueprint.route("", methods=["GET", "OPTIONS"], strict_slashes=False)
    def stream() -> Response:
        state = extension.state()
        if request.method == "OPTIONS":
            return preflight(state)
        problem = server_problem(state)
        if problem is not None:
            return problem
        channels = parse_channels(request.args.getlist("channel"), state.settings.max_channels)
        if isinstance(channels, str):
            return plain(400, channels)
        last_event_id = parse_last_event_id()
        if isinstance(last_event_id, Response):
            return last_event_id
        heartbeat = parse_heartbeat(state.settings)
        if isinstance(heartbeat, Response):
            return heartbeat
        token = parse_token(state, channels)
        if isinstance(token, Response):
            return token
        denied = access_problem(extension, channels)
        if denied is not None:
            return denied
        client_key = extension.request_client_key()
        refused = refusal(state, client_key)
        if refused is not None:
            return refused
        if request.method == "HEAD":
            return Response(headers=stream_headers(state))
        expires_at = None if token is None else token.expires_at
        return open_stream(
            state,
            channels,
            last_event_id,
            client_key,
            heartbeat_interval=heartbeat,
            expires_at=expires_at,
        )

    return blueprint
