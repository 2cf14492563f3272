"""The broker interface: what a stream needs from an event bus.

A broker assigns ids, keeps a bounded history per channel and hands each
published event, encoded once, to the local subscribers of its channel.

Ids have the form ``{epoch}-{seq}``: ``epoch`` names one life of the history
(a process for the memory broker, a Redis dataset for the Redis broker) and
``seq`` is a counter shared by all channels of that history, so one id is a
position on every channel at once and events of different channels can be
merged in id order. An id whose epoch is not the current one cannot be
resumed without a possible gap, and is answered with ``stream-reset``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

from ..event import Event

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Figures",
    "Message",
    "Presence",
    "Published",
    "ResetReason",
    "ResumeError",
    "Subscriber",
    "format_id",
    "parse_id",
]

#: Why a stream starts with ``stream-reset`` (the ``reason`` in its data):
#: the id is from another life of the history (``unknown-epoch``), does not
#: parse (``unknown-id``), is ahead of the history (``ahead``), fell out of the
#: retained history (``evicted``), or the broker lost or rolled back its
#: history while the stream was open (``broker-reset``).
ResetReason = Literal["unknown-epoch", "unknown-id", "ahead", "evicted", "broker-reset"]


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached (after a short, bounded retry).

    Raised by :meth:`SSE.publish` instead of dropping the event silently.
    """


class Message(NamedTuple):
    """A published event as the broker hands it to subscribers."""

    #: position in the epoch's shared sequence; orders events across channels
    seq: int
    #: the public id, ``{epoch}-{seq}``
    id: str
    channel: str
    #: the event encoded once, with its ``id:`` line; shared by all subscribers
    payload: bytes

    @classmethod
    def of(cls, event: Event, epoch: str, seq: int, channel: str) -> Message:
        """``event`` at position ``seq`` of ``epoch``, encoded with its id."""
        event_id = format_id(epoch, seq)
        return cls(seq, event_id, channel, event.with_id(event_id).encode())


class Published(NamedTuple):
    """Where the broker put a published event."""

    #: the public id, ``{epoch}-{seq}``
    id: str
    #: position in the epoch's shared sequence
    seq: int


class ResumeError(NamedTuple):
    """Why a ``Last-Event-ID`` cannot be resumed without a gap."""

    reason: ResetReason


class Subscriber(Protocol):
    """What a broker needs of a connection (see :class:`~.stream.Connection`)."""

    @property
    def channels(self) -> Sequence[str]:
        """The channels the subscriber listens to."""

    def deliver(self, message: Message) -> None:
        """Take one event; must not block or switch greenlets."""

    def deliver_batch(self, messages: Sequence[Message], payload: bytes) -> None:
        """Take several events of one publish, in seq order, as :meth:`deliver`
        would one by one; ``payload`` is their payloads joined (the same object
        for every subscriber that gets the same events), to write at once."""

    def reset(self, reason: ResetReason, position: str, seq: int) -> None:
        """Start the stream at ``position`` with a ``stream-reset`` event."""

    def replay(self, messages: list[Message]) -> None:
        """Take what a resume missed, in order: like :meth:`deliver` for each,
        but all of it, however long (the history bounds it), even for a
        subscriber that limits what it queues."""

    def ready(self) -> None:
        """Subscribed and positioned: the replay (or reset) has been delivered,
        and every event published from now on will be. Called at least once
        per :meth:`Broker.attach`; the subscriber ignores repeats."""


def format_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_id(event_id: str) -> tuple[str, int] | None:
    """Split ``{epoch}-{seq}``; ``None`` if the id is not of that form."""
    epoch, sep, seq = event_id.rpartition("-")
    if not sep or not epoch or not seq.isdigit() or not seq.isascii():
        return None
    return epoch, int(seq)


#: One process's figures for one app, as :meth:`SSE.stats` returns them: JSON values.
Figures = dict[str, Any]


class Presence:
    """How the processes that share a broker see one another: the cluster view.

    This base is the view of a broker that serves one process (the memory
    broker): that process is the whole cluster, and its figures are read as
    they are. A shared broker's presence reports each serving process's
    figures to the others (:mod:`.redis_presence`).
    """

    def start(self, figures: Callable[[], Figures], interval: float) -> None:
        """Take part from now on: report ``figures()`` every ``interval``
        seconds until the broker closes. Never blocks; called by the first
        stream a process opens."""

    def processes(self, figures: Callable[[], Figures]) -> list[Figures]:
        """The figures of every live process, read now; this process's own
        are ``figures()`` if it takes part.

        :raises BrokerUnavailable: if the other processes' figures cannot be read.
        """
        return [figures()]

    def remote_subscribers(self, channel: str, max_age: float) -> int:
        """Subscribers of ``channel`` in the *other* live processes, as they
        last reported, from a cache at most ``max_age`` seconds old. Never
        raises: when they cannot be read, the last figures read."""
        return 0

    def close(self) -> None:
        """Stop taking part (the broker closes)."""


_ALONE = Presence()


class Broker(abc.ABC):
    """An event bus with history. One instance per app per process."""

    #: the URL scheme(s) this broker serves, e.g. ``("memory",)``
    schemes: tuple[str, ...] = ()

    @abc.abstractmethod
    def publish(self, channel: str, event: Event) -> Published:
        """Assign an id to ``event`` (which has none), keep it in the
        channel's history and deliver it to the channel's subscribers.

        :raises BrokerUnavailable: if the event could not be stored.
        """

    def publish_many(self, events: Sequence[tuple[str, Event]]) -> list[Published]:
        """Publish ``(channel, event)`` pairs with consecutive ids, in order.

        A broker that can does it at once (one round trip, one fan-out in
        which each subscriber takes its events together); by default, one
        :meth:`publish` after the other.

        :raises BrokerUnavailable: if the events could not be stored.
        """
        return [self.publish(channel, event) for channel, event in events]

    @abc.abstractmethod
    def attach(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        """Subscribe ``subscriber`` to its channels.

        With ``last_event_id``, first deliver every retained event after it on
        those channels (in id order), then live events, with no gap, duplicate
        or reordering at the seam; if that cannot be done without a gap, call
        ``subscriber.reset(...)`` first and go live from the current position.
        Then call ``subscriber.ready()``. May complete later (a remote broker
        that is down): it must not block the caller for long.
        """

    @abc.abstractmethod
    def detach(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber``. Idempotent."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and greenlets; the broker is not used again."""

    def subscriber_counts(self) -> dict[str, int]:
        """Local subscribers per channel (for :meth:`SSE.stats`)."""
        return {}

    def health(self) -> dict[str, int]:
        """Counters of the bus's connection in this process (for :meth:`SSE.stats`)."""
        return {}

    def subscriber_count(self, channel: str) -> int:
        """Local subscribers of ``channel``; cheap enough for every request."""
        return self.subscriber_counts().get(channel, 0)

    def presence(self) -> Presence:
        """The view of every process that shares this broker (see :class:`Presence`)."""
        return _ALONE
