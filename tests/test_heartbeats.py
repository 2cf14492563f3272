"""The heartbeat clock, in process on gevent's own loop: beats due close
together are served in one turn, each within half a slot of its due time,
none lost, a cancelled one never."""

from __future__ import annotations

import itertools
import time

import gevent

from flask_sse_keepalive.heartbeats import GRID, HeartbeatClock


def test_beats_due_close_together_are_served_together_and_on_time() -> None:
    clock = HeartbeatClock(gevent.get_hub().loop)
    start = time.monotonic()
    fired: list[tuple[int, float]] = []
    for n in range(20):
        # Due 2 ms apart over 40 ms: a timer each would fire 20 times, 2 ms apart.
        clock.schedule(lambda n=n: fired.append((n, time.monotonic())), 0.2 + n * 0.002)
    gevent.sleep(0.2 + 3 * GRID)
    assert sorted(n for n, _ in fired) == list(range(20))
    times = [t for _, t in fired]
    for n, fired_at in fired:
        due = start + 0.2 + n * 0.002
        # Half a slot either way, and the loop's own delay on the late side.
        assert due - GRID / 2 - 0.002 <= fired_at <= due + GRID / 2 + 0.02, (n, fired_at - due)
    # Served in at most two turns of the loop (the 40 ms may straddle a slot's edge).
    turns = sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(turns) if b - a > 0.001]
    assert len(gaps) <= 1, gaps


def test_a_cancelled_beat_never_comes_and_a_due_one_is_never_lost() -> None:
    clock = HeartbeatClock(gevent.get_hub().loop)
    fired: list[str] = []

    def cancelled() -> None:
        fired.append("cancelled")

    slot = clock.schedule(cancelled, 0.1)
    clock.schedule(lambda: fired.append("now"), 0)  # due at once: the next slot
    clock.cancel(cancelled, slot)
    gevent.sleep(0.1 + 3 * GRID)
    assert fired == ["now"]
    # The control: the same beat, not cancelled, does come.
    clock.schedule(cancelled, 0.05)
    gevent.sleep(0.05 + 3 * GRID)
    assert fired == ["now", "cancelled"]


def test_a_beat_that_fails_costs_the_others_nothing(caplog) -> None:
    clock = HeartbeatClock(gevent.get_hub().loop)
    fired: list[int] = []

    def broken() -> None:
        raise RuntimeError("a bug")

    clock.schedule(broken, 0.05)
    for n in range(3):
        clock.schedule(lambda n=n: fired.append(n), 0.05)
    gevent.sleep(0.05 + 3 * GRID)
    assert sorted(fired) == [0, 1, 2]
    assert "a heartbeat failed" in caplog.text
