"""Starting and stopping the servers under test, each pinned to CPU 0.

``real`` is ``gunicorn -k gevent -w 1 benchmarks.app:app`` (``workers`` sets
``-w``); ``ceiling-send`` and ``ceiling-sendall`` are :mod:`benchmarks.ceiling`
in its two write modes; ``flask-floor`` is :mod:`benchmarks.floor` under the
real server's gunicorn command, the least a Flask stream route costs. Every
process started here is stopped by pid: the gunicorn master, and then any
worker of it still alive, whichever workers it had by then (a ``HUP`` reload
replaces them).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procinfo import children, taskset_prefix

__all__ = [
    "COMPARED", "FLOOR", "REAL", "REFERENCES", "SEND", "SENDALL", "SERVERS", "Server", "free_port",
    "start_server",
]  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent
#: the server under test and its two ceilings, in the report's column order
REAL = "real"
SEND = "ceiling-send"
SENDALL = "ceiling-sendall"
FLOOR = "flask-floor"
SERVERS = (REAL, SEND, SENDALL, FLOOR)
#: the servers a scenario runs on unless its plan says otherwise (the floor
#: serves streams and heartbeats only: the idle scenario)
COMPARED = (REAL, SEND, SENDALL)
#: the servers the real one is compared with, in the report's column order
REFERENCES = (SEND, SENDALL, FLOOR)
SERVER_CPU = 0
LOADGEN_CPU = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server: its process, port, log, and the pid doing the work."""

    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    #: the gunicorn worker (or the ceiling process itself), from /bench/stats
    worker_pid: int = 0
    #: the address it listens on
    host: str = "127.0.0.1"
    #: every worker pid seen (gunicorn), to stop whatever outlives the master
    workers_seen: set[int] = field(default_factory=set)

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", "/bench/stats")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{self.kind}: /bench/stats answered {response.status}: {body!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def workers(self) -> list[int]:
        """The master's live children (the gunicorn workers), remembered for :meth:`stop`."""
        if self.proc.poll() is not None:
            return []
        found = children(self.proc.pid)
        self.workers_seen.update(found)
        return found

    def remember(self, pids: list[int]) -> None:
        """Workers seen by someone else (the load generator), for :meth:`stop` too."""
        self.workers_seen.update(pids)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; then any worker that outlived its master."""
        self.workers()
        if self.worker_pid:
            self.workers_seen.add(self.worker_pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in sorted(self.workers_seen - {self.proc.pid}):
            if _is_ours(pid):
                os.kill(pid, signal.SIGKILL)


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` is still a benchmark server process (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"benchmarks" in cmdline.read()
    except OSError:
        return False


def start_server(
    kind: str,
    *,
    heartbeat: float,
    connections: int,
    queue_size: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    workers: int = 1,
) -> Server:
    """Start ``kind`` on a free port of ``host`` and wait until it answers ``/bench/stats``.

    The ceilings listen on ``127.0.0.1`` only, in one process: ``workers``
    (gunicorn's ``-w``) is for the real server.
    """
    port = free_port()
    python = [*taskset_prefix(SERVER_CPU), sys.executable]
    if kind in (REAL, FLOOR):
        cmd = [
            *python, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
            "-b", f"{host}:{port}",
            "--worker-connections", str(connections + 1000),
            "--backlog", "4096",
            # A worker busy publishing must not be mistaken for a hung one.
            "--timeout", "120",
            "--graceful-timeout", "5",
            "--log-level", "warning",
            "benchmarks.app:app" if kind == REAL else "benchmarks.floor:app",
        ]  # fmt: skip
        extra = {
            "SSE_HEARTBEAT_INTERVAL": repr(float(heartbeat)),
            "SSE_QUEUE_SIZE": str(queue_size),
            "FLOOR_HEARTBEAT_INTERVAL": repr(float(heartbeat)),
        }
    elif kind.startswith("ceiling-"):
        if host != "127.0.0.1" or workers != 1:
            raise ValueError(f"{kind} is one process on 127.0.0.1 only, not {workers} on {host}")
        cmd = [
            *python, "-m", "benchmarks.ceiling", "--port", str(port),
            "--mode", kind.removeprefix("ceiling-"),
            "--heartbeat", repr(float(heartbeat)),
            "--queue-size", str(queue_size),
        ]  # fmt: skip
        extra = {}
    else:
        raise ValueError(f"unknown server {kind!r}; choose from {', '.join(SERVERS)}")
    log_path = log_dir / f"{kind}-{port}.log"
    full_env = {**os.environ, **extra, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(kind, proc, port, log_path, host=host)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {proc.returncode}:\n{server.log()}")
            try:
                server.worker_pid = int(server.stats(timeout=2)["pid"])
                return server
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{kind} did not answer within 30 s:\n{server.log()}"
                    ) from None
                time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
