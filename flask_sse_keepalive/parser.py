"""The ``text/event-stream`` parser: bytes in, what a client dispatches out.

Written from the HTML standard, "Server-sent events", sections "Parsing an
event stream" and "Interpreting an event stream", and kept in step with the
browser client's ``EventStreamParser`` (``static/sse-keepalive.js``). Pure: no
I/O, no clock. The Python client reads every connection with it, and so can
anything else in the package that reads a stream.

It is a push parser: :meth:`EventStreamParser.feed` takes bytes in chunks of
any size (a CRLF, a BOM or a multi-byte character may straddle two chunks)
and returns what those bytes completed, in stream order: events, comments and
``retry`` values. :meth:`EventStreamParser.end` marks the end of one
connection's stream.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any, TypeAlias

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """An event as a client dispatches it: what ``EventSource`` shows a page.

    :param id: the last event ID when the event was dispatched (``""`` if the
        stream never set one); an event without an ``id`` field carries the
        previous one, as ``MessageEvent.lastEventId`` does.
    :param event: the event type, ``"message"`` unless the stream named one.
    :param data: the data lines joined with ``"\\n"``.
    """

    id: str
    event: str
    data: str

    def json(self) -> Any:
        """The data parsed as JSON (raises :class:`ValueError` if it is not JSON)."""
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line: the text after ``:``, without one leading space.

    flask-sse-keepalive servers speak in comments: ``heartbeat``,
    ``sse-keepalive heartbeat-interval=15``, ``sse-keepalive subscribed``,
    ``shutdown``.
    """

    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    """A valid ``retry`` field: the stream's reconnection time, in milliseconds."""

    milliseconds: int


#: What :meth:`EventStreamParser.feed` returns, item by item.
Parsed: TypeAlias = ClientEvent | Comment | Retry


class EventStreamParser:
    """Parse one event source's streams, connection after connection.

    :param last_event_id: seeds the last event ID. The standard starts every
        stream from ``""``; browsers (Chromium, Firefox) start a reconnection
        from the source's last event ID instead, so that an event without an
        ``id`` after a reconnect does not erase the resume point. This parser
        does as browsers do: give it the id to resume from, and after
        :meth:`end` the next stream continues from where this one left off.

    Not thread-safe: one reader feeds it.
    """

    __slots__ = (
        "_data",
        "_decoder",
        "_id_buffer",
        "_last_event_id",
        "_pending",
        "_skip_lf",
        "_started",
        "_type",
    )

    def __init__(self, last_event_id: str = "") -> None:
        self._last_event_id = last_event_id
        self._id_buffer = last_event_id
        self._reset_stream()

    @property
    def last_event_id(self) -> str:
        """The source's last event ID: the ``id`` buffer as of the last blank
        line, which is where a reconnection resumes (``""``: nowhere)."""
        return self._last_event_id

    def feed(self, chunk: bytes) -> list[Parsed]:
        """Take the next bytes of the stream; return what they completed."""
        out: list[Parsed] = []
        self._text(self._decoder.decode(chunk), out)
        return out

    def end(self) -> list[Parsed]:
        """The stream ended: an event without its blank line is discarded.

        The parser is then ready for the next connection's stream (a new
        BOM, a new decoder), with the last event ID carried over.
        """
        out: list[Parsed] = []
        self._text(self._decoder.decode(b"", final=True), out)
        self._id_buffer = self._last_event_id
        self._reset_stream()
        return out

    def _reset_stream(self) -> None:
        # Invalid UTF-8 becomes U+FFFD, as the standard's "UTF-8 decode".
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # the first character (a possible BOM) was seen
        self._pending: list[str] = []  # the start of an incomplete line
        self._skip_lf = False  # the last chunk ended with CR: drop a leading LF
        self._data: list[str] = []  # the data lines; empty means "no data field"
        self._type = ""

    def _text(self, text: str, out: list[Parsed]) -> None:
        if not text:
            return
        if not self._started:
            self._started = True
            if text[0] == _BOM:
                text = text[1:]
                if not text:
                    return
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return
        lines = _LINE_BREAK.split(text)
        if len(lines) == 1:
            # No line break yet: only the new text is ever scanned, so a long
            # line arriving in many chunks costs linear time.
            self._pending.append(text)
            return
        first = lines[0]
        if self._pending:
            first = "".join(self._pending) + first
            self._pending = []
        self._line(first, out)
        for line in lines[1:-1]:
            self._line(line, out)
        rest = lines[-1]
        if rest:
            self._pending.append(rest)
        elif text[-1] == "\r":
            # The line is complete, but a LF at the start of the next chunk
            # belongs to this line break.
            self._skip_lf = True

    def _line(self, line: str, out: list[Parsed]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            out.append(Comment(line[2:] if line.startswith(": ") else line[1:]))
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._type = value
        elif field == "id" and "\x00" not in value:
            self._id_buffer = value
        elif field == "retry" and value.isascii() and value.isdigit():
            # ASCII digits only: str.isdigit alone would take "٣" or "²".
            out.append(Retry(int(value)))
        # Any other field (and an id with NUL) is ignored.

    def _dispatch(self, out: list[Parsed]) -> None:
        self._last_event_id = self._id_buffer
        data, event_type = self._data, self._type
        self._data = []
        self._type = ""
        if data:
            out.append(ClientEvent(self._last_event_id, event_type or "message", "\n".join(data)))
