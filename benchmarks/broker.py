"""A ``redis-server`` of the benchmark's own, for ``python -m benchmarks --broker redis``.

Started on a free loopback port (never 6379, where someone's own Redis may
be), with no persistence, pinned to the load generator's CPU so that the
server under test keeps its CPU to itself; stopped by pid. The real server
reaches it through ``SSE_BROKER_URL``; the scenarios read its CPU time from
``/proc`` of its pid.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from .procinfo import taskset_prefix
from .servers import LOADGEN_CPU, free_port

__all__ = ["RedisServer", "redis_server_path"]

#: The port never used, whatever :func:`free_port` says.
_USUAL_PORT = 6379


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """``redis-server`` on a free loopback port while the ``with`` block runs."""

    def __init__(self, log_dir: Path) -> None:
        path = redis_server_path()
        if path is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.path = path
        port = free_port()
        while port == _USUAL_PORT:
            port = free_port()
        self.port = port
        self.directory = log_dir / f"redis-{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            *taskset_prefix(LOADGEN_CPU), self.path,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        # taskset execs redis-server: the pid is Redis's own.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_for_pong(timeout=10.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_for_pong(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer PING within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
