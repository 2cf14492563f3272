"""The publishing greenlet behind ``POST /bench/publish``, shared by both servers.

Publishing happens inside the server under test so that the figures measure
the server, not an HTTP round trip per event. The pace is set in one of two
ways, chosen by the load generator:

* ``rate``: events per second on a fixed schedule (latency scenarios);
* ``lead``: as fast as the slowest client keeps up. The generator reports,
  through ``POST /bench/progress?acked=SEQ``, the highest sequence number that
  *every* stream has received; the publisher never runs more than ``lead``
  events ahead of it. Keeping ``lead`` below the server's per-connection queue
  size means a fast publisher cannot make a healthy client look slow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from .wire import event_data

__all__ = ["Publisher"]

#: How long the publisher waits for progress before it gives up (a stalled client).
STALL_SECONDS = 30.0


class Publisher:
    """One publishing job at a time; a new job stops the previous one.

    :param publish: ``publish(data)`` sends one event (data is a ``str``).
    :param context: a factory for a context manager the job runs in (the
        Flask app context for the real server).
    """

    def __init__(
        self,
        publish: Callable[[str], Any],
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self._publish = publish
        self._context = context
        self._progress = gevent.event.Event()
        self._job: gevent.Greenlet | None = None
        self._finishing = False
        self.seq = 0
        self.acked = 0
        self.state = "idle"
        self.started_at = 0.0
        self.finished_at = 0.0
        self.first = 0
        self.last = 0

    def start(self, n: int, *, rate: float = 0.0, size: int = 64, lead: int = 0) -> dict[str, Any]:
        """Start publishing events ``seq + 1 .. seq + n``; return their range."""
        self.stop()
        self.first = self.seq + 1
        self.last = self.seq + n
        self.acked = max(self.acked, self.seq)
        self.state = "running"
        self.started_at = time.time()
        self.finished_at = 0.0
        self._finishing = False
        self._job = gevent.spawn(self._run, n, rate, size, lead)
        return {"first": self.first, "last": self.last}

    def reserve(self, n: int) -> range:
        """Sequence numbers for ``n`` events published outside a job (``/bench/burst``)."""
        first = self.seq + 1
        self.seq += n
        return range(first, first + n)

    def progress(self, acked: int) -> None:
        if acked > self.acked:
            self.acked = acked
            self._progress.set()

    def stop(self) -> None:
        """Kill the running job, wherever it is."""
        if self._job is not None:
            self._job.kill(block=True, timeout=5)
            self._job = None

    def finish(self) -> dict[str, Any]:
        """End the running job between two events; its status (``seq``: the last one)."""
        job = self._job
        if job is not None:
            self._finishing = True
            self._progress.set()
            job.join(timeout=5)
            if not job.dead:
                job.kill(block=True, timeout=5)
            self._job = None
        return self.status()

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "seq": self.seq,
            "acked": self.acked,
            "first": self.first,
            "last": self.last,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    def _run(self, n: int, rate: float, size: int, lead: int) -> None:
        publish = self._publish
        begin = time.monotonic()
        try:
            with self._context():
                for i in range(n):
                    seq = self.seq + 1
                    if lead and seq - self.acked > lead and not self._wait_for_progress(seq - lead):
                        self.state = "stalled"
                        return
                    if rate:
                        delay = begin + i / rate - time.monotonic()
                        if delay > 0:
                            gevent.sleep(delay)
                    if self._finishing:
                        break
                    publish(event_data(seq, size))
                    self.seq = seq
            self.state = "done"
        except gevent.GreenletExit:
            self.state = "stopped"
            raise
        except Exception as exc:
            self.state = f"failed: {exc!r}"
            raise
        finally:
            self.finished_at = time.time()

    def _wait_for_progress(self, needed: int) -> bool:
        deadline = time.monotonic() + STALL_SECONDS
        while self.acked < needed and not self._finishing:
            self._progress.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._progress.wait(remaining):
                return self.acked >= needed or self._finishing
        return True
