"""The Redis broker: one event bus for every worker process and host.

Publishing is one round trip: a Lua script takes the next seq of a counter
shared by all channels, appends the event to the channel's Redis Stream (its
history, trimmed to about ``SSE_HISTORY_SIZE`` entries) and publishes it on the
channel's pub/sub channel, all atomically, so pub/sub order is seq order.

Each process holds a constant number of Redis connections, whatever its number
of clients and channels: a process that serves streams has **one pub/sub
connection and one control connection** (subscribing, replay), and any process
that publishes has a pool of **at most 4 publishing connections**, opened as
concurrent publishes need them (the URL's ``?max_connections=`` changes it).
Two greenlets per process do the work, started by the first
:meth:`RedisBroker.attach` in the process that serves (never before a gunicorn
fork):

* the *listener* reads the pub/sub connection and hands each event, encoded
  once, to every local subscriber of its channel;
* the *supervisor* owns the connection: it subscribes a channel while it has
  local subscribers, replays history to resuming subscribers, and after an
  outage reconnects with backoff and replays what every subscriber missed.

The seam between replay and live events: a subscriber's live events are held
while its replay is read (after its channels are subscribed), then the replay
is delivered and the held events newer than its last replayed one follow.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gevent
import gevent.event
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ..event import Event
from .base import Broker, BrokerUnavailable, Message, Subscriber, format_id, parse_id
from .redis_scripts import PUBLISH, RESUME

__all__ = ["RedisBroker"]

log = logging.getLogger("flask_sse_keepalive.redis")

DEFAULT_PREFIX = "sse:"
#: Publishing connections per process, unless the URL says otherwise with
#: ``?max_connections=``.
POOL_SIZE = 4
#: Publishing retries a connection that cannot be made for about this long.
PUBLISH_RETRY_SECONDS = 1.0
#: Reconnection backoff after an outage: full jitter up to this cap (seconds).
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.5
#: An idle pub/sub connection is pinged this often; two unanswered pings end it.
PING_INTERVAL = 15.0
#: How long subscribing may take before the connection is deemed broken.
SUBSCRIBE_TIMEOUT = 10.0

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class _Lost(Exception):
    """The pub/sub connection stopped working."""


class _Record:
    """A local subscriber and where it stands."""

    __slots__ = ("channels", "epoch", "forced", "held", "last", "positioned", "subscriber")

    def __init__(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        self.subscriber = subscriber
        self.channels = tuple(dict.fromkeys(subscriber.channels))
        #: live events held while the record's replay is read; ``None`` once live
        self.held: list[tuple[str, Message]] | None = []
        #: the epoch and seq of the last event the subscriber has (or of its
        #: resume point); ``""`` means "go live from wherever Redis is now"
        self.epoch = ""
        self.last = 0
        #: a reason to reset regardless of Redis (an id that does not parse)
        self.forced = ""
        #: set once the first replay (or reset) is done: later replays catch up
        self.positioned = False
        if last_event_id is not None:
            parsed = parse_id(last_event_id)
            if parsed is None:
                self.forced = "unknown-id"
            else:
                self.epoch, self.last = parsed


def _decode_fields(flat: Sequence[Any]) -> dict[str, str]:
    it = iter(flat)
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in zip(it, it, strict=False)
    }


def _encode(epoch: str, seq: int, channel: str, fields: Mapping[str, str]) -> Message:
    event_id = format_id(epoch, seq)
    retry = fields.get("r")
    payload = Event(
        data=fields.get("d"),
        event=fields.get("e"),
        id=event_id,
        retry=int(retry) if retry is not None else None,
    ).encode()
    return Message(seq, event_id, channel, payload)


class _Process:
    """The broker's connections, greenlets and subscribers in one process."""

    def __init__(self, broker: RedisBroker) -> None:
        self.pid = os.getpid()
        self.broker = broker
        self.keys = broker.keys
        self.pool = self._pool(POOL_SIZE)
        # The supervisor's own connection: replay never waits for publishers.
        self.control = redis.Redis(connection_pool=self._pool(1))
        self.publish_sha = _sha(PUBLISH)
        self.resume_sha = _sha(RESUME)
        # Subscribers and the state the greenlets share; greenlets only switch
        # on I/O, so each of these updates is atomic.
        self.records: dict[int, _Record] = {}
        self.by_channel: dict[str, tuple[_Record, ...]] = {}
        self.pending: dict[int, _Record] = {}
        self.subscribed: set[str] = set()
        self.dirty = False
        self.outstanding = 0
        self.unanswered_pings = 0
        self.pubsub: Any = None
        self.listener: gevent.Greenlet | None = None
        self.supervisor: gevent.Greenlet | None = None
        self.wake = gevent.event.Event()
        self.acked = gevent.event.Event()
        self.closed = False
        self.served = False

    def _pool(self, size: int) -> Any:
        return redis.BlockingConnectionPool.from_url(
            self.broker.url,
            max_connections=size,
            timeout=PUBLISH_RETRY_SECONDS,
            socket_connect_timeout=PUBLISH_RETRY_SECONDS,
            socket_timeout=5.0,
            socket_keepalive=True,
            client_name=f"sse:{self.pid}",
            # Retrying is decided here, knowing whether a command may have run.
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )

    # -- publishing (any process, gevent or not) -------------------------------

    def publish(self, channel: str, fields: list[str]) -> tuple[str, int]:
        keys = self.keys
        args = [
            secrets.token_hex(6),
            self.broker.history_size,
            channel,
            keys.live(channel),
            *fields,
        ]
        command = ("EVALSHA", self.publish_sha, 4, keys.epoch, keys.seq, keys.heads,
                   keys.stream(channel), *args)  # fmt: skip
        deadline = time.monotonic() + PUBLISH_RETRY_SECONDS
        delay = 0.02
        while True:
            try:
                connection = self.pool.get_connection()
            except _CONNECTION_ERRORS as exc:
                # Nothing was sent: trying again cannot publish twice.
                if time.monotonic() + delay > deadline:
                    raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc
                time.sleep(delay)
                delay *= 2
                continue
            try:
                return self._run_publish(connection, command)
            finally:
                self.pool.release(connection)

    def _run_publish(self, connection: Any, command: tuple[Any, ...]) -> tuple[str, int]:
        try:
            try:
                connection.send_command(*command)
                reply = connection.read_response()
            except NoScriptError:
                # Redis restarted or its script cache was flushed.
                connection.send_command("SCRIPT", "LOAD", PUBLISH)
                connection.read_response()
                connection.send_command(*command)
                reply = connection.read_response()
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(
                f"Redis failed during publish; the event may or may not be stored: {exc}"
            ) from exc
        except redis.ResponseError as exc:
            raise BrokerUnavailable(f"Redis refused the event: {exc}") from exc
        epoch, seq = reply
        return epoch.decode(), int(seq)

    # -- subscribers (gevent processes) --------------------------------------

    def attach(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        record = _Record(subscriber, last_event_id)
        key = id(subscriber)
        if key in self.records:
            self.detach(subscriber)
        self.records[key] = record
        for channel in record.channels:
            if channel not in self.by_channel:
                self.dirty = True
            self.by_channel[channel] = (*self.by_channel.get(channel, ()), record)
        self.pending[key] = record
        self.wake.set()
        if self.supervisor is None or self.supervisor.dead:
            self.supervisor = gevent.spawn(self._supervise)

    def detach(self, subscriber: Subscriber) -> None:
        key = id(subscriber)
        record = self.records.pop(key, None)
        if record is None:
            return
        self.pending.pop(key, None)
        for channel in record.channels:
            left = tuple(r for r in self.by_channel.get(channel, ()) if r is not record)
            if left:
                self.by_channel[channel] = left
            else:
                self.by_channel.pop(channel, None)
                self.dirty = True
                self.wake.set()

    def close(self) -> None:
        self.closed = True
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None:
            supervisor.kill(block=True, timeout=2)
        self.pool.disconnect()
        self.control.connection_pool.disconnect()

    # -- the listener greenlet -----------------------------------------------

    def _listen(self, connection: Any) -> None:
        live_prefix = len(self.keys.live("").encode())
        try:
            while True:
                reply = connection.read_response()
                if not isinstance(reply, list):
                    if reply == b"PONG":
                        self.unanswered_pings = 0
                    continue
                kind = reply[0]
                if kind == b"message":
                    try:
                        self._on_message(reply[1][live_prefix:].decode(), reply[2])
                    except Exception:
                        # One bad message must not stop delivery to everyone.
                        log.exception("could not deliver a message from Redis: %r", reply[2][:200])
                elif kind in (b"subscribe", b"unsubscribe"):
                    self.outstanding -= 1
                    if self.outstanding <= 0:
                        self.acked.set()
                elif kind == b"pong":
                    self.unanswered_pings = 0
        except _CONNECTION_ERRORS as exc:
            # The supervisor sees this greenlet end, and reconnects.
            log.debug("Redis pub/sub connection closed: %s", exc)

    def _on_message(self, channel: str, body: bytes) -> None:
        records = self.by_channel.get(channel)
        if not records:
            return  # unsubscribing: the channel's last subscriber left
        epoch_b, seq_b, flat = body.split(b"\n", 2)
        epoch, seq = epoch_b.decode(), int(seq_b)
        message = _encode(epoch, seq, channel, _decode_fields(json.loads(flat)))
        for record in records:
            if record.held is not None:
                record.held.append((epoch, message))
            elif record.epoch != epoch:
                # Redis lost its history (flushed) without dropping us:
                # find out where things stand before going on.
                record.held = [(epoch, message)]
                self.pending[id(record.subscriber)] = record
                self.wake.set()
            elif seq > record.last:
                record.subscriber.deliver(message)
                record.last = seq

    # -- the supervisor greenlet ---------------------------------------------

    def _supervise(self) -> None:
        failures = 0
        while not self.closed:
            self.served = False
            try:
                self._connect()
                self._serve()
            except (*_CONNECTION_ERRORS, redis.ResponseError, _Lost) as exc:
                log.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
            finally:
                self._disconnect()
            # A connection that worked starts the backoff over.
            failures = 1 if self.served else failures + 1
            gevent.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**failures)))

    def _connect(self) -> None:
        kwargs = {**self.pool.connection_kwargs, "socket_timeout": None}
        connection = self.pool.connection_class(**kwargs)
        self.pubsub = connection
        connection.connect()
        self.subscribed = set()
        self.outstanding = 0
        self.unanswered_pings = 0
        self.acked.set()
        self.dirty = True
        listener = self.listener = gevent.spawn(self._listen, connection)
        listener.link(lambda _: self.wake.set())

    def _disconnect(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.kill(block=True, timeout=2)
        connection, self.pubsub = self.pubsub, None
        if connection is not None:
            connection.disconnect()
        # Everything that came after the last delivered event is read back
        # from the streams once Redis answers again.
        for key, record in self.records.items():
            if record.held is None:
                record.held = []
                self.pending[key] = record

    def _serve(self) -> None:
        """Subscribe and replay until the connection breaks."""
        while True:
            if self.listener is None or self.listener.dead:
                raise _Lost("the pub/sub connection closed")
            self.wake.clear()
            if self.pending or self.dirty:
                self._work()
                self.served = True
                continue
            if not self.wake.wait(PING_INTERVAL):
                if self.unanswered_pings >= 2:
                    raise _Lost("no answer to PING")
                self.unanswered_pings += 1
                self.pubsub.send_command("PING")

    def _work(self) -> None:
        # Taken before subscribing: each of these records has its channels
        # subscribed before its history is read.
        batch = list(self.pending.items())
        self._sync_subscriptions()
        if not batch:
            return
        # Records at the same place on the same channels share one read (after
        # an outage, that is most of them).
        groups: dict[tuple[tuple[str, ...], str, int, str], list[tuple[int, _Record]]] = {}
        for key, record in batch:
            group = (record.channels, record.epoch, record.last, record.forced)
            groups.setdefault(group, []).append((key, record))
        replies = self._resume(list(groups))
        cache: dict[int, Message] = {}
        for (group, members), reply in zip(groups.items(), replies, strict=True):
            epoch, seq, status = reply[0].decode(), int(reply[1]), reply[2].decode()
            replay = self._replay(group[0], epoch, reply[3:], cache) if len(reply) > 3 else []
            for key, record in members:
                if self.pending.get(key) is record:
                    del self.pending[key]
                    self._position(record, epoch, seq, status, replay)

    def _sync_subscriptions(self) -> None:
        self.dirty = False
        wanted = set(self.by_channel)
        gone = self.subscribed - wanted
        new = wanted - self.subscribed
        live = self.keys.live
        if gone:
            self.subscribed -= gone
            self.outstanding += len(gone)
            self.acked.clear()
            self.pubsub.send_command("UNSUBSCRIBE", *[live(c) for c in gone])
        if new:
            self.subscribed |= new
            self.outstanding += len(new)
            self.acked.clear()
            self.pubsub.send_command("SUBSCRIBE", *[live(c) for c in new])
        if self.outstanding > 0 and not self.acked.wait(SUBSCRIBE_TIMEOUT):
            raise _Lost("Redis did not confirm the subscriptions")

    def _resume(
        self, groups: list[tuple[tuple[str, ...], str, int, str]], reload: bool = True
    ) -> list[Any]:
        keys = self.keys
        pipe: Any = self.control.pipeline(transaction=False)
        for channels, epoch, last, forced in groups:
            pipe.execute_command(
                "EVALSHA", self.resume_sha, 3 + len(channels),
                keys.epoch, keys.seq, keys.heads, *[keys.stream(c) for c in channels],
                secrets.token_hex(6), epoch, last, forced,
            )  # fmt: skip
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if reload and any(isinstance(reply, NoScriptError) for reply in replies):
            # Redis restarted or its script cache was flushed.
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
        lists = []
        for channel, entries in zip(channels, per_channel, strict=True):
            messages = []
            for entry_id, flat in entries:
                seq = int(entry_id.split(b"-", 1)[0])
                message = cache.get(seq)
                if message is None:
                    message = cache[seq] = _encode(epoch, seq, channel, _decode_fields(flat))
                messages.append(message)
            lists.append(messages)
        return list(heapq.merge(*lists)) if len(lists) > 1 else (lists[0] if lists else [])

    def _position(
        self, record: _Record, epoch: str, seq: int, status: str, replay: list[Message]
    ) -> None:
        """Deliver a record's replay (or reset) then what was held, and go live."""
        subscriber = record.subscriber
        if status:
            if record.positioned and status in ("unknown-epoch", "ahead"):
                status = "broker-reset"  # Redis came back empty, or behind
            subscriber.reset(status, format_id(epoch, seq), seq)
            record.last = seq
        elif not record.epoch:
            record.last = seq  # a new stream: live from here
        else:
            for message in replay:
                subscriber.deliver(message)
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
                return
            if message.seq > record.last:
                subscriber.deliver(message)
                record.last = message.seq


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class _Keys:
    """Key names under the prefix (see the key layout in the docs)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.epoch = f"{prefix}epoch"
        self.seq = f"{prefix}seq"
        self.heads = f"{prefix}heads"

    def stream(self, channel: str) -> str:
        return f"{self.prefix}stream:{channel}"

    def live(self, channel: str) -> str:
        return f"{self.prefix}live:{channel}"


class RedisBroker(Broker):
    """Events shared by every process through Redis (6.2 or later).

    :param url: ``redis://[:password@]host[:port][/db]``, ``rediss://...``
        (TLS) or ``unix:///path/to/redis.sock[?db=0]``; query arguments of
        redis-py apply (``?max_connections=8``, ``?socket_timeout=2``).
    :param history_size: events kept per channel, at least (Redis trims
        streams in whole nodes, so up to about 100 more).
    :param prefix: prepended to every key and pub/sub channel, so that apps
        can share a Redis.

    Connections per process, whatever the number of clients and channels: a
    pub/sub and a control connection where streams are served, and at most 4
    publishing connections where events are published.
    """

    schemes = ("redis", "rediss", "unix")

    def __init__(self, url: str, *, history_size: int = 1000, prefix: str = DEFAULT_PREFIX) -> None:
        if history_size < 1:
            raise ValueError("SSE_HISTORY_SIZE must be at least 1")
        self.url = url
        self.history_size = history_size
        self.keys = _Keys(prefix)
        self._process: _Process | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, url: str, config: Mapping[str, Any]) -> RedisBroker:
        prefix = config.get("SSE_REDIS_PREFIX")
        return cls(
            url,
            history_size=int(config.get("SSE_HISTORY_SIZE", 1000)),
            prefix=DEFAULT_PREFIX if prefix is None else str(prefix),
        )

    def _state(self) -> _Process:
        # Connections and greenlets belong to the process that made them: a
        # broker made before a fork starts afresh in the child.
        state = self._process
        if state is None or state.pid != os.getpid():
            with self._lock:
                state = self._process
                if state is None or state.pid != os.getpid():
                    state = self._process = _Process(self)
        return state

    def publish(self, channel: str, event: Event) -> Message:
        fields: list[str] = []
        if event.data is not None:
            fields += ["d", event.data]
        if event.event is not None:
            fields += ["e", event.event]
        if event.retry is not None:
            fields += ["r", str(event.retry)]
        epoch, seq = self._state().publish(channel, fields)
        event_id = format_id(epoch, seq)
        payload = Event(data=event.data, event=event.event, id=event_id, retry=event.retry).encode()
        return Message(seq, event_id, channel, payload)

    def attach(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        self._state().attach(subscriber, last_event_id)

    def detach(self, subscriber: Subscriber) -> None:
        state = self._process
        if state is not None and state.pid == os.getpid():
            state.detach(subscriber)

    def subscriber_counts(self) -> dict[str, int]:
        state = self._process
        if state is None or state.pid != os.getpid():
            return {}
        return {channel: len(records) for channel, records in state.by_channel.items()}

    def close(self) -> None:
        state, self._process = self._process, None
        if state is not None and state.pid == os.getpid():
            state.close()
