"""The client's ``text/event-stream`` parser, in Chromium, against fixed bytes.

Each case is run four ways and must give the expected events every time:

* the parser fed the whole stream, byte by byte, and split in two at every
  offset (so CR|LF, a BOM and multi-byte characters straddle chunk borders);
* the full client reading a ``fetch`` body served by ``page.route``;
* the full client reading a ``ReadableStream`` that yields one byte per read;
* Chromium's own ``EventSource`` on the same bytes, as the reference.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from .helpers import FAKE_ORIGIN


class Case(NamedTuple):
    name: str
    stream: bytes
    #: (type, data, lastEventId) per dispatched event
    events: list[tuple[str, str, str]]
    comments: tuple[str, ...] = ()
    retries: tuple[int, ...] = ()
    #: the source's last event ID when the stream ends
    last_id: str | None = None


CASES = [
    Case("lf", b"data: a\n\n", [("message", "a", "")]),
    Case("crlf", b"data: a\r\n\r\n", [("message", "a", "")]),
    Case("cr", b"data: a\r\rdata: b\r\r", [("message", "a", ""), ("message", "b", "")]),
    Case("mixed-line-ends", b"data: a\r\ndata: b\rdata: c\n\n", [("message", "a\nb\nc", "")]),
    Case("cr-lf-pairs-are-one-break", b"data: a\r\ndata: b\r\n\r\n", [("message", "a\nb", "")]),
    Case("bom-stripped", b"\xef\xbb\xbfdata: a\n\n", [("message", "a", "")]),
    # Only one BOM is stripped: the second one makes the field name "\ufeffdata".
    Case(
        "second-bom-kept",
        b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
        [("message", "b", "")],
    ),
    Case("bom-not-at-start", "data: a\n\n\ufeffdata: b\n\n".encode(), [("message", "a", "")]),
    Case(
        "id-with-nul-ignored",
        b"id: 1\ndata: x\n\nid: 2\x00\ndata: y\n\n",
        [("message", "x", "1"), ("message", "y", "1")],
        last_id="1",
    ),
    Case(
        "empty-id-resets",
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [("message", "a", "1"), ("message", "b", "")],
        last_id="",
    ),
    Case("id-keeps-extra-spaces", b"id:  5\ndata: a\n\n", [("message", "a", " 5")], last_id=" 5"),
    Case(
        "id-without-data-still-sets-last-id",
        b"id: 3\n\n",
        [],
        last_id="3",
    ),
    Case(
        "id-persists-across-events",
        b"id: 7\ndata: a\n\ndata: b\n\n",
        [("message", "a", "7"), ("message", "b", "7")],
        last_id="7",
    ),
    Case(
        "retry-only-ascii-digits",
        b"retry: 1500\nretry: 15x\nretry: -1\nretry:  20\nretry\nretry: \xd9\xa3\nretry:0\n\n",
        [],
        retries=(1500, 0),
    ),
    Case(
        "one-leading-space-stripped",
        b"data:  two\n\ndata:none\n\n",
        [("message", " two", ""), ("message", "none", "")],
    ),
    Case("colon-in-value", b"data: a:b: c\n\n", [("message", "a:b: c", "")]),
    Case("trailing-lf-removed-once", b"data\ndata\n\n", [("message", "\n", "")]),
    Case("empty-data-line-dispatches-empty", b"data:\n\n", [("message", "", "")]),
    Case("trailing-empty-data-line", b"data: a\ndata:\n\n", [("message", "a\n", "")]),
    Case("no-data-no-dispatch", b"event: x\n\n\n\n", []),
    Case(
        "type-default-and-reset",
        b"event: add\ndata: 1\n\ndata: 2\n\nevent\ndata: 3\n\n",
        [("add", "1", ""), ("message", "2", ""), ("message", "3", "")],
    ),
    Case("type-keeps-extra-space", b"event:  add\ndata: 1\n\n", [(" add", "1", "")]),
    Case("field-without-colon", b"data\n\n", [("message", "", "")]),
    Case(
        "comments",
        b": hello\n:world\n:\ndata: a\n: between\ndata: b\n\n",
        [("message", "a\nb", "")],
        comments=("hello", "world", "", "between"),
    ),
    Case("unknown-field-ignored", b"foo: bar\nDATA: x\ndata: a\n\n", [("message", "a", "")]),
    Case("incomplete-event-discarded", b"data: a\n\ndata: b\n", [("message", "a", "")]),
    Case("unterminated-line-discarded", b"data: a\n\ndata: b", [("message", "a", "")]),
    Case("utf8-multibyte", "data: é€😀\n\n".encode(), [("message", "é€😀", "")]),
    Case("invalid-utf8-replaced", b"data: \xff\xfe\n\n", [("message", "\ufffd\ufffd", "")]),
    Case("nul-in-data-kept", b"data: a\x00b\n\n", [("message", "a\x00b", "")]),
    Case(
        "flask-sse-keepalive-preamble",
        b"retry: 3000\n: sse-keepalive heartbeat-interval=15\n\n: heartbeat\n\n"
        b'id: e1-1\nevent: tick\ndata: {"n":1}\n\n',
        [("tick", '{"n":1}', "e1-1")],
        comments=("sse-keepalive heartbeat-interval=15", "heartbeat"),
        retries=(3000,),
        last_id="e1-1",
    ),
]


PARSE_IN_PAGE = """
(input) => {
  const bytes = new Uint8Array(input.bytes);
  function run(chunks) {
    const out = {events: [], comments: [], retries: [], lastEventId: ""};
    const parser = new SSEKeepalive.EventStreamParser({
      onEvent: (type, data, id) => out.events.push([type, data, id]),
      onComment: (text) => out.comments.push(text),
      onRetry: (ms) => out.retries.push(ms),
      onLastEventId: (id) => { out.lastEventId = id; },
    });
    for (const chunk of chunks) parser.feed(chunk);
    parser.end();
    return out;
  }
  const whole = run([bytes]);
  const expected = JSON.stringify(whole);
  const bytewise = run(Array.from(bytes, (b) => new Uint8Array([b])));
  let badSplit = -1;
  for (let i = 1; i < bytes.length && badSplit < 0; i++) {
    const split = run([bytes.subarray(0, i), bytes.subarray(i)]);
    if (JSON.stringify(split) !== expected) badSplit = i;
  }
  return {whole, bytewise, badSplit};
}
"""

# The full client: collect events of the given types until the stream ends.
CLIENT_IN_PAGE = """
async (input) => {
  const bytes = new Uint8Array(input.bytes);
  const options = {retry: 60000};
  if (input.bytewise) {
    // One byte per read, so every line break straddles a read.
    options.fetch = async () => {
      let i = 0;
      const body = new ReadableStream({
        pull(controller) {
          if (i < bytes.length) controller.enqueue(bytes.slice(i, ++i));
          else controller.close();
        },
      });
      return new Response(body, {headers: {"Content-Type": "text/event-stream"}});
    };
  }
  const client = new SSEKeepalive(input.url, options);
  const events = [];
  for (const type of input.types) {
    client.addEventListener(type, (e) => events.push([e.type, e.data, e.lastEventId]));
  }
  const comments = [];
  return await new Promise((resolve) => {
    const timer = setTimeout(() => { client.close(); resolve({timeout: true}); }, 10000);
    client.addEventListener("error", (e) => {
      clearTimeout(timer);
      client.close();
      resolve({events, reason: e.reason, lastEventId: client.lastEventId, retry: client.retry});
    });
  });
}
"""

NATIVE_IN_PAGE = """
async (input) => {
  const source = new EventSource(input.url);
  const events = [];
  for (const type of input.types) {
    source.addEventListener(type, (e) => events.push([e.type, e.data, e.lastEventId]));
  }
  return await new Promise((resolve) => {
    const timer = setTimeout(() => { source.close(); resolve({timeout: true}); }, 10000);
    source.onerror = () => { clearTimeout(timer); source.close(); resolve({events}); };
  });
}
"""


def _types(case: Case) -> list[str]:
    return sorted({"message", *(event[0] for event in case.events)})


def _as_lists(events: list[tuple[str, str, str]]) -> list[list[str]]:
    return [list(event) for event in events]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_parser_chunkings(static_site: Any, case: Case) -> None:
    result = static_site.page.evaluate(PARSE_IN_PAGE, {"bytes": list(case.stream)})
    whole = result["whole"]
    assert whole["events"] == _as_lists(case.events)
    assert whole["comments"] == list(case.comments)
    assert whole["retries"] == list(case.retries)
    if case.last_id is not None:
        assert whole["lastEventId"] == case.last_id
    assert result["bytewise"] == whole, "feeding byte by byte changed the result"
    assert result["badSplit"] == -1, f"splitting at byte {result['badSplit']} changed the result"


@pytest.mark.parametrize("bytewise", [False, True], ids=["fetch", "one-byte-reads"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_client_and_native_eventsource_agree(static_site: Any, case: Case, bytewise: bool) -> None:
    path = f"/case/{case.name}"
    static_site.bodies[path] = case.stream
    args = {"url": FAKE_ORIGIN + path, "bytes": list(case.stream), "types": _types(case)}
    ours = static_site.page.evaluate(CLIENT_IN_PAGE, {**args, "bytewise": bytewise})
    assert not ours.get("timeout"), "the client saw no end of stream within 10 s"
    assert ours["reason"] == "eof"
    assert ours["events"] == _as_lists(case.events)
    if case.last_id is not None:
        assert ours["lastEventId"] == case.last_id
    if case.retries:
        assert ours["retry"] == case.retries[-1]
    if not bytewise:
        native = static_site.page.evaluate(NATIVE_IN_PAGE, args)
        assert not native.get("timeout"), "EventSource saw no end of stream within 10 s"
        assert native["events"] == ours["events"], "Chromium's EventSource disagrees"
