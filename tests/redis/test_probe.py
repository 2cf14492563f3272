"""The liveness probe: a pub/sub connection that looks healthy but gets nothing.

The worker reaches Redis through a relay; the relay goes on forwarding the
worker's publishing and control connections but stops forwarding what Redis
sends on the pub/sub connection. The TCP connection stays up and quiet, as
after a failover that left it attached to a node that no longer gets the
publishes. The probe finds it, the fan-out reconnects, and the streams catch
up from history: nothing lost, no reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import Server

from .clients import Client, Fleet
from .ha import Relay


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.close()


@pytest.fixture
def relay(redis_server: Callable[..., Server]) -> Iterator[Relay]:
    relay = Relay(("127.0.0.1", redis_server().port))
    yield relay
    relay.close()


def publish(server: Server, data: str) -> None:
    httpx.post(
        f"{server.url}/control/publish", json={"data": data, "channel": "p"}, timeout=10
    ).raise_for_status()


@pytest.mark.parametrize(("probe_interval", "healed"), [("1", True), ("60", False)])
def test_a_silently_detached_subscription_is_found_and_healed(
    relay: Relay,
    redis_app: Callable[..., Server],
    fleet: Fleet,
    probe_interval: str,
    healed: bool,
) -> None:
    url = f"redis://127.0.0.1:{relay.port}/0"
    server = redis_app(url, workers=1, redis_probe_interval=probe_interval)
    client = fleet.add(Client(server.port, ["p"]))
    fleet.wait(lambda: client.started, 10, "the first bytes")
    fleet.wait(
        lambda: any(c == "sse-keepalive subscribed" for c in client.comments()), 10, "subscribed"
    )
    publish(server, "before")
    fleet.wait(lambda: client.data() == ["before"], 10, "the event before the detachment")
    relay.pause(only=b"SUBSCRIBE")  # the pub/sub connection goes quiet; the rest works
    for n in range(5):
        publish(server, f"during {n}")
    expected = ["before"] + [f"during {n}" for n in range(5)]
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and client.data() != expected:
        fleet.pump(0.05)
    stats = httpx.get(f"{server.url}/control/stats", timeout=10).json()
    if healed:
        # Quiet for 1 s, a probe that does not come back within 3 s, a new
        # connection that catches up from the streams.
        assert client.data() == expected
        assert client.resets() == []
        assert stats["broker"]["probes_lost"] == 1
        assert stats["broker"]["reconnects"] == 2
    else:
        # The control: with the probe far away, the events are stuck.
        assert client.data() == ["before"]
        assert stats["broker"]["probes_lost"] == 0
