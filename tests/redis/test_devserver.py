"""The Redis broker in a process without gevent: ``flask run`` (threaded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.event import Event
from tests.conftest import ROOT, free_port, stop_process, wait_for_port

from .clients import Client, Fleet
from .conftest import app_env


@pytest.fixture
def dev_server(redis_url: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    log = open(tmp_path / "flask.log", "wb")  # the process writes it; closed here once started
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "tests.apps.redis_app", "run",
         "--port", str(port), "--no-reload"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **app_env(redis_url)},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    try:
        wait_for_port(port, 20, "flask run", proc)
        yield port
    finally:
        stop_process(proc, signal.SIGTERM, timeout=5)


def test_threaded_development_server_streams_and_resumes(redis_url: str, dev_server: int) -> None:
    broker = RedisBroker(redis_url)
    fleet = Fleet()
    try:
        start = broker.publish("d", Event(data=json.dumps({"n": 0}))).id
        clients = [
            fleet.add(Client(dev_server, ["d"], query_last_event_id=start)) for _ in range(3)
        ]
        fleet.wait(lambda: all(c.started for c in clients), 20, "first bytes on 3 streams")
        for n in range(1, 6):
            broker.publish("d", Event(data=json.dumps({"n": n})))
        fleet.wait(lambda: all(len(c.numbers()) == 5 for c in clients), 20, "5 events each")
        fleet.drop(clients[0])
        for n in range(6, 9):
            broker.publish("d", Event(data=json.dumps({"n": n})))
        fleet.reconnect(clients[0])
        fleet.wait(lambda: all(len(c.numbers()) == 8 for c in clients), 20, "8 events each")
        for client in clients:
            assert client.numbers() == list(range(1, 9))
    finally:
        fleet.close()
        broker.close()
