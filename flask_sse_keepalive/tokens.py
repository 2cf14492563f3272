"""Subscribe tokens: which channels the bearer may stream, until when, as whom.

A token is an itsdangerous ``URLSafeTimedSerializer`` string signed with
the app's secret key (and its fallbacks, for rotation) under a salt of its
own, so that no other signed value of the app (a session cookie, another
extension's token) can pass for one. It holds the channels, the expiry and
an optional subject; it is URL-safe, for ``?token=``. Pure: no request, no
app, only keys and strings.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote_plus

from itsdangerous import BadData, URLSafeTimedSerializer

from .event import check_channel

__all__ = [
    "MAX_TOKEN_LENGTH",
    "REDACTED",
    "TOKEN_PARAMETER",
    "InvalidToken",
    "Token",
    "issue",
    "redact_query",
    "signing_keys",
    "verify",
]

#: The query parameter that carries a token, a bearer credential until it
#: expires, and what its value becomes wherever a URL is written down (the
#: server's access log, the client's log lines and errors).
TOKEN_PARAMETER = "token"
REDACTED = "redacted"

#: A longer ``?token=`` is refused before any decoding; a longer token is
#: never issued (gunicorn's request line is at most 4094 bytes by default).
MAX_TOKEN_LENGTH = 2048

_SIGNER = {"key_derivation": "hmac", "digest_method": hashlib.sha256}


class InvalidToken(ValueError):
    """A token that grants nothing: its message is the plain reason
    (malformed, a bad signature, expired), safe to show the client."""


@dataclass(frozen=True)
class Token:
    """What a valid token grants."""

    #: the channels the bearer may subscribe to
    channels: frozenset[str]
    #: who it was issued for (``subject=`` of :meth:`SSE.token`), or ``None``
    subject: str | None
    #: when it expires, as a ``time.time()`` value
    expires_at: float


def signing_keys(config: Mapping[str, Any]) -> list[str | bytes]:
    """The app's keys, oldest first as itsdangerous wants them: the
    ``SECRET_KEY_FALLBACKS`` (Flask 3.1), then ``SECRET_KEY``, which signs.
    Empty without a ``SECRET_KEY``."""
    secret = config.get("SECRET_KEY")
    if not secret:
        return []
    return [*(config.get("SECRET_KEY_FALLBACKS") or ()), secret]


def _serializer(keys: Sequence[str | bytes], salt: str) -> URLSafeTimedSerializer:
    as_bytes = [key.encode() if isinstance(key, str) else key for key in keys]
    return URLSafeTimedSerializer(as_bytes, salt=salt, signer_kwargs=_SIGNER)


def _channels(channels: str | Iterable[str]) -> list[str]:
    names = [channels] if isinstance(channels, str) else list(dict.fromkeys(channels))
    if not names:
        raise ValueError("a token needs at least one channel")
    for name in names:
        check_channel(name)
    return names


def issue(
    keys: Sequence[str | bytes],
    salt: str,
    channels: str | Iterable[str],
    *,
    expires_in: float | timedelta,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """A token for ``channels`` that expires ``expires_in`` from ``now``.

    :raises ValueError: for a bad channel name, no channel, an ``expires_in``
        that is not a positive number of seconds, or a token that would be
        longer than :data:`MAX_TOKEN_LENGTH`.
    :raises TypeError: for a ``subject`` that is not a ``str``.
    """
    if not keys:
        raise ValueError("no key to sign with")
    seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"expires_in must be a number of seconds, got {expires_in!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expires_in must be positive, got {expires_in!r}")
    if subject is not None and not isinstance(subject, str):
        raise TypeError(f"subject must be a str or None, got {type(subject).__name__}")
    issued = time.time() if now is None else now
    # To the millisecond, rounded down: a token never lasts longer than asked.
    expires_at = math.floor((issued + seconds) * 1000) / 1000
    payload: dict[str, Any] = {"c": _channels(channels), "x": expires_at}
    if subject is not None:
        payload["s"] = subject
    token: str = _serializer(keys, salt).dumps(payload)
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(
            f"the token would be {len(token)} characters (at most {MAX_TOKEN_LENGTH}): "
            "fewer or shorter channels, or a shorter subject"
        )
    return token


def verify(
    token: str, keys: Sequence[str | bytes], salt: str, *, now: float | None = None
) -> Token:
    """What ``token`` grants: one signature check per key tried (the current
    key first), and nothing of the token is decoded before its signature holds.

    :raises InvalidToken: saying why the token grants nothing.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken(f"too long ({len(token)} characters)")
    if not token.isascii():
        raise InvalidToken("malformed")
    try:
        payload = _serializer(keys, salt).loads(token)
    except BadData:
        # A wrong key, another salt, a tampered or truncated token: the same
        # answer for all, so the reply tells a forger nothing.
        raise InvalidToken("bad signature") from None
    grant = _grant(payload)
    if (time.time() if now is None else now) >= grant.expires_at:
        raise InvalidToken("expired")
    return grant


def _grant(payload: Any) -> Token:
    """The payload of a well-signed token, checked all the same (one issued
    by another version of this package, or by hand with the app's key)."""
    if isinstance(payload, dict):
        channels, expires_at, subject = payload.get("c"), payload.get("x"), payload.get("s")
        if (
            isinstance(channels, list)
            and channels
            and all(isinstance(name, str) for name in channels)
            and isinstance(expires_at, (int, float))
            and not isinstance(expires_at, bool)
            and (subject is None or isinstance(subject, str))
        ):
            return Token(frozenset(channels), subject, float(expires_at))
    raise InvalidToken("malformed")


def redact_query(query: str) -> str:
    """``query`` (a URL's query string) with the value of every ``token``
    parameter replaced by ``redacted``; the rest as it was, encoding included."""
    parts = query.split("&")
    for index, part in enumerate(parts):
        name = part.partition("=")[0]
        if unquote_plus(name) == TOKEN_PARAMETER:
            parts[index] = f"{name}={REDACTED}"
    return "&".join(parts)
