"""The benchmark suite at tiny scale: every scenario runs and measures what it claims.

These tests check correctness only (no event lost or received twice, every
heartbeat on time, the slow client dropped while the others complete, every
vanished stream released, every stream back after a reload, every process
stopped), never timings: the machine may be busy with other work. Each
scenario runs against the real server (gunicorn -k gevent) and, where a
ceiling makes sense, both raw gevent ceilings (and the idle scenario against
the Flask floor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import runner
from benchmarks.broker import redis_server_path
from benchmarks.charts import write_charts
from benchmarks.netns import unavailable_reason
from benchmarks.servers import COMPARED, ROOT, SERVERS

REAL = SERVERS[0]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the benchmarks read /proc"
)


def run_quick(
    scenario: str, servers: tuple[str, ...] = COMPARED, broker: str = "memory"
) -> list[dict[str, Any]]:
    report = runner.run([scenario], quick=True, queue_size=500, servers=SERVERS, broker=broker)
    results: list[dict[str, Any]] = report["results"]
    assert [r["server"] for r in results] == list(servers)
    for result in results:
        assert "error" not in result, f"{result['server']}: {result['error']}"
        assert "skipped" not in result, f"{result['server']}: {result['skipped']}"
    return results


def require(reason: str | None, switch: str) -> None:
    """Skip for ``reason``, unless ``CI`` or ``switch=1`` is set, where that is a failure."""
    if reason is None:
        return
    if os.environ.get("CI") or os.environ.get(switch) == "1":
        pytest.fail(f"{reason}, and {switch}=1 or CI needs this test to run")
    pytest.skip(reason)


def failed_checks(result: dict[str, Any]) -> dict[str, Any]:
    return {name: ok for name, ok in result["checks"].items() if not ok} | (
        {"warnings": result["warnings"]} if result["warnings"] else {}
    )


def test_idle_every_stream_gets_every_heartbeat() -> None:
    # Every server, the Flask floor too.
    for result in run_quick("idle", SERVERS):
        (step,) = result["metrics"]["steps"]
        assert result["checks"]["all_streams_opened"], failed_checks(result)
        assert result["checks"]["all_heartbeats"], (result["server"], step)
        assert step["streams"] == 50
        assert step["heartbeats"] > 0
        assert step["meter"]["rss_before"] > 0
        assert "loadgen_cpu_pct" in step["meter"]


def gone(pids: list[int | None]) -> list[int]:
    """Those of ``pids`` still running."""
    return [pid for pid in pids if pid is not None and Path(f"/proc/{pid}").exists()]


def test_full_process_keeps_every_heartbeat_and_projects_from_its_slope() -> None:
    (result,) = run_quick("full", (REAL,))
    metrics = result["metrics"]
    assert all(result["checks"].values()), failed_checks(result)
    assert [step["streams"] for step in metrics["steps"]] == [100, 300]
    assert metrics["late_after_s"] == 1.0
    for step in metrics["steps"]:
        assert step["late_streams"] == step["closed_streams"] == 0, step
        assert step["heartbeats"] > 0
    projected = metrics["projection"]
    assert projected["streams"] == 100_000
    assert projected["rss_mb"] > 0 and projected["heartbeats_per_s"] == 100_000
    assert gone([result["pids"]["server"], *result["pids"]["workers"]]) == []


def test_storm_brings_every_stream_back_with_nothing_lost_or_twice() -> None:
    """A HUP to two workers on Redis: every stream's farewell, reconnection and replay."""
    require(
        None if redis_server_path() else "redis-server not found: apt-get install redis-server",
        "SSE_REQUIRE_REDIS",
    )
    (result,) = run_quick("storm", (REAL,))
    metrics, pids = result["metrics"], result["pids"]
    assert result["broker"] == "redis"
    assert all(result["checks"].values()), failed_checks(result)
    assert metrics["lost"] == metrics["duplicated"] == metrics["resets"] == 0
    assert metrics["farewells"] == metrics["streams"] == 100
    assert metrics["published"] > 0
    assert metrics["events"] == metrics["published"] * metrics["streams"] // metrics["channels"]
    # Every stream reconnected once, after the HUP, and each is in the curve.
    assert sum(metrics["reconnects_per_bucket"]) == 100
    assert metrics["waited_ms_min"] > 0
    assert len(pids["workers_before"]) == len(pids["workers_after"]) == 2
    everything = [pids["server"], pids["redis"], pids["feeder"]]
    everything += pids["workers"] + pids["workers_before"] + pids["workers_after"]
    assert gone(everything) == []


def test_churn_leaves_the_steady_streams_whole_and_gives_back_every_descriptor() -> None:
    (result,) = run_quick("churn", (REAL,))
    metrics = result["metrics"]
    assert all(result["checks"].values()), failed_checks(result)
    for window in ("quiet", "churn"):
        assert metrics[window]["lost"] == metrics[window]["disorder"] == 0
        assert metrics[window]["samples"] == metrics[window]["events"] * metrics["streams"] > 0
    assert metrics["churn_opened"] > 0 and metrics["churn_failed"] == 0
    assert metrics["fds_after"] <= metrics["fds_before"]
    assert metrics["connections_after"] == metrics["streams"] == 100
    assert gone([result["pids"]["server"], *result["pids"]["workers"]]) == []


def test_fanout_loses_nothing() -> None:
    for result in run_quick("fanout"):
        metrics = result["metrics"]
        assert result["checks"]["no_loss"], (result["server"], failed_checks(result))
        assert metrics["lost"] == 0
        assert metrics["deliveries"] == metrics["events"] * metrics["streams"] > 0
        assert metrics["cpu_us_per_delivery"] > 0


def test_latency_sees_every_event_in_order() -> None:
    for result in run_quick("latency"):
        metrics = result["metrics"]
        assert result["checks"]["no_loss"], (result["server"], failed_checks(result))
        assert metrics["samples"] == metrics["events"] * metrics["streams"] > 0
        assert metrics["disorder"] == 0
        assert 0 <= metrics["p50_ms"] <= metrics["p99_ms"] <= metrics["max_ms"]


def test_slow_client_is_dropped_and_the_others_complete(tmp_path: Path) -> None:
    """Through the command line, so that the runner, its table and its JSON are covered."""
    out = tmp_path / "slow.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "slow", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slow dropped after s" in done.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True
    for result in report["results"]:
        metrics = result["metrics"]
        assert result["checks"]["others_complete"], (result["server"], failed_checks(result))
        assert result["checks"]["slow_dropped"], (result["server"], metrics)
        assert metrics["lost"] == 0
        assert metrics["slow_received_events"] < metrics["events"]


def test_vanished_streams_are_all_released_and_the_namespace_removed() -> None:
    require(unavailable_reason(), "SSE_REQUIRE_NETNS")
    (result,) = run_quick("vanish", (REAL,))
    metrics = result["metrics"]
    assert result["checks"] and all(result["checks"].values()), failed_checks(result)
    assert metrics["released"] == metrics["streams"] == 20
    assert metrics["still_open"] == 0
    assert metrics["disconnects"]["timeout"] == 20
    # Released by the bound after the cut, never before it.
    assert 0 < metrics["release_min_s"] <= metrics["release_p50_s"] <= metrics["release_max_s"]
    assert 0 < metrics["rss_before"] <= metrics["rss_with"]
    assert metrics["rss_after"] > 0
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert f"ssebench{os.getpid() % 100000}" not in namespaces


def test_publish_and_publish_many_deliver_every_burst() -> None:
    (result,) = run_quick("publish", (REAL,))
    metrics = result["metrics"]
    assert all(result["checks"].values()), failed_checks(result)
    for rate in metrics["rates"].values():
        assert rate["events"] > 0
        assert rate["server_cpu_us_per_event"] > 0
    # publish_many is called with whole batches.
    assert metrics["rates"]["many"]["events"] % metrics["batch"] == 0
    burst = metrics["burst"]
    assert burst["lost"] == 0
    assert burst["many_cpu_ms"] > 0 and burst["single_cpu_ms"] > 0


@pytest.mark.parametrize("scenario", ["fanout", "latency"])
def test_the_redis_broker_is_used_and_stopped(scenario: str) -> None:
    require(
        None if redis_server_path() else "redis-server not found: apt-get install redis-server",
        "SSE_REQUIRE_REDIS",
    )
    results = run_quick(scenario, broker="redis")
    real = results[0]
    assert real["broker"] == "redis"
    assert real["checks"]["no_loss"], failed_checks(real)
    assert real["metrics"]["meter"]["redis_cpu_s"] >= 0
    # The ceilings have no broker, and the redis-server is gone.
    assert all("redis_cpu_s" not in r["metrics"]["meter"] for r in results[1:])
    assert not Path(f"/proc/{real['redis_pid']}").exists()


def test_charts_are_drawn_from_a_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = {
        "broker": "memory",
        "results": [
            {
                "scenario": "latency",
                "server": server,
                "metrics": {"streams": 2, "rate": 5.0, "permille_ms": [0.5, 1.0, 4.0]},
            }
            for server in COMPARED
        ]
        + [
            {
                "scenario": "idle",
                "server": REAL,
                "label": "idle hb=15s",
                "metrics": {
                    "heartbeat_interval": 15.0,
                    "steps": [
                        {"streams": 10, "rss_mb": 30.0, "server_cpu_pct": 0.1},
                        {"streams": 20, "rss_mb": 31.0, "server_cpu_pct": 0.2},
                    ],
                },
            },
            {
                "scenario": "storm",
                "server": REAL,
                "broker": "redis",
                "metrics": {
                    "streams": 3,
                    "bucket_s": 0.1,
                    "farewells_per_bucket": [3],
                    "reconnects_per_bucket": [0, 1, 0, 2],
                    "caught_up_max_s": 0.35,
                },
            },
        ],
    }
    drawn, why_not = write_charts(report, tmp_path)
    assert why_not is None
    assert sorted(path.name for path in drawn) == [
        "cpu-heartbeats.png",
        "latency-cdf.png",
        "rss-streams.png",
        "storm-reconnects.png",
    ]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in drawn)
