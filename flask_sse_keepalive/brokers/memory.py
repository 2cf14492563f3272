"""The in-memory broker: one process, one bus.

Publishing, subscribing and replaying happen under one lock and never switch
greenlets, so "subscribe, then replay" is atomic: the seam between history and
live events cannot have a gap or a duplicate. The epoch is a random token made
when the broker starts, so an id from before a restart (or from another
worker, which has its own bus) is recognised and answered with
``stream-reset``.
"""

from __future__ import annotations

import heapq
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from ..event import Event
from .base import Broker, Message, Published, ResumeError, Subscriber, format_id, parse_id

__all__ = ["MemoryBroker"]


class _Channel:
    __slots__ = ("_delivers", "_snapshot", "evicted_upto", "history", "subscribers")

    def __init__(self, history_size: int) -> None:
        self.history: deque[Message] = deque(maxlen=history_size)
        #: seq of the newest event that fell out of the history
        self.evicted_upto = 0
        self.subscribers: dict[Subscriber, None] = {}
        self._snapshot: tuple[Subscriber, ...] | None = ()
        self._delivers: tuple[Callable[[Message], None], ...] | None = ()

    def add(self, subscriber: Subscriber) -> None:
        self.subscribers[subscriber] = None
        self._snapshot = self._delivers = None

    def remove(self, subscriber: Subscriber) -> None:
        if self.subscribers.pop(subscriber, 0) is None:
            self._snapshot = self._delivers = None

    def snapshot(self) -> tuple[Subscriber, ...]:
        """The subscribers as a tuple a fan-out can iterate while a delivery
        detaches one; rebuilt at most once per change, not once per change
        per publish, so that attaching or closing N streams stays O(N)."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self.subscribers)
        return snapshot

    def delivers(self) -> tuple[Callable[[Message], None], ...]:
        """The subscribers' bound ``deliver`` methods, as :meth:`snapshot`
        (the fan-out's loop then looks nothing up per subscriber)."""
        delivers = self._delivers
        if delivers is None:
            delivers = self._delivers = tuple(s.deliver for s in self.snapshot())
        return delivers


class MemoryBroker(Broker):
    """Keeps ``history_size`` events per channel in this process."""

    schemes = ("memory",)

    def __init__(self, history_size: int = 1000) -> None:
        if history_size < 1:
            raise ValueError("SSE_HISTORY_SIZE must be at least 1")
        self.epoch = secrets.token_hex(4)
        self._history_size = history_size
        self._seq = 0
        self._channels: dict[str, _Channel] = {}
        # Only contended in threaded development mode; under gevent nothing
        # inside it switches, so it is never waited on.
        self._lock = threading.RLock()

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(self._history_size)
        return channel

    def _store(self, channel: str, event: Event) -> tuple[Message, _Channel]:
        """Give ``event`` the next id and keep it in ``channel``'s history
        (called with the lock held)."""
        self._seq += 1
        message = Message.of(event, self.epoch, self._seq, channel)
        state = self._channel(channel)
        if len(state.history) == self._history_size:
            state.evicted_upto = state.history[0].seq
        state.history.append(message)
        return message, state

    def publish(self, channel: str, event: Event) -> Published:
        with self._lock:
            message, state = self._store(channel, event)
            for deliver in state.delivers():
                deliver(message)
        return Published(message.id, message.seq)

    def publish_many(self, events: Sequence[tuple[str, Event]]) -> list[Published]:
        with self._lock:
            batch: dict[str, list[Message]] = {}
            published = []
            for channel, event in events:
                message, _ = self._store(channel, event)
                batch.setdefault(channel, []).append(message)
                published.append(Published(message.id, message.seq))
            # One pass: each subscriber takes its events of the batch at once.
            # A subscriber of one of the channels (the common case) gets the
            # channel's joined payload, the same object as every other one.
            joined = {channel: b"".join(m.payload for m in ms) for channel, ms in batch.items()}
            several: dict[Subscriber, list[Message]] = {}
            for channel, messages in batch.items():
                for subscriber in self._channels[channel].snapshot():
                    if len(batch) > 1 and sum(c in batch for c in subscriber.channels) > 1:
                        several.setdefault(subscriber, []).extend(messages)
                    else:
                        subscriber.deliver_batch(messages, joined[channel])
            for subscriber, messages in several.items():
                messages.sort()
                subscriber.deliver_batch(messages, b"".join(m.payload for m in messages))
        return published

    def attach(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        with self._lock:
            for name in subscriber.channels:
                self._channel(name).add(subscriber)
            if last_event_id is not None:
                after = self._resume_point(subscriber, last_event_id)
                if isinstance(after, ResumeError):
                    subscriber.reset(after.reason, format_id(self.epoch, self._seq), self._seq)
                else:
                    subscriber.replay(list(self._replay(subscriber.channels, after)))
            subscriber.ready()

    def _resume_point(self, subscriber: Subscriber, last_event_id: str) -> int | ResumeError:
        parsed = parse_id(last_event_id)
        if parsed is None:
            return ResumeError("unknown-id")
        epoch, seq = parsed
        if epoch != self.epoch:
            return ResumeError("unknown-epoch")
        if seq > self._seq:
            return ResumeError("ahead")
        for name in subscriber.channels:
            if seq < self._channels[name].evicted_upto:
                return ResumeError("evicted")
        return seq

    def _replay(self, channels: Sequence[str], after: int) -> Iterator[Message]:
        per_channel = []
        for name in channels:
            history = self._channels[name].history
            newer: list[Message] = []
            for message in reversed(history):
                if message.seq <= after:
                    break
                newer.append(message)
            newer.reverse()
            per_channel.append(newer)
        return heapq.merge(*per_channel)

    def detach(self, subscriber: Subscriber) -> None:
        with self._lock:
            for name in subscriber.channels:
                state = self._channels.get(name)
                if state is None:
                    continue
                state.remove(subscriber)
                if not state.subscribers and not state.history:
                    del self._channels[name]

    def subscriber_count(self, channel: str) -> int:
        state = self._channels.get(channel)
        return 0 if state is None else len(state.subscribers)

    def subscriber_counts(self) -> dict[str, int]:
        with self._lock:
            return {
                name: len(state.subscribers)
                for name, state in self._channels.items()
                if state.subscribers
            }
