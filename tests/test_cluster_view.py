"""The cluster view with the memory broker (the one process is the whole
cluster), and how figures add up. The Redis side: ``tests/redis/test_cluster_view.py``."""

from __future__ import annotations

import json
import os
import socket

import httpx
import pytest
from flask import Flask

from flask_sse_keepalive import SSE
from flask_sse_keepalive.cluster import totals
from tests.test_hardening import flask_cli
from tests.test_memory_broker import Collector
from tests.test_streams import wait_until
from tests.wire import RawStream


def test_totals_add_up_counters_and_maps_and_tolerate_missing_figures() -> None:
    one = {
        "connections": 2, "published": 5, "delivered": 7, "heartbeats": 1, "resets": 1,
        "slow": 0, "refused": 1, "connects": 3, "shutting_down": False,
        "channels": {"news": 2, "a": 1}, "disconnects": {"client": 1}, "modes": {"owned": 3},
        "heartbeat_intervals": {"15": 2}, "broker": {"reconnects": 1, "probes_lost": 0},
    }  # fmt: skip
    two = {"connections": 1, "channels": {"news": 1}, "modes": {"direct": 1}, "shutting_down": True,
           "broker": {"reconnects": 2, "probes_lost": 1}}  # fmt: skip
    older = {"pid": 9}  # a process of a version that reports less
    assert totals([one, two, older]) == {
        "processes": 3, "shutting_down": 1,
        "connections": 3, "published": 5, "delivered": 7, "heartbeats": 1, "resets": 1,
        "slow": 0, "refused": 1, "connects": 3,
        "channels": {"a": 1, "news": 3}, "disconnects": {"client": 1},
        "modes": {"direct": 1, "owned": 3}, "heartbeat_intervals": {"15": 2},
        "broker": {"probes_lost": 1, "reconnects": 3},
    }  # fmt: skip
    assert totals([])["processes"] == 0 and totals([])["channels"] == {}


def test_memory_broker_the_one_process_is_the_cluster() -> None:
    app = Flask(__name__)
    sse = SSE(app)
    broker = sse.state(app).broker
    readers = [Collector(("news",)), Collector(("news", "a"))]
    with app.app_context():
        view = sse.cluster_stats()
        assert [p["pid"] for p in view["processes"]] == [os.getpid()]
        assert view["processes"][0]["host"] == socket.gethostname()
        assert view["totals"]["processes"] == 1 and view["totals"]["channels"] == {}
        for reader in readers:
            broker.attach(reader, None)
        # Exact and at once: nothing to wait for in one process.
        assert sse.subscriber_count("news") == 2
        assert sse.subscriber_count("a") == 1
        assert sse.subscriber_count("nobody") == 0
        assert sse.cluster_stats()["totals"]["channels"] == {"a": 1, "news": 2}
        broker.detach(readers[0])
        assert sse.subscriber_count("news") == 1
        with pytest.raises(ValueError, match="invalid channel name"):
            sse.subscriber_count("no spaces")


def test_memory_broker_under_gunicorn_answers_for_its_worker(gunicorn) -> None:
    server = gunicorn("tests.apps.basic:app")
    streams = [RawStream(server.port, "/stream?channel=news") for _ in range(2)]
    for stream in streams:
        stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    response = httpx.get(f"{server.url}/control/count?channel=news", timeout=5)
    assert response.json() == {"count": 2, "distinct": [2]}
    view = httpx.get(f"{server.url}/control/cluster", timeout=5).json()
    [worker] = view["processes"]
    assert worker["pid"] != server.pid and worker["connections"] == 2
    assert worker["channels"] == {"news": 2}
    assert view["totals"]["connections"] == 2 and view["totals"]["processes"] == 1
    for stream in streams:
        stream.close()
    wait_until(
        lambda: (
            httpx.get(f"{server.url}/control/count?channel=news", timeout=5).json()["count"] == 0
        ),
        5,
        "the count after the streams closed",
    )


def test_cli_stats_all_with_the_memory_broker_is_its_own_process() -> None:
    done = flask_cli("stats", "--all")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    [own] = view["processes"]
    assert own["connections"] == 0 and own["app"] == "tests.apps.basic"
    assert view["totals"]["processes"] == 1
