"""When each stream's heartbeat is due: one clock per event loop for all of them.

A timer per stream wakes the event loop once per heartbeat, each at its own
moment: 19,000 streams at a 15 s interval are 1,300 turns of the loop a
second, and a turn (waiting on the poller, running the loop's watchers) costs
more than the heartbeat's write. Here heartbeats fall due on a grid of
:data:`GRID` seconds, and one repeating timer serves each slot of the grid in
one turn. A beat lands in the slot nearest its due time: on average on time,
at most half a slot early or late (plus the loop's own delay).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any

__all__ = ["GRID", "HeartbeatClock", "clock_for"]

log = logging.getLogger("flask_sse_keepalive")

#: The grid's step (s): twice how far from its due time a heartbeat may be,
#: and how often the clock ticks while any heartbeat is due.
GRID = 0.05

Beat = Callable[[], None]


class HeartbeatClock:
    """The heartbeats due on one event loop, by slot of the grid.

    :param loop: the gevent loop whose hub runs the beats.
    """

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        #: slot number -> the beats due in it (a dict: cancelling is O(1))
        self._slots: dict[int, dict[Beat, None]] = {}
        self._served = 0  # the last slot served
        #: while a slot is served, its time on the grid: beats scheduled from
        #: it count from there, so that a tick's own delay never adds up
        self._slot_time: float | None = None
        self._timer: Any = None

    def schedule(self, beat: Beat, delay: float) -> int:
        """Call ``beat`` (in the hub) once, in the slot nearest ``delay``
        seconds from now (never the slot being served); return the slot, for
        :meth:`cancel`."""
        now = _monotonic() if self._slot_time is None else self._slot_time
        if self._timer is None:
            self._served = math.floor(now / GRID)
            self._start_timer()
        slot = max(round((now + delay) / GRID), self._served + 1)
        beats = self._slots.get(slot)
        if beats is None:
            beats = self._slots[slot] = {}
        beats[beat] = None
        return slot

    def _start_timer(self) -> None:
        """Tick on the grid's lines, so that a slot is served as it begins."""
        # The loop's clock, which its timers count from, is as old as the
        # loop's last turn: bring it to now first.
        self._loop.update_now()
        now = _monotonic()
        self._timer = self._loop.timer((math.floor(now / GRID) + 1) * GRID - now, GRID)
        self._timer.start(self._tick)

    def cancel(self, beat: Beat, slot: int) -> None:
        """Forget ``beat``, scheduled in ``slot``."""
        beats = self._slots.get(slot)
        if beats is not None:
            beats.pop(beat, None)
            if not beats:
                del self._slots[slot]

    def _tick(self) -> None:
        # Every slot up to now: a busy loop may have let ticks go by. (The
        # loop's clock may be a hair behind this one: a tick a fifth of a
        # slot early still serves its slot.)
        clock = _monotonic() / GRID
        now = math.floor(clock + 0.2)
        slot = self._served
        try:
            while slot < now:
                slot += 1
                self._served = slot  # what its beats schedule goes later
                beats = self._slots.pop(slot, None)
                if beats is None:
                    continue
                self._slot_time = slot * GRID
                for beat in beats:
                    try:
                        beat()
                    except Exception:
                        # One stream's bug must not cost the others their heartbeats.
                        log.exception("a heartbeat failed")
        finally:
            self._slot_time = None
        if not self._slots:
            self._timer.close()
            self._timer = None
        elif abs(clock - round(clock)) > 0.2:
            # Off the grid's lines (a turn of the loop that took long when
            # the timer was set): set it again, or every slot comes late.
            self._timer.close()
            self._start_timer()


#: one clock per event loop (by the loop's id: gevent runs one loop per thread)
_clocks: dict[int, HeartbeatClock] = {}


def clock_for(loop: Any) -> HeartbeatClock:
    """The heartbeat clock of ``loop``."""
    clock = _clocks.get(id(loop))
    if clock is None:
        clock = _clocks[id(loop)] = HeartbeatClock(loop)
    return clock


def _forget_after_fork() -> None:
    # The parent's streams, and its clocks' timers, are not the child's.
    _clocks.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
