"""The subscribe token kept out of what the client writes: log lines,
exception messages, hook records.

A token is a bearer credential until it expires, and a URL is what ends up
in logs and error trackers. The value of every ``token`` query parameter is
replaced by ``redacted``, as the server does in its access log
(both with :func:`flask_sse_keepalive.tokens.redact_query`).
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import httpx

from ..tokens import REDACTED, TOKEN_PARAMETER, redact_query


def redact_url(url: httpx.URL | str) -> str:
    """``url`` as text, with the value of every ``token`` query parameter
    replaced by ``redacted`` (``?channel=a&token=redacted``); the rest as it
    was, encoding included."""
    text = str(url)
    before_fragment, hash_mark, fragment = text.partition("#")
    path, question_mark, query = before_fragment.partition("?")
    if not question_mark:
        return text
    return path + question_mark + redact_query(query) + hash_mark + fragment


def redact_text(text: str, url: httpx.URL) -> str:
    """``text`` (a server's reason, say) without the token values ``url``
    carries, as sent or decoded: a server may echo the request's URL."""
    secrets: set[str] = set()
    for part in url.query.decode("ascii", "replace").split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == TOKEN_PARAMETER and value:
            secrets.update({value, unquote_plus(value)})
    # Longest first, so that no part of a longer form is left behind.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
