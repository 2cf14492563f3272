"""The encoder: golden tables, refusals, and a round trip through a WHATWG parser."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_sse_keepalive import Event
from flask_sse_keepalive.event import encode_comment, to_event
from tests.wire import Parser

GOLDEN = [
    (Event(data="a"), b"data: a\n\n"),
    (Event(data="a\nb"), b"data: a\ndata: b\n\n"),
    (Event(data="a\r\nb\rc"), b"data: a\ndata: b\ndata: c\n\n"),
    (Event(data=""), b"data: \n\n"),
    (Event(data="a\n"), b"data: a\ndata: \n\n"),
    (Event(data="\n"), b"data: \ndata: \n\n"),
    (Event(data=" lead"), b"data:  lead\n\n"),
    (Event(data="form\x0cfeed\u2028sep"), "data: form\x0cfeed\u2028sep\n\n".encode()),
    (Event(data="x", id=0), b"data: x\nid: 0\n\n"),
    (Event(data="x", id=""), b"data: x\nid: \n\n"),
    (
        Event(data="x", event="tick", id="e-1", retry=0),
        b"event: tick\ndata: x\nid: e-1\nretry: 0\n\n",
    ),
    (Event(data={"a": [1, 2], "b": "é"}), 'data: {"a":[1,2],"b":"é"}\n\n'.encode()),
    (Event(data=0), b"data: 0\n\n"),
    (Event(data=None, retry=5), b"retry: 5\n\n"),
    (Event(comment="hi"), b": hi\n\n"),
    (Event(comment="two\nlines", data="d"), b": two\n: lines\ndata: d\n\n"),
]


@pytest.mark.parametrize(("event", "wire"), GOLDEN)
def test_golden(event: Event, wire: bytes) -> None:
    assert event.encode() == wire


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
@pytest.mark.parametrize("field", ["id", "event"])
def test_line_breaks_and_nul_are_refused_in_id_and_event(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match=field):
        Event(data="x", **{field: bad})


@pytest.mark.parametrize("retry", [-1, 1.5, "10", True])
def test_retry_must_be_a_non_negative_int(retry: object) -> None:
    with pytest.raises(ValueError, match="retry"):
        Event(data="x", retry=retry)  # type: ignore[arg-type]


def test_data_that_json_cannot_encode_fails_where_the_event_is_made() -> None:
    with pytest.raises(TypeError):
        Event(data=object())


def test_json_data_is_encoded_once() -> None:
    event = Event(data={"k": 1})
    assert event.data == '{"k":1}'
    assert Event(data=event.data).encode() == event.encode()


def test_comment_helper_and_coercion() -> None:
    assert encode_comment("heartbeat") == b": heartbeat\n\n"
    assert to_event("s") == Event(data="s")
    assert to_event([1]) == Event(data="[1]")
    same = Event(data="x")
    assert to_event(same) is same


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
field_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=20
)


@given(data=text, event=st.none() | field_text.filter(bool), event_id=st.none() | field_text)
def test_round_trip_through_a_whatwg_parser(
    data: str, event: str | None, event_id: str | None
) -> None:
    parser = Parser()
    wire = Event(data=data, event=event, id=event_id).encode()
    # Feed byte by byte too: line ends split across reads must not matter.
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
    assert len(parser.events) == 1
    got = parser.events[0]
    # The format has one line break: CRLF and CR in the data arrive as LF.
    assert got.data == re.sub(r"\r\n|\r", "\n", data)
    assert got.type == (event or "message")
    assert got.last_event_id == (event_id or "")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | text, lambda c: st.lists(c, max_size=3)
    )
)
def test_json_round_trip(value: object) -> None:
    if value is None or isinstance(value, str):
        return  # None means "no data field", and a str is sent as it is
    parser = Parser()
    parser.feed(Event(data=value).encode())
    assert json.loads(parser.events[0].data) == value
