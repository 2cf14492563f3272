"""A client's own heartbeat interval: ``?heartbeat=S``, clamped and announced."""

from __future__ import annotations

import itertools
import time

import httpx
import pytest

from tests.test_streams import stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", ""])
def test_a_heartbeat_that_is_not_a_positive_number_is_refused(gunicorn, value) -> None:
    server = gunicorn(APP)
    response = httpx.get(f"{server.url}/stream?heartbeat={value}", timeout=5)
    assert response.status_code == 400
    assert "heartbeat must be a positive number of seconds" in response.text
    assert stats(server)["connects"] == 0


@pytest.mark.parametrize(
    ("asked", "announced"),
    [("3", "3"), ("0.2", "1"), ("500", "120"), ("2.5", "2.5")],
)
def test_the_interval_is_clamped_and_announced(gunicorn, asked, announced) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "15"})
    stream = RawStream(server.port, f"/stream?channel=a&heartbeat={asked}")
    stream.wait_for(lambda s: s.parser.comments, 5, "the first bytes")
    assert stream.parser.comments[0] == f"sse-keepalive heartbeat-interval={announced}"
    wait_until(lambda: stats(server)["heartbeat_intervals"] == {announced: 1}, 5, "the stats")


def test_the_stream_keeps_the_interval_it_announced(gunicorn) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30", "SSE_HEARTBEAT_MIN": "0.3"})
    stream = RawStream(server.port, "/stream?channel=a&heartbeat=0.3")
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    arrivals = []
    for _ in range(4):
        count = stream.parser.comments.count("heartbeat")
        stream.wait_for(lambda s, c=count: s.parser.comments.count("heartbeat") > c, 3, "a beat")
        arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.2 < gap < 0.8 for gap in gaps), gaps
    default = RawStream(server.port, "/stream?channel=a")
    default.wait_for(lambda s: s.parser.comments, 5, "the first bytes")
    assert default.parser.comments[0] == "sse-keepalive heartbeat-interval=30"
    assert stats(server)["heartbeat_intervals"] == {"0.3": 1, "30": 1}


def test_heartbeat_limits_must_make_sense() -> None:
    from flask import Flask

    from flask_sse_keepalive import SSE

    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_MIN=10, SSE_HEARTBEAT_MAX=5)
    with pytest.raises(ValueError, match="SSE_HEARTBEAT_MAX must be at least 10"):
        SSE(app)
    app = Flask(__name__)
    app.config.update(SSE_DEAD_PEER_TIMEOUT=0.5)
    with pytest.raises(ValueError, match="SSE_DEAD_PEER_TIMEOUT must be at least 1"):
        SSE(app)
