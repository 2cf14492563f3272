"""The cluster view over Redis: every serving process reports its figures,
and any process reads those of all the live ones.

A process takes part from its first stream on: a thread of its own writes the
process's figures every ``SSE_REPORT_INTERVAL`` seconds, on a connection of
its own, with a lifetime of :data:`~.redis_schema.REPORT_LIFETIMES` intervals.
So reporting never waits in front of a stream or a publish, a process that
dies without a word drops out of the view when its report expires, and one
that stops cleanly (the broker closes, the process exits) takes its report
out at once. The index of reports is dated by Redis's clock (in the script),
so hosts whose clocks disagree still agree on who is live. The keys are in
:mod:`.redis_schema`.

Like the fan-out's, the thread is a ``threading`` thread: a greenlet under
gevent's monkey-patching, a real thread in a plain process.

Reading: :meth:`RedisPresence.processes` reads every report when asked (for
``sse.cluster_stats()``); :meth:`RedisPresence.remote_subscribers` reads one
channel's count in each other process at most once per cache period, so that
a "12 watching" badge costs a dictionary lookup on most requests. When the
cached count of a channel is out of date, the first call reads it again and
the calls for that channel meanwhile wait for its answer (one read, however
many ask at once). The client's pool has :data:`CONNECTIONS` connections, so
that the reporter, ``cluster_stats()`` and the reads of different channels
do not queue behind one another.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis

from .base import BrokerUnavailable, Figures, Presence
from .redis_schema import (
    CONNECTION_ERRORS,
    LIVE_PROCESSES,
    REPORT,
    REPORT_LIFETIMES,
    Keys,
    figures_from_report,
    report_fields,
)

__all__ = ["RedisPresence"]

log = logging.getLogger("flask_sse_keepalive.redis")

#: How long closing waits for the reporter to take the report out.
GOODBYE_SECONDS = 1.0
#: Channels whose remote counts are cached; beyond, the stale ones are dropped.
CACHED_CHANNELS = 10_000
#: Connections of the client (see :class:`RedisPresence`): the reporter's, and
#: the reads' as they overlap, each opened only when needed.
CONNECTIONS = 4
#: How long a call waits for another call's read of the same channel before
#: it answers with the last count read.
SHARED_READ_WAIT = 5.0

_ERRORS = (*CONNECTION_ERRORS, redis.ResponseError)


class RedisPresence(Presence):
    """One broker's part in the cluster view, in one process.

    :param keys: the broker's key names.
    :param client: a client of its own (a pool of :data:`CONNECTIONS`), so
        that the view never waits behind publishing or replay, nor they
        behind it.
    """

    def __init__(self, keys: Keys, client: redis.Redis) -> None:
        self.keys = keys
        self.client = client
        self.pid = os.getpid()
        self._report_script = client.register_script(REPORT)
        self._live_script = client.register_script(LIVE_PROCESSES)
        self._figures: Callable[[], Figures] | None = None
        self._interval = 0.0
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        #: the id this process reports under, once it has written a report
        self._own = ""
        #: the live processes' ids, and when they were read (monotonic)
        self._ids: list[str] = []
        self._ids_at = float("-inf")
        #: channel -> (subscribers in the other processes, when read)
        self._remote: dict[str, tuple[int, float]] = {}
        #: channel -> set once the read under way for it is done
        self._reading: dict[str, threading.Event] = {}
        #: an outage was logged and is not over yet
        self._outage = False
        self._figures_failed = False

    @property
    def reporting(self) -> bool:
        """This process reports its figures (it serves streams)."""
        return self._thread is not None and not self._stopped.is_set() and self.pid == os.getpid()

    def start(self, figures: Callable[[], Figures], interval: float) -> None:
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            self._figures = figures
            self._interval = interval
            self._thread = threading.Thread(
                target=self._report, name="sse-redis-reporter", daemon=True
            )
            self._thread.start()
            _running.add(self)

    def processes(self, figures: Callable[[], Figures]) -> list[Figures]:
        keys = self.keys
        try:
            ids = self._set_ids(self._live_script(keys=[keys.processes]))
            pipe: Any = self.client.pipeline(transaction=False)
            for process_id in ids:
                pipe.get(keys.process(process_id))
                pipe.hgetall(keys.process_channels(process_id))
            replies = pipe.execute()
        except _ERRORS as exc:
            raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc
        mine = figures() if self.reporting else None
        found = [] if mine is None else [mine]
        for process_id, body, channels in zip(ids, replies[0::2], replies[1::2], strict=True):
            # No body: the report expired since the index was read.
            if body is not None and (mine is None or process_id != mine["id"]):
                found.append(figures_from_report(body, channels))
        return found

    def remote_subscribers(self, channel: str, max_age: float) -> int:
        now = time.monotonic()
        cached = self._remote.get(channel)
        if cached is not None and now - cached[1] < max_age:
            return cached[0]
        with self._lock:
            done = self._reading.get(channel)
            leading = done is None
            if done is None:
                done = self._reading[channel] = threading.Event()
        if not leading:
            # Another call is reading this channel: share its answer.
            done.wait(SHARED_READ_WAIT)
            cached = self._remote.get(channel)
            return 0 if cached is None else cached[0]
        try:
            return self._read_remote(channel, now, max_age, cached)
        finally:
            with self._lock:
                del self._reading[channel]
            done.set()

    def _read_remote(
        self, channel: str, now: float, max_age: float, cached: tuple[int, float] | None
    ) -> int:
        count = 0 if cached is None else cached[0]
        try:
            if now - self._ids_at >= max_age:
                # A reporting process has them from its last report.
                self._set_ids(self._live_script(keys=[self.keys.processes]))
            others = [process_id for process_id in self._ids if process_id != self._own]
            pipe: Any = self.client.pipeline(transaction=False)
            for process_id in others:
                pipe.hget(self.keys.process_channels(process_id), channel)
            count = sum(int(n) for n in pipe.execute() if n is not None) if others else 0
        except _ERRORS as exc:
            self._failed("reading the subscriber counts", exc)
        else:
            self._answered()
        self._remember(channel, count, now, max_age)
        return count

    def forget(self) -> None:
        """In a forked child: stop the reporter without a goodbye (the report
        is the parent's). The broker closes the child's copies of the
        connections, on one of which the reporter may be waiting."""
        self._stopped.set()

    def close(self) -> None:
        _running.discard(self)
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=GOODBYE_SECONDS)
        self.client.connection_pool.disconnect()

    # -- the reporter -------------------------------------------------------------

    def _report(self) -> None:
        assert self._figures is not None
        while not self._stopped.is_set():
            try:
                self._write(self._figures())
            except _ERRORS as exc:
                if not self._stopped.is_set():
                    self._failed(f"reporting every {self._interval:g} s", exc)
            except Exception:
                # A bug, not an outage: say it once, and keep reporting. Once
                # stopped, what the last report met no longer matters (a
                # forked child's copy, its connection closed under it).
                if not self._figures_failed and not self._stopped.is_set():
                    log.exception("could not take this process's figures for the cluster view")
                self._figures_failed = True
            else:
                self._figures_failed = False
                self._answered()
            self._stopped.wait(self._interval)
        # Not in a forked child: the report is its parent's.
        if self.pid == os.getpid() and self._own:
            try:
                self._report_script(
                    keys=[self.keys.processes, *self._keys_of(self._own)], args=[self._own, 0, ""]
                )
            except _ERRORS as exc:
                log.debug("could not take this process out of the cluster view: %s", exc)

    def _write(self, figures: Figures) -> None:
        own = str(figures["id"])
        body, channels = report_fields(figures)
        lifetime_ms = max(1, int(self._interval * REPORT_LIFETIMES * 1000))
        self._own = own
        keys = [self.keys.processes, *self._keys_of(own)]
        self._set_ids(self._report_script(keys=keys, args=[own, lifetime_ms, body, *channels]))

    def _keys_of(self, process_id: str) -> tuple[str, str]:
        return self.keys.process(process_id), self.keys.process_channels(process_id)

    # -- bookkeeping --------------------------------------------------------------

    def _set_ids(self, ids: list[bytes]) -> list[str]:
        self._ids = [process_id.decode() for process_id in ids]
        self._ids_at = time.monotonic()
        return self._ids

    def _remember(self, channel: str, count: int, now: float, max_age: float) -> None:
        if channel not in self._remote and len(self._remote) >= CACHED_CHANNELS:
            # Channel names may come from user input: the cache stays bounded.
            fresh = {c: v for c, v in dict(self._remote).items() if now - v[1] < max_age}
            self._remote = fresh if len(fresh) < CACHED_CHANNELS else {}
        self._remote[channel] = (count, now)

    def _failed(self, doing: str, exc: BaseException) -> None:
        """Said once per outage, by whichever of reporting or reading meets it."""
        if self._outage:
            log.debug("cluster view: Redis still unreachable while %s: %s", doing, exc)
            return
        self._outage = True
        log.warning(
            "cluster view: Redis is unreachable while %s (%s); the figures of other "
            "processes are the last ones read until it answers",
            doing,
            exc,
        )

    def _answered(self) -> None:
        if self._outage:
            self._outage = False
            log.info("cluster view: Redis answers again")


#: every presence with a reporter in this process (see _forget_after_fork)
_running: weakref.WeakSet[RedisPresence] = weakref.WeakSet()


def _forget_after_fork() -> None:
    """In a forked child, stop the reporters inherited from the parent.

    gevent carries greenlets over a fork, so the parent's reporter would run
    on in the child and write the parent's report with the child's figures.
    Stopped in the child, it exits at its next wake-up without a goodbye (the
    report is the parent's). The child reports for itself from its own first
    stream, through a broker state of its own.
    """
    for presence in list(_running):
        presence.forget()
    _running.clear()


def _leave_at_exit() -> None:
    """Take this process's reports out at exit, in bounded time."""
    for presence in list(_running):
        if presence.pid == os.getpid():
            presence.close()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_leave_at_exit)
