"""``python -m benchmarks``: run the scenarios against every server, print, save JSON.

For each scenario and each server this starts the server (pinned to CPU 0),
runs the load generator in its own process (pinned to CPU 1), and stops the
server, for each run of the plan (:mod:`benchmarks.plans`). Then it prints the
report: the table of figures (:mod:`benchmarks.table`), the targets, full runs
only (:mod:`benchmarks.targets`), the verdicts and warnings
(:mod:`benchmarks.report`).

``--broker redis`` starts a ``redis-server`` of its own for each run of the
real server (:mod:`benchmarks.broker`), and so does a scenario that needs one
whatever the option says (``storm``); the ``vanish`` scenario runs the load
generator in a network namespace of its own (:mod:`benchmarks.netns`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .broker import RedisServer, redis_server_path
from .charts import write_charts
from .netns import Namespace, unavailable_reason
from .plans import PLANS, Run
from .procinfo import raise_nofile, taskset_prefix
from .report import format_report, passed, verdict, warnings
from .servers import LOADGEN_CPU, REAL, ROOT, SERVER_CPU, SERVERS, start_server
from .table import rows
from .targets import targets
from .vanish import watch_release

__all__ = ["main", "run"]


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
                    print(f" {result['seconds']:5.1f} s {verdict(result)}", file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark flask-sse-keepalive under gunicorn -k gevent "
        "against a raw gevent ceiling.",
    )
    scenarios = list(PLANS["full"]())
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
    ok = all(passed(r) for r in report["results"])
    return 0 if ok else 1
