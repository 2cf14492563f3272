"""``python -m benchmarks``: run the scenarios against every server, print, save JSON.

For each scenario and each server this starts the server (pinned to CPU 0),
runs the load generator in its own process (pinned to CPU 1), and stops the
server. The table shows each figure for the real server and the two ceilings,
the real server's ratio to each ceiling, and the targets the real server is
meant to meet (full runs only: quick runs are too small for them to mean
anything).

``--broker redis`` starts a ``redis-server`` of its own for each run of the
real server (:mod:`benchmarks.broker`), and so does a scenario that needs one
whatever the option says (``storm``); the ``vanish`` scenario runs the load
generator in a network namespace of its own (:mod:`benchmarks.netns`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .broker import RedisServer, redis_server_path
from .charts import write_charts
from .netns import Namespace, unavailable_reason
from .procinfo import raise_nofile, taskset_prefix
from .servers import LOADGEN_CPU, ROOT, SERVER_CPU, SERVERS, start_server
from .session import SATURATED
from .vanish import watch_release

__all__ = ["PLANS", "main", "run"]

REAL, SEND, SENDALL = SERVERS
CEILINGS = (SEND, SENDALL)
#: Share of the time (%) a pinned process waited for its CPU above which figures are noisy.
WAITED = 5.0


@dataclass(frozen=True)
class Run:
    """One server run: which scenario, which heartbeat, which servers, what spec."""

    scenario: str
    label: str
    spec: dict[str, Any]
    servers: tuple[str, ...] = SERVERS
    heartbeat: float = 15.0
    connections: int = 1000
    timeout: float = 240.0
    #: the generator in a network namespace, the server on the host end (``vanish``)
    netns: bool = False
    #: more settings for the real server
    env: dict[str, str] = field(default_factory=dict)
    #: gunicorn workers of the real server (``-w``)
    workers: int = 1
    #: the broker this run needs, whatever ``--broker`` says (``None``: that one)
    broker: str | None = None


def _full() -> dict[str, list[Run]]:
    levels = [1000, 5000, 10000]
    return {
        "idle": [
            Run("idle", "idle hb=15s", {"levels": levels, "window": 30.0}, (REAL,), 15.0, 10000),
            Run("idle", "idle hb=1s", {"levels": levels, "window": 30.0}, (REAL,), 1.0, 10000),
            # The ceilings at the largest size only, to keep the run under ten minutes.
            Run("idle", "idle hb=15s", {"levels": [10000], "window": 30.0}, CEILINGS, 15.0, 10000),
            Run("idle", "idle hb=1s", {"levels": [10000], "window": 30.0}, CEILINGS, 1.0, 10000),
        ],
        "fanout": [
            Run("fanout", "fanout", {"streams": 1000, "duration": 8.0, "read_batch_ms": 10})
        ],
        "latency": [Run("latency", "latency", {"streams": 1000, "rate": 50.0, "duration": 10.0})],
        "slow": [
            Run("slow", "slow", {"others": 50, "events": 20000, "size": 1024, "rate": 2000.0})
        ],
        # No ceiling: the raw server has no dead-peer bound to compare with.
        "vanish": [
            Run("vanish", "vanish", {"streams": 1000}, (REAL,), 2.0, 1000, 120.0, netns=True)
        ],
        # No ceiling: the raw server has no broker and no publish_many.
        "publish": [
            Run(
                "publish",
                "publish",
                {"seconds": 3.0, "batch": 100, "streams": 1000, "rounds": 20, "burst": 10},
                (REAL,),
            )
        ],
        # A full process: 19,000 streams leave room under a 20,000 descriptor
        # limit on both sides. No ceiling: what is projected is the real server.
        "full": [
            Run(
                "full",
                "full hb=15s",
                {"levels": [5000, 10000, 19000], "window": 30.0, "late_after_s": 1.0},
                (REAL,),
                heartbeat=15.0,
                connections=19000,
                timeout=600.0,
            )
        ],
        # Two workers on Redis: a reload hands the streams from one pair to the next.
        "storm": [
            Run(
                "storm",
                "storm",
                {"streams": 10000, "channels": 100, "rate": 100.0, "before": 3.0},
                (REAL,),
                heartbeat=15.0,
                connections=10000,
                timeout=300.0,
                workers=2,
                broker="redis",
            )
        ],
        "churn": [
            Run(
                "churn",
                "churn",
                {
                    "streams": 5000,
                    "rate": 5.0,
                    "quiet": 10.0,
                    "duration": 30.0,
                    "churn_rate": 2000.0,
                },
                (REAL,),
                heartbeat=15.0,
                connections=7000,
                timeout=300.0,
            )
        ],
    }


def _quick() -> dict[str, list[Run]]:
    """Tiny runs for the smoke test: correctness, not figures."""
    fanout = {"streams": 50, "duration": 1.0, "read_batch_ms": 10}
    return {
        "idle": [
            Run("idle", "idle hb=0.5s", {"levels": [50], "window": 2.0}, SERVERS, 0.5, 50, 60.0)
        ],
        "fanout": [Run("fanout", "fanout", fanout, timeout=60.0)],
        "latency": [
            Run(
                "latency",
                "latency",
                {"streams": 50, "rate": 50.0, "duration": 2.0},
                timeout=60.0,
            )
        ],
        "slow": [
            Run(
                "slow",
                "slow",
                # Enough to pass the kernel's send buffer (up to 4 MB) and the queue.
                {"others": 10, "events": 8000, "size": 1024, "rate": 8000.0},
                timeout=60.0,
            )
        ],
        "vanish": [Run("vanish", "vanish", {"streams": 20}, (REAL,), 2.0, 20, 60.0, netns=True)],
        "publish": [
            Run(
                "publish",
                "publish",
                {"seconds": 0.3, "batch": 100, "streams": 20, "rounds": 3, "burst": 10},
                (REAL,),
                timeout=60.0,
            )
        ],
        "full": [
            Run(
                "full",
                "full hb=1s",
                {"levels": [100, 300], "window": 3.0, "late_after_s": 1.0},
                (REAL,),
                heartbeat=1.0,
                connections=300,
                timeout=60.0,
            )
        ],
        "storm": [
            Run(
                "storm",
                "storm",
                {"streams": 100, "channels": 10, "rate": 100.0, "before": 1.0, "after": 1.0},
                (REAL,),
                heartbeat=15.0,
                connections=100,
                timeout=120.0,
                workers=2,
                broker="redis",
            )
        ],
        "churn": [
            Run(
                "churn",
                "churn",
                {"streams": 100, "rate": 5.0, "quiet": 2.0, "duration": 3.0, "churn_rate": 50.0},
                (REAL,),
                heartbeat=15.0,
                connections=300,
                timeout=90.0,
            )
        ],
    }


PLANS: dict[str, Callable[[], dict[str, list[Run]]]] = {"full": _full, "quick": _quick}


def _loadgen(
    host: str, port: int, run: Run, spec: dict[str, Any], namespace: Namespace | None
) -> dict[str, Any]:
    cmd = [
        *taskset_prefix(LOADGEN_CPU), sys.executable, "-m", "benchmarks.loadgen",
        "--host", host, "--port", str(port),
        "--scenario", run.scenario, "--spec", json.dumps(spec),
    ]  # fmt: skip
    if namespace is not None:
        cmd = namespace.command(cmd)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, timeout=run.timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"load generator failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_one(
    run: Run, server: str, queue_size: int, log_dir: Path, broker: str = "memory"
) -> dict[str, Any]:
    """Start ``server`` (and what it needs), run the scenario against it, stop them; the result.

    What is started here is stopped in reverse order whatever happens: the
    server, the ``redis-server`` (``broker="redis"``, real server only), the
    network namespace (``run.netns``).
    """
    began = time.time()
    broker = run.broker or broker
    skipped = unavailable_reason() if run.netns else None
    if broker == "redis" and server == REAL and redis_server_path() is None:
        skipped = "redis-server not found (apt-get install redis-server)"
    if skipped:
        return {
            "skipped": skipped, "checks": {}, "warnings": [], "metrics": {},
            "server": server, "label": run.label, "seconds": 0.0,
        }  # fmt: skip
    spec = dict(run.spec)
    env = dict(run.env)
    host = "127.0.0.1"
    with contextlib.ExitStack() as stack:
        namespace = None
        if run.netns:
            namespace = stack.enter_context(Namespace())
            host = namespace.host_ip
            spec["cut"] = namespace.cut_command()
        if broker == "redis" and server == REAL:
            redis = stack.enter_context(RedisServer(log_dir))
            env["SSE_BROKER_URL"] = redis.url
            spec["redis_pid"] = redis.pid
            spec["redis_url"] = redis.url
        started = start_server(
            server,
            heartbeat=run.heartbeat,
            connections=run.connections,
            queue_size=queue_size,
            log_dir=log_dir,
            env=env,
            host=host,
            workers=run.workers,
        )
        stack.callback(started.stop)
        spec["master_pid"] = started.proc.pid
        spec["workers"] = run.workers
        try:
            used = started.stats().get("broker", "memory")
            if server == REAL and used != broker:
                raise RuntimeError(f"the server uses the {used} broker, not {broker}")
            result = _loadgen(host, started.port, run, spec, namespace)
            pids = result.get("pids", {})
            started.remember(pids.get("workers_before", []) + pids.get("workers_after", []))
            if run.netns and "cut_at" in result["metrics"]:
                # Bound generously: a stream still held then is a failure to see.
                watch_release(started, result, timeout=max(30.0, 10 * run.heartbeat))
        except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            result = {"error": str(exc), "checks": {}, "warnings": [], "metrics": {}}
    log = started.log()
    if "Traceback" in log:
        # The log lives in a temporary directory: keep the last traceback.
        last = log[log.rindex("Traceback") :]
        result["server_log"] = last[:4000]
        error = [line for line in last.splitlines() if line and not line[0].isspace()]
        result["warnings"].append(f"server log has tracebacks, the last: {error[-1][:300]}")
    result.update(server=server, label=run.label, seconds=time.time() - began)
    if server == REAL:
        result["broker"] = broker
    if "redis_pid" in spec:
        result["redis_pid"] = spec["redis_pid"]
    # Every process of the run, all stopped by now: the smoke test looks.
    result.setdefault("pids", {}).update(
        server=started.proc.pid,
        workers=sorted(started.workers_seen),
        redis=spec.get("redis_pid"),
    )
    return result


def tree_state() -> str | None:
    """The commit measured, marked ``+dirty`` if the measured code has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--", "flask_sse_keepalive", "benchmarks")
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for name in ("flask", "gevent", "greenlet", "gunicorn", "flask-sse-keepalive"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": tree_state(),
        "pinned": bool(taskset_prefix(SERVER_CPU)) and bool(taskset_prefix(LOADGEN_CPU)),
        "loadavg": os.getloadavg(),
    }


def run(
    names: list[str],
    *,
    quick: bool,
    queue_size: int,
    servers: tuple[str, ...],
    broker: str = "memory",
) -> dict[str, Any]:
    plans = PLANS["quick" if quick else "full"]()
    results: list[dict[str, Any]] = []
    began = time.time()
    # Before the servers start: what they load is what is measured.
    host = machine()
    with tempfile.TemporaryDirectory(prefix="sse-bench-") as tmp:
        for name in names:
            for planned in plans[name]:
                for server in planned.servers:
                    if server not in servers:
                        continue
                    print(
                        f"  {planned.label:<14} {server:<16}", end="", flush=True, file=sys.stderr
                    )
                    result = run_one(planned, server, queue_size, Path(tmp), broker)
                    result["scenario"] = name
                    results.append(result)
                    print(f" {result['seconds']:5.1f} s {_verdict(result)}", file=sys.stderr)
    report: dict[str, Any] = {
        "machine": host,
        "quick": quick,
        "queue_size": queue_size,
        "broker": broker,
        "started": began,
        "seconds": time.time() - began,
        "results": results,
    }
    report["rows"] = rows(results)
    report["targets"] = [] if quick else targets(results)
    report["warnings"] = warnings(results)
    after = tree_state()
    if after != host["commit"]:
        report["warnings"].append(
            f"the code changed during the run ({host['commit']} -> {after}):"
            " servers started at different times may have run different code"
        )
    return report


def _verdict(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return "skipped: " + str(result["skipped"])
    if "error" in result:
        return "ERROR: " + str(result["error"]).splitlines()[0]
    failed = [name for name, ok in result["checks"].items() if not ok]
    return "ok" if not failed else "FAILED: " + ", ".join(str(name) for name in failed)


def _passed(result: dict[str, Any]) -> bool:
    """Every check passed, or the scenario could not run here (said in the warnings)."""
    return "skipped" in result or _verdict(result) == "ok"


# -- the table -------------------------------------------------------------------

#: (row label, better: "high" or "low" or "", value) per scenario
Row = tuple[str, str, Callable[[dict[str, Any]], Any]]


def _idle_rows(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    out = []
    for step in result["metrics"].get("steps", []):
        head = f"{result['label']} n={step['streams']}"
        out += [
            (f"{head} RSS/stream KB", "low", step["rss_per_stream_kb"]),
            (f"{head} ramp conn/s", "high", step["ramp_per_s"]),
            (f"{head} server CPU %", "low", step["server_cpu_pct"]),
            (
                f"{head} heartbeats got/nominal",
                "",
                f"{step['heartbeats']}/{step['heartbeats_expected']}",
            ),
            (f"{head} late+closed streams", "low", step["late_streams"] + step["closed_streams"]),
        ]
    return out


def _vanish_rows(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    m = result["metrics"]
    if "released" not in m:
        return []
    head = f"{result['label']} n={m['streams']} hb={m['heartbeat_interval']:g}s"
    return [
        (f"{head} released", "", f"{m['released']}/{m['streams']}"),
        (f"{head} release p50 s", "low", m["release_p50_s"]),
        (f"{head} release max s", "low", m["release_max_s"]),
        (f"{head} RSS before/with/after MB", "", "/".join(
            f"{m[key] / 2**20:.1f}" for key in ("rss_before", "rss_with", "rss_after")
        )),
        (f"{head} RSS returned %", "high", m["rss_returned_pct"]),
    ]  # fmt: skip


def _publish_rows(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    m = result["metrics"]
    label = result["label"]
    out: list[tuple[str, str, Any]] = []
    for mode, name in (("single", "single"), ("many", f"many x{m['batch']}")):
        rate = m["rates"][mode]
        out += [
            (f"{label} {name} events/s", "high", rate["events_per_s"]),
            (f"{label} {name} server CPU us/event", "low", rate["server_cpu_us_per_event"]),
        ]
        if "redis_cpu_us_per_event" in rate:
            out.append(
                (f"{label} {name} redis CPU us/event", "low", rate["redis_cpu_us_per_event"])
            )
    burst = m["burst"]
    head = f"{label} burst {burst['events']}x{burst['streams']}"
    out += [
        (f"{head} as 1 publish_many CPU ms", "low", burst["many_cpu_ms"]),
        (f"{head} as {burst['events']} publish CPU ms", "low", burst["single_cpu_ms"]),
        (f"{head} many/single CPU", "low", burst["many_over_single"]),
    ]
    if "many_redis_cpu_ms" in burst:
        out += [
            (f"{head} as 1 publish_many redis CPU ms", "low", burst["many_redis_cpu_ms"]),
            (
                f"{head} as {burst['events']} publish redis CPU ms",
                "low",
                burst["single_redis_cpu_ms"],
            ),
        ]
    out.append((f"{head} lost", "low", burst["lost"]))
    return out


def _full_rows(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    out = _idle_rows(result)
    p = result["metrics"].get("projection")
    if p:
        head = f"{result['label']} projected to n={p['streams']:,}"
        out += [
            (f"{head} RSS MB", "low", p["rss_mb"]),
            (f"{head} RSS/stream KB (slope)", "low", p["rss_per_stream_kb"]),
            (f"{head} server CPU % (slope)", "low", p["cpu_pct"]),
            (f"{head} heartbeat CPU % (us/heartbeat)", "low", p["heartbeat_cpu_pct"]),
            (f"{result['label']} CPU us/heartbeat", "low", p["cpu_us_per_heartbeat"]),
        ]
    return out


def _storm_rows(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    m = result["metrics"]
    head = f"{result['label']} n={m['streams']} {m['channels']}ch"
    return [
        (f"{head} back p50/max s", "", f"{m['back_p50_s']:.2f}/{m['back_max_s']:.2f}"),
        (f"{head} caught up p50 s", "low", m["caught_up_p50_s"]),
        (f"{head} caught up max s", "low", m["caught_up_max_s"]),
        (f"{head} peak reconnects/100ms", "", max(m["reconnects_per_bucket"], default=0)),
        (f"{head} farewells/streams", "", f"{m['farewells']}/{m['streams']}"),
        (f"{head} events published", "", m["published"]),
        (f"{head} lost", "low", m["lost"]),
        (f"{head} duplicated", "low", m["duplicated"]),
    ]


def _churn_rows(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    m = result["metrics"]
    head = f"{result['label']} n={m['streams']} {m['rate']:g}/s"
    quiet, churned = m["quiet"], m["churn"]
    return [
        (f"{head} quiet p50/p99 ms", "", f"{quiet['p50_ms']:.1f}/{quiet['p99_ms']:.1f}"),
        (f"{head} churn p50/p99 ms", "", f"{churned['p50_ms']:.1f}/{churned['p99_ms']:.1f}"),
        (f"{head} p99 churn/quiet", "low", m["p99_ratio"]),
        (f"{head} churned conn/s", "high", m["churn_per_s"]),
        (f"{head} lost", "low", quiet["lost"] + churned["lost"]),
        (f"{head} RSS before/after MB", "", "/".join(
            f"{m[key] / 2**20:.1f}" for key in ("rss_before", "rss_after")
        )),
        (f"{head} fds before/after", "", f"{m['fds_before']}/{m['fds_after']}"),
    ]  # fmt: skip


#: rows of the scenarios whose metrics are not those of ``latency`` or ``slow``
_ROWS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str, Any]]]] = {
    "full": _full_rows,
    "storm": _storm_rows,
    "churn": _churn_rows,
}


def _metric_rows(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    m = result["metrics"]
    label = result["label"]
    if not m:
        return []
    if result["scenario"] in _ROWS:
        return _ROWS[result["scenario"]](result)
    if result["scenario"] == "idle":
        return _idle_rows(result)
    if result["scenario"] == "fanout":
        return [
            (f"{label} n={m['streams']} deliveries/s", "high", m["deliveries_per_s"]),
            (f"{label} n={m['streams']} deliveries/CPU-s", "high", m["deliveries_per_cpu_s"]),
            (f"{label} n={m['streams']} CPU us/delivery", "low", m["cpu_us_per_delivery"]),
            (f"{label} n={m['streams']} lost", "low", m["lost"]),
        ]
    if result["scenario"] == "vanish":
        return _vanish_rows(result)
    if result["scenario"] == "publish":
        return _publish_rows(result)
    if result["scenario"] == "latency":
        head = f"{label} n={m['streams']} {m['rate']:g}/s"
        return [
            (f"{head} p50 ms", "low", m["p50_ms"]),
            (f"{head} p99 ms", "low", m["p99_ms"]),
            (f"{head} max ms", "low", m["max_ms"]),
            (f"{head} lost", "low", m["lost"]),
        ]
    head = f"{label} {m['events']}x{m['size']}B"
    after = m["slow_dropped_after_s"]
    return [
        (f"{head} RSS growth MB", "low", m["rss_growth_mb"]),
        (f"{head} others lost", "low", m["lost"]),
        (f"{head} others p99 ms", "low", m["p99_ms"]),
        (f"{head} slow dropped after s", "", after if after is not None else "never"),
    ]


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for result in results:
        for label, better, value in _metric_rows(result):
            row = table.setdefault(label, {"metric": label, "better": better})
            row[result["server"]] = value
        meters = _meters(result)
        if meters:
            for name, key in (
                ("loadgen CPU %", "loadgen_cpu_pct"),
                ("server waited for CPU %", "server_wait_pct"),
                ("redis CPU %", "redis_cpu_pct"),
            ):
                if not any(key in m for m in meters):
                    continue
                label = f"{result['label']} {name}"
                row = table.setdefault(label, {"metric": label, "better": ""})
                row[result["server"]] = max(m.get(key, math.nan) for m in meters)
    for row in table.values():
        real = row.get(REAL)
        for ceiling in (SEND, SENDALL):
            other = row.get(ceiling)
            if (
                isinstance(real, (int, float))
                and isinstance(other, (int, float))
                and other
                and row["better"]
            ):
                row[f"real/{ceiling}"] = real / other
    return list(table.values())


def _meters(result: dict[str, Any]) -> list[dict[str, Any]]:
    metrics = result.get("metrics", {})
    if "steps" in metrics:
        return [step["meter"] for step in metrics["steps"]]
    if "rates" in metrics:
        return [rate["meter"] for rate in metrics["rates"].values()]
    if "quiet" in metrics and "churn" in metrics:
        return [metrics["quiet"]["meter"], metrics["churn"]["meter"]]
    return [metrics["meter"]] if "meter" in metrics else []


def warnings(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for result in results:
        where = f"{result['label']} / {result['server']}"
        for meter in _meters(result):
            if meter["loadgen_cpu_pct"] > 100 * SATURATED:
                out.append(
                    f"{where}: the load generator used {meter['loadgen_cpu_pct']:.0f}% of its CPU:"
                    " it may be the bottleneck, the server's figures are a lower bound"
                )
            for key, who in (("server_wait_pct", "server"), ("loadgen_wait_pct", "generator")):
                if meter.get(key, 0.0) > WAITED:
                    out.append(
                        f"{where}: the {who} waited for its CPU {meter[key]:.0f}% of the time"
                        " (other processes): noisy figures"
                    )
        meter = result.get("metrics", {}).get("meter", {})
        if result["scenario"] == "fanout" and meter and meter["server_cpu_pct"] < 80:
            out.append(
                f"{where}: the server used only {meter['server_cpu_pct']:.0f}% of its CPU, so"
                " deliveries/s is not its ceiling; deliveries/CPU-s is"
            )
        for step in result.get("metrics", {}).get("steps", []):
            if step["ramp_loadgen_cpu_pct"] > 100 * SATURATED:
                out.append(
                    f"{where}: ramp to {step['streams']}: the generator used"
                    f" {step['ramp_loadgen_cpu_pct']:.0f}% of its CPU, so the ramp rate is its own"
                )
        out += [f"{where}: {w}" for w in result.get("warnings", [])]
        if "skipped" in result:
            out.append(f"{where}: not run: {result['skipped']}")
        if "error" in result:
            out.append(f"{where}: {result['error']}")
    # Several meters of one run may say the same thing.
    return list(dict.fromkeys(out))


def _find(
    results: list[dict[str, Any]], scenario: str, server: str, label: str | None = None
) -> dict[str, Any] | None:
    for result in results:
        if (
            result["scenario"] == scenario
            and result["server"] == server
            and result.get("metrics")
            and (label is None or result["label"] == label)
        ):
            return result
    return None


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real server's targets (one worker, two cores) against what was measured."""
    out: list[dict[str, Any]] = []

    def target(name: str, value: Any, ok: bool | None) -> None:
        out.append({"target": name, "measured": value, "met": ok})

    def step_at(result: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
        steps = result["metrics"]["steps"] if result else []
        return next((s for s in steps if s["streams"] == n), None)

    idle15 = step_at(_find(results, "idle", REAL, "idle hb=15s"), 10000)
    if idle15:
        kb = idle15["rss_per_stream_kb"]
        target("memory per idle stream at 10,000 <= 14 KB", f"{kb:.1f} KB", kb <= 14)
    idle1 = step_at(_find(results, "idle", REAL, "idle hb=1s"), 10000)
    if idle1:
        cpu, missed = idle1["server_cpu_pct"], idle1["late_streams"] + idle1["closed_streams"]
        target(
            "heartbeats at 10,000 / 1 s all delivered at <= 15% of a core",
            f"{cpu:.1f}% CPU, {missed} streams late or closed",
            cpu <= 15 and missed == 0,
        )
    fan = _find(results, "fanout", REAL)
    if fan:
        rate = fan["metrics"]["deliveries_per_s"]
        ceiling = _find(results, "fanout", SEND)
        # Compared per CPU-second: deliveries/s also depends on how much of
        # its CPU each server got, which other processes can change.
        ratio = (
            fan["metrics"]["deliveries_per_cpu_s"] / ceiling["metrics"]["deliveries_per_cpu_s"]
            if ceiling
            else math.nan
        )
        target(
            "fan-out >= 200,000 deliveries/s at 1,000 streams and >= 0.75x the send ceiling",
            f"{rate:,.0f}/s, {ratio:.2f}x the ceiling's deliveries per CPU-second",
            rate >= 200_000 and (ceiling is None or ratio >= 0.75),
        )
    lat = _find(results, "latency", REAL)
    if lat:
        p99 = lat["metrics"]["p99_ms"]
        target("latency p99 <= 40 ms at 1,000 streams x 50 events/s", f"{p99:.1f} ms", p99 <= 40)
    slow = _find(results, "slow", REAL)
    if slow:
        m = slow["metrics"]
        target(
            "slow consumer: RSS growth <= 5 MB, the others complete",
            f"{m['rss_growth_mb']:.1f} MB, {m['lost']} lost",
            m["rss_growth_mb"] <= 5 and slow["checks"].get("others_complete", False),
        )
    gone = _find(results, "vanish", REAL)
    if gone and "released" in gone["metrics"]:
        m = gone["metrics"]
        # A heartbeat within the interval, then the dead-peer bound (the interval again).
        bound = 4 * m["heartbeat_interval"]
        target(
            f"vanished peers: all {m['streams']:,} released within {bound:g} s of the cut",
            f"{m['released']:,} released, the last after {m['release_max_s']:.1f} s",
            m["released"] == m["streams"] and m["release_max_s"] <= bound,
        )
    full = _find(results, "full", REAL)
    if full and full["metrics"].get("steps"):
        top = full["metrics"]["steps"][-1]
        late = top["late_streams"] + top["closed_streams"]
        target(
            f"{top['streams']:,} idle streams on one worker: every heartbeat at most"
            f" {full['metrics']['late_after_s']:g} s past due",
            f"{late} streams late or closed, {top['heartbeats']:,}/"
            f"{top['heartbeats_expected']:,} heartbeats, {top['server_cpu_pct']:.1f}% CPU",
            late == 0 and full["checks"].get("all_streams_opened", False),
        )
    storm = _find(results, "storm", REAL)
    if storm:
        m = storm["metrics"]
        target(
            f"reconnect storm: all {m['streams']:,} streams back and caught up within 10 s"
            " of the HUP, nothing lost or duplicated",
            f"the last after {m['caught_up_max_s']:.1f} s, {m['lost']} lost,"
            f" {m['duplicated']} duplicated",
            m["caught_up_max_s"] <= 10 and m["lost"] == 0 and m["duplicated"] == 0,
        )
    churned = _find(results, "churn", REAL)
    if churned:
        m = churned["metrics"]
        ratio = m["p99_ratio"]
        target(
            f"steady p99 during {m['churn_rate']:,.0f} connects+disconnects/s <= 2x the quiet p99",
            f"{ratio:.2f}x ({m['quiet']['p99_ms']:.1f} -> {m['churn']['p99_ms']:.1f} ms)"
            if ratio is not None
            else "no samples",
            ratio is not None and ratio <= 2,
        )
        grown = (m["rss_after"] - m["rss_before"]) / m["rss_before"]
        target(
            "after the churn: descriptors back to baseline, RSS within 5% of it",
            f"fds {m['fds_before']} -> {m['fds_after']}, RSS {100 * grown:+.1f}%",
            m["fds_after"] <= m["fds_before"] and grown <= 0.05,
        )
    published = _find(results, "publish", REAL)
    if published:
        ratio = published["metrics"]["burst"]["many_over_single"]
        target(
            "a burst of 10 events to 1,000 streams as one publish_many costs <= 0.5x ten publishes",
            f"{ratio:.2f}x",
            ratio <= 0.5,
        )
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    columns = ["metric", REAL, SEND, SENDALL, f"real/{SEND}", f"real/{SENDALL}"]
    table = [columns] + [
        [_fmt(row.get(c, "")) if c != "metric" else row["metric"] for c in columns]
        for row in report["rows"]
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(line)
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    m = report["machine"]
    lines.insert(
        0,
        f"{m['cpu']} x{m['cpus']}, Linux {m['kernel']}, Python {m['python']}, "
        f"gevent {m['versions']['gevent']}, gunicorn {m['versions']['gunicorn']}, "
        f"commit {m['commit']}; server on CPU {SERVER_CPU}, generator on CPU {LOADGEN_CPU}"
        + ("" if m["pinned"] else " (NOT pinned: taskset or a second CPU missing)")
        + f"; broker: {report.get('broker', 'memory')}"
        + (f" (redis-server on CPU {LOADGEN_CPU})" if report.get("broker") == "redis" else "")
        + "".join(
            f"; {r['label']}: {r['broker']}"
            for r in report["results"]
            if r.get("broker", report.get("broker")) != report.get("broker")
        ),
    )
    lines.insert(1, "ratios: real/ceiling (for 'low is better' figures above 1 is worse)")
    lines.insert(2, "")
    if report["targets"]:
        lines += ["", "targets (real server):"]
        for t in report["targets"]:
            mark = {True: "MET ", False: "MISS", None: "?   "}[t["met"]]
            lines.append(f"  [{mark}] {t['target']}: {t['measured']}")
    failed = [
        f"{r['label']} / {r['server']}: {_verdict(r)}" for r in report["results"] if not _passed(r)
    ]
    if failed:
        lines += ["", "correctness FAILED:"] + [f"  {f}" for f in failed]
    if report["warnings"]:
        lines += ["", "warnings:"] + [f"  {w}" for w in report["warnings"]]
    lines.append("")
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark flask-sse-keepalive under gunicorn -k gevent "
        "against a raw gevent ceiling.",
    )
    scenarios = list(_full())
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"any of {', '.join(scenarios)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny scale, a few seconds each (smoke test)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the full results as JSON")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated subset of " + ", ".join(SERVERS),
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=500,
        help="SSE_QUEUE_SIZE for the real server and the ceiling's queue bound "
        "(default: 500, the extension's default)",
    )
    parser.add_argument(
        "--broker",
        choices=("memory", "redis"),
        default="memory",
        help="the real server's broker; redis: a redis-server of the run's own on a free "
        "loopback port, one per server run (default: memory)",
    )
    parser.add_argument(
        "--charts",
        metavar="DIR",
        help="also draw PNG charts in DIR (latency distribution, RSS against streams); "
        "needs matplotlib",
    )
    args = parser.parse_args(argv)
    if args.broker == "redis" and redis_server_path() is None:
        parser.error("--broker redis: redis-server not found (apt-get install redis-server)")
    unknown = set(args.scenarios) - set(scenarios)
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(scenarios)}"
        )
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    if set(servers) - set(SERVERS):
        parser.error(f"--servers: choose from {', '.join(SERVERS)}")
    raise_nofile()
    report = run(
        args.scenarios or scenarios,
        quick=args.quick,
        queue_size=args.queue_size,
        servers=servers,
        broker=args.broker,
    )
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.charts:
        drawn, why_not = write_charts(report, Path(args.charts))
        for path in drawn:
            print(f"chart: {path}")
        if why_not:
            print(f"charts: {why_not}", file=sys.stderr)
    ok = all(_passed(r) for r in report["results"])
    return 0 if ok else 1
