"""The Redis broker on a Redis Cluster of three primaries, with real processes.

Every key of the broker carries the prefix's hash tag (``{sse}:``), so the
scripts touch one slot and run on one shard, and the live channels use
sharded pub/sub there: resume and fan-out across workers work as on one
Redis, and so does a restart of the node that serves the slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from tests.conftest import Server, redis_server_path

from .clients import Client, Fleet
from .ha import ClusterSetup


@pytest.fixture
def cluster(tmp_path) -> Iterator[ClusterSetup]:
    path = redis_server_path()
    if path is None:
        pytest.fail("redis-server is not on PATH")
    setup = ClusterSetup(path, tmp_path / "cluster")
    yield setup
    setup.close()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.close()


def publish(server: Server, data: str, channel: str) -> str:
    response = httpx.post(
        f"{server.url}/control/publish", json={"data": data, "channel": channel}, timeout=10
    )
    response.raise_for_status()
    return str(response.json()["ids"][0])


def on_two_workers(fleet: Fleet, server: Server, channels: list[str]) -> list[Client]:
    """At least ten streams, opened until two workers hold some (the kernel
    picks the worker of each connection), each with its first bytes."""
    clients: list[Client] = []

    def spread() -> bool:
        if not all(c.started for c in clients):
            return False
        if len(clients) >= 10 and len({c.pid for c in clients}) >= 2:
            return True
        if len(clients) < 80:
            clients.append(fleet.add(Client(server.port, channels)))
        return False

    fleet.wait(spread, 60, lambda: f"streams on two workers: {[c.pid for c in clients]}")
    return clients


def test_fanout_and_resume_across_workers_on_a_cluster(
    cluster: ClusterSetup, redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    server = redis_app(cluster.url, workers=2)
    clients = on_two_workers(fleet, server, ["c1", "c2"])
    fleet.wait(
        lambda: all("sse-keepalive subscribed" in c.comments() for c in clients), 20, "subscribed"
    )
    pids = {c.pid for c in clients}
    ids = [publish(server, json.dumps({"n": n}), f"c{1 + n % 2}") for n in range(1, 21)]
    fleet.wait(lambda: all(len(c.numbers()) == 20 for c in clients), 20, "20 events on each")
    assert all(c.numbers() == list(range(1, 21)) for c in clients)
    # Every key in one slot, under the hash tag; sharded pub/sub subscribers.
    owner = redis.Redis(port=cluster.owner_of("{sse}:seq").port)
    assert owner.exists("{sse}:seq", "{sse}:epoch", "{sse}:stream:c1", "{sse}:stream:c2") == 4
    assert owner.execute_command("PUBSUB", "SHARDNUMSUB", "{sse}:live:c1")[1] >= 1
    # A resume from the 5th id, on whichever worker answers.
    resumer = fleet.add(Client(server.port, ["c1", "c2"], last_event_id=ids[4]))
    fleet.wait(lambda: len(resumer.numbers()) == 15, 20, "the 15 missed events")
    assert resumer.numbers() == list(range(6, 21))
    # Each worker has its own pub/sub connection: the events reached streams
    # on both, not only on the one that published.
    assert len(pids) == 2, pids
    assert {c.pid for c in clients if c.numbers() == list(range(1, 21))} == pids
    assert all(c.resets() == [] for c in [*clients, resumer])


def test_a_restart_of_the_node_serving_the_slot(
    cluster: ClusterSetup, redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    server = redis_app(cluster.url, workers=1)
    client = fleet.add(Client(server.port, ["r"], reconnect_on_eof=True))
    fleet.wait(lambda: "sse-keepalive subscribed" in client.comments(), 20, "subscribed")
    publish(server, json.dumps({"n": 1}), "r")
    fleet.wait(lambda: client.numbers() == [1], 10, "the first event")
    node = cluster.owner_of("{sse}:seq")
    started = time.monotonic()
    cluster.restart(node)
    # Publishing comes back once the node serves the slot again.
    deadline = time.monotonic() + 30
    while True:
        try:
            publish(server, json.dumps({"n": 2}), "r")
            break
        except httpx.HTTPStatusError:
            assert time.monotonic() < deadline, "publishing did not come back"
            fleet.pump(0.2)
    back_after = time.monotonic() - started
    fleet.wait(lambda: client.numbers() == [1, 2], 20, "the event after the restart")
    assert client.resets() == [], "with AOF the node lost nothing: no reset"
    print(f"\npublishing back {back_after:.1f} s after the node's restart began")
