"""Server-sent events and their encoding to bytes.

Pure code: nothing here does I/O. The encoding follows the WHATWG HTML
standard, section "Server-sent events" (the ``text/event-stream`` format):

* ``data`` is split into ``data:`` lines on CRLF, CR and LF only (never
  :meth:`str.splitlines`, which also splits on form feeds, U+2028 and friends
  that the format treats as ordinary characters); empty and trailing lines are
  kept, so ``"a\\n"`` round-trips as ``"a\\n"``.
* ``id`` and ``event`` must not contain CR, LF or NUL: a parser would cut the
  line short (and ignore an ``id`` with NUL), so such values are refused here,
  at the call site, instead of being mangled on the wire.
* ``id=0`` and ``data=""`` are real values; only ``None`` means "absent".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHANNEL_RULE",
    "HEARTBEAT_COMMENT",
    "INTERVAL_COMMENT",
    "SUBSCRIBED_COMMENT",
    "Event",
    "channel_problem",
    "check_channel",
    "encode_comment",
    "to_event",
]

#: What a channel name may be: 1 to 128 of ``A-Z a-z 0-9 _ - . : @``.
CHANNEL_RULE = "1-128 characters from A-Z a-z 0-9 _ - . : @"
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_\-.:@]{1,128}")

# The comments a flask-sse-keepalive server speaks in (clients react to them).
#: Written after a silence of the stream's heartbeat interval.
HEARTBEAT_COMMENT = "heartbeat"
#: In the first bytes: ``INTERVAL_COMMENT + "15"`` announces the interval kept.
INTERVAL_COMMENT = "sse-keepalive heartbeat-interval="
#: Once the stream is subscribed (and any replay or reset delivered).
SUBSCRIBED_COMMENT = "sse-keepalive subscribed"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _split_lines(text: str) -> list[str]:
    if "\n" not in text and "\r" not in text:
        return [text]
    return _LINE_BREAK.split(text)


@dataclass(frozen=True)
class Event:
    """One server-sent event.

    :param data: the payload. A ``str`` is sent as it is; anything else is
        JSON-encoded once (compact, UTF-8). ``None`` sends no ``data:`` line
        (a browser then dispatches nothing, which suits a comment or a
        ``retry`` change).
    :param event: the event type (``addEventListener(type, ...)`` in the
        browser); ``None`` means the default type ``message``.
    :param id: the event id; the browser echoes the last one it saw in the
        ``Last-Event-ID`` header when it reconnects. An ``int`` is turned into
        its decimal string. Events published through :meth:`SSE.publish`
        get their id from the broker and must not set one.
    :param retry: reconnection delay in milliseconds, a non-negative ``int``.
    :param comment: a comment, invisible to ``EventSource``; may span lines.
    :raises ValueError: if ``id`` or ``event`` contains CR, LF or NUL, or
        ``retry`` is not a non-negative integer.
    :raises TypeError: if ``data`` is neither ``str`` nor JSON-encodable.
    """

    data: Any = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.id, int) and not isinstance(self.id, bool):
            object.__setattr__(self, "id", str(self.id))
        for name in ("id", "event"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"Event {name} must be a str, got {type(value).__name__}")
            if _FORBIDDEN_IN_FIELD.search(value):
                raise ValueError(f"Event {name} must not contain CR, LF or NUL: {value!r}")
        if self.retry is not None and (
            not isinstance(self.retry, int) or isinstance(self.retry, bool) or self.retry < 0
        ):
            raise ValueError(f"Event retry must be a non-negative int, got {self.retry!r}")
        if self.comment is not None and not isinstance(self.comment, str):
            raise TypeError("Event comment must be a str")
        if self.data is not None and not isinstance(self.data, str):
            # Encode now so that bad data fails where the event is made.
            object.__setattr__(self, "data", _json(self.data))

    def with_id(self, event_id: str) -> Event:
        """This event with the id a broker gave it."""
        return Event(data=self.data, event=self.event, id=event_id, retry=self.retry)

    def encode(self) -> bytes:
        """The event as ``text/event-stream`` bytes, ending in a blank line."""
        parts: list[str] = []
        if self.comment is not None:
            parts.extend(f": {line}\n" for line in _split_lines(self.comment))
        if self.event is not None:
            parts.append(f"event: {self.event}\n")
        if self.data is not None:
            parts.extend(f"data: {line}\n" for line in _split_lines(self.data))
        if self.id is not None:
            parts.append(f"id: {self.id}\n")
        if self.retry is not None:
            parts.append(f"retry: {self.retry}\n")
        parts.append("\n")
        return "".join(parts).encode("utf-8")


def channel_problem(name: object) -> str | None:
    """Why ``name`` is not a valid channel name, or ``None`` if it is."""
    if isinstance(name, str) and _CHANNEL_NAME.fullmatch(name):
        return None
    shown = name[:140] if isinstance(name, str) else name
    return f"invalid channel name {shown!r}: use {CHANNEL_RULE}"


def check_channel(name: str) -> str:
    """``name`` if it is a valid channel name.

    :raises ValueError: saying what a channel name may be.
    """
    problem = channel_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def encode_comment(text: str) -> bytes:
    """A comment block (``: text``) as bytes: ignored by clients, seen by proxies."""
    return Event(comment=text).encode()


def to_event(item: Any) -> Event:
    """Coerce what an ``@sse_stream`` generator yields into an :class:`Event`.

    An :class:`Event` passes through, a ``str`` becomes its data, and any other
    value is JSON-encoded as the data.
    """
    if isinstance(item, Event):
        return item
    return Event(data=item)
