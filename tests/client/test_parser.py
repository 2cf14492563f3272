"""The package's ``text/event-stream`` parser, in process.

Every case of the browser client's table (``tests/browser/test_parser.py``,
the same bytes Chromium's own ``EventSource`` is checked against) is fed
whole, byte by byte, and split in two at every offset, so that CR|LF, a BOM
and multi-byte characters straddle chunk borders; each way must give the
expected events, comments, retries and last event ID. Then two properties
on generated input: a generated stream cut at generated points reads as the
same stream fed whole (chunk borders change nothing), and what the package's
encoder writes reads back as the events it encoded. (``tests/wire.py`` wraps
this same parser: there is no second Python parser to compare it with; the
standard's corner cases are the table's, which the browser client meets too.)
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_sse_keepalive import Event
from flask_sse_keepalive.parser import ClientEvent, Comment, EventStreamParser, Parsed, Retry
from tests.browser.test_parser import CASES, Case

MORE_CASES = [
    # CR at the very end of the stream: the line is complete, the event is not.
    Case("cr-at-end", b"data: a\r\rdata: b\r", [("message", "a", "")]),
    Case("lf-after-cr-pair", b"data: a\r\n\n", [("message", "a", "")]),
    Case("cr-cr-lf", b"data: a\r\r\ndata: b\n\n", [("message", "a", ""), ("message", "b", "")]),
    Case("bom-alone", b"\xef\xbb\xbf", []),
    Case("incomplete-utf8-at-end", b"data: a\n\ndata: \xe2\x82", [("message", "a", "")]),
    Case("event-type-without-data-then-data", b"event: x\n\ndata: y\n\n", [("message", "y", "")]),
    Case(
        "stream-reset-as-the-server-sends-it",
        b'event: stream-reset\ndata: {"reason":"evicted","last_event_id":"e1-1"}\nid: e1-900\n\n',
        [("stream-reset", '{"reason":"evicted","last_event_id":"e1-1"}', "e1-900")],
        last_id="e1-900",
    ),
    Case(
        "shutdown-farewell",
        b": shutdown\nretry: 1734\n\n",
        [],
        comments=("shutdown",),
        retries=(1734,),
    ),
]


def run(chunks: list[bytes], seed: str = "") -> dict[str, object]:
    parser = EventStreamParser(seed)
    items: list[Parsed] = []
    for chunk in chunks:
        items += parser.feed(chunk)
    items += parser.end()
    return {
        "events": [(e.event, e.data, e.id) for e in items if isinstance(e, ClientEvent)],
        "comments": tuple(c.text for c in items if isinstance(c, Comment)),
        "retries": tuple(r.milliseconds for r in items if isinstance(r, Retry)),
        "order": [type(item).__name__ for item in items],
        "last_id": parser.last_event_id,
    }


@pytest.mark.parametrize("case", CASES + MORE_CASES, ids=[c.name for c in CASES + MORE_CASES])
def test_every_chunking_gives_the_expected_result(case: Case) -> None:
    whole = run([case.stream])
    assert whole["events"] == case.events
    assert whole["comments"] == case.comments
    assert whole["retries"] == case.retries
    if case.last_id is not None:
        assert whole["last_id"] == case.last_id
    bytewise = run([case.stream[i : i + 1] for i in range(len(case.stream))])
    assert bytewise == whole, "feeding byte by byte changed the result"
    for cut in range(1, len(case.stream)):
        split = run([case.stream[:cut], case.stream[cut:]])
        assert split == whole, f"splitting at byte {cut} changed the result"


def test_the_seed_is_the_last_event_id_until_the_stream_sets_one() -> None:
    result = run([b"data: a\n\nid: 9\ndata: b\n\n"], seed="e1-5")
    assert result["events"] == [("message", "a", "e1-5"), ("message", "b", "9")]
    assert run([b": heartbeat\n\n"], seed="e1-5")["last_id"] == "e1-5"


def test_after_end_the_next_stream_starts_clean_but_keeps_the_last_event_id() -> None:
    parser = EventStreamParser()
    # The first stream ends mid-event, with an id that never reached a blank line.
    assert parser.feed(b"\xef\xbb\xbfid: 1\ndata: a\n\nid: 2\nevent: x\ndata: b") == [
        ClientEvent("1", "message", "a")
    ]
    assert parser.end() == []
    assert parser.last_event_id == "1"
    # The next stream may start with its own BOM; nothing of the cut event survives.
    assert parser.feed(b"\xef\xbb\xbfdata: c\n\n") == [ClientEvent("1", "message", "c")]


def test_a_cr_at_the_end_of_one_stream_does_not_eat_the_next_streams_lf() -> None:
    parser = EventStreamParser()
    parser.feed(b"data: a\r")
    parser.end()
    assert parser.feed(b"\ndata: b\n\n") == [ClientEvent("", "message", "b")]


def test_items_come_in_stream_order() -> None:
    items = EventStreamParser().feed(b"retry: 5\n: one\ndata: a\n\n: two\nretry: 6\n")
    assert items == [Retry(5), Comment("one"), ClientEvent("", "message", "a"), Comment("two"),
                     Retry(6)]  # fmt: skip


def test_a_long_line_in_many_chunks_is_assembled_once() -> None:
    parser = EventStreamParser()
    for _ in range(10_000):
        assert parser.feed(b"data: " if _ == 0 else b"x" * 100) == []
    [event] = parser.feed(b"\n\n")
    assert isinstance(event, ClientEvent)
    assert event.data == "x" * 999_900


def test_json() -> None:
    assert ClientEvent("1", "tick", '{"n": [1, 2]}').json() == {"n": [1, 2]}
    with pytest.raises(ValueError):
        ClientEvent("1", "tick", "not json").json()


# -- properties: chunk borders, and the encoder read back ----------------------

FIELD_LINES = st.one_of(
    st.builds(lambda v: f"data:{v}", st.text(alphabet=" ab:é\x00€", max_size=6)),
    st.builds(lambda v: f"data: {v}", st.text(alphabet="ab ", max_size=4)),
    st.builds(lambda v: f"id:{v}", st.text(alphabet=" 1e-\x00", max_size=4)),
    st.builds(lambda v: f"event: {v}", st.sampled_from(["", "tick", " x"])),
    st.builds(lambda v: f"retry:{v}", st.text(alphabet=" 09x", max_size=4)),
    st.builds(lambda v: f":{v}", st.text(alphabet=" heartbt", max_size=6)),
    st.sampled_from(["", "", "data", "id", "retry", "unknown: x", "\ufeffdata: y"]),
)
STREAMS = st.tuples(
    st.lists(st.tuples(FIELD_LINES, st.sampled_from(["\n", "\r\n", "\r"])), max_size=25),
    st.booleans(),
).map(lambda t: ("\ufeff" if t[1] else "") + "".join(line + end for line, end in t[0]))


@given(STREAMS, st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_however_the_stream_is_cut_it_reads_as_a_whole(text: str, cuts: list[int]) -> None:
    # The corner cases against the standard are the table above (which the
    # browser client's parser meets too); here: chunk boundaries change nothing.
    stream = text.encode()
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert run(chunks) == run([stream])


@given(
    st.lists(
        st.builds(
            Event,
            data=st.one_of(st.text(max_size=20), st.integers()),
            event=st.one_of(st.none(), st.sampled_from(["tick", "stream-reset"])),
            id=st.one_of(st.none(), st.text(alphabet="e0123456789-", min_size=1, max_size=8)),
        ),
        max_size=10,
    ),
    st.integers(min_value=1, max_value=7),
)
def test_reads_back_what_the_encoder_writes(events: list[Event], size: int) -> None:
    stream = b"".join(event.encode() for event in events)
    parsed = run([stream[i : i + size] for i in range(0, len(stream), size)])
    expected, last = [], ""
    for event in events:
        last = event.id if event.id is not None else last
        data = event.data.replace("\r\n", "\n").replace("\r", "\n")
        expected.append((event.event or "message", data, last))
    assert parsed["events"] == expected
