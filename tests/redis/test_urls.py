"""The other broker URLs the docs promise, against real servers: ``rediss://``
(TLS, with the server's certificate verified against a CA given in the URL)
and ``unix://`` (a Unix socket). Each one publishes, streams and resumes
under ``gunicorn -k gevent``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flask_sse_keepalive import BrokerUnavailable
from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.event import Event
from tests.conftest import free_port, redis_server_path, stop_process, wait_for_port

from .conftest import app_env, publish_stream_resume
from .tls import Certificates, redis_tls_args

APP = "tests.apps.redis_app:app"


def _required(tool: str) -> str:
    path = shutil.which(tool) if tool != "redis-server" else redis_server_path()
    if path is None:
        if os.environ.get("SSE_REQUIRE_REDIS") == "1":
            pytest.fail(f"{tool} is not on PATH and SSE_REQUIRE_REDIS=1")
        pytest.skip(f"{tool} not found")
    return path


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """``redis_process(*args)``: a redis-server with ``args``, killed at teardown."""
    path = _required("redis-server")
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        log = directory / "redis.log"
        cmd = [path, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(directory), "--logfile", str(log), *args]  # fmt: skip
        started.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return started[-1]

    yield start
    for proc in started:
        stop_process(proc, signal.SIGKILL)


@pytest.fixture
def tls_redis(redis_process, certificates: Certificates) -> int:
    """A redis-server that speaks TLS only (no plain port); its TLS port."""
    port = free_port()
    proc = redis_process("--port", "0", "--tls-port", str(port), *redis_tls_args(certificates))
    wait_for_port(port, 10, "redis-server (TLS)", proc)
    return port


@pytest.fixture
def unix_redis(redis_process, tmp_path: Path) -> Path:
    """A redis-server on a Unix socket only (no TCP port); the socket's path."""
    path = tmp_path / "redis.sock"
    proc = redis_process("--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700")
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
            return path
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not listen on {path} within 10 s") from None
            time.sleep(0.05)


def test_rediss_with_the_ca_in_the_url(gunicorn, tls_redis, certificates) -> None:
    url = f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={certificates.ca}"
    server = gunicorn(APP, env=app_env(url))
    publish_stream_resume(server)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "no CA given: the system's CAs do not know the test CA"),
        ("?ssl_ca_certs={other_ca}", "a CA that did not sign the server's certificate"),
    ],
)
def test_rediss_refuses_a_certificate_it_cannot_verify(tls_redis, certificates, query, why) -> None:
    url = f"rediss://127.0.0.1:{tls_redis}/0" + query.format(other_ca=certificates.other_ca)
    broker = RedisBroker(url)
    try:
        with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
            broker.publish("a", Event(data="never stored"))
    finally:
        broker.close()
    # The same server with the right CA: the refusal was the verification's.
    trusted = RedisBroker(f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={certificates.ca}")
    try:
        assert trusted.publish("a", Event(data="stored")).id.endswith("-1"), why
    finally:
        trusted.close()


def test_unix_socket_url(gunicorn, unix_redis) -> None:
    server = gunicorn(APP, env=app_env(f"unix://{unix_redis}?db=0"))
    publish_stream_resume(server)
