"""``--charts DIR``: PNG charts of a run, drawn with matplotlib if it is installed.

Each chart shows the real server beside the ceilings of the same run, where
the scenario has them:

* ``latency-cdf.png``: the publish-to-receive latency distribution of every
  ``latency`` run (the share of events received within x ms);
* ``rss-streams.png``: the server's RSS against the streams it holds, from
  the ``idle`` steps;
* ``cpu-heartbeats.png``: the server's CPU against the heartbeats it sends
  per second (streams / interval), from the ``idle`` and ``full`` steps, so
  the runs at 15 s and at 1 s fall on one axis;
* ``storm-reconnects.png``: the ``storm``: farewells and reconnects per
  100 ms from the ``HUP``.

matplotlib is optional (``pip install matplotlib``); without it
:func:`write_charts` draws nothing and says why.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["write_charts"]


def write_charts(report: dict[str, Any], directory: Path) -> tuple[list[Path], str | None]:
    """Draw the charts of ``report`` in ``directory``: the files written, or why none."""
    try:
        # Imported by name: an optional dependency, absent from the type check too.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")  # files only, no display
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return [], "matplotlib is not installed (pip install matplotlib): no charts drawn"
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    results = [r for r in report["results"] if r.get("metrics")]
    suffix = f" ({report.get('broker', 'memory')} broker)"

    latency = [r for r in results if r["scenario"] == "latency" and r["metrics"].get("permille_ms")]
    if latency:
        figure, axes = plt.subplots(figsize=(8, 5))
        for result in latency:
            values = result["metrics"]["permille_ms"]
            shares = [n / (len(values) - 1) for n in range(len(values))]
            axes.plot(values, shares, label=result["server"])
        m = latency[0]["metrics"]
        axes.set_xscale("log")
        axes.set_xlabel("publish to receive, ms (log)")
        axes.set_ylabel("share of events")
        axes.set_title(f"latency, {m['streams']:,} streams x {m['rate']:g} events/s" + suffix)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        written.append(_save(figure, directory / "latency-cdf.png"))
        plt.close(figure)

    idle = [r for r in results if r["scenario"] == "idle"]
    if idle:
        figure, axes = plt.subplots(figsize=(8, 5))
        for result in idle:
            steps = result["metrics"]["steps"]
            axes.plot(
                [step["streams"] for step in steps],
                [step["rss_mb"] for step in steps],
                marker="o",
                label=f"{result['server']}, {result['label']}",
            )
        axes.set_xlabel("open streams")
        axes.set_ylabel("server RSS, MB")
        axes.set_title("memory against open streams" + suffix)
        axes.grid(True, alpha=0.3)
        axes.legend()
        written.append(_save(figure, directory / "rss-streams.png"))
        plt.close(figure)

    beating = [r for r in results if r["scenario"] in ("idle", "full")]
    if beating:
        figure, axes = plt.subplots(figsize=(8, 5))
        for result in beating:
            steps = result["metrics"]["steps"]
            interval = result["metrics"]["heartbeat_interval"]
            axes.plot(
                [step["streams"] / interval for step in steps],
                [step["server_cpu_pct"] for step in steps],
                marker="o",
                label=f"{result['server']}, {result['label']}",
            )
        axes.set_xscale("log")
        axes.set_xlabel("heartbeats per second (streams / interval, log)")
        axes.set_ylabel("server CPU, % of a core")
        axes.set_title("CPU against heartbeat rate" + suffix)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        written.append(_save(figure, directory / "cpu-heartbeats.png"))
        plt.close(figure)

    storm = [r for r in results if r["scenario"] == "storm"]
    for result in storm[:1]:
        m = result["metrics"]
        bucket = m["bucket_s"]
        figure, axes = plt.subplots(figsize=(8, 5))
        for label in ("farewells", "reconnects"):
            counts = m[f"{label}_per_bucket"]
            axes.step([n * bucket for n in range(len(counts))], counts, where="post", label=label)
        axes.axvline(m["caught_up_max_s"], color="grey", linestyle="--", label="all caught up")
        axes.set_xlabel("seconds from the HUP")
        axes.set_ylabel(f"per {1000 * bucket:g} ms")
        axes.set_title(
            f"reconnect storm, {m['streams']:,} streams, two workers ({result['broker']} broker)"
        )
        axes.grid(True, alpha=0.3)
        axes.legend()
        written.append(_save(figure, directory / "storm-reconnects.png"))
        plt.close(figure)
    return written, None


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
