"""The ``churn`` scenario: steady streams while others connect and disconnect beside them.

``streams`` steady streams receive ``rate`` events per second each, their
publish-to-receive latency measured on every event as in the ``latency``
scenario: first for ``quiet`` seconds alone, then for ``duration`` seconds
while a :class:`Churner` opens ``churn_rate`` other streams per second (on a
channel of their own, nothing published to it), each closed with a FIN as
soon as its first bytes arrive, the way a page that is left closes its
``EventSource``. Measured: the steady p99 during the churn against the quiet
window (target: at most twice), losses, and the server's RSS and open
descriptors (``/proc/<pid>/fd``) before the quiet window and once the churn
is over, which must come back to where they were.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from array import array
from collections import Counter
from typing import Any

from .client import StreamClient, stream_request
from .procinfo import open_fds, rss_bytes
from .session import Session, close_all, count_loss, percentiles

__all__ = ["Churner", "churn"]

#: How often the churner starts its next batch of connections, in seconds.
TICK = 0.01
#: Linux: bind the source address only, the port is chosen at ``connect``.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def source_addresses(host: str, count: int) -> list[str | None]:
    """Loopback source addresses to spread the churn over (``[None]``: the kernel's choice).

    Each (source, destination) pair has one range of ephemeral ports
    (``/proc/sys/net/ipv4/ip_local_port_range``, 28,232 by default), and the
    side that closes first, the churner, keeps each port in TIME_WAIT for
    60 s: 2,000 connections a second from one address would need 120,000.
    Spread over ``count`` addresses of 127.0.0.0/8 they stay well under the
    range without relying on ``tcp_tw_reuse``.
    """
    address = ipaddress.ip_address(host)
    if not address.is_loopback or address.version != 4 or count <= 1:
        return [None]
    return [str(ipaddress.IPv4Address("127.0.0.2") + i) for i in range(count)]


def describe(exc: BaseException) -> str:
    """An error and what caused it, on one line."""
    text = repr(exc)
    cause = exc.__cause__ or exc.__context__
    return f"{text} (caused by {cause!r})" if cause is not None else text


class Churner:
    """Opens ``rate`` short-lived streams per second for a while; counts how it went.

    At most ``in_flight`` are connecting or waiting for their first bytes at
    once: a server slower than ``rate`` makes the churner fall behind
    (``behind`` counts the connections it did not start), not pile up
    sockets until the generator runs out of descriptors.
    """

    def __init__(
        self,
        host: str,
        port: int,
        rate: float,
        channel: str = "churn",
        *,
        in_flight: int = 1000,
        sources: int = 8,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.rate = rate
        self.in_flight = in_flight
        self.timeout = timeout
        self.request = stream_request(f"/stream?channel={channel}", host)
        self.sources = source_addresses(host, sources)
        self.opened = 0
        self.failed = 0
        #: connections due that were not started: ``in_flight`` were pending
        self.behind = 0
        #: the most pending at once
        self.peak_in_flight = 0
        #: failures by kind, and the first of each kind with its cause
        self.errors: Counter[str] = Counter()
        self.first_errors: dict[str, str] = {}
        self._live: set[StreamClient] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = 0

    async def run(self, duration: float) -> float:
        """Churn for ``duration`` seconds, then wait for the last ones; the seconds it took."""
        began = time.monotonic()
        started = 0
        while (elapsed := time.monotonic() - began) < duration:
            due = int(elapsed * self.rate) + 1
            for _ in range(due - started):
                if len(self._tasks) >= self.in_flight:
                    self.behind += 1
                    continue
                task = asyncio.create_task(self._one())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self.peak_in_flight = max(self.peak_in_flight, len(self._tasks))
            started = max(started, due)
            await asyncio.sleep(TICK)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.timeout + 5)
        return time.monotonic() - began

    async def _connect(self, client: StreamClient) -> None:
        loop = asyncio.get_running_loop()
        source = self.sources[self._started % len(self.sources)]
        self._started += 1
        if source is None:
            await loop.create_connection(lambda: client, self.host, self.port)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (self.host, self.port))
            await loop.create_connection(lambda: client, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _one(self) -> None:
        loop = asyncio.get_running_loop()
        client = StreamClient(self.request, loop.create_future())
        self._live.add(client)
        try:
            async with asyncio.timeout(self.timeout):
                await self._connect(client)
                await client.ready
            self.opened += 1
        except TimeoutError:
            stage = "its first bytes" if client.transport is not None else "the connection"
            self._fail(f"timeout waiting {self.timeout:g} s for {stage}", None)
        except OSError as exc:  # ConnectionError included: what the server sent is in it
            kind = errno.errorcode.get(exc.errno, "") if exc.errno else str(exc)[:60]
            self._fail(kind or type(exc).__name__, exc)
        finally:
            self._live.discard(client)
            client.leave()

    def _fail(self, kind: str, exc: BaseException | None) -> None:
        self.failed += 1
        self.errors[kind] += 1
        if kind not in self.first_errors:
            self.first_errors[kind] = describe(exc) if exc is not None else kind

    def summary(self) -> str:
        """How many failed, by kind, and the first of each: one line."""
        kinds = ", ".join(
            f"{count} {kind}: {self.first_errors[kind]}"
            for kind, count in self.errors.most_common()
        )
        return f"{self.failed} of {self.failed + self.opened} churned streams failed ({kinds})"

    def abort_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in list(self._live):
            client.close()


async def churn(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    count: int = spec.get("streams", 5000)
    rate: float = spec.get("rate", 5.0)
    quiet: float = spec.get("quiet", 10.0)
    duration: float = spec.get("duration", 30.0)
    churn_rate: float = spec.get("churn_rate", 2000.0)
    settle: float = spec.get("settle_timeout", 15.0)
    size: int = spec.get("size", 64)
    session = Session(host, port, spec)
    pid, lead = await session.ready(spec.get("lead", 0))
    streams, failed, _ = await session.open_streams(count, "steady")
    churner = Churner(
        session.host,
        session.port,
        churn_rate,
        in_flight=spec.get("in_flight", 1000),
        sources=spec.get("sources", 8),
    )
    windows: dict[str, dict[str, Any]] = {}
    try:
        await session.run_job(
            streams, n=max(10, int(rate)), channel="steady", size=size, rate=rate, lead=lead
        )
        await asyncio.sleep(1.0)  # let the server settle before the baseline
        base_rss, base_fds = rss_bytes(pid), open_fds(pid)
        base_figures = (await session.stats())["sse"]
        for name, seconds in (("quiet", quiet), ("churn", duration)):
            latencies: array[float] = array("d")
            for stream in streams:
                stream.reset_counts()
                stream.latencies = latencies
            events = max(1, int(rate * seconds))
            meter = session.meter(pid)
            churning = asyncio.create_task(churner.run(seconds)) if name == "churn" else None
            job = await session.run_job(
                streams, n=events, channel="steady", size=size, rate=rate, lead=lead,
                timeout=seconds + 30,
            )  # fmt: skip
            churned_s = await churning if churning is not None else 0.0
            measured = meter.stop()
            windows[name] = {
                "seconds": seconds,
                "events": events,
                "samples": len(latencies),
                **{k: v for k, v in percentiles(latencies).items() if k != "permille_ms"},
                **count_loss(streams, events),
                "disorder": sum(s.disorder for s in streams),
                "complete": job["complete"],
                "churn_s": churned_s,
                "meter": measured,
            }
        # The churned streams are released when the server sees their FIN.
        deadline = time.monotonic() + settle
        while open_fds(pid) > base_fds and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        settled_s = settle - max(0.0, deadline - time.monotonic())
        await asyncio.sleep(1.0)
        after_rss, after_fds = rss_bytes(pid), open_fds(pid)
        figures = (await session.stats())["sse"]
        connections = int(figures["connections"])
    finally:
        churner.abort_all()
        close_all(streams)
    quiet_w, churn_w = windows["quiet"], windows["churn"]
    steady_ok = all(
        w["lost"] == 0 and w["disorder"] == 0 and w["complete"] for w in windows.values()
    )
    if churner.failed:
        session.warnings.append(churner.summary())
    asked = int(churn_rate * churn_w["seconds"])
    churned_s = max(churn_w["churn_s"], 1e-9)
    if churner.behind:
        session.warnings.append(
            f"the churn fell behind: {churner.opened:,} of {asked:,} streams opened"
            f" ({churner.opened / churned_s:,.0f}/s of {churn_rate:,.0f}/s), {churner.behind:,}"
            f" not started while {churner.in_flight:,} were waiting for the server"
        )
    # The server's CPU beyond what the steady streams cost it in the quiet window.
    quiet_cpu = quiet_w["meter"]["server_cpu_s"] / quiet_w["meter"]["wall_s"]
    churn_cpu = churn_w["meter"]["server_cpu_s"] - quiet_cpu * churn_w["meter"]["wall_s"]
    return {
        "metrics": {
            "streams": len(streams),
            "rate": rate,
            "churn_rate": churn_rate,
            "churn_opened": churner.opened,
            "churn_failed": churner.failed,
            "churn_per_s": churner.opened / churned_s,
            "churn_asked": asked,
            "churn_behind": churner.behind,
            "churn_peak_in_flight": churner.peak_in_flight,
            "churn_errors": dict(churner.errors),
            "churn_first_errors": churner.first_errors,
            "server_cpu_ms_per_churned": 1000 * churn_cpu / max(churner.opened, 1),
            "server_refused": _delta(figures, base_figures, "refused"),
            "server_connects": _delta(figures, base_figures, "connects"),
            "quiet": quiet_w,
            "churn": churn_w,
            "p99_ratio": churn_w["p99_ms"] / quiet_w["p99_ms"] if quiet_w["p99_ms"] else None,
            "rss_before": base_rss,
            "rss_after": after_rss,
            "fds_before": base_fds,
            "fds_after": after_fds,
            "settled_s": settled_s,
            "connections_after": connections,
        },
        "checks": {
            "all_streams_opened": failed == 0,
            "steady_no_loss": steady_ok,
            "every_churned_stream_opened": churner.failed == 0 and churner.opened > 0,
            "fds_back": after_fds <= base_fds,
            "connections_back": connections == len(streams),
        },
        "warnings": session.warnings,
    }


def _delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int | None:
    """How much the server's counter ``key`` grew (summed over its reasons, if it has them)."""

    def total(figures: dict[str, Any]) -> int | None:
        value = figures.get(key)
        if isinstance(value, dict):
            return sum(int(v) for v in value.values())
        return int(value) if value is not None else None

    now, then = total(after), total(before)
    return now - then if now is not None and then is not None else None
