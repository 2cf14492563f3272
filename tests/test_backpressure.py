"""``@sse_stream`` flow control on a real ``gunicorn -k gevent`` worker: a
generator that yields fast is held back while its client reads slowly (and
loses nothing), and is dropped as ``slow`` once the client stops reading."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.slow import BUFFER, SlowReader
from tests.test_streams import wait_until

APP = "tests.apps.producer_app:app"
#: Bytes of padding per event (an event is about 1 KB on the wire).
SIZE = 1000


@pytest.fixture(autouse=True)
def _close_readers() -> Iterator[None]:
    yield
    SlowReader.close_all()


def progress(server, key: str) -> dict:
    return httpx.get(f"{server.url}/control/progress?key={key}", timeout=5).json()


def disconnects(server) -> list[dict]:
    return httpx.get(f"{server.url}/control/log", timeout=5).json()


@pytest.mark.parametrize("direct_write", ["true", "false"])
def test_a_fast_generator_is_held_to_a_slow_reader_and_loses_nothing(
    gunicorn, direct_write
) -> None:
    queue_size = 20
    server = gunicorn(
        APP,
        env={
            "SSE_QUEUE_SIZE": str(queue_size),
            "SSE_DIRECT_WRITE": direct_write,
            "SSE_HEARTBEAT_INTERVAL": "30",
        },
    )
    count = 400
    reader = SlowReader(server.port, f"/produce?key=k&count={count}&size={SIZE}&sndbuf={BUFFER}")
    # What may be ahead of the reader: the queue (the generator waits while
    # half of it is in use; the other half may be in the write under way),
    # what the two kernel buffers hold (about 4 x BUFFER, at about 1 KB per
    # event) and some slack. Unheld, the generator would be 400 ahead at once.
    bound = queue_size + 6 * BUFFER // SIZE
    ahead = []
    next_check = 0.0
    # About 100 KB/s: a tenth of what the generator could produce.
    while len(reader.numbers) < 200:
        assert not reader.ended, f"the stream ended after {len(reader.numbers)} events"
        reader.read(1024)
        time.sleep(0.01)
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 0.2
            ahead.append(progress(server, "k")["produced"] - len(reader.numbers))
    assert len(ahead) >= 5, "the reader was not slow: the check saw too little"
    assert max(ahead) <= bound, f"the generator ran ahead of the reader: {ahead}"
    assert progress(server, "k")["closed"] is None
    deadline = time.monotonic() + 20
    while not reader.ended:
        assert time.monotonic() < deadline, f"the stream did not end: {len(reader.numbers)}"
        reader.read(1 << 16)
    # Nothing lost, nothing out of order, and the generator ended the stream.
    assert reader.numbers == list(range(1, count + 1))
    assert [e.last_event_id for e in reader.parser.events][-1] == str(count)
    wait_until(lambda: disconnects(server), 5, "the disconnect signal")
    assert [entry["reason"] for entry in disconnects(server)] == ["server"]
    stats = httpx.get(f"{server.url}/control/stats", timeout=5).json()
    assert stats["slow"] == 0


@pytest.mark.parametrize("direct_write", ["true", "false"])
def test_a_reader_that_stops_is_dropped_as_slow_after_the_send_timeout(
    gunicorn, direct_write
) -> None:
    send_timeout = 1.5
    server = gunicorn(
        APP,
        env={
            "SSE_QUEUE_SIZE": "20",
            "SSE_SEND_TIMEOUT": str(send_timeout),
            "SSE_DIRECT_WRITE": direct_write,
            "SSE_HEARTBEAT_INTERVAL": "30",
        },
    )
    reader = SlowReader(server.port, f"/produce?key=s&count=100000&size={SIZE}&sndbuf={BUFFER}")
    while len(reader.numbers) < 50:
        assert not reader.ended, f"the stream ended after {len(reader.numbers)} events"
        reader.read(4096)
    stopped = reader.last_read  # from here on the client reads nothing
    wait_until(lambda: disconnects(server), send_timeout + 10, "the slow client to be dropped")
    (dropped,) = disconnects(server)
    assert dropped["reason"] == "slow"
    # Not before the send timeout: a full socket is waited on that long.
    waited = dropped["time"] - stopped
    assert send_timeout - 0.1 <= waited <= send_timeout + 5, waited
    # The generator was held, not run to its end, and then closed.
    state = progress(server, "s")
    assert state["produced"] < 1000, state
    wait_until(lambda: progress(server, "s")["closed"] is not None, 5, "the generator's finally")
    stats = httpx.get(f"{server.url}/control/stats", timeout=5).json()
    assert stats["slow"] == 1
    assert stats["connections"] == 0
