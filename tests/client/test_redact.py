"""The subscribe token stays out of what the client writes: its log lines,
its exceptions and its hook records; each scenario runs on both clients.

Only what the package controls is checked: records of the
``flask_sse_keepalive`` loggers. httpx logs its request lines (query string
included) at ``INFO`` to the ``httpx`` logger; see the security guide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from flask_sse_keepalive.client import Backoff, SSEClient, StreamRefused
from flask_sse_keepalive.client.redact import redact_text, redact_url

from .drivers import Handle, collect
from .scripted import Connection, ScriptedServer

Open = Callable[..., Handle]

#: Sent as ``token=``; the one in the URL as given is replaced by it on the wire.
SECRET = "s3cret-T0ken.abc_XYZ"
SECRET_IN_URL = "url-s3cret.T0ken"


def leaks(text: str) -> bool:
    """The search every assertion below makes."""
    return SECRET in text or SECRET_IN_URL in text


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("http://h/s?channel=a&token=X", "http://h/s?channel=a&token=redacted"),
        ("http://h/s?token=X&channel=a", "http://h/s?token=redacted&channel=a"),
        ("http://h/s?token=X&token=Y", "http://h/s?token=redacted&token=redacted"),
        ("http://h/s?tok%65n=X", "http://h/s?tok%65n=redacted"),  # the name encoded
        ("http://h/s?token", "http://h/s?token=redacted"),
        ("http://h/s?token=X#top", "http://h/s?token=redacted#top"),
        ("http://h/s?atoken=X&channel=token", "http://h/s?atoken=X&channel=token"),
        ("http://h/s?channel=a%26b", "http://h/s?channel=a%26b"),
        ("http://h/s", "http://h/s"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert redact_url(httpx.URL(url)) == str(httpx.URL(redacted))


def test_redact_text_takes_out_the_token_as_sent_and_decoded() -> None:
    url = httpx.URL("http://h/s", params={"channel": "a", "token": "a b/c"})
    assert "token=a+b%2Fc" in str(url)
    said = f"not found: {url} (token 'a b/c')"
    assert (
        redact_text(said, url)
        == "not found: http://h/s?channel=a&token=redacted (token 'redacted')"
    )
    assert redact_text("no token here", httpx.URL("http://h/s?channel=a")) == "no token here"


def test_no_log_line_exception_or_hook_record_carries_the_token(
    open_client: Open, scripted: Callable[..., ScriptedServer], caplog: pytest.LogCaptureFixture
) -> None:
    def handler(connection: Connection) -> None:
        request = connection.read_request()
        if connection.number == 0:
            # One event, then the end: opened, closed, reconnecting.
            connection.stream(b"data: one\n\n")
        else:
            # A careless server that echoes the query in its refusal.
            echoed = "&".join(f"{k}={v[0]}" for k, v in request.query.items())
            connection.respond(401, f"Token refused for ?{echoed}".encode())

    server = scripted(handler)
    caplog.set_level(logging.DEBUG)
    handle = open_client(
        f"{server.url}?token={SECRET_IN_URL}",
        channels=["a"],
        token=lambda: SECRET,  # a function: the first 401 asks it once more
        backoff=Backoff(initial=0.1),
    )
    assert [e.data for e in collect(handle, 1, 10)] == ["one"]
    with pytest.raises(StreamRefused) as raised:
        handle.receive(10)
    refused = raised.value

    # Sent as asked, on each of the three connections: the token did go out.
    assert [r.query["token"] for r in server.requests()] == [[SECRET]] * 3
    assert leaks(f"Token refused for ?token={SECRET}&channel=a")  # the control: caught
    ours = [r for r in caplog.records if r.name.startswith("flask_sse_keepalive")]
    lines = [r.getMessage() for r in ours]
    assert any(line.startswith("stream opened: ") for line in lines), lines
    assert sum(line.startswith("reconnecting to ") for line in lines) == 2, lines
    assert not [line for line in lines if leaks(line)]
    assert "token=redacted" in " ".join(lines)

    assert refused.status == 401
    for text in (str(refused), repr(refused), refused.url, refused.reason):
        assert not leaks(text), text
    assert refused.reason == "Token refused for ?token=redacted&channel=a"
    assert refused.url == f"{server.url}?token=redacted&channel=a"

    [opened] = handle.hooks.opened()
    assert opened.url == f"{server.url}?token=redacted&channel=a"
    assert not [r for r in handle.hooks.records if leaks(repr(r.info))]


def test_a_url_that_is_not_http_is_refused_without_its_token() -> None:
    with pytest.raises(ValueError, match="token=redacted") as raised:
        SSEClient(f"ftp://h/stream?token={SECRET}")
    assert not leaks(str(raised.value))
