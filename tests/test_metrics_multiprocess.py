"""Prometheus multiprocess mode as the operations guide sets it up: two
gunicorn workers, ``PROMETHEUS_MULTIPROC_DIR``, and the guide's own
``gunicorn.conf.py`` (read from ``docs/operations.rst``): ``/metrics`` sums
over the workers, and a worker that dies leaves the gauges."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Server
from tests.test_hardening import worker_pids
from tests.test_streams import stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"
OPERATIONS = ROOT / "docs" / "operations.rst"


def prometheus_section() -> str:
    text = OPERATIONS.read_text()
    return text[text.index("Prometheus metrics\n---") : text.index("The ``flask sse`` commands")]


def documented_config() -> str:
    """The code block the guide captions ``gunicorn.conf.py``."""
    section = prometheus_section()
    start = ".. code-block:: python\n   :caption: gunicorn.conf.py\n\n"
    lines = []
    for line in section[section.index(start) + len(start) :].splitlines():
        if line and not line.startswith("   "):
            break
        lines.append(line.removeprefix("   "))
    return "\n".join(lines).strip() + "\n"


def documented_metrics() -> set[str]:
    """Every metric name the section mentions."""
    return set(re.findall(r"(?<![\w.])sse_[a-z_]+", prometheus_section()))


def scrape(server: Server) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}``."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def every_worker(server: Server, workers: int) -> dict[int, dict]:
    """Each worker's stats: requests go to whichever worker the kernel picks."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + 15
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
        figures = stats(server)
        seen[figures["pid"]] = figures
    return seen


def open_on_both_workers(server: Server) -> list[RawStream]:
    streams: list[RawStream] = []
    while True:
        for _ in range(4):
            stream = RawStream(server.port, "/stream?channel=a")
            stream.wait_for(
                lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed"
            )
            streams.append(stream)
        if all(f["connections"] for f in every_worker(server, 2).values()):
            return streams
        assert len(streams) < 40, "every stream went to one worker"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_metrics_sum_over_workers_and_forget_a_dead_one(gunicorn, tmp_path: Path, sig) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(documented_config())
    server = gunicorn(
        APP,
        workers=2,
        args=("-c", str(config)),
        env={
            "TEST_METRICS": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "SSE_HEARTBEAT_INTERVAL": "30",
        },
    )
    # One disconnect first, so that sse_disconnects_total has a series.
    RawStream(server.port, "/stream?channel=a").close()
    wait_until(
        lambda: scrape(server).get('sse_disconnects_total{reason="client"}') == 1,
        5,
        "the disconnect in the metrics",
    )
    streams = open_on_both_workers(server)
    opened = len(streams) + 1
    workers = every_worker(server, 2)
    assert sum(f["connections"] for f in workers.values()) == len(streams)
    wait_until(
        lambda: scrape(server)["sse_connections"] == len(streams),
        5,
        f"sse_connections to be the sum over both workers, {len(streams)}",
    )
    samples = scrape(server)
    assert samples["sse_connects_total"] == opened
    assert samples["sse_channels"] == 2  # channel a, once per worker
    # What the guide names is what a multiprocess scrape exposes.
    exposed = {name.split("{")[0] for name in samples}
    documented = documented_metrics()
    assert exposed == {name for name in documented if not name.endswith("_created")}

    victim, survivor = sorted(workers, key=lambda pid: -workers[pid]["connections"])
    os.kill(victim, sig)
    wait_until(lambda: victim not in worker_pids(server.pid), 10, "the worker to exit")
    # The replacement answers (a worker still booting would miss a SIGTERM).
    assert victim not in every_worker(server, 2)
    left = workers[survivor]["connections"]
    wait_until(
        lambda: scrape(server)["sse_connections"] == left,
        10,
        f"sse_connections to drop to the surviving worker's {left} streams",
    )
    samples = scrape(server)
    assert samples["sse_channels"] == 1
    # Counters keep what the dead worker counted.
    assert samples["sse_connects_total"] == opened
