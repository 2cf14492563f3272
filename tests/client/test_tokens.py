"""The client's ``token`` option against a real server that checks subscribe
tokens (gunicorn -k gevent); each scenario runs on both clients."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import httpx
import pytest

from flask_sse_keepalive.client import Backoff, StreamRefused
from tests.conftest import Server

from .drivers import Handle, collect

APP = "tests.apps.tokens_app:app"
Open = Callable[..., Handle]


def issue(server: Server, channels: list[str], expires_in: float = 600) -> str:
    response = httpx.post(
        f"{server.url}/control/token",
        json={"channels": channels, "expires_in": expires_in},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["token"])


def publish(server: Server, data: str) -> None:
    httpx.post(
        f"{server.url}/control/publish", json={"data": data, "channel": "a"}, timeout=10
    ).raise_for_status()


def test_a_token_function_is_asked_before_every_connect_and_the_stream_outlives_tokens(
    open_client: Open, gunicorn: Callable[..., Server]
) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true", "SSE_HEARTBEAT_INTERVAL": "1"})
    asked: list[str] = []

    def token() -> str:
        asked.append(issue(server, ["a"], expires_in=1.5))  # each lives 1.5 s
        return asked[-1]

    handle = open_client(
        f"{server.url}/stream", channels=["a"], token=token, backoff=Backoff(initial=0.1)
    )
    handle.wait_subscribed(10)
    publish(server, "one")
    assert [e.data for e in collect(handle, 1, 10)] == ["one"]
    # The token expires: the stream ends (reason "expired"), the client asks
    # for a new one and resumes where it was.
    deadline = time.monotonic() + 15
    while len(asked) < 3:
        assert time.monotonic() < deadline, f"asked {len(asked)} times in 15 s"
        with contextlib.suppress(TimeoutError):
            assert handle.receive(0.2) is None, "no event was published meanwhile"
    publish(server, "after two renewals")
    assert [e.data for e in collect(handle, 1, 10)] == ["after two renewals"]
    log = httpx.get(f"{server.url}/control/log", timeout=5).json()
    assert [e["reason"] for e in log if e.get("signal") == "disconnected"][:2] == ["expired"] * 2


def test_a_401_asks_the_function_once_more_then_refuses(
    open_client: Open, gunicorn: Callable[..., Server]
) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true"})
    tokens = ["not-a-token", issue(server, ["a"])]
    handle = open_client(f"{server.url}/stream", channels=["a"], token=lambda: tokens.pop(0))
    handle.wait_subscribed(10)  # the second, good token got through at once
    assert tokens == []
    refused = open_client(f"{server.url}/stream", channels=["a"], token=lambda: "still-bad")
    with pytest.raises(StreamRefused) as raised:
        refused.receive(10)
    assert raised.value.status == 401
    assert "Token refused: bad signature" in raised.value.reason


def test_a_fixed_token_refused_is_not_retried(
    open_client: Open, gunicorn: Callable[..., Server]
) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true"})
    handle = open_client(f"{server.url}/stream", channels=["a", "b"], token=issue(server, ["a"]))
    with pytest.raises(StreamRefused) as raised:
        handle.receive(10)
    assert raised.value.status == 403
    assert "does not grant channel 'b'" in raised.value.reason
