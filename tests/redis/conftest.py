"""Fixtures for the Redis broker's tests: a redis-server, the Redis test app
under gunicorn, a publishing process, and broker scenarios in a gevent process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, Server, server_environ

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
