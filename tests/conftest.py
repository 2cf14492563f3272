"""Fixtures for real parts: gunicorn servers and redis-server on free loopback ports.

Every process a fixture starts is stopped by pid when the test ends, and every
wait is bounded and says what it waited for.

The suite tests the settings each test gives, not the caller's: the ``SSE_*``
variables of the environment pytest runs in are dropped from this process
before any test app is imported or any server is started (the runner
switches, :data:`~tests.apps.settings.RUNNER_SWITCHES`, stay, for the
fixtures), and :func:`server_environ` gives started processes none at all.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.apps.settings import sse_settings

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

#: The caller's settings, dropped (for the report header).
IGNORED_SETTINGS = sorted(sse_settings())
for _key in IGNORED_SETTINGS:
    del os.environ[_key]


def pytest_report_header() -> str | None:
    if not IGNORED_SETTINGS:
        return None
    return "ignored from the environment (tests set their own): " + ", ".join(IGNORED_SETTINGS)


def server_environ(settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a test starts: this one's without any
    ``SSE_*`` variable (runner switches included), the repository on
    ``PYTHONPATH``, and ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SSE_")}
    return {**env, "PYTHONPATH": str(ROOT), **(settings or {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def wait_for_http(
    port: int, timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    """Wait until a server on ``port`` answers an HTTP request (any status).

    A listening port is not enough: gunicorn's master listens before its
    workers have booted, and a worker that boots slowly on a loaded machine
    may be replaced, dropping what was queued for it.
    """
    deadline = time.monotonic() + timeout
    wait_for_port(port, timeout, what, proc)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET /.well-known/ready HTTP/1.0\r\nHost: x\r\n\r\n")
                if sock.recv(16).startswith(b"HTTP/"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not answer HTTP on 127.0.0.1:{port} within {timeout} s")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Server:
    """A server process started by a fixture."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        stop_process(self.proc, sig, timeout)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator:
    """Start ``gunicorn`` for an app in ``tests/apps`` (or anywhere on the path).

    ``gunicorn("tests.apps.basic:app", env={"SSE_HEARTBEAT_INTERVAL": "0.2"})``
    returns a :class:`Server`; every server started is stopped at teardown.
    App modules read their ``SSE_*`` settings from the environment, which
    holds only those of ``env`` (see :func:`server_environ`).
    """
    started: list[Server] = []

    def start(
        app: str,
        *,
        env: dict[str, str] | None = None,
        workers: int = 1,
        worker_class: str = "gevent",
        args: tuple[str, ...] = (),
        timeout: float = 20,
    ) -> Server:
        port = free_port()
        log_path = tmp_path / f"gunicorn-{port}.log"
        cmd = [
            sys.executable, "-m", "gunicorn",
            "-k", worker_class,
            "-w", str(workers),
            "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "30",
            "--log-level", "debug",
            *args,
            app,
        ]  # fmt: skip
        full_env = server_environ(env)
        log = open(log_path, "wb")  # the process owns it
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        server = Server(proc, port, log_path)
        started.append(server)
        try:
            wait_for_http(port, timeout, f"gunicorn {app}", proc)
        except Exception:
            server.stop(signal.SIGKILL)
            raise RuntimeError(f"gunicorn did not start:\n{server.log()}") from None
        return server

    yield start
    for server in started:
        server.stop(signal.SIGTERM, timeout=10)


@pytest.fixture(autouse=True)
def _close_raw_streams() -> Iterator[None]:
    from tests.wire import RawStream

    yield
    RawStream.close_all()


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator:
    """Start ``redis-server`` on a free port: ``redis_server(appendonly=True)``.

    Skipped when ``redis-server`` is not on PATH, unless ``SSE_REQUIRE_REDIS=1``
    (as in CI), where that is a failure.
    """
    path = redis_server_path()
    if path is None:
        if os.environ.get("SSE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not on PATH and SSE_REQUIRE_REDIS=1")
        pytest.skip("redis-server not found: install it (apt-get install redis-server)")
    started: list[Server] = []

    def start(
        *, appendonly: bool = False, port: int | None = None, directory: Path | None = None
    ) -> Server:
        port = port or free_port()
        directory = directory or (tmp_path / f"redis-{port}")
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / "redis.log"
        cmd = [
            path, "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "always", "--dir", str(directory),
            "--logfile", str(log_path),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = Server(proc, port, log_path, extra={"dir": directory, "appendonly": appendonly})
        started.append(server)
        wait_for_port(port, 10, "redis-server", proc)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)
