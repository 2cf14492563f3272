"""The Redis broker: one event bus for every worker process and host.

Publishing is one round trip: a Lua script takes the next seq of a counter
shared by all channels, appends the event to the channel's Redis Stream (its
history, trimmed to about ``SSE_HISTORY_SIZE`` entries) and publishes it on the
channel's pub/sub channel, all atomically, so pub/sub order is seq order.
Redis keeps the epoch too, so every process agrees on the ids.

Each process holds a constant number of Redis connections, whatever its number
of clients and channels: a process that serves streams has **one pub/sub
connection and one control connection** (subscribing, replay; see
:mod:`.redis_fanout`) and one that reports to the cluster view (see
:mod:`.redis_presence`; up to 3 more, opened only while reads of the view
overlap), and a process that publishes has a pool of **at most 4
publishing connections**, opened as concurrent publishes need them (the URL's
``?max_connections=`` changes that number). All are made lazily, in the
process that uses them, and made anew after a fork (a broker created in a
gunicorn master before it forks its workers); a forked child closes its
copies of the parent's at once (see :func:`.redis_connect.close_inherited`).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

try:
    from hiredis import pack_command as _pack_hiredis
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack_hiredis = None  # type: ignore[assignment]

from ..event import Event
from .base import Broker, BrokerUnavailable, Published, Subscriber, format_id
from .redis_connect import SCHEMES, Endpoint, NotExecuted, close_inherited, endpoint_for
from .redis_fanout import Fanout
from .redis_presence import CONNECTIONS as PRESENCE_CONNECTIONS
from .redis_presence import RedisPresence
from .redis_schema import (
    CONNECTION_ERRORS,
    PUBLISH,
    PUBLISH_MANY,
    PUBLISH_MANY_SHA,
    PUBLISH_SHA,
    SPUBLISH,
    SPUBLISH_MANY,
    SPUBLISH_MANY_SHA,
    SPUBLISH_SHA,
    HighWater,
    Keys,
    event_fields,
)

__all__ = ["RedisBroker"]

DEFAULT_PREFIX = "sse:"
#: Publishing connections per process, unless the URL sets ``?max_connections=``.
POOL_SIZE = 4
#: Publishing retries a connection that cannot be made for about this long.
PUBLISH_RETRY_SECONDS = 1.0
#: A command that takes longer than this fails (the pub/sub connection waits
#: without limit, and is pinged instead).
SOCKET_TIMEOUT = 5.0


class _Process:
    """The broker's connections and subscribers in one process."""

    def __init__(self, broker: RedisBroker) -> None:
        self.pid = os.getpid()
        self.broker = broker
        self.high_water = HighWater()
        self.pool = self._pool(POOL_SIZE)
        #: made by the first subscriber (a process that only publishes has none)
        self.fanout: Fanout | None = None
        #: the cluster view, made on first use
        self._presence: RedisPresence | None = None
        self._lock = threading.Lock()
        sharded = broker.endpoint.sharded
        self._script, self._sha = (SPUBLISH, SPUBLISH_SHA) if sharded else (PUBLISH, PUBLISH_SHA)
        self._many_script, self._many_sha = (
            (SPUBLISH_MANY, SPUBLISH_MANY_SHA) if sharded else (PUBLISH_MANY, PUBLISH_MANY_SHA)
        )
        _every_process.add(self)

    def _pool(self, size: int) -> Any:
        return self.broker.endpoint.pool(
            size,
            timeout=PUBLISH_RETRY_SECONDS,
            socket_connect_timeout=PUBLISH_RETRY_SECONDS,
            socket_timeout=SOCKET_TIMEOUT,
            socket_keepalive=True,
            client_name=f"sse:{self.pid}",
            protocol=2,
        )

    def serving(self) -> Fanout:
        """The fan-out, made on first use."""
        if self.fanout is None:
            with self._lock:
                if self.fanout is None:
                    control = redis.Redis(connection_pool=self._pool(1))
                    self.fanout = Fanout(
                        self.broker.keys,
                        self.broker.endpoint,
                        self.pool,
                        control,
                        self.high_water,
                        probe_interval=self.broker.probe_interval,
                    )
        return self.fanout

    def presence(self) -> RedisPresence:
        if self._presence is None:
            with self._lock:
                if self._presence is None:
                    client = redis.Redis(connection_pool=self._pool(PRESENCE_CONNECTIONS))
                    self._presence = RedisPresence(self.broker.keys, client)
        return self._presence

    def publish(self, channel: str, fields: list[str]) -> tuple[str, int]:
        keys = self.broker.keys

        def command(seen_epoch: str, seen_seq: int) -> tuple[Any, ...]:
            return (
                "EVALSHA", self._sha, 5, *keys.positions(), keys.stream(channel),
                secrets.token_hex(6), seen_epoch, seen_seq, self.broker.history_size, channel,
                keys.live(channel), *fields,
            )  # fmt: skip

        return self._call(command, self._script)

    def publish_many(self, events: list[tuple[str, list[str]]]) -> tuple[str, int]:
        """``(channel, fields)`` pairs at once; the epoch and the first seq."""
        keys = self.broker.keys
        streams = [keys.stream(channel) for channel, _ in events]
        args: list[Any] = []
        for channel, fields in events:
            args += [channel, keys.live(channel), len(fields), *fields]

        def command(seen_epoch: str, seen_seq: int) -> tuple[Any, ...]:
            return (
                "EVALSHA", self._many_sha, 4 + len(streams), *keys.positions(), *streams,
                secrets.token_hex(6), seen_epoch, seen_seq, self.broker.history_size, *args,
            )  # fmt: skip

        return self._call(command, self._many_script)

    def _call(self, make: Callable[[str, int], tuple[Any, ...]], script: str) -> tuple[str, int]:
        """Run a publishing script; retry where it cannot have run."""
        deadline = time.monotonic() + PUBLISH_RETRY_SECONDS
        delay = 0.02
        while True:
            command = make(*self.high_water.get())
            try:
                connection = self.pool.get_connection()
            except CONNECTION_ERRORS as exc:
                failure: Exception = exc
                why = "Redis is unreachable"  # nothing was sent: trying again is safe
            else:
                try:
                    return self._run(connection, command, script)
                except NotExecuted as exc:
                    # A node that is not the primary (a failover, a moved slot)
                    # refused it: nothing is stored; the next connection finds
                    # the primary.
                    failure, why = exc, "no Redis primary took the event"
                finally:
                    self.pool.release(connection)
            if time.monotonic() + delay > deadline:
                raise BrokerUnavailable(f"{why}: {failure}") from failure
            time.sleep(delay)
            delay *= 2

    def _run(self, connection: Any, command: tuple[Any, ...], script: str) -> tuple[str, int]:
        # hiredis packs the whole command in C: redis-py's packer, which
        # encodes argument by argument in Python, was a tenth of a publish.
        if _pack_hiredis is not None:
            packed = [_pack_hiredis(command)]
        else:
            packed = connection.pack_command(*command)
        try:
            try:
                connection.send_packed_command(packed)
                reply = connection.read_response()
            except NoScriptError:
                # Redis restarted, or its script cache was flushed.
                connection.send_command("SCRIPT", "LOAD", script)
                connection.read_response()
                connection.send_packed_command(packed)
                reply = connection.read_response()
        except NotExecuted:
            raise
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(
                f"Redis failed during publish; the event may or may not be stored: {exc}"
            ) from exc
        except redis.ResponseError as exc:
            raise BrokerUnavailable(f"Redis refused the event: {exc}") from exc
        epoch, seq = reply
        return epoch.decode(), int(seq)

    def pools(self) -> list[Any]:
        """Every connection pool of this process's part of the broker."""
        pools = [self.pool]
        if self.fanout is not None:
            pools.append(self.fanout.control.connection_pool)
        if self._presence is not None:
            pools.append(self._presence.client.connection_pool)
        return pools

    def close(self) -> None:
        if self._presence is not None:
            self._presence.close()
        if self.fanout is not None:
            self.fanout.close()
            self.fanout.control.connection_pool.disconnect()
        self.pool.disconnect()


#: every broker's part in this process (see _close_inherited_after_fork)
_every_process: weakref.WeakSet[_Process] = weakref.WeakSet()


def _close_inherited_after_fork() -> None:
    """In a forked child, close the child's copies of the parent's connections:
    a greenlet carried over the fork (a publisher, the fan-out's supervisor,
    the reporter) may be waiting on a reply the parent waits on too. The
    child makes its own connections when it needs them."""
    for state in list(_every_process):
        for pool in state.pools():
            close_inherited(pool)
    _every_process.clear()


os.register_at_fork(after_in_child=_close_inherited_after_fork)


class RedisBroker(Broker):
    """Events shared by every process through Redis (6.2 or later).

    :param url: ``redis://[:password@]host[:port][/db]``, ``rediss://...``
        (TLS) or ``unix:///path/to/redis.sock[?db=0]``; redis-py's query
        arguments apply (``?max_connections=8``, ``?socket_timeout=2``).
    :param history_size: events kept per channel, at least (Redis trims
        streams in whole nodes of 100 entries, so up to about 100 more). The
        process that publishes trims: give every process the same value.
    :param prefix: prepended to every key and pub/sub channel, so that apps
        can share a Redis. In a Cluster it must hold a hash tag (``{sse}:``);
        one is added if it has none.
    :param probe_interval: seconds without a message before the subscription
        is checked end to end; ``None``: never.

    Connections per process, whatever the number of clients and channels: a
    pub/sub, a control and a report connection where streams are served, and
    at most 4 publishing connections where events are published.
    """

    schemes = SCHEMES

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        prefix: str = DEFAULT_PREFIX,
        probe_interval: float | None = 5.0,
    ) -> None:
        if history_size < 1:
            raise ValueError("SSE_HISTORY_SIZE must be at least 1")
        self.url = url
        self.history_size = history_size
        self.probe_interval = probe_interval
        self.endpoint: Endpoint = endpoint_for(url)
        if self.endpoint.kind == "cluster" and not _has_hash_tag(prefix):
            # All keys in one slot, so that each script runs on one shard.
            prefix = "{" + (prefix.rstrip(":") or "sse") + "}:"
        self.keys = Keys(prefix)
        self.endpoint.bind(self.keys.seq)
        self._process: _Process | None = None
        self._lock = threading.Lock()

    def _state(self) -> _Process:
        # Connections and threads belong to the process that made them: a
        # broker made before a fork starts afresh in the child.
        state = self._process
        if state is None or state.pid != os.getpid():
            with self._lock:
                state = self._process
                if state is None or state.pid != os.getpid():
                    state = self._process = _Process(self)
        return state

    def _serving(self) -> Fanout | None:
        """This process's fan-out, if it has one (no connection is made)."""
        state = self._process
        return state.fanout if state is not None and state.pid == os.getpid() else None

    def publish(self, channel: str, event: Event) -> Published:
        state = self._state()
        epoch, seq = state.publish(channel, event_fields(event))
        state.high_water.note(epoch, seq)
        return Published(format_id(epoch, seq), seq)

    def publish_many(self, events: Sequence[tuple[str, Event]]) -> list[Published]:
        if not events:
            return []
        state = self._state()
        epoch, first = state.publish_many([(c, event_fields(e)) for c, e in events])
        last = first + len(events) - 1
        state.high_water.note(epoch, last)
        return [Published(format_id(epoch, seq), seq) for seq in range(first, last + 1)]

    def attach(self, subscriber: Subscriber, last_event_id: str | None) -> None:
        self._state().serving().attach(subscriber, last_event_id)

    def detach(self, subscriber: Subscriber) -> None:
        fanout = self._serving()
        if fanout is not None:
            fanout.detach(subscriber)

    def subscriber_counts(self) -> dict[str, int]:
        fanout = self._serving()
        return {} if fanout is None else fanout.counts()

    def health(self) -> dict[str, int]:
        fanout = self._serving()
        if fanout is None:
            return {}
        return {"reconnects": fanout.reconnects, "probes_lost": fanout.probes_lost}

    def subscriber_count(self, channel: str) -> int:
        fanout = self._serving()
        return 0 if fanout is None else fanout.count(channel)

    def presence(self) -> RedisPresence:
        return self._state().presence()

    def close(self) -> None:
        state = self._process
        self._process = None
        if state is not None and state.pid == os.getpid():
            state.close()


def _has_hash_tag(prefix: str) -> bool:
    start = prefix.find("{")
    return start != -1 and prefix.find("}", start + 2) != -1
