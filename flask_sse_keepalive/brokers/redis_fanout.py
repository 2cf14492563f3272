"""Live delivery for the Redis broker: one process's subscribers, one pub/sub
connection, and the seam between replayed and live events.

Two workers per process, started by the first subscriber:

* the *listener* reads the pub/sub connection and hands each event, encoded
  once, to every local subscriber of its channel (never blocking: a
  subscriber's ``deliver`` only queues);
* the *supervisor* owns the connections: it subscribes a channel while the
  process has subscribers on it, positions new subscribers (replay or reset),
  and after an outage reconnects with backoff and replays what each
  subscriber missed.

They are ``threading`` threads: under gevent's monkey-patching (gunicorn
``-k gevent``) those are greenlets, in a plain process (the threaded
development server) real threads. One lock guards the shared state; nothing
done under it waits for I/O, so under gevent it is never contended.

The seam: a subscriber's live events are *held* from the moment it attaches.
Once its channels are subscribed (Redis confirmed it), one script reads where
Redis stands and what the subscriber missed; the replay is delivered, then the
held events newer than the replay, and the subscriber is live. An event
published in between is in the replay, among the held events, or both (and
then delivered once): never neither.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError

from .base import Message, ResetReason, Subscriber, format_id, parse_id
from .redis_connect import Endpoint
from .redis_schema import (
    CONNECTION_ERRORS,
    RESUME,
    RESUME_SHA,
    HighWater,
    Keys,
    decode_fields,
    message_from_fields,
)

log = logging.getLogger("flask_sse_keepalive.redis")

#: Reconnection backoff after an outage: full jitter, growing to this cap (s).
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.5
#: A probe that has not come back after this long: the subscription is dead.
PROBE_TIMEOUT = 3.0
#: How long subscribing may take before the connection is deemed broken.
SUBSCRIBE_TIMEOUT = 10.0
#: An outage (one warning) lasts until a connection has served this long (s)
#: and, with the probe on, has delivered a message: a link that flaps, or
#: connects and then loses its probe, is one incident, not one per attempt.
RECOVERED_AFTER = 10.0

#: what Redis sends a subscriber, plain and sharded (a Cluster)
_MESSAGES = (b"message", b"smessage")
_CONFIRMATIONS = (b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe")

#: records that share one read: channels, epoch, seq, forced reason, positioned
Group = tuple[tuple[str, ...], str, int, str, bool]


class _Lost(Exception):
    """The pub/sub connection stopped working."""


class _Record:
    """A local subscriber and where it stands."""

    __slots__ = (
        "channels", "deliver", "epoch", "forced", "held", "last", "positioned", "subscriber",
    )  # fmt: skip

    def __init__(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        self.subscriber = subscriber
        self.deliver = subscriber.deliver
        self.channels = tuple(dict.fromkeys(subscriber.channels))
        #: live events held until the record is positioned; ``None`` once live
        self.held: list[tuple[str, Message]] | None = []
        #: the epoch and seq of the last event the subscriber has (or of its
        #: resume point); epoch ``""``: "live from wherever Redis is now"
        self.epoch = ""
        self.last = 0
        #: a reason to reset whatever Redis says (an id that does not parse)
        self.forced = ""
        #: after the first replay or reset, later replays are catch-ups
        self.positioned = False
        if last_event_id is not None:
            parsed = parse_id(last_event_id)
            if parsed is None:
                self.forced = "unknown-id"
            else:
                self.epoch, self.last = parsed


#: every fan-out with running threads in this process (see _forget_after_fork)
_running: weakref.WeakSet[Fanout] = weakref.WeakSet()


def _forget_after_fork() -> None:
    """In a forked child, stop the fan-outs inherited from the parent.

    gevent carries greenlets over a fork, so the parent's listener would run
    on in the child and read the parent's pub/sub socket, taking events away
    from it. Closing the child's copy of the socket stops it; redis-py does not
    shut the connection down from another process, so the parent's stays up.
    The broker closes the control connection's copy (see
    :func:`.redis_connect.close_inherited`). The child makes its own
    connections when it needs them.
    """
    for fanout in list(_running):
        fanout.stopped.set()
        connection, fanout.pubsub = fanout.pubsub, None
        if connection is not None:
            connection.disconnect()
    _running.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


class Fanout:
    """The subscribers of one broker in one process, and their connections.

    :param endpoint: where the primary is.
    :param pool: the pool whose settings (timeouts, client name) the pub/sub
        connection copies.
    :param control: a client of its own for subscribing, replay and probes,
        so that none of them waits behind the process's publishers.
    :param high_water: the highest position the process has seen (the fence's
        evidence), shared with its publisher.
    :param probe_interval: seconds without a message before the subscription
        is probed (see :meth:`_probe`); ``None``: never.
    """

    def __init__(
        self,
        keys: Keys,
        endpoint: Endpoint,
        pool: Any,
        control: redis.Redis,
        high_water: HighWater,
        *,
        probe_interval: float | None = 5.0,
    ) -> None:
        self.keys = keys
        self.endpoint = endpoint
        self.pool = pool
        self.control = control
        self.high_water = high_water
        #: after this long without a message the subscription is probed
        self.probe_interval = probe_interval
        sharded = endpoint.sharded
        self.commands = (
            ("SSUBSCRIBE", "SUNSUBSCRIBE", "SPUBLISH")
            if sharded
            else ("SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH")
        )
        #: this fan-out's probe: its channel, and the token of the last one sent
        self.probe_channel = keys.probe(secrets.token_hex(8))
        self.probe_sent: str | None = None
        #: the last publish_many batch served: (epoch, "*first seq")
        self.last_batch: tuple[str, bytes] = ("", b"")
        self.probing = False  # the probe channel is subscribed on this connection
        self.probe_sent_at = 0.0
        #: when the connection last delivered a message (an event or the
        #: probe): only that proves the bus works, never a confirmation
        self.last_message = 0.0
        self.connected_at = 0.0
        self.delivered = False  # a message came on this connection
        #: an outage was reported and is not over yet, and the connections
        #: attempted since it began
        self.incident = False
        self.attempts = 0
        #: connections made and probes that never came back, since start
        self.reconnects = 0
        self.probes_lost = 0
        self.lock = threading.RLock()
        self.records: dict[int, _Record] = {}
        #: the records of each channel with local subscribers ...
        self.members: dict[str, dict[_Record, None]] = {}
        #: ... and as tuples, made once per change, for the fan-out to iterate
        self.by_channel: dict[str, tuple[_Record, ...]] = {}
        #: records waiting to be positioned (by the supervisor)
        self.pending: dict[int, _Record] = {}
        #: the set of channels differs from what the pub/sub connection has
        self.dirty = False
        self.subscribed: set[str] = set()
        self.outstanding = 0
        self.pubsub: Any = None
        self.listener: threading.Thread | None = None
        self.supervisor: threading.Thread | None = None
        self.wake = threading.Event()
        self.acked = threading.Event()
        self.stopped = threading.Event()
        self.served = False

    # -- what the broker calls ----------------------------------------------

    def attach(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        record = _Record(subscriber, last_event_id)
        key = id(subscriber)
        with self.lock:
            if key in self.records:
                self.detach(subscriber)
            self.records[key] = record
            for channel in record.channels:
                members = self.members.get(channel)
                if members is None:
                    members = self.members[channel] = {}
                    self.dirty = True
                members[record] = None
                # Made again at the next message, not at every attach: opening
                # N streams on a channel stays O(N).
                self.by_channel.pop(channel, None)
            self.pending[key] = record
            if self.supervisor is None or not self.supervisor.is_alive():
                self.supervisor = threading.Thread(
                    target=self._supervise, name="sse-redis-supervisor", daemon=True
                )
                self.supervisor.start()
                _running.add(self)
        self.wake.set()

    def detach(self, subscriber: Subscriber) -> None:
        key = id(subscriber)
        with self.lock:
            record = self.records.pop(key, None)
            if record is None:
                return
            self.pending.pop(key, None)
            for channel in record.channels:
                members = self.members.get(channel)
                if members is None:
                    continue
                members.pop(record, None)
                self.by_channel.pop(channel, None)
                if not members:
                    del self.members[channel]
                    self.dirty = True
        if self.dirty:
            self.wake.set()

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {channel: len(records) for channel, records in self.members.items()}

    def count(self, channel: str) -> int:
        # No lock: taking a dict's length is atomic.
        return len(self.members.get(channel, ()))

    def _records(self, channel: str) -> tuple[_Record, ...]:
        """The records of ``channel`` as a tuple (called with the lock held)."""
        records = self.by_channel.get(channel)
        if records is None:
            members = self.members.get(channel)
            if not members:
                return ()
            records = self.by_channel[channel] = tuple(members)
        return records

    def close(self) -> None:
        _running.discard(self)
        self.stopped.set()
        self.wake.set()
        self._stop_listener()
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout=2)

    # -- the listener ---------------------------------------------------------

    def _listen(self, connection: Any) -> None:
        live_prefix = len(self.keys.live("").encode())
        probe_channel = self.probe_channel.encode()
        try:
            while True:
                reply = connection.read_response()
                if not isinstance(reply, list):
                    continue
                kind = reply[0]
                if kind in _MESSAGES:
                    # Confirmations do not count: a connection attached to a
                    # node that no longer gets the publishes still confirms
                    # its subscriptions, and would never look quiet.
                    self.last_message = time.monotonic()
                    self.delivered = True
                    if reply[1] == probe_channel:
                        if reply[2].decode() == self.probe_sent:
                            self.probe_sent = None  # it came back: the bus works
                        continue
                    try:
                        self._on_message(reply[1][live_prefix:].decode(), reply[2])
                    except Exception:
                        # One bad message must not stop delivery to everyone.
                        log.exception("could not deliver a message from Redis: %r", reply[2][:200])
                elif kind in _CONFIRMATIONS:
                    with self.lock:
                        self.outstanding -= 1
                        if self.outstanding <= 0:
                            self.acked.set()
        except Exception as exc:
            # Closed under it (reconnect, close) or Redis went away: either
            # way the supervisor takes over.
            log.debug("Redis pub/sub connection closed: %r", exc)
        finally:
            self.acked.set()  # nothing more will be confirmed on this connection
            self.wake.set()

    def _on_message(self, channel: str, body: bytes) -> None:
        epoch_b, seq_b, flat = body.split(b"\n", 2)
        if seq_b[:1] == b"*":
            self._on_batch((epoch_b.decode(), seq_b), json.loads(flat))
            return
        epoch, seq = epoch_b.decode(), int(seq_b)
        message: Message | None = None
        with self.lock:
            records = self._records(channel)
            if not records:
                return  # being unsubscribed: the channel's last subscriber left
            message = message_from_fields(epoch, seq, channel, decode_fields(json.loads(flat)))
            self.high_water.note(epoch, seq)
            for record in records:
                if record.held is None and record.epoch == epoch:
                    # The common case: a live stream of this epoch.
                    if seq > record.last:
                        record.last = seq
                        record.deliver(message)
                elif record.held is not None:
                    record.held.append((epoch, message))
                else:
                    # Redis lost its data (flushed) without dropping the
                    # connection: find out where things stand first.
                    record.held = [(epoch, message)]
                    self.pending[id(record.subscriber)] = record
                    self.wake.set()

    def _on_batch(self, batch: tuple[str, bytes], entries: list[Any]) -> None:
        """The events of one ``publish_many``. The batch comes on each of its
        channels; the first to arrive serves every local subscriber, so that a
        stream on several of them takes its events in id order, in one write."""
        epoch = batch[0]
        with self.lock:
            if batch == self.last_batch:
                return  # the same batch on another of its channels
            self.last_batch = batch
            messages: dict[str, list[Message]] = {}
            for seq, channel, fields in entries:
                if channel in self.members:
                    messages.setdefault(channel, []).append(
                        message_from_fields(epoch, int(seq), channel, decode_fields(fields))
                    )
            if not messages:
                return
            self.high_water.note(epoch, max(m[-1].seq for m in messages.values()))
            joined = {c: b"".join(m.payload for m in ms) for c, ms in messages.items()}
            records: dict[int, _Record] = {}
            for channel in messages:
                for record in self._records(channel):
                    records[id(record)] = record
            for record in records.values():
                mine = [c for c in record.channels if c in messages]
                if len(mine) == 1:
                    ours, payload = messages[mine[0]], joined[mine[0]]
                else:
                    ours = sorted(m for c in mine for m in messages[c])
                    payload = b"".join(m.payload for m in ours)
                if record.held is not None:
                    record.held.extend((epoch, m) for m in ours)
                elif record.epoch != epoch:
                    record.held = [(epoch, m) for m in ours]
                    self.pending[id(record.subscriber)] = record
                    self.wake.set()
                elif ours[-1].seq > record.last:
                    if ours[0].seq <= record.last:
                        ours = [m for m in ours if m.seq > record.last]
                        payload = b"".join(m.payload for m in ours)
                    record.subscriber.deliver_batch(ours, payload)
                    record.last = ours[-1].seq

    # -- the supervisor -------------------------------------------------------

    def _supervise(self) -> None:
        """Connect, serve, and after a failure reconnect with backoff.

        One incident, one warning: the first failure is logged at WARNING,
        and every later one at DEBUG until a connection has proved itself
        (see :data:`RECOVERED_AFTER`); then ``is back`` is logged at INFO.
        A connection that merely connects is no proof: a link that flaps,
        or that connects and then loses its probe, is still the same
        incident.
        """
        failures = 0
        while not self.stopped.is_set():
            self.served = False
            try:
                if self.incident:
                    self.attempts += 1
                self._connect()
                self._serve()
            except (*CONNECTION_ERRORS, redis.ResponseError, _Lost) as exc:
                if self.stopped.is_set():
                    return
                # Said once per incident; the retries are debug noise.
                level = logging.DEBUG if self.incident else logging.WARNING
                log.log(level, "Redis pub/sub connection lost (%s); reconnecting", exc)
                self._begin_incident()
            except Exception:
                if self.stopped.is_set():
                    return
                # A bug or a bad setting must not leave the streams unserved
                # for good: say it (with the traceback), and try again.
                log.exception("the Redis fan-out failed; reconnecting")
                self._begin_incident()
            finally:
                self._disconnect()
            # A connection that worked starts the backoff over.
            failures = 1 if self.served else failures + 1
            self.stopped.wait(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**failures)))

    def _begin_incident(self) -> None:
        if not self.incident:
            self.incident = True
            self.attempts = 0

    def _until_recovered(self) -> float:
        """End the incident once this connection has proved itself (see
        :data:`RECOVERED_AFTER`); how long until it is worth looking again."""
        if not self.incident:
            return 60.0
        if self.probe_interval is not None and not self.delivered:
            return self.probe_interval  # the probe comes back, or ends the connection
        left = self.connected_at + RECOVERED_AFTER - time.monotonic()
        if left > 0:
            return left
        self.incident = False
        log.info("Redis pub/sub connection is back after %d attempts", self.attempts)
        return 60.0

    def _connect(self) -> None:
        kwargs = {**self.pool.connection_kwargs, "socket_timeout": None}
        connection = self.pool.connection_class(**kwargs)
        self.pubsub = connection
        connection.connect()
        self.reconnects += 1
        self.subscribed = set()
        self.probing = False
        self.outstanding = 0
        self.probe_sent = None
        self.connected_at = self.last_message = time.monotonic()
        self.delivered = False
        self.acked.set()
        self.dirty = True
        self.listener = threading.Thread(
            target=self._listen, args=(connection,), name="sse-redis-listener", daemon=True
        )
        self.listener.start()

    def _stop_listener(self) -> None:
        listener, self.listener = self.listener, None
        connection, self.pubsub = self.pubsub, None
        if connection is not None:
            connection.disconnect()  # the listener's read fails, and it returns
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=2)

    def _disconnect(self) -> None:
        self._stop_listener()
        with self.lock:
            # What came after each live subscriber's last event is read back
            # from the streams once Redis answers again.
            for key, record in self.records.items():
                if record.held is None:
                    record.held = []
                    self.pending[key] = record

    def _serve(self) -> None:
        """Subscribe and position subscribers until the connection breaks."""
        while not self.stopped.is_set():
            if self.listener is None or not self.listener.is_alive():
                raise _Lost("the pub/sub connection closed")
            self.wake.clear()
            if self.pending or self.dirty:
                self._work()
                self.served = True
                continue
            self.wake.wait(min(self._probe(), self._until_recovered()))

    def _probe(self) -> float:
        """Check that the subscription still gets what is published: after a
        quiet spell, publish a message to ourselves through the primary, as
        any publisher would, and expect it back. A connection can look healthy
        while attached to a node that no longer gets the publishes (an old
        primary after a failover): it gets nothing, and is made anew (the
        subscribers catch up from the streams).

        :return: how long to wait before the next look.
        """
        now = time.monotonic()
        if self.probe_sent is not None:
            if now - self.probe_sent_at < PROBE_TIMEOUT:
                return self.probe_sent_at + PROBE_TIMEOUT - now
            self.probes_lost += 1
            raise _Lost(f"a probe did not come back within {PROBE_TIMEOUT} s")
        if self.probe_interval is None:
            return 60.0
        quiet = now - self.last_message
        if quiet < self.probe_interval:
            return self.probe_interval - quiet
        locate = self.endpoint.locate
        if locate is not None:
            # Sentinel or Cluster: the primary may have moved under us.
            primary = locate()
            attached = (self.pubsub.host, int(self.pubsub.port))
            if primary != attached:
                raise _Lost(f"the primary is now {primary[0]}:{primary[1]}")
        token = secrets.token_hex(6)
        self.probe_sent, self.probe_sent_at = token, now
        self.control.execute_command(self.commands[2], self.probe_channel, token)  # type: ignore[no-untyped-call]
        return PROBE_TIMEOUT

    def _work(self) -> None:
        # Taken before subscribing, so that each of these records has its
        # channels subscribed before its history is read.
        with self.lock:
            batch = list(self.pending.items())
        self._sync_subscriptions()
        if not batch:
            return
        # Records at the same place on the same channels share one read
        # (after an outage, that is most of them).
        groups: dict[Group, list[tuple[int, _Record]]] = {}
        for key, record in batch:
            group = (
                record.channels, record.epoch, record.last, record.forced, record.positioned
            )  # fmt: skip
            groups.setdefault(group, []).append((key, record))
        replies = self._resume(list(groups))
        cache: dict[int, Message] = {}
        for (group, members), reply in zip(groups.items(), replies, strict=True):
            epoch, seq, status = reply[0].decode(), int(reply[1]), reply[2].decode()
            self.high_water.note(epoch, seq)
            replay = self._replay(group[0], epoch, reply[3:], cache) if len(reply) > 3 else []
            with self.lock:
                for key, record in members:
                    if self.pending.get(key) is record:  # not detached meanwhile
                        del self.pending[key]
                        self._position(record, epoch, seq, status, replay)

    def _sync_subscriptions(self) -> None:
        with self.lock:
            self.dirty = False
            wanted = set(self.members)
        gone = self.subscribed - wanted
        new = wanted - self.subscribed
        live = self.keys.live
        subscribe, unsubscribe, _ = self.commands
        if not self.probing:
            self._expect(1)
            self.probing = True
            self.pubsub.send_command(subscribe, self.probe_channel)
        if gone:
            self._expect(len(gone))
            self.subscribed -= gone
            self.pubsub.send_command(unsubscribe, *[live(c) for c in gone])
        if new:
            self._expect(len(new))
            self.subscribed |= new
            self.pubsub.send_command(subscribe, *[live(c) for c in new])
        if self.outstanding > 0 and not self.acked.wait(SUBSCRIBE_TIMEOUT):
            raise _Lost("Redis did not confirm the subscriptions")
        if self.listener is None or not self.listener.is_alive():
            raise _Lost("the pub/sub connection closed")

    def _expect(self, replies: int) -> None:
        """Count confirmations to wait for, before the command that earns them."""
        with self.lock:
            self.outstanding += replies
            self.acked.clear()

    def _resume(self, groups: list[Group], reload: bool = True) -> list[Any]:
        """Run the resume script for each group, in one round trip."""
        keys = self.keys
        seen_epoch, seen_seq = self.high_water.get()
        pipe: Any = self.control.pipeline(transaction=False)
        for channels, epoch, last, forced, _ in groups:
            pipe.execute_command(
                "EVALSHA", RESUME_SHA, 4 + len(channels),
                *keys.positions(), *[keys.stream(c) for c in channels],
                secrets.token_hex(6), seen_epoch, seen_seq, epoch, last, forced,
            )  # fmt: skip
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if reload and any(isinstance(reply, NoScriptError) for reply in replies):
            # Redis restarted, or its script cache was flushed.
            self.control.script_load(RESUME)
            return self._resume(groups, reload=False)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    @staticmethod
    def _replay(
        channels: Sequence[str], epoch: str, per_channel: Sequence[Any], cache: dict[int, Message]
    ) -> list[Message]:
        """The entries of each channel as messages, merged in seq order."""
        lists = []
        for channel, entries in zip(channels, per_channel, strict=True):
            messages = []
            for entry_id, flat in entries:
                seq = int(entry_id.split(b"-", 1)[0])
                message = cache.get(seq)
                if message is None:  # each event encoded once per batch
                    message = cache[seq] = message_from_fields(
                        epoch, seq, channel, decode_fields(flat)
                    )
                messages.append(message)
            lists.append(messages)
        return list(heapq.merge(*lists)) if len(lists) > 1 else (lists[0] if lists else [])

    def _position(
        self, record: _Record, epoch: str, seq: int, status: str, replay: list[Message]
    ) -> None:
        """Deliver a record's replay (or reset), then what was held; go live.

        Called with the lock held.
        """
        subscriber = record.subscriber
        catch_up: list[Message] = []
        if status:
            # The resume script answers with one of the reset reasons.
            reason = cast(ResetReason, status)
            if record.positioned and reason in ("unknown-epoch", "ahead"):
                reason = "broker-reset"  # Redis came back empty, or behind
            subscriber.reset(reason, format_id(epoch, seq), seq)
            record.last = seq
        elif not record.epoch:
            record.last = seq  # a new stream: live from here
        else:
            catch_up = list(replay)
            record.last = max(record.last, seq)
        record.epoch = epoch
        record.forced = ""
        record.positioned = True
        held, record.held = record.held or [], None
        for index, (held_epoch, message) in enumerate(held):
            if held_epoch != epoch:
                # The epoch changed again after the replay was read.
                record.held = held[index:]
                self.pending[id(subscriber)] = record
                self.wake.set()
                subscriber.replay(catch_up)
                return
            if message.seq > record.last:
                catch_up.append(message)
                record.last = message.seq
        subscriber.replay(catch_up)
        subscriber.ready()
