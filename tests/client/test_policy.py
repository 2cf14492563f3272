"""The client's pure policy: backoff delays, Retry-After, what a status means."""

from __future__ import annotations

import email.utils
import random

import pytest

from flask_sse_keepalive.client import Backoff
from flask_sse_keepalive.client.backoff import parse_retry_after
from flask_sse_keepalive.client.session import classify


def test_full_jitter_under_a_doubling_ceiling_capped_at_maximum() -> None:
    backoff = Backoff(initial=3.0, maximum=30.0)
    assert [backoff.ceiling(0.5, n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 16, 30]
    assert backoff.ceiling(0.0, 1) == 0.1  # "retry: 0" is not a spin
    assert backoff.ceiling(3.0, 10_000) == 30.0  # no overflow, however long it fails
    rng = random.Random(5)
    delays = [backoff.delay(1.0, 3, rng=rng) for _ in range(2000)]
    assert 0 <= min(delays) < 0.05 and 3.95 < max(delays) <= 4.0  # all of [0, 4]
    assert 1.8 < sum(delays) / len(delays) < 2.2


def test_retry_after_is_waited_for_and_spread_by_up_to_a_fifth() -> None:
    rng = random.Random(5)
    delays = [Backoff(maximum=1.0).delay(1.0, 1, retry_after=10.0, rng=rng) for _ in range(500)]
    assert 10.0 <= min(delays) < 10.1 and 11.9 < max(delays) <= 12.0  # not capped by maximum


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1}, {"maximum": "5"}, {"max_attempts": -1}, {"max_attempts": 1.5},
     {"give_up_after": -0.1}],
)  # fmt: skip
def test_backoff_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in (None, "", "-1", "1.5", "soon", "Wed, 99 Foo 2026 00:00:00 GMT", "٣"):
        assert parse_retry_after(bad, now=now) is None, bad


@pytest.mark.parametrize(
    ("status", "content_type", "kind"),
    [
        (200, "text/event-stream; charset=utf-8", "stream"),
        (200, "Text/Event-Stream", "stream"),
        (200, "text/html", "refuse"),
        (200, None, "refuse"),
        (204, None, "refuse"),
        (301, None, "refuse"),
        (400, "text/plain", "refuse"),
        (401, "text/plain", "refuse"),
        (403, "text/plain", "refuse"),
        (404, "text/html", "refuse"),
        (410, None, "refuse"),
        (408, None, "retry"),
        (425, None, "retry"),
        (429, None, "retry"),
        (500, None, "retry"),
        (502, None, "retry"),
        (503, "text/plain", "retry"),
        (599, None, "retry"),
    ],
)
def test_what_a_status_means(status: int, content_type: str | None, kind: str) -> None:
    assert classify(status, content_type) == kind


def test_options_are_checked_where_the_client_is_made() -> None:
    from flask_sse_keepalive.client import SSEClient

    with pytest.raises(TypeError, match="not a str"):
        SSEClient("http://host/stream", channels="prices")
    for url in ("ftp://host/stream", "/stream", "host/stream"):
        with pytest.raises(ValueError, match="http"):
            SSEClient(url)
    for option in ("timeout", "heartbeat", "watchdog_factor", "fallback_interval"):
        with pytest.raises(ValueError, match=option):
            SSEClient("http://host/stream", **{option: 0})  # type: ignore[arg-type]
