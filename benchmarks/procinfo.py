"""What the kernel says about a process and the CPUs: memory, CPU time, file limits.

Read from ``/proc`` so that measuring a server costs it nothing: no request,
no greenlet switch. Linux only, like the rest of the benchmark suite.
"""

from __future__ import annotations

import os
import resource
import shutil
from dataclasses import dataclass

__all__ = [
    "CpuSample",
    "ProcSample",
    "busy_fraction",
    "children",
    "cpu_sample",
    "cpu_seconds",
    "nofile_limit",
    "open_fds",
    "proc_sample",
    "raise_nofile",
    "rss_bytes",
    "run_delay",
    "run_time",
    "taskset_prefix",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (``/proc/<pid>/stat`` utime + stime)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    # The command name may contain spaces and parentheses: split after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _schedstat(pid: int, field: int) -> float:
    """Field ``field`` (nanoseconds) of ``/proc/<pid>/task/*/schedstat``, summed, in seconds."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as stat:
                total += int(stat.read().split()[field])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def run_time(pid: int) -> float:
    """Seconds the threads of ``pid`` have run on a CPU, to the nanosecond.

    From ``/proc/<pid>/task/*/schedstat`` (first field): unlike
    :func:`cpu_seconds`, whose unit is a clock tick (10 ms), fine enough to
    measure a burst of a few milliseconds. ``nan`` without scheduler statistics.
    """
    return _schedstat(pid, 0)


def run_delay(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a CPU.

    From ``/proc/<pid>/task/*/schedstat`` (second field, nanoseconds): the
    direct measure of how much other processes got in the way. ``nan`` when
    the kernel does not keep scheduler statistics.
    """
    return _schedstat(pid, 1)


def open_fds(pid: int) -> int:
    """How many file descriptors ``pid`` holds open (entries of ``/proc/<pid>/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid: int) -> int:
    """The soft open-file limit of ``pid`` (``Max open files`` in ``/proc/<pid>/limits``)."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return 1 << 62 if soft == "unlimited" else int(soft)
    raise RuntimeError(f"no open-file limit for pid {pid}")


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from ``/proc/*/stat``), in pid order."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except OSError:
            continue  # gone meanwhile
        # After the command name (which may hold spaces and parentheses): state, ppid.
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(name))
    return sorted(found)


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process: when, its CPU time and its RSS."""

    wall: float
    cpu: float
    rss: int


def proc_sample(pid: int, wall: float) -> ProcSample:
    return ProcSample(wall, cpu_seconds(pid), rss_bytes(pid))


@dataclass(frozen=True)
class CpuSample:
    """Busy and total jiffies of each CPU (``/proc/stat``)."""

    busy: tuple[float, ...]
    total: tuple[float, ...]


def cpu_sample() -> CpuSample:
    busy: list[float] = []
    total: list[float] = []
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu":
                continue
            if not name[3:].isdigit():
                break
            values = [int(v) for v in rest.split()]
            idle = values[3] + values[4]  # idle + iowait
            busy.append((sum(values[:8]) - idle) / _TICKS)
            total.append(sum(values[:8]) / _TICKS)
    return CpuSample(tuple(busy), tuple(total))


def busy_fraction(before: CpuSample, after: CpuSample, cpu: int) -> float:
    """How busy ``cpu`` was between two samples, 0..1 (``nan`` if it is absent)."""
    if cpu >= len(before.busy) or cpu >= len(after.busy):
        return float("nan")
    total = after.total[cpu] - before.total[cpu]
    return (after.busy[cpu] - before.busy[cpu]) / total if total > 0 else 0.0


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; return the new limit.

    Each stream is a file descriptor on both sides, and the usual soft limit
    (1024) is far below the 10,000 streams the idle scenario opens.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def taskset_prefix(cpu: int) -> list[str]:
    """``["taskset", "-c", cpu]`` if the machine has that CPU and ``taskset``; else ``[]``."""
    if shutil.which("taskset") is None or cpu >= (os.cpu_count() or 1):
        return []
    try:
        if cpu not in os.sched_getaffinity(0):
            return []
    except AttributeError:  # pragma: no cover - not Linux
        return []
    return ["taskset", "-c", str(cpu)]
