"""Sentinel failover under load, with real processes: a primary, a replica and
three Sentinels; the primary SIGKILLed while 20 clients stream (dropping and
resuming at random) and another process publishes 200 events per second.

Once with the replica in sync, once with the replica made to lag first (its
replication link runs through a relay that stops forwarding), so that events
the old primary acknowledged are really lost and the new primary's counter is
really behind the ids handed out. In both: every client's events are in
order, without a duplicate, and any run it missed is immediately preceded by
a ``stream-reset``.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.conftest import Server

from .clients import Client, Fleet
from .conftest import Publisher
from .ha import SentinelSetup, wait


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.close()


def position(event_id: str) -> tuple[str, int]:
    epoch, _, seq = event_id.rpartition("-")
    return epoch, int(seq)


def check_no_silent_gap(client: Client) -> None:
    """Between ``stream-reset`` events, the client got what was published in
    the order it was published, nothing left out and nothing twice: each event
    is the next ``n`` after the one before it, with the next seq (in the same
    epoch, or in the one a promoted replica continues it with). After a
    reset, the next event may be any (it is live from there)."""
    previous: tuple[str, int, int | None] | None = None
    for event in client.events:
        epoch, seq = position(event.last_event_id)
        if event.type == "stream-reset":
            previous = (epoch, seq, None)
            continue
        n = json.loads(event.data)["n"]
        if previous is not None:
            prev_epoch, prev_seq, prev_n = previous
            assert seq == prev_seq + 1, (
                f"id {epoch}-{seq} after {prev_epoch}-{prev_seq} without a stream-reset"
            )
            assert prev_n is None or n == prev_n + 1, (
                f"n={n} after n={prev_n} without a stream-reset: a silent gap or a repeat"
            )
        previous = (epoch, seq, n)


def chaos(fleet: Fleet, run: Publisher, seconds: float, rng: random.Random,
          during: Callable[[float], None]) -> None:  # fmt: skip
    """Pump the fleet while ``run`` publishes; drop and resume clients at
    random; call ``during(elapsed)`` on every round."""
    started = time.monotonic()
    away: dict[Client, float] = {}
    while run.proc.poll() is None:
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"the publisher did not finish within {seconds} s"
        during(elapsed)
        fleet.pump(0.02)
        now = time.monotonic()
        for client, back_at in list(away.items()):
            if now >= back_at:
                del away[client]
                fleet.reconnect(client)
        if rng.random() < 0.1:
            client = rng.choice(fleet.clients)
            if client not in away and client.sock is not None:
                fleet.drop(client)
                away[client] = now + rng.uniform(0, 0.5)
    for client in away:
        fleet.reconnect(client)


@pytest.mark.parametrize("lagging", [False, True], ids=["replica-in-sync", "replica-lagging"])
def test_a_failover_under_load_never_leaves_a_silent_gap(
    sentinels: Callable[..., SentinelSetup],
    redis_app: Callable[..., Server],
    publisher: Callable[..., Publisher],
    fleet: Fleet,
    lagging: bool,
) -> None:
    setup = sentinels(relay=lagging)
    server = redis_app(setup.url, workers=2)
    clients = [
        fleet.add(Client(server.port, ["f1", "f2"], reconnect_on_eof=True)) for _ in range(20)
    ]
    fleet.wait(lambda: all(c.started for c in clients), 30, "first bytes on 20 streams")
    time.sleep(1)  # every stream subscribed (Redis confirms asynchronously)
    count = 2400  # 12 s at 200 events per second
    run = publisher(setup.url, count=count, rate=200, channels="f1,f2")
    old_primary = setup.primary
    killed_at: list[float] = []

    def during(elapsed: float) -> None:
        if lagging and elapsed > 2 and setup.relay is not None and not setup.relay.paused.is_set():
            setup.relay.pause()  # from now on the replica falls behind
        if elapsed > 3 and not killed_at:
            old_primary.stop(signal.SIGKILL)
            killed_at.append(time.monotonic())

    chaos(fleet, run, 120, random.Random(7), during)
    report = run.result(10)
    assert report["published"] == count
    promoted = setup.primary_port()
    assert promoted == setup.replica.port, "the Sentinels promoted the replica"

    # Everything published after the failover reaches every client.
    last = json.dumps({"n": count})
    fleet.wait(
        lambda: all(any(e.data == last for e in c.events) for c in clients),
        30,
        lambda: f"the last event on every client; {sum(bool(c.events) for c in clients)} have some",
    )
    names: dict[str, str] = {}
    for client in clients:
        check_no_silent_gap(client)
        for event in client.events:
            if event.type == "message":
                first = names.setdefault(event.last_event_id, event.data)
                assert first == event.data, f"{event.last_event_id} names two events"
    resets = [len(c.resets()) for c in clients]
    new_primary = redis.Redis(port=promoted)
    stored = {int(i.split(b"-")[0]) for s in ("f1", "f2") for i, _ in
              new_primary.xrange(f"sse:stream:{s}")}  # fmt: skip
    print(
        f"\nfailover ({'lagging' if lagging else 'in sync'}): publishing paused "
        f"{report['longest_pause']:.1f} s ({report['failures']} failed attempts), resets per "
        f"client {sorted(resets)}, events kept by the new primary {len(stored)}"
    )
    if lagging:
        # Acknowledged events were lost with the old primary: each client
        # that could have missed them was told.
        assert all(n >= 1 for n in resets), resets
        assert new_primary.get("sse:epoch") != old_epoch_of(clients), "a new epoch"
    assert sum(c.connects - 1 for c in clients) >= 20, "the clients dropped and resumed"
    # The failover (a second to notice, a moment to elect) plus the retries.
    assert report["longest_pause"] < 15


def old_epoch_of(clients: list[Client]) -> bytes:
    first = next(e for c in clients for e in c.events if e.type == "message")
    return position(first.last_event_id)[0].encode()


def test_streams_opened_during_a_failover_are_accepted(
    sentinels: Callable[..., SentinelSetup], redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    setup = sentinels()
    server = redis_app(setup.url, workers=1)
    setup.primary.stop(signal.SIGKILL)
    started = time.monotonic()
    during = fleet.add(Client(server.port, ["d"], reconnect_on_eof=True))
    fleet.wait(lambda: during.started, 10, "the first bytes while there is no primary")
    assert during.status == 200
    wait(lambda: setup.primary_port() == setup.replica.port, 30, "the failover")
    failover_seconds = time.monotonic() - started
    new_primary = redis.Redis(port=setup.replica.port)
    wait(lambda: new_primary.pubsub_numsub("sse:live:d")[0][1] == 1, 20, "the stream subscribed")
    print(f"\nfailover took {failover_seconds:.1f} s")
    import httpx

    httpx.post(
        f"{server.url}/control/publish", json={"data": "after", "channel": "d"}, timeout=10
    ).raise_for_status()
    fleet.wait(lambda: [e.data for e in during.events] == ["after"], 10, "the event")
