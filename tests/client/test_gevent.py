"""The blocking client where gevent has patched the standard library (its
reader threads are greenlets), and an import that patches nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from tests.conftest import ROOT, Server

APP = "tests.apps.client_app:app"

IN_GEVENT = """
from gevent import monkey
monkey.patch_all()

import json, sys, time
import gevent, httpx
from flask_sse_keepalive.client import SSEClient

url = sys.argv[1]
with SSEClient(url + "/stream", channels=["g"]) as client:
    client.wait_subscribed(10)
    httpx.post(url + "/control/publish", json={"data": "x", "channel": "g", "count": 3})
    data = [client.receive(10).data for _ in range(3)]
    # Another greenlet closes the client while this one waits for an event.
    gevent.spawn_later(0.3, client.close)
    started = time.monotonic()
    last = client.receive(None)
    waited = time.monotonic() - started
print(json.dumps({"data": data, "last": last, "waited": waited, "state": client.state}))
"""


def test_the_blocking_client_in_a_gevent_patched_process(
    gunicorn: Callable[..., Server],
) -> None:
    # A long interval: only close() can end the wait for the next event.
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30"})
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", IN_GEVENT, server.url],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["data"] == ["x", "x", "x"]
    assert result["last"] is None
    assert 0.2 < result["waited"] < 1.5
    assert result["state"] == "closed"


def test_importing_the_client_patches_nothing() -> None:
    code = (
        "import flask_sse_keepalive.client\n"
        "from gevent import monkey\n"
        "assert not monkey.is_anything_patched()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
