"""Clients that vanish without a FIN or a reset, on real kernels.

The server (gunicorn -k gevent) listens on the host end of a veth pair;
clients hold streams from a network namespace on the other end (see
:mod:`tests.netns`). Taking the client's link down is a client gone silent:
the heartbeats it no longer acknowledges are retransmitted, and only the
dead-peer bound (``TCP_USER_TIMEOUT``, set per connection) ends the stream,
with the reason ``timeout``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Server, free_port
from tests.netns import Namespace, require_netns

APP = "tests.apps.basic:app"


@pytest.fixture
def netns() -> Iterator[Namespace]:
    require_netns()
    namespace = Namespace()
    try:
        yield namespace
    finally:
        namespace.close()


@pytest.fixture
def server_on(tmp_path) -> Iterator[Callable[..., Server]]:
    """``server_on(host, env)``: the basic app under gunicorn -k gevent on ``host``."""
    started: list[Server] = []

    def start(host: str, env: dict[str, str]) -> Server:
        port = free_port()
        log_path = tmp_path / f"gunicorn-{port}.log"
        cmd = [
            sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
            "-b", f"{host}:{port}", "--log-level", "debug", APP,
        ]  # fmt: skip
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env={**environ, "PYTHONPATH": str(ROOT), **env},
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Server(proc, port, log_path, extra={"host": host})
        started.append(server)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://{host}:{port}/control/stats", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start:\n{server.log()}") from None
                time.sleep(0.1)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGTERM)


class Clients:
    """``count`` streams held from inside the namespace by one process."""

    def __init__(self, netns: Namespace, server: Server, path: str, count: int) -> None:
        host = server.extra["host"]
        cmd = netns.command(
            [sys.executable, "-m", "tests.apps.hold_streams", host, str(server.port), path,
             str(count)]
        )  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait(lambda: "ready" in self.lines, 30, f"{count} streams from the namespace")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def data(self) -> list[str]:
        return [line.split(" ", 2)[2] for line in self.lines if line.startswith("data ")]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def clients() -> Iterator[Callable[..., Clients]]:
    started: list[Clients] = []

    def start(*args: Any) -> Clients:
        started.append(Clients(*args))
        return started[-1]

    yield start
    for held in started:
        held.stop()


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``predicate``; how long it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def stats(server: Server) -> dict:
    return httpx.get(
        f"http://{server.extra['host']}:{server.port}/control/stats", timeout=10
    ).json()


def publish(server: Server, data: str, channel: str = "a") -> None:
    httpx.post(
        f"http://{server.extra['host']}:{server.port}/control/publish",
        json={"data": data, "channel": channel},
        timeout=10,
    ).raise_for_status()


def released_after_the_cut(netns, server, clients, n: int) -> float:
    """Open ``n`` streams from the namespace, cut its link, and wait (15 s at
    most) until the server holds none: how long that took."""
    clients(netns, server, "/stream?channel=a", n)
    wait(lambda: stats(server)["connections"] == n, 10, f"{n} streams")
    netns.cut()
    return wait(lambda: stats(server)["connections"] == 0, 15, "the release")


def test_a_silently_vanished_client_is_released_within_the_bound(netns, server_on, clients):
    server = server_on(netns.host_ip, {"SSE_HEARTBEAT_INTERVAL": "2"})
    took = released_after_the_cut(netns, server, clients, 1)
    # A heartbeat within 2 s, unacknowledged for 2 s: released within 8 s.
    assert took < 8, f"released {took:.1f} s after the cut"
    assert stats(server)["disconnects"] == {"timeout": 1}


def test_a_vanished_client_whose_address_stops_answering_is_released_as_timeout(
    netns, server_on, clients
):
    # Once the host's neighbour entry for the client fails, TCP meets "no
    # route to host" while it retransmits, and reports that, not ETIMEDOUT,
    # when the bound expires: the client vanished all the same.
    netns.forget_fast()
    server = server_on(netns.host_ip, {"SSE_HEARTBEAT_INTERVAL": "2"})
    took = released_after_the_cut(netns, server, clients, 20)
    assert took < 8, f"released {took:.1f} s after the cut"
    assert stats(server)["disconnects"] == {"timeout": 20}


def test_without_the_bound_the_vanished_client_stays(netns, server_on, clients):
    # The control: a dead-peer timeout far away, and the stream is held on.
    server = server_on(
        netns.host_ip, {"SSE_HEARTBEAT_INTERVAL": "2", "SSE_DEAD_PEER_TIMEOUT": "120"}
    )
    clients(netns, server, "/stream?channel=a", 1)
    wait(lambda: stats(server)["connections"] == 1, 5, "the stream")
    netns.cut()
    time.sleep(10)
    assert stats(server)["connections"] == 1


def test_200_clients_cut_at_once_are_all_released(netns, server_on, clients):
    server = server_on(netns.host_ip, {"SSE_HEARTBEAT_INTERVAL": "2"})
    baseline = stats(server)["rss_kb"]
    clients(netns, server, "/stream?channel=a&channel=b", 200)
    wait(lambda: stats(server)["connections"] == 200, 10, "200 streams")
    netns.cut()
    took = wait(lambda: stats(server)["connections"] == 0, 20, "every stream released")
    assert took < 8, f"the last stream was released {took:.1f} s after the cut"
    figures = stats(server)
    assert figures["disconnects"] == {"timeout": 200}
    assert figures["channels"] == {}
    log = httpx.get(f"http://{netns.host_ip}:{server.port}/control/log", timeout=10).json()
    assert [e["reason"] for e in log if e["signal"] == "disconnected"] == ["timeout"] * 200
    grown_mb = (figures["rss_kb"] - baseline) / 1024
    assert grown_mb < 3, f"RSS is {grown_mb:.1f} MB above its baseline after the release"


def test_a_client_back_before_the_bound_is_kept(netns, server_on, clients):
    server = server_on(netns.host_ip, {"SSE_HEARTBEAT_INTERVAL": "2"})
    held = clients(netns, server, "/stream?channel=a", 1)
    wait(lambda: stats(server)["connections"] == 1, 5, "the stream")
    netns.cut()
    time.sleep(1)  # shorter than a heartbeat plus the bound
    netns.mend()
    publish(server, "still here")
    wait(lambda: held.data() == ["still here"], 10, "the event after the link came back")
    time.sleep(5)  # past the bound: TCP delivered the retransmissions
    assert stats(server)["connections"] == 1
    assert stats(server)["disconnects"] == {}


def test_the_iterator_mode_has_the_bound_too(netns, server_on, clients):
    server = server_on(netns.host_ip, {"SSE_HEARTBEAT_INTERVAL": "2", "SSE_DIRECT_WRITE": "false"})
    clients(netns, server, "/stream?channel=a", 1)
    wait(lambda: stats(server)["connections"] == 1, 5, "the stream")
    assert stats(server)["modes"] == {"iterator": 1}
    netns.cut()
    took = wait(lambda: stats(server)["connections"] == 0, 15, "the release")
    assert took < 8, f"released {took:.1f} s after the cut"
    assert stats(server)["disconnects"] == {"timeout": 1}


def test_a_client_that_asks_for_short_heartbeats_is_found_sooner(netns, server_on, clients):
    server = server_on(netns.host_ip, {"SSE_HEARTBEAT_INTERVAL": "30"})
    clients(netns, server, "/stream?channel=a&heartbeat=1", 1)
    clients(netns, server, "/stream?channel=b", 1)  # keeps the server's 30 s
    wait(lambda: stats(server)["connections"] == 2, 5, "both streams")
    assert stats(server)["heartbeat_intervals"] == {"1": 1, "30": 1}
    netns.cut()
    took = wait(lambda: stats(server)["connections"] == 1, 15, "the 1 s stream's release")
    # A heartbeat within 1 s, unacknowledged for max(1 s, 1 s): about 2 s.
    assert took < 5, f"released {took:.1f} s after the cut"
    assert stats(server)["heartbeat_intervals"] == {"30": 1}
