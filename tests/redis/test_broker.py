"""The Redis broker on its own: publishing from a plain process, and the
subscriber side in a gevent process (see ``scenarios.py``)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask

from flask_sse_keepalive import SSE
from flask_sse_keepalive.brokers import BrokerUnavailable
from flask_sse_keepalive.brokers.base import parse_id
from flask_sse_keepalive.brokers.redis import RedisBroker
from flask_sse_keepalive.brokers.redis_schema import RESUME
from flask_sse_keepalive.event import Event
from tests.conftest import ROOT, Server, free_port
from tests.test_memory_broker import Collector

from .conftest import run_scenario, scenario_command


def test_publish_from_a_plain_process(redis_url: str) -> None:
    broker = RedisBroker(redis_url, history_size=10, prefix="app1:")
    reader = Collector(("prices", "news"))
    try:
        first = broker.publish("prices", Event(data="1.5", event="tick", retry=500))
        second = broker.publish("news", Event(data="a\nb"))
        epoch, seq = parse_id(first.id) or ("", 0)
        # What a stream resuming from before them gets (in threads: a plain process).
        broker.attach(reader, f"{epoch}-{seq - 1}")
        deadline = time.monotonic() + 10
        while not reader.ready_at:
            assert time.monotonic() < deadline, "the replay did not come within 10 s"
            time.sleep(0.02)
    finally:
        broker.close()
    assert (first.seq, second.seq) == (seq, seq + 1)
    assert second.id == f"{epoch}-{seq + 1}"
    assert [m.payload for m in reader.messages] == [
        f"event: tick\ndata: 1.5\nid: {first.id}\nretry: 500\n\n".encode(),
        f"data: a\ndata: b\nid: {second.id}\n\n".encode(),
    ]
    client = redis.Redis.from_url(redis_url)
    # The key layout the docs describe; fields, not encoded bytes, are stored.
    assert sorted(client.keys("app1:*")) == [
        b"app1:epoch", b"app1:heads", b"app1:lineage", b"app1:seq", b"app1:stream:news",
        b"app1:stream:prices",
    ]  # fmt: skip
    assert client.get("app1:epoch") == epoch.encode()
    [(entry_id, fields)] = client.xrange("app1:stream:prices")
    assert entry_id == f"{seq}-0".encode()
    assert fields == {b"p": b"0", b"d": b"1.5", b"e": b"tick", b"r": b"500"}


def test_epoch_survives_in_redis_across_brokers(redis_url: str) -> None:
    one, two = RedisBroker(redis_url), RedisBroker(redis_url)
    try:
        ids = [one.publish("a", Event(data="1")).id, two.publish("b", Event(data="2")).id]
    finally:
        one.close()
        two.close()
    (epoch1, seq1), (epoch2, seq2) = (parse_id(i) for i in ids)  # type: ignore[misc]
    assert epoch1 == epoch2 and seq2 == seq1 + 1


def test_history_is_trimmed_but_keeps_at_least_history_size(redis_url: str) -> None:
    broker = RedisBroker(redis_url, history_size=150)
    try:
        for n in range(600):
            broker.publish("busy", Event(data=str(n)))
    finally:
        broker.close()
    length = redis.Redis.from_url(redis_url).xlen("sse:stream:busy")
    assert 150 <= length < 600


def test_the_app_config_makes_the_broker(redis_url: str) -> None:
    app = Flask(__name__)
    app.config.update(SSE_BROKER_URL=redis_url, SSE_HISTORY_SIZE="5", SSE_REDIS_PREFIX="x:")
    broker = SSE(app).state(app).broker
    assert isinstance(broker, RedisBroker)
    assert (broker.history_size, broker.keys.epoch) == (5, "x:epoch")
    broker.close()


def test_publish_without_redis_raises_after_a_short_retry() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        broker.publish("a", Event(data="lost?"))
    # Bounded: about a second of retrying, never a hang.
    assert time.monotonic() - started < 5
    broker.close()


def test_resume_seam_while_another_process_publishes(redis_url: str) -> None:
    result = run_scenario("seam", redis_url, timeout=120)
    assert result["errors"] == []
    assert result["subscribers"] >= 20 and result["reconnects"] >= 10, result


def test_flushed_redis_resets_every_subscriber(redis_url: str) -> None:
    result = run_scenario("flush", redis_url)
    assert result["old_epoch"] != result["new_epoch"]
    # a: the old event, then a reset into the new epoch, then live again
    assert [r["reason"] for r in result["a_resets"]] == ["broker-reset"]
    assert result["a_resets"][0]["position"].startswith(result["new_epoch"] + "-")
    assert result["a"][0] == result["before"] and result["a"][-1] == result["live_a"]
    assert [r["reason"] for r in result["b_resets"]] == ["broker-reset"]
    assert result["b"][-1] == result["live_b"]


def test_redis_behind_its_own_ids_starts_a_new_epoch(redis_url: str) -> None:
    result = run_scenario("rollback", redis_url)
    [reset] = result["resets"]
    assert reset["reason"] == "broker-reset"
    new_epoch = reset["position"].rsplit("-", 1)[0]
    assert new_epoch != result["old_epoch"]
    # Publishing goes on in the new epoch: no old id is handed out again.
    assert result["next_id"].startswith(new_epoch + "-")


def test_one_subscription_per_channel_while_needed(redis_url: str) -> None:
    result = run_scenario("subscriptions", redis_url)
    assert result["attached"] == {"x": 1, "y": 1}  # 51 subscribers on x, one SUBSCRIBE
    assert result["counts"] == {"x": 51, "y": 1}
    assert result["shared_payload"] is True
    assert result["x_still_needed"] == {"x": 1, "y": 1}
    assert result["detached"] == {"x": 0, "y": 0}
    assert result["counts_after"] == {}
    # pub/sub + control + one publishing connection, all named after the process
    assert result["names"] == [f"sse:{result['pid']}"]
    assert result["connections"] == 3


def test_broker_created_before_a_fork_works_in_both(redis_url: str) -> None:
    result = run_scenario("fork", redis_url)
    assert result["child_status"] == 0
    assert len(result["child"]["seqs"]) == 1
    # The parent's pub/sub connection stays the parent's: nothing read away.
    assert set(result["during"]) <= set(result["parent"])
    assert result["parent"] == sorted(result["parent"])


def test_a_replica_refuses_a_resume_that_would_read_behind_the_primary(
    redis_server: Callable[..., Server],
) -> None:
    # A demoted primary still answers reads: a replay read from it could miss
    # what the new primary took since. Every script refuses to run there.
    primary, replica = redis_server(), redis_server()
    broker = RedisBroker(f"redis://127.0.0.1:{primary.port}/0")
    try:
        for n in range(3):
            broker.publish("a", Event(data=str(n)))
        keys = [*broker.keys.positions(), broker.keys.stream("a")]
    finally:
        broker.close()
    on_primary, on_replica = redis.Redis(port=primary.port), redis.Redis(port=replica.port)
    on_replica.replicaof("127.0.0.1", primary.port)
    deadline = time.monotonic() + 10
    while on_replica.xlen("sse:stream:a") < 3:
        assert time.monotonic() < deadline, "the replica did not sync within 10 s"
        time.sleep(0.05)
    epoch = on_primary.get("sse:epoch").decode()
    # A new epoch if needed, no fence, the client at the epoch's start, no reset.
    args = ["new-epoch", "", 0, epoch, 0, ""]

    def resume(client: redis.Redis, script: str = RESUME) -> list:
        return client.eval(script, len(keys), *keys, *args)  # type: ignore[no-any-return]

    assert len(resume(on_primary)[3]) == 3
    with pytest.raises(redis.ReadOnlyError, match="replica"):
        resume(on_replica)
    # The control: without the check, the replica's copy is read as if it
    # were the primary's.
    check = "if not string.find(replication, 'role:master', 1, true) then"
    assert check in RESUME
    unchecked = RESUME.replace(check, "if false then")
    assert len(resume(on_replica, unchecked)[3]) == 3


@pytest.mark.parametrize("loop", ["threads", "gevent"])
def test_a_connection_closed_or_left_with_a_reply_is_not_handed_out(
    redis_url: str, loop: str
) -> None:
    def run(check: str) -> dict:
        if loop == "gevent":
            return run_scenario("stale", redis_url, check)
        from .scenarios import stale

        return stale(redis_url, check)

    result = run("peek")
    ids = [parse_id(i) for i in result["ids"]]
    assert all(ids), result
    epoch = ids[0][0]  # type: ignore[index]
    assert ids == [(epoch, ids[0][1] + n) for n in range(3)], result  # type: ignore[index]
    assert result["stored"] == 3
    # The control: a pool that does not look fails the first publish (the
    # server had closed its connection: "may or may not be stored") and
    # reads the left-over reply as the second one's.
    control = run("none")
    assert "BrokerUnavailable" in control["ids"][1], control
    assert parse_id(control["ids"][2]) is None, control


def test_a_fork_while_replies_are_awaited_leaves_them_to_the_parent(redis_url: str) -> None:
    result = run_scenario("fork_in_flight", redis_url)
    assert result["child_status"] == 0
    # The parent got its replies: the publish in flight stored and delivered,
    # the probe answered (no timeout, no new subscription).
    assert isinstance(result["published_in_flight"], int), result
    assert result["parent_said"] == [], result
    assert result["new_connections"] == 0, result
    assert result["probes_lost"] == 0, result
    assert result["child_said"] == [], result


def test_streams_wait_for_redis_then_replay_and_go_live(
    redis_server: Callable[..., Server],
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        scenario_command("down", f"redis://127.0.0.1:{port}/0"),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            # The scenario's publish gives up after about a second.
            assert selector.select(20), "the scenario did not get to wait for Redis in 20 s"
        line = proc.stdout.readline()
        assert line.strip() == b"waiting-for-redis", proc.stderr.read() if proc.stderr else b""
        time.sleep(0.5)  # streams wait a while with Redis down
        redis_server(port=port)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["attach_seconds"] < 0.1  # attach never waits for Redis
    assert result["publish_raised"] is True
    assert result["publish_seconds"] < 5
    # the resumer's id is from no history Redis has: reset, then live
    assert [r["reason"] for r in result["resumer_resets"]] == ["unknown-epoch"]
    assert result["resumer_ready_at"] == [1], "ready once, right after the reset"
    assert result["resumer"][-1] == result["published_seq"]
    assert result["live"] == [result["published_seq"]]
