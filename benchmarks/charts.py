"""``--charts DIR``: PNG charts of a run, drawn with matplotlib if it is installed.

Two charts, each the real server beside the ceilings of the same run:

* ``latency-cdf.png``: the publish-to-receive latency distribution of every
  ``latency`` run (the share of events received within x ms);
* ``rss-streams.png``: the server's RSS against the streams it holds, from
  the ``idle`` steps.

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
    return written, None


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
