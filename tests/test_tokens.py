"""Subscribe tokens: the codec, the route's checks, the stream's end at expiry, the logs.

The codec and the route's refusals are tested in process (the Flask test
client); a token's stream ending at expiry on a socketpair and under
gunicorn in each write mode; that the token stays out of every log under
gunicorn with its access log on.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from datetime import timedelta
from typing import Any

import gevent
import httpx
import pytest
from flask import Flask, request
from itsdangerous import URLSafeTimedSerializer

from flask_sse_keepalive import SSE
from flask_sse_keepalive.tokens import MAX_TOKEN_LENGTH, InvalidToken, issue, verify
from flask_sse_keepalive.views import redact_token
from tests.test_connection import Line, ThreadedLine, make_state, released
from tests.test_streams import wait_until
from tests.wire import RawStream

SALT = "flask-sse-keepalive.token"
KEY = "the-current-key"
APP = "tests.apps.tokens_app:app"


def make_app(**config: Any) -> tuple[Flask, SSE]:
    app = Flask("token-tests")
    app.testing = True
    app.config.update({"SECRET_KEY": KEY, "SSE_HEARTBEAT_INTERVAL": 30, **config})
    return app, SSE(app)


def token_of(app: Flask, sse: SSE, channels: Any, **kwargs: Any) -> str:
    with app.app_context():
        return sse.token(channels, **kwargs)


def get(app: Flask, query: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    """Status, body (of a refusal) and headers of a stream request; a stream is closed at once."""
    response = app.test_client().get(f"/stream?{query}", buffered=False, **kwargs)
    try:
        body = "" if response.status_code == 200 else response.get_data(as_text=True)
        return response.status_code, body, dict(response.headers)
    finally:
        response.close()


# -- the codec --------------------------------------------------------------------------


def refusal(token: str, keys: list[str] | None = None, **kwargs: Any) -> str:
    """Why ``verify`` refuses ``token`` (it must)."""
    with pytest.raises(InvalidToken) as refused:
        verify(token, keys or [KEY], SALT, **kwargs)
    return str(refused.value)


def test_a_token_says_what_it_grants() -> None:
    before = time.time()
    token = issue([KEY], SALT, ["a", "b", "a"], expires_in=600, subject="user-42")
    grant = verify(token, [KEY], SALT)
    assert grant.channels == {"a", "b"}
    assert grant.subject == "user-42"
    assert before + 600 - 0.001 <= grant.expires_at <= time.time() + 600
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token), "a token needs no escaping in a URL"


def test_one_channel_may_be_given_as_a_str_and_expiry_as_a_timedelta() -> None:
    token = issue([KEY], SALT, "prices", expires_in=timedelta(minutes=1))
    grant = verify(token, [KEY], SALT)
    assert grant.channels == {"prices"}
    assert grant.subject is None
    assert 59 < grant.expires_at - time.time() <= 60


@pytest.mark.parametrize(
    ("channels", "kwargs", "error"),
    [
        ([], {}, ValueError),
        (["bad name"], {}, ValueError),
        (["a"], {"expires_in": 0}, ValueError),
        (["a"], {"expires_in": -5}, ValueError),
        (["a"], {"expires_in": float("nan")}, ValueError),
        (["a"], {"expires_in": float("inf")}, ValueError),
        (["a"], {"expires_in": True}, ValueError),
        (["a"], {"expires_in": "600"}, ValueError),
        (["a"], {"subject": 42}, TypeError),
        # More than fits in a URL, even compressed.
        ([hashlib.sha512(bytes([n])).hexdigest()[:120] for n in range(40)], {}, ValueError),
    ],
)
def test_a_token_that_cannot_be_issued(channels: Any, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        issue([KEY], SALT, channels, **{"expires_in": 600, **kwargs})


def test_an_expired_token_grants_nothing_from_its_expiry_on() -> None:
    token = issue([KEY], SALT, ["a"], expires_in=10, now=1000.0)
    assert verify(token, [KEY], SALT, now=1009.999).channels == {"a"}
    for now in (1010.0, 1010.001, 5000.0):
        assert refusal(token, now=now) == "expired"


def forged(payload: Any, key: str = KEY, salt: str = SALT, **signer: Any) -> str:
    """``payload`` signed by hand with itsdangerous, as another app (or an attacker) could."""
    signer = signer or {"key_derivation": "hmac", "digest_method": hashlib.sha256}
    return URLSafeTimedSerializer(key, salt=salt, signer_kwargs=signer).dumps(payload)


def test_a_token_signed_otherwise_grants_nothing() -> None:
    good = {"c": ["a"], "x": time.time() + 600}
    assert verify(forged(good), [KEY], SALT).channels == {"a"}  # the control
    refused = [
        forged(good, key="another-key"),
        forged(good, salt="another-salt"),
        # A Flask session cookie of the same app: same key, Flask's salt and signer.
        forged(good, salt="cookie-session", key_derivation="hmac"),
        URLSafeTimedSerializer(KEY, salt=SALT).dumps(good),  # another signing scheme
    ]
    for token in refused:
        assert refusal(token) == "bad signature"


def tampered(token: str) -> list[str]:
    payload, timestamp, signature = token.split(".")

    def changed(part: str) -> str:
        # The first character of a base64 part is all data bits (the last
        # may hold padding bits, where another letter decodes the same).
        return ("f" if part[0] != "f" else "g") + part[1:]

    return [
        f"{changed(payload)}.{timestamp}.{signature}",
        f"{payload}.{changed(timestamp)}.{signature}",
        f"{payload}.{timestamp}.{changed(signature)}",
        f"{payload}.{timestamp}.{signature[:-3]}",
        f"{payload}.{timestamp}",
        f"{payload}..{signature}",
        f".{payload}.{timestamp}.{signature}",  # as if compressed
        "",
        "....",
        "not-a-token",
    ]


def test_a_tampered_or_truncated_token_grants_nothing() -> None:
    token = issue([KEY], SALT, ["a"], expires_in=600)
    for bad in tampered(token):
        assert refusal(bad) == "bad signature", bad


@pytest.mark.parametrize(
    "payload",
    [
        ["a"],
        {"c": "a", "x": 4e9},
        {"c": [], "x": 4e9},
        {"c": [1], "x": 4e9},
        {"c": ["a"]},
        {"c": ["a"], "x": "later"},
        {"c": ["a"], "x": True},
        {"c": ["a"], "x": 4e9, "s": 7},
    ],
)
def test_a_well_signed_token_of_the_wrong_shape_is_malformed(payload: Any) -> None:
    assert refusal(forged(payload)) == "malformed"


def test_an_oversized_or_non_ascii_token_is_refused_before_decoding() -> None:
    assert refusal("x" * (MAX_TOKEN_LENGTH + 1)) == "too long (2049 characters)"
    token = issue([KEY], SALT, ["a"], expires_in=600)
    assert refusal(token + "é") == "malformed"


def test_keys_rotate_through_the_fallbacks() -> None:
    old = issue(["old-key"], SALT, ["a"], expires_in=600)
    # itsdangerous order: oldest first, the last one signs.
    assert verify(old, ["old-key", "new-key"], SALT).channels == {"a"}
    new = issue(["old-key", "new-key"], SALT, ["a"], expires_in=600)
    assert verify(new, ["new-key"], SALT).channels == {"a"}
    assert refusal(new, ["old-key"]) == "bad signature"
    assert refusal(old, ["new-key"]) == "bad signature"


# -- the stream route ---------------------------------------------------------------------


def test_a_token_opens_a_stream_on_channels_it_grants() -> None:
    app, sse = make_app()
    token = token_of(app, sse, ["a", "b"])
    assert get(app, f"channel=a&channel=b&token={token}")[0] == 200
    assert get(app, f"channel=b&token={token}")[0] == 200


def test_a_channel_outside_the_token_is_403() -> None:
    app, sse = make_app()
    token = token_of(app, sse, ["a"])
    status, body, headers = get(app, f"channel=a&channel=b&token={token}")
    assert (status, body) == (403, "The token does not grant channel 'b'.\n")
    assert headers["Cache-Control"] == "no-store"
    # No channel asked is the default channel, which this token does not grant.
    assert get(app, f"token={token}")[0] == 403


def test_bad_tokens_are_401_with_a_plain_reason() -> None:
    app, sse = make_app(SSE_CORS_ORIGINS="https://a.example")
    other_key, other_sse = make_app(SECRET_KEY="another-key")
    other_salt, salted_sse = make_app(SSE_TOKEN_SALT="another-app")
    with app.app_context():
        expired = issue([KEY], SALT, ["a"], expires_in=1, now=time.time() - 10)
    cases = {
        token_of(other_key, other_sse, ["a"]): "bad signature",
        token_of(other_salt, salted_sse, ["a"]): "bad signature",
        expired: "expired",
        "x" * 3000: "too long (3000 characters)",
        "": "bad signature",
        **{bad: "bad signature" for bad in tampered(token_of(app, sse, ["a"]))},
    }
    for token, reason in cases.items():
        status, body, headers = get(
            app, f"channel=a&token={token}", headers={"Origin": "https://a.example"}
        )
        assert (status, body) == (401, f"Token refused: {reason}.\n"), token
        assert headers["Cache-Control"] == "no-store"
        assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        # A page on an allowed origin sees the status, not a network error.
        assert headers["Access-Control-Allow-Origin"] == "https://a.example"


def test_two_tokens_are_refused() -> None:
    app, sse = make_app()
    token = token_of(app, sse, ["a"])
    status, body, _ = get(app, f"channel=a&token={token}&token={token}")
    assert (status, body) == (401, "Token refused: more than one.\n")


def test_require_token_refuses_a_stream_without_one() -> None:
    app, sse = make_app(SSE_REQUIRE_TOKEN=True)
    status, body, headers = get(app, "channel=a")
    assert (status, body) == (401, "A token is required (?token=).\n")
    assert headers["WWW-Authenticate"] == "Bearer"
    assert get(app, f"channel=a&token={token_of(app, sse, 'a')}")[0] == 200
    # HEAD goes through the same checks.
    assert app.test_client().head("/stream?channel=a").status_code == 401
    # Without the setting the token is optional (the authorize hook decides).
    assert get(make_app()[0], "channel=a")[0] == 200


def test_a_rotated_key_keeps_its_tokens_valid_through_secret_key_fallbacks() -> None:
    old_app, old_sse = make_app(SECRET_KEY="old-key")
    token = token_of(old_app, old_sse, ["a"])
    rotated, _ = make_app(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"])
    assert get(rotated, f"channel=a&token={token}")[0] == 200
    retired, _ = make_app(SECRET_KEY="new-key")
    assert get(retired, f"channel=a&token={token}")[0] == 401


def test_the_hook_runs_after_the_token_and_sees_its_subject() -> None:
    app, sse = make_app()
    seen: list[tuple[str, str | None, bool]] = []

    @sse.authorize
    def hook(channel: str) -> bool:
        seen.append((channel, sse.current_subject(), "token" in request.args))
        return sse.current_subject() != "banned"

    ok = token_of(app, sse, ["a", "b"], subject="user-1")
    assert get(app, f"channel=a&channel=b&token={ok}")[0] == 200
    assert seen == [("a", "user-1", True), ("b", "user-1", True)]
    seen.clear()
    banned = token_of(app, sse, ["a"], subject="banned")
    assert get(app, f"channel=a&token={banned}")[:2] == (
        403,
        "Not allowed to subscribe to channel 'a'.\n",
    )
    seen.clear()
    # A refused token never reaches the hook; a request without one does.
    assert get(app, "channel=a&token=forged")[0] == 401
    assert get(app, f"channel=a&channel=b&token={token_of(app, sse, 'a')}")[0] == 403
    assert seen == []
    assert get(app, "channel=a")[0] == 200
    assert seen == [("a", None, False)]


def test_current_subject_outside_a_stream_request_is_none() -> None:
    app, sse = make_app()
    assert sse.current_subject() is None
    with app.test_request_context("/elsewhere?token=x"):
        assert sse.current_subject() is None


def test_issuing_needs_a_secret_key_and_a_salt(caplog: pytest.LogCaptureFixture) -> None:
    app, sse = make_app(SECRET_KEY=None)
    with app.app_context(), pytest.raises(RuntimeError, match="SECRET_KEY"):
        sse.token(["a"])
    assert get(app, "channel=a&token=anything")[:2] == (401, "Token refused: bad signature.\n")
    with pytest.raises(ValueError, match="SSE_TOKEN_SALT"):
        make_app(SSE_TOKEN_SALT="")
    with caplog.at_level(logging.WARNING, logger="flask_sse_keepalive"):
        make_app(SECRET_KEY=None, SSE_REQUIRE_TOKEN="true")
    assert "SSE_REQUIRE_TOKEN is set but the app has no SECRET_KEY" in caplog.text


def test_the_token_is_redacted_from_the_request_line_the_server_logs() -> None:
    environ = {
        "QUERY_STRING": "channel=a&token=SECRET&tok%65n=SECRET2&tokens=keep&x=token",
        "RAW_URI": "/stream?channel=a&token=SECRET",
        "REQUEST_URI": "/stream?token=SECRET",
        "PATH_INFO": "/stream",
    }
    redact_token(environ)
    assert environ == {
        "QUERY_STRING": "channel=a&token=redacted&tok%65n=redacted&tokens=keep&x=token",
        "RAW_URI": "/stream?channel=a&token=redacted",
        "REQUEST_URI": "/stream?token=redacted",
        "PATH_INFO": "/stream",
    }


def test_the_package_never_logs_the_token(caplog: pytest.LogCaptureFixture) -> None:
    app, sse = make_app(SSE_MAX_CONNECTIONS=1)
    token = token_of(app, sse, ["a"])
    with caplog.at_level(logging.DEBUG):
        response = app.test_client().get(f"/stream?channel=a&token={token}", buffered=False)
        next(iter(response.response))  # the stream opens (and says so at debug)
        assert get(app, f"channel=a&token={token}")[0] == 503  # refused (logged)
        assert get(app, f"channel=a&token={token}x")[0] == 401
        response.close()
    assert "opened: channels=a" in caplog.text
    assert "refused a stream" in caplog.text
    assert token not in caplog.text


# -- the stream ends when its token expires ------------------------------------------------


@pytest.mark.parametrize("make_line", [Line, ThreadedLine], ids=["direct", "threaded"])
@pytest.mark.parametrize(
    ("max_seconds", "expires_in", "reason"),
    [(None, 0.4, "expired"), (30, 0.4, "expired"), (0.4, 30, "lifetime")],
)
def test_a_stream_ends_at_the_earlier_of_its_token_expiry_and_lifetime(
    make_line: Any, max_seconds: float | None, expires_in: float, reason: str
) -> None:
    state = make_state(SSE_MAX_STREAM_SECONDS=max_seconds, SSE_RETRY_MS=1000)
    expires_at = time.time() + expires_in
    line = make_line(state, expires_at=expires_at)
    try:
        deadline = time.monotonic() + 5
        while not released(state):
            assert time.monotonic() < deadline, "the stream did not end within 5 s"
            if isinstance(line, Line):
                line.read(0.05)
            else:
                time.sleep(0.02)
        ended = time.time()
        assert released(state) == {reason: 1}
        if isinstance(line, Line):
            line.wait_for(lambda: line.chunks.ended, 2, "the terminating chunk")
        else:
            assert line.ended.wait(2)
        assert line.parser.comments[-1] == reason
        assert 500 <= line.parser.retries[-1] <= 1500, "a spread-out retry"
        assert line.connection.expires_at == expires_at
        if reason == "expired":
            # Never before the expiry (no jitter that way), never long after it.
            assert expires_at - 0.01 <= ended < expires_at + 0.5
        else:
            assert ended < expires_at
    finally:
        if isinstance(line, Line):
            line.close()


def test_a_token_that_expired_before_the_stream_began_ends_it_at_once() -> None:
    state = make_state()
    line = Line(state, expires_at=time.time() - 1)
    try:
        line.wait_for(lambda: line.chunks.ended, 2, "the end of the stream")
        assert released(state) == {"expired": 1}
        assert line.parser.events == []
    finally:
        line.close()


def test_no_event_is_written_after_the_expiry() -> None:
    state = make_state()
    line = Line(state, expires_at=time.time() + 0.3)
    try:
        line.wait_for(lambda: "sse-keepalive subscribed" in line.parser.comments, 2, "subscribed")
        line.publish("before")
        line.wait_for(lambda: line.parser.events, 2, "the event before the expiry")
        line.wait_for(lambda: bool(released(state)), 3, "the expiry")
        line.publish("after")
        gevent.sleep(0.1)
        line.wait_for(lambda: line.chunks.ended, 2, "the terminating chunk")
        assert [e.data for e in line.parser.events] == ["before"]
    finally:
        line.close()


def token_from(server: Any, channels: list[str], **body: Any) -> str:
    response = httpx.post(
        f"{server.url}/control/token", json={"channels": channels, **body}, timeout=10
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def server_log(server: Any) -> list[dict]:
    return httpx.get(f"{server.url}/control/log", timeout=10).json()


@pytest.mark.parametrize("direct_write", ["true", "false"], ids=["owned", "iterator"])
def test_under_gunicorn_a_token_stream_ends_at_expiry_and_the_token_is_then_refused(
    gunicorn: Any, direct_write: str
) -> None:
    server = gunicorn(
        APP,
        env={
            "SSE_DIRECT_WRITE": direct_write,
            "SSE_HEARTBEAT_INTERVAL": "0.5",
            "SSE_RETRY_MS": "2000",
        },
    )
    before = time.time()
    token = token_from(server, ["a"], expires_in=1.5, subject="user-1")
    after = time.time()
    stream = RawStream(server.port, f"/stream?channel=a&token={token}")
    assert stream.status == 200
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    stream.read_to_end(10)
    ended = time.time()
    assert before + 1.5 - 0.05 <= ended <= after + 1.5 + 1.5, f"ended {ended - before:.2f} s in"
    assert stream.parser.comments[-1] == "expired"
    assert 1000 <= stream.parser.retries[-1] <= 3000
    disconnects = [e for e in server_log(server) if e.get("signal") == "disconnected"]
    assert [e["reason"] for e in disconnects] == ["expired"]
    assert before + 1.5 - 0.001 <= disconnects[0]["expires_at"] <= after + 1.5
    # The browser reconnects with the page's URL: the same token, now refused.
    again = RawStream(server.port, f"/stream?channel=a&token={token}")
    assert again.status == 401
    again.read_to_end(5)
    assert again.wire == b"Token refused: expired.\n"


def test_under_gunicorn_the_token_is_in_no_log(gunicorn: Any) -> None:
    server = gunicorn(
        APP,
        env={"TEST_DEBUG_LOG": "1", "SSE_MAX_CONNECTIONS_PER_CLIENT": "1"},
        args=("--access-logfile", "-"),
    )
    token = token_from(server, ["a"], subject="user-1")
    stream = RawStream(server.port, f"/stream?channel=a&token={token}")
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    refused = [
        RawStream(server.port, f"/stream?channel=a&token={token}"),  # 503: one per client
        RawStream(server.port, f"/stream?channel=b&token={token}"),  # 403
        RawStream(server.port, f"/stream?channel=a&token={token}x"),  # 401
    ]
    assert [r.status for r in refused] == [503, 403, 401]
    stream.close()
    wait_until(lambda: "closed: reason=client" in server.log(), 5, "the disconnect line")
    log = server.log()
    # The log has the lines the token could have been in ...
    assert "opened: channels=a" in log
    assert "refused a stream from 127.0.0.1" in log
    assert log.count('"GET /stream?channel=a&token=redacted HTTP/1.1"') == 3, log[-3000:]
    # ... and the token in none of them (nor its signature alone).
    assert token not in log
    assert token.rpartition(".")[2] not in log
