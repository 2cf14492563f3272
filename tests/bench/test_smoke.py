"""The benchmark suite at tiny scale: every scenario runs and measures what it claims.

These tests check correctness only (no event lost, every heartbeat on time,
the slow client dropped while the others complete), never timings: the
machine may be busy with other work. Each scenario runs against the real
server (gunicorn -k gevent) and both raw gevent ceilings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import runner
from benchmarks.servers import ROOT, SERVERS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the benchmarks read /proc"
)


def run_quick(scenario: str) -> list[dict[str, Any]]:
    report = runner.run([scenario], quick=True, queue_size=500, servers=SERVERS)
    results: list[dict[str, Any]] = report["results"]
    assert [r["server"] for r in results] == list(SERVERS)
    for result in results:
        assert "error" not in result, f"{result['server']}: {result['error']}"
    return results


def failed_checks(result: dict[str, Any]) -> dict[str, Any]:
    return {name: ok for name, ok in result["checks"].items() if not ok} | (
        {"warnings": result["warnings"]} if result["warnings"] else {}
    )


def test_idle_every_stream_gets_every_heartbeat() -> None:
    for result in run_quick("idle"):
        (step,) = result["metrics"]["steps"]
        assert result["checks"]["all_streams_opened"], failed_checks(result)
        assert result["checks"]["all_heartbeats"], (result["server"], step)
        assert step["streams"] == 50
        assert step["heartbeats"] > 0
        assert step["meter"]["rss_before"] > 0
        assert "loadgen_cpu_pct" in step["meter"]


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
