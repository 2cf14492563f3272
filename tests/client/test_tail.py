"""``flask sse tail`` (built on the Python client) against a real server
(gunicorn -k gevent, the tokens app): it prints a ``stream-reset`` like any
other event, sends ``--token``, and ends on a refusal with the server's
reason. Each command runs to its end within a bound; every failure mode is
shown beside a control that passes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ROOT, Server, server_environ

APP = "tests.apps.tokens_app:app"
#: seconds a tail may take: start Python and Flask, connect, print
TAIL_TIMEOUT = 30
#: A token of the right shape that no key signed.
FORGED = "eyJjIjpbImEiXSwieCI6OTk5OTk5OTk5OX0.Zm9yZ2Vk.c2lnbmVkLWJ5LW5vYm9keQ"


def tail(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``flask sse tail CHANNEL... --url SERVER`` run to its end."""
    command = [sys.executable, "-m", "flask", "--app", APP, "sse", "tail", "--url", server.url]
    try:
        return subprocess.run(
            [*command, *args],
            cwd=ROOT,
            env=server_environ(),
            capture_output=True,
            text=True,
            timeout=TAIL_TIMEOUT,
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(
            f"tail {args} did not end within {TAIL_TIMEOUT} s: "
            f"{expired.stdout!r} {expired.stderr!r}"
        ) from None


def printed(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def publish(server: Server, *data: str) -> list[str]:
    ids = []
    for item in data:
        response = httpx.post(
            f"{server.url}/control/publish", json={"data": item, "channel": "a"}, timeout=10
        )
        response.raise_for_status()
        ids += response.json()["ids"]
    return ids


def issue(server: Server, channels: list[str]) -> str:
    response = httpx.post(f"{server.url}/control/token", json={"channels": channels}, timeout=10)
    response.raise_for_status()
    return str(response.json()["token"])


def test_tail_prints_a_stream_reset_where_it_cannot_resume(
    gunicorn: Callable[..., Server],
) -> None:
    server = gunicorn(APP)
    ids = publish(server, "first", "second")
    epoch = ids[0].rpartition("-")[0]
    lost = f"not-{epoch}-1"  # an id of another epoch: a restarted memory broker

    [reset] = printed(tail(server, "a", "--last-event-id", lost, "--count", "1"))
    assert reset["event"] == "stream-reset"
    assert reset["id"] == ids[-1]  # where the server is: the next resume point
    assert json.loads(reset["data"]) == {"reason": "unknown-epoch", "last_event_id": lost}
    # The control: an id the server knows resumes without a reset.
    assert printed(tail(server, "a", "--last-event-id", ids[0], "--count", "1")) == [
        {"id": ids[1], "event": "message", "data": "second"}
    ]


def test_tail_sends_its_token(gunicorn: Callable[..., Server]) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true"})
    ids = publish(server, "first", "second")
    token = issue(server, ["a"])

    done = tail(server, "a", "--token", token, "--last-event-id", ids[0], "--count", "1")
    assert printed(done) == [{"id": ids[1], "event": "message", "data": "second"}]
    # The control: without it, the same command is refused.
    without = tail(server, "a", "--last-event-id", ids[0], "--count", "1")
    assert without.returncode == 1
    assert "401 from the server: A token is required (?token=)." in without.stderr


def test_tail_ends_on_a_refusal_with_the_servers_reason(gunicorn: Callable[..., Server]) -> None:
    server = gunicorn(APP, env={"SSE_REQUIRE_TOKEN": "true"})
    ids = publish(server, "first", "second")
    refusals = [
        (FORGED, "401 from the server: Token refused: bad signature."),
        (issue(server, ["b"]), "403 from the server: The token does not grant channel 'a'."),
    ]
    for token, reason in refusals:
        done = tail(server, "a", "--token", token, "--last-event-id", ids[0], "--count", "1")
        assert done.returncode == 1, (reason, done.stdout, done.stderr)
        assert done.stdout == ""
        assert f"Error: {reason}" in done.stderr
        assert "Traceback" not in done.stderr
        assert token not in done.stderr  # a credential: never echoed
    # The control: a good token, the same command, gets the event.
    token = issue(server, ["a"])
    good = tail(server, "a", "--token", token, "--last-event-id", ids[0], "--count", "1")
    assert printed(good) == [{"id": ids[1], "event": "message", "data": "second"}]
