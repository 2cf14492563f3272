"""The liveness probe: a pub/sub connection that looks healthy but gets nothing.

The worker reaches Redis through a relay; the relay goes on forwarding the
worker's publishing and control connections but stops forwarding what Redis
sends on the pub/sub connection. The TCP connection stays up and quiet, as
after a failover that left it attached to a node that no longer gets the
publishes. The probe finds it, the fan-out reconnects, and the streams catch
up from history: nothing lost, no reset.

And in this process, with the timings shortened: subscriptions that keep
coming and going (their confirmations are no sign that publishes arrive) do
not hold the probe off, and a link that keeps losing its probe is one
incident, said once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from flask_sse_keepalive.brokers import redis_fanout
from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.event import Event
from tests.conftest import Server

from .clients import Client, Fleet
from .ha import Relay
from .scenarios import Recorder


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


# -- in this process (plain threads), with the fan-out's timings shortened ----------


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe lost after 0.5 s, an incident over after 1 s of proven service."""
    monkeypatch.setattr(redis_fanout, "PROBE_TIMEOUT", 0.5)
    monkeypatch.setattr(redis_fanout, "RECOVERED_AFTER", 1.0)


def test_subscriptions_that_come_and_go_do_not_hold_the_probe_off(
    relay: Relay, quick: None
) -> None:
    # A node that no longer gets the publishes still confirms (un)subscribes;
    # channels churn faster than the probe interval, as clients come and go.
    broker = RedisBroker(f"redis://127.0.0.1:{relay.port}/0", probe_interval=0.5)
    recorder = Recorder(["p"])
    try:
        broker.attach(recorder, None)
        wait_for(lambda: recorder.ready_at, 10, "the subscriber positioned")
        first = broker.publish("p", Event(data="before")).seq
        wait_for(lambda: recorder.seqs == [first], 10, "the event before the detachment")
        relay.mute(b"SUBSCRIBE")
        sent = [broker.publish("p", Event(data=f"during {n}")).seq for n in range(5)]
        deadline = time.monotonic() + 8
        churned = 0
        while time.monotonic() < deadline and recorder.seqs != [first, *sent]:
            passing = Recorder([f"churn{churned}"])
            broker.attach(passing, None)
            time.sleep(0.1)
            broker.detach(passing)
            time.sleep(0.1)
            churned += 1
        health = broker.health()
    finally:
        broker.close()
    assert recorder.seqs == [first, *sent], f"stuck after {churned} channels came and went"
    assert recorder.resets == []
    assert health == {"probes_lost": 1, "reconnects": 2}


def test_a_link_that_keeps_losing_its_probe_is_one_incident(
    relay: Relay, quick: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_sse_keepalive")
    broker = RedisBroker(f"redis://127.0.0.1:{relay.port}/0", probe_interval=0.3)
    recorder = Recorder(["p"])

    def said(text: str, level: int) -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()
        ]

    try:
        broker.attach(recorder, None)
        wait_for(lambda: recorder.ready_at, 10, "the subscriber positioned")
        # Every pub/sub connection, this one and the next ones, connects and
        # subscribes, and then gets nothing: each loses its probe.
        relay.mute(b"SUBSCRIBE", later=True)
        wait_for(lambda: broker.health()["probes_lost"] >= 4, 20, "four probes lost in a row")
        flapping = {
            "warnings": said("pub/sub connection lost", logging.WARNING),
            "retries": said("pub/sub connection lost", logging.DEBUG),
            "back": said("is back", logging.INFO),
        }
        assert len(flapping["warnings"]) == 1, flapping
        assert len(flapping["retries"]) >= 3, flapping
        assert flapping["back"] == [], flapping
        relay.unmute()
        event = broker.publish("p", Event(data="after"))
        wait_for(lambda: event.seq in recorder.seqs, 10, "the event once the link works")
        wait_for(lambda: said("is back", logging.INFO), 10, "the end of the incident")
        # A later outage is an incident of its own, and is said again.
        redis.Redis(port=relay.target[1]).client_kill_filter(_type="pubsub")
        wait_for(
            lambda: len(said("pub/sub connection lost", logging.WARNING)) == 2,
            10,
            "the warning of the next incident",
        )
    finally:
        broker.close()
    assert len(said("is back", logging.INFO)) == 1
