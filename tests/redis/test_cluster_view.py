"""One view of the cluster: every serving process reports its figures to Redis,
``sse.cluster_stats()`` and ``flask sse stats --all`` list the live ones,
``sse.subscriber_count(channel)`` adds them up.

Real processes: two gunicorn servers (two masters) of two workers each on one
redis-server, streams on all four workers; and the reporter on its own in
this process (plain threads) and in a gevent process that forks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from flask_sse_keepalive.brokers import BrokerUnavailable
from flask_sse_keepalive.brokers.redis import RedisBroker
from tests.conftest import ROOT, Server, free_port, server_environ

from .clients import Client, Fleet
from .conftest import app_env, run_scenario

#: The report interval of the servers here; a report lives three of them.
INTERVAL = 1.0
LIFETIME = 3 * INTERVAL
#: The documented staleness of subscriber_count: one interval until the
#: changed process reports, one until the reader's cache is read again.
STALENESS = 2 * INTERVAL
#: What a loaded machine may add to a bound (a late greenlet, a slow request).
SLACK = 2.0


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.close()


def get(server: Server, path: str) -> tuple[int, Any]:
    """GET a control route: the worker that answered, and the JSON."""
    response = httpx.get(f"{server.url}{path}", timeout=10)
    response.raise_for_status()
    return int(response.headers["X-Worker-Pid"]), response.json()


def by_pid(view: dict) -> dict[int, dict]:
    return {figures["pid"]: figures for figures in view["processes"]}


def flask_sse(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``flask sse ARGS`` for the Redis test app, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.apps.redis_app:app", "sse", *args],
        cwd=ROOT,
        env=server_environ(env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def spread(fleet: Fleet, server: Server, channels: Callable[[int], list[str]]) -> list[Client]:
    """Streams on ``server`` until both its workers hold some (the kernel
    picks the worker of each connection), each with its first bytes."""
    clients: list[Client] = []

    def on_both() -> bool:
        if len({c.pid for c in clients if c.pid is not None}) >= 2:
            return all(c.started for c in clients)
        if len(clients) < 80 and all(c.started for c in clients):
            clients.append(fleet.add(Client(server.port, channels(len(clients)))))
        return False

    fleet.wait(
        on_both, 60, lambda: f"streams on both workers of {server.port}: {[c.pid for c in clients]}"
    )
    return clients


def expected_view(clients: list[Client]) -> dict[int, tuple[int, dict[str, int]]]:
    """Per worker: its open streams and its subscribers per channel."""
    expected: dict[int, tuple[int, Counter[str]]] = {}
    for client in clients:
        assert client.pid is not None
        count, channels = expected.get(client.pid, (0, Counter()))
        expected[client.pid] = (count + 1, channels + Counter(client.channels))
    return {pid: (count, dict(channels)) for pid, (count, channels) in expected.items()}


def seen_view(view: dict) -> dict[int, tuple[int, dict[str, int]]]:
    return {pid: (p["connections"], p["channels"]) for pid, p in by_pid(view).items()}


def test_cluster_stats_of_two_servers_of_two_workers(
    redis_url: str, redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    settings = {"report_interval": INTERVAL}
    one, two = (redis_app(redis_url, workers=2, **settings) for _ in range(2))
    everyone = spread(fleet, one, lambda n: ["all", f"room{n % 3}"]) + spread(
        fleet, two, lambda n: ["all", "two"] if n % 2 else ["all"]
    )
    expected = expected_view(everyone)
    assert len(expected) == 4, "four workers, two per server"
    views: list[dict] = []

    def view_is(server: Server, wanted: dict) -> Callable[[], bool]:
        def check() -> bool:
            views.append(get(server, "/control/cluster")[1])
            return seen_view(views[-1]) == wanted

        return check

    fleet.wait(
        view_is(one, expected), 20, lambda: f"the four workers in the view: {seen_view(views[-1])}"
    )
    view = views[-1]
    processes = by_pid(view)
    assert {p["host"] for p in processes.values()} == {socket.gethostname()}
    assert {p["app"] for p in processes.values()} == {"tests.apps.redis_app"}
    assert len({p["id"] for p in processes.values()}) == 4
    assert all(p["uptime"] > 0 and p["shutting_down"] is False for p in processes.values())
    assert all(p["modes"] == {"owned": p["connects"]} for p in processes.values())
    totals = view["totals"]
    assert totals["processes"] == 4 and totals["shutting_down"] == 0
    assert totals["connections"] == len(everyone)
    subscribed = Counter(channel for c in everyone for channel in c.channels)
    assert totals["channels"] == dict(sorted(subscribed.items()))
    assert totals["connects"] == sum(p["connects"] for p in processes.values())

    # Published and delivered: ten events, published by one worker of the
    # second server, delivered to every stream of all four.
    response = httpx.post(
        f"{two.url}/control/publish", json={"data": {"n": 1}, "channel": "all", "count": 10}
    )
    publisher = int(response.headers["X-Worker-Pid"])
    fleet.wait(lambda: all(len(c.numbers()) == 10 for c in everyone), 20, "10 events per stream")

    def counted() -> bool:
        views.append(get(one, "/control/cluster")[1])
        return views[-1]["totals"]["delivered"] == 10 * len(everyone)

    fleet.wait(counted, 20, lambda: f"the deliveries reported: {views[-1]['totals']}")
    processes = by_pid(views[-1])
    assert {pid: p["published"] for pid, p in processes.items()} == {
        pid: 10 if pid == publisher else 0 for pid in expected
    }
    assert {pid: p["delivered"] for pid, p in processes.items()} == {
        pid: 10 * count for pid, (count, _) in expected.items()
    }
    assert views[-1]["totals"]["published"] == 10

    # The CLI: --all shows the same four workers; without it, its own process.
    env = app_env(redis_url, **settings)
    done = flask_sse("stats", "--all", env=env)
    assert done.returncode == 0, done.stderr
    assert seen_view(json.loads(done.stdout)) == expected
    assert json.loads(done.stdout)["totals"]["delivered"] == 10 * len(everyone)
    own = flask_sse("stats", env=env)
    assert own.returncode == 0, own.stderr
    own_figures = json.loads(own.stdout)
    assert own_figures["pid"] not in expected and own_figures["connections"] == 0

    # subscriber_count, from every worker.
    for server in (one, two):
        answers = {get(server, "/control/count?channel=all")[1]["count"] for _ in range(6)}
        assert answers == {len(everyone)}
        answers = {get(server, "/control/count?channel=room1")[1]["count"] for _ in range(6)}
        assert answers == {sum("room1" in c.channels for c in everyone)}


def answers_by_worker(server: Server, channel: str, pids: set[int]) -> dict[int, int]:
    """The last ``subscriber_count(channel)`` of each of ``server``'s workers."""
    answers: dict[int, int] = {}
    for _ in range(40):
        pid, body = get(server, f"/control/count?channel={channel}")
        answers[pid] = body["count"]
        if set(answers) == pids:
            break
    return answers


def test_subscriber_count_is_cached_and_its_staleness_bounded(
    redis_url: str, redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    one, two = (redis_app(redis_url, workers=2, report_interval=INTERVAL) for _ in range(2))
    first = spread(fleet, one, lambda n: ["all"])
    second = spread(fleet, two, lambda n: ["all"])
    readers = {c.pid for c in second}
    assert len(readers) == 2

    def count_everywhere(channel: str, wanted: int) -> float:
        """Seconds until both workers of ``two`` answer ``wanted``."""
        start = time.monotonic()
        fleet.wait(
            lambda: set(answers_by_worker(two, channel, readers).values()) == {wanted},
            STALENESS + SLACK + 10,
            f"subscriber_count({channel!r}) == {wanted} on both workers of the other server",
        )
        return time.monotonic() - start

    count_everywhere("all", len(first) + len(second))
    # Both readers have just cached "late" (0): the worst case for a change now.
    count_everywhere("late", 0)
    changed = time.monotonic()
    late = [fleet.add(Client(one.port, ["late"])) for _ in range(3)]
    fleet.wait(lambda: all(c.started for c in late), 20, "first bytes on the late streams")
    count_everywhere("late", 3)
    opened = time.monotonic() - changed
    for client in late:
        fleet.drop(client)
    changed = time.monotonic()
    count_everywhere("late", 0)
    closed = time.monotonic() - changed
    print(f"subscriber_count caught up in {opened:.2f} s (open), {closed:.2f} s (close)")
    assert opened <= STALENESS + SLACK, f"{opened:.2f} s to see 3 new streams"
    assert closed <= STALENESS + SLACK, f"{closed:.2f} s to see them gone"

    # Cached: 500 calls in a row read Redis once (one HGET per other
    # process), not 500 times; the answers are right.
    admin = redis.Redis.from_url(redis_url)

    def hgets() -> int:
        return int(admin.info("commandstats").get("cmdstat_hget", {}).get("calls", 0))

    before = hgets()
    _, body = get(two, "/control/count?channel=all&repeat=500")
    read = hgets() - before
    assert body["distinct"] == [len(first) + len(second)]
    assert read <= 2 * 3, f"{read} HGETs for 500 calls"


def test_a_killed_worker_leaves_the_view_within_its_report_lifetime(
    redis_url: str, redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    one, two = (redis_app(redis_url, workers=2, report_interval=INTERVAL) for _ in range(2))
    spread(fleet, one, lambda n: ["all"])
    spread(fleet, two, lambda n: ["all"])
    expected = expected_view(fleet.clients)
    views: list[dict] = []

    def view_is(wanted: dict) -> Callable[[], bool]:
        def check() -> bool:
            views.append(get(one, "/control/cluster")[1])
            return seen_view(views[-1]) == wanted

        return check

    fleet.wait(view_is(expected), 20, lambda: f"four workers in the view: {seen_view(views[-1])}")
    victim = next(c.pid for c in fleet.clients if c.port == two.port)
    assert victim is not None
    survivors = {pid: figures for pid, figures in expected.items() if pid != victim}
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    fleet.wait(
        view_is(survivors),
        LIFETIME + SLACK,
        lambda: f"worker {victim} out of the view: {seen_view(views[-1])}",
    )
    gone = time.monotonic() - killed
    print(f"the killed worker left the view {gone:.2f} s after SIGKILL (lifetime {LIFETIME} s)")
    assert views[-1]["totals"]["connections"] == sum(n for n, _ in survivors.values())
    fleet.wait(
        lambda: (
            get(one, "/control/count?channel=all")[1]["count"]
            == sum(n for n, _ in survivors.values())
        ),
        INTERVAL + SLACK,
        "subscriber_count without the killed worker's streams",
    )


def test_a_worker_that_stops_takes_its_report_out_at_once(
    redis_url: str, redis_app: Callable[..., Server], fleet: Fleet
) -> None:
    # Reports that would live 90 s: only a goodbye removes them sooner.
    server = redis_app(redis_url, workers=1, report_interval=30)
    fleet.add(Client(server.port, ["all"]))
    reader = RedisBroker(redis_url)
    try:
        fleet.wait(
            lambda: len(reader.presence().processes(lambda: {})) == 1, 20, "the worker's report"
        )
        server.stop(signal.SIGTERM)
        assert server.proc.returncode == 0
        assert reader.presence().processes(lambda: {}) == []
        assert redis.Redis.from_url(redis_url).keys("sse:process*") == []
    finally:
        reader.close()


def test_cli_stats_all_says_when_redis_cannot_be_read() -> None:
    env = app_env(f"redis://127.0.0.1:{free_port()}/0")
    done = flask_sse("stats", "--all", env=env)
    assert done.returncode == 1
    assert "broker unavailable: Redis is unreachable" in done.stderr
    assert "Traceback" not in done.stderr


# -- the reporter on its own -----------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def figures_of(process_id: str, **channels: int) -> Callable[[], dict]:
    calls = Counter[str]()

    def figures() -> dict:
        calls["n"] += 1
        return {"id": process_id, "pid": os.getpid(), "n": calls["n"], "channels": channels}

    return figures


def test_a_report_lives_three_intervals_under_the_prefix_and_close_takes_it_out(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    # A hash tag in the prefix keeps every key in one Redis Cluster slot.
    reporter = RedisBroker(redis_url, prefix="{app}:")
    reader = RedisBroker(redis_url, prefix="{app}:")
    try:
        reporter.presence().start(figures_of("h:1:a", news=2, prices=1), 0.2)
        wait_for(lambda: client.exists("{app}:process:h:1:a"), 5, "the first report")
        assert sorted(client.keys("*")) == [
            b"{app}:process-channels:h:1:a", b"{app}:process:h:1:a", b"{app}:processes"
        ]  # fmt: skip
        for key in (b"{app}:process-channels:h:1:a", b"{app}:process:h:1:a"):
            assert 0 < client.pttl(key) <= 600
        ((member, expires),) = client.zrange("{app}:processes", 0, -1, withscores=True)
        seconds, micros = client.time()
        assert member == b"h:1:a" and 0 < expires - (seconds * 1000 + micros // 1000) <= 600
        [seen] = reader.presence().processes(lambda: {})
        assert seen["id"] == "h:1:a" and seen["channels"] == {"news": 2, "prices": 1}
        assert reader.presence().remote_subscribers("news", 1.0) == 2
        # The reporter's own figures come from it, not from Redis.
        assert reporter.presence().remote_subscribers("news", 1.0) == 0
        [mine] = reporter.presence().processes(figures_of("h:1:a", news=5))
        assert mine["channels"] == {"news": 5}
        calls = json.loads(client.get("{app}:process:h:1:a") or b"{}")["n"]
        wait_for(
            lambda: json.loads(client.get("{app}:process:h:1:a") or b"{}")["n"] >= calls + 2,
            5,
            "two more reports",
        )
        reporter.close()
        assert client.keys("*") == [], "close takes the report out"
        time.sleep(0.6)
        assert client.keys("*") == [], "and nothing is written after it"
        assert reader.presence().processes(lambda: {}) == []
    finally:
        reporter.close()
        reader.close()


def test_reporting_rides_out_a_redis_outage_and_says_so_once(
    redis_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server()
    url = f"redis://127.0.0.1:{server.port}/0"
    reporter, reader = RedisBroker(url), RedisBroker(url)
    caplog.set_level(logging.DEBUG, logger="flask_sse_keepalive")
    try:
        reporter.presence().start(figures_of("h:1:a", news=2), 0.1)
        wait_for(lambda: reader.presence().remote_subscribers("news", 0.05) == 2, 5, "the report")
        server.stop(signal.SIGKILL)
        time.sleep(1.0)  # ten reports fail
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            reader.presence().processes(lambda: {})
        assert time.monotonic() - started < 5
        for _ in range(5):
            # The last figures read, while Redis is away; tried once per period.
            assert reader.presence().remote_subscribers("news", 0.05) == 2
            time.sleep(0.06)
        server = redis_server(port=server.port)
        client = redis.Redis.from_url(url)
        wait_for(lambda: client.exists("sse:process:h:1:a"), 10, "a report after the outage")
        wait_for(lambda: reader.presence().remote_subscribers("news", 0.05) == 2, 5, "a read")
    finally:
        reporter.close()
        reader.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    assert len([w for w in warnings if "while reporting" in w]) == 1, warnings
    assert len([w for w in warnings if "while reading" in w]) == 1, warnings
    assert len(warnings) == 2, warnings
    assert len(infos) == 2, infos


def test_a_forked_child_does_not_keep_the_parents_reporter(redis_url: str) -> None:
    # The fork lands while the parent's report waits on its reply, and the
    # child's loop is the first to see the reply (see the scenario).
    result = run_scenario("report_fork", redis_url)
    assert result["child_status"] == 0
    assert result["seen_during_child"], "the parent's report was read while the child ran"
    # Only the parent ever wrote the parent's report, and it never expired:
    # the child did not take the parent's reply away.
    assert result["seen_during_child"] == [result["parent_pid"]], result
    assert result["child"]["own_report_pid"] == result["child"]["pid"] != result["parent_pid"]
    assert result["parent_reports_after"] > result["parent_reports_before"]
    # Neither process met an error: not the parent waiting out a reply that
    # never came, not the child's copy of the reporter.
    assert result["parent_said"] == [], result
    assert result["child"]["said"] == [], result


def test_concurrent_counts_of_one_channel_share_one_read_and_do_not_cry_wolf(
    redis_url: str,
) -> None:
    result = run_scenario("count_rush", redis_url, "50")
    # 50 answers, all right, from one HGET (one other process): one read
    # for all of them; also when Redis stalls for 1.5 s, longer than a
    # pool's 1 s wait, and the process's reporter writes meanwhile.
    for rush in (result["calm"], result["stalled"]):
        assert rush["answers"] == ["2"], result
        assert rush["hgets"] == 1, result
    assert 1.0 < result["stalled"]["seconds"] < 10, result
    assert result["warnings"] == [], result
