"""Fixtures for the Redis broker's tests: a redis-server, the Redis test app
under gunicorn, a publishing process, and broker scenarios in a gevent process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Server, redis_server_path, server_environ
from tests.wire import RawStream

from .ha import SentinelSetup
from .tls import Certificates, make_certificates

APP = "tests.apps.redis_app:app"


@pytest.fixture
def redis_url(redis_server: Callable[..., Server]) -> str:
    """A fresh redis-server on a free port, as an ``SSE_BROKER_URL``."""
    return f"redis://127.0.0.1:{redis_server().port}/0"


def app_env(url: str, **settings: Any) -> dict[str, str]:
    env = {"SSE_BROKER_URL": url, "SSE_HEARTBEAT_INTERVAL": "1"}
    env.update({f"SSE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def redis_app(gunicorn: Callable[..., Server]) -> Callable[..., Server]:
    """``redis_app(url, workers=3)``: the Redis test app under ``gunicorn -k gevent``."""

    def start(url: str, *, workers: int = 1, **settings: Any) -> Server:
        return gunicorn(APP, env=app_env(url, **settings), workers=workers)

    return start


class Publisher:
    """A plain Python process publishing ``{"n": k}`` through the test app."""

    def __init__(self, url: str, *, count: int, start: int = 1, rate: float = 0,
                 channels: str = "default") -> None:  # fmt: skip
        cmd = [
            sys.executable, "-m", "tests.redis.publisher", "--count", str(count),
            "--start", str(start), "--rate", str(rate), "--channels", channels,
        ]  # fmt: skip
        env = server_environ(app_env(url))
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def result(self, timeout: float) -> dict:
        """Wait for the process (at most ``timeout`` s) and return its report."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"the publisher did not finish within {timeout} s: {err[-2000:]!r}"
            ) from None
        assert self.proc.returncode == 0, f"the publisher failed: {err.decode()[-3000:]}"
        return json.loads(out.decode().strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def publisher() -> Iterator[Callable[..., Publisher]]:
    started: list[Publisher] = []

    def start(url: str, **kwargs: Any) -> Publisher:
        started.append(Publisher(url, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def scenario_command(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.redis.scenarios", name, *args]


def run_scenario(name: str, *args: str, timeout: float = 60) -> dict:
    """Run a broker scenario in a gevent-patched process; return what it saw."""
    proc = subprocess.run(
        scenario_command(name, *args),
        cwd=ROOT,
        env=server_environ(),
        capture_output=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"scenario {name} failed:\n{proc.stderr.decode()[-4000:]}"
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def publish_on_a(server: Server, data: str) -> str:
    response = httpx.post(
        f"{server.url}/control/publish", json={"data": data, "channel": "a"}, timeout=10
    )
    response.raise_for_status()
    return str(response.json()["ids"][0])


def publish_stream_resume(server: Server) -> None:
    """Events published through the app reach its stream; a resume gets exactly
    what was missed, then live events."""
    stream = RawStream(server.port, "/stream?channel=a")
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 10, "subscribed")
    first = publish_on_a(server, "one")
    stream.wait_for(lambda s: s.events, 10, "the first event")
    assert [(e.data, e.last_event_id) for e in stream.events] == [("one", first)]
    stream.close()
    missed = [publish_on_a(server, "two"), publish_on_a(server, "three")]
    again = RawStream(server.port, "/stream?channel=a", {"Last-Event-ID": first})
    again.wait_for(lambda s: len(s.events) == 2, 10, "the two missed events")
    live = publish_on_a(server, "four")
    again.wait_for(lambda s: len(s.events) == 3, 10, "a live event after the replay")
    assert [(e.type, e.data, e.last_event_id) for e in again.events] == [
        ("message", "two", missed[0]),
        ("message", "three", missed[1]),
        ("message", "four", live),
    ]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not on PATH")
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sentinels(tmp_path) -> Iterator[Callable[..., SentinelSetup]]:
    """``sentinels(**options)``: a primary, a replica and three Sentinels
    (see :class:`~tests.redis.ha.SentinelSetup`), stopped at teardown."""
    path = redis_server_path()
    if path is None:
        pytest.fail("redis-server is not on PATH")
    made: list[SentinelSetup] = []

    def make(**kwargs: Any) -> SentinelSetup:
        made.append(SentinelSetup(path, tmp_path / f"ha{len(made)}", **kwargs))
        return made[-1]

    yield make
    for setup in made:
        setup.close()
