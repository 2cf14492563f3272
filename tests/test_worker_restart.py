"""Resume across a restart of a memory-broker worker: the new worker's broker
has a new epoch, so an id from the old one gets ``stream-reset`` with reason
``unknown-epoch`` (never a silent gap), and the stream is live from there."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.test_hardening import worker_pids
from tests.test_streams import publish, stats, wait_until
from tests.wire import RawStream

APP = "tests.apps.basic:app"


def open_on_new_worker(server, old_worker: int, headers: dict[str, str]) -> RawStream:
    """A stream on the replacement worker (the old one may still answer ``503``
    until it has closed its listener)."""
    wait_until(lambda: old_worker not in worker_pids(server.pid), 10, "the old worker to exit")
    wait_until(lambda: worker_pids(server.pid), 10, "a replacement worker")
    deadline = time.monotonic() + 10
    while (stream := RawStream(server.port, "/stream?channel=a", headers)).status == 503:
        assert time.monotonic() < deadline, "no worker accepted the stream"
        time.sleep(0.2)
    assert stream.status == 200
    return stream


@pytest.mark.parametrize("restart", ["hup", "kill"])
def test_an_id_from_before_a_worker_restart_gets_stream_reset(gunicorn, restart) -> None:
    server = gunicorn(APP, env={"SSE_HEARTBEAT_INTERVAL": "30"})
    old_worker = stats(server)["pid"]
    stream = RawStream(server.port, "/stream?channel=a")
    stream.wait_for(lambda s: "sse-keepalive subscribed" in s.parser.comments, 5, "subscribed")
    publish(server, "before", channel="a", count=2)
    stream.wait_for(lambda s: len(s.events) == 2, 5, "two events")
    seen = stream.events[-1].last_event_id  # a real id, as a page would keep it
    if restart == "hup":
        server.proc.send_signal(signal.SIGHUP)  # a reload: gunicorn starts a new worker
    else:
        os.kill(old_worker, signal.SIGKILL)  # a crash: the master replaces it
    stream.close()

    again = open_on_new_worker(server, old_worker, {"Last-Event-ID": seen})
    again.wait_for(lambda s: s.events, 5, "the first event after the restart")
    reset = again.events[0]
    assert reset.type == "stream-reset"
    assert json.loads(reset.data) == {"reason": "unknown-epoch", "last_event_id": seen}
    old_epoch, new_epoch = seen.rsplit("-", 1)[0], reset.last_event_id.rsplit("-", 1)[0]
    assert new_epoch != old_epoch
    assert stats(server)["pid"] != old_worker
    # Live from the reset's position: no replay, nothing from before.
    (live,) = publish(server, "after", channel="a")
    again.wait_for(lambda s: len(s.events) == 2, 5, "a live event after the reset")
    assert [(e.type, e.data) for e in again.events] == [
        ("stream-reset", reset.data),
        ("message", "after"),
    ]
    assert again.events[1].last_event_id == live
    # The reset's id is a position in the new history: resuming from it is gap-free.
    again.close()
    resumed = RawStream(server.port, "/stream?channel=a", {"Last-Event-ID": reset.last_event_id})
    resumed.wait_for(lambda s: s.events, 5, "the replay after the reset's id")
    assert [(e.type, e.data) for e in resumed.events] == [("message", "after")]
