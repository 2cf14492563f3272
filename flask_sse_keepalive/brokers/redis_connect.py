"""Where the Redis broker's primary is, and how to connect to it.

``SSE_BROKER_URL`` names one of three kinds of Redis:

* one server: ``redis://``, ``rediss://`` (TLS), ``unix://``;
* a primary with replicas behind Sentinel:
  ``redis+sentinel://h1:26379,h2:26379/<service>/<db>`` (``rediss+sentinel``
  for TLS to the Redis servers and the Sentinels), with ``?password=`` for
  Redis and ``?sentinel_password=`` for the Sentinels;
* a Redis Cluster: ``redis+cluster://h1:7000,h2:7001`` (``rediss+cluster``),
  with ``?password=``. Every key of the broker carries one hash tag, so all of
  them live in one slot, on one shard: the broker talks to that slot's
  primary as to one server.

Every connection is made by a :class:`Endpoint`. For Sentinel and Cluster a
connection looks up the primary each time it connects, so after a failover
the next connection reaches the new one; a command that reaches a node that
is no longer (or not) the primary fails with :exc:`NotExecuted`, which says
it did not run, so that it may be sent again.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ReadOnlyError, ResponseError
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPoolProxy,
    SentinelManagedConnection,
)

__all__ = ["SCHEMES", "Endpoint", "NotExecuted", "endpoint_for"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
           "rediss+cluster")  # fmt: skip


class NotExecuted(redis.ConnectionError):
    """The command reached a node that is not the primary: it did not run."""


@dataclass
class Endpoint:
    """How to reach the primary: pools and single connections to it.

    :ivar kind: ``"single"``, ``"sentinel"`` or ``"cluster"``.
    :ivar sharded: pub/sub is sharded (``SPUBLISH``/``SSUBSCRIBE``), as in a Cluster.
    """

    url: str
    kind: str
    connection_class: type[Any]
    kwargs: dict[str, Any]
    #: attaches a pool to what finds the primary (Sentinel), before first use
    attach: Callable[[Any], None] | None = None
    #: where the primary is now, asked afresh (``None`` for one server)
    locate: Callable[[], tuple[str, int]] | None = None
    #: which slot the broker uses (Cluster): ``bind(key)``
    slot_owner: _SlotOwner | None = None
    sharded: bool = False

    def bind(self, key: str) -> None:
        """Tell a Cluster endpoint a key of the broker's slot (no-op otherwise)."""
        if self.slot_owner is not None:
            self.slot_owner.key = key

    def pool(self, size: int, *, timeout: float, **options: Any) -> _Pool:
        """A pool of at most ``size`` connections; waits ``timeout`` for one."""
        kwargs = {**self.kwargs, **options, "retry": Retry(NoBackoff(), 0)}
        if issubclass(self.connection_class, UnixDomainSocketConnection):
            kwargs.pop("socket_keepalive", None)  # a TCP option
        pool = _Pool(
            max_connections=size,
            timeout=timeout,
            connection_class=self.connection_class,
            **kwargs,
        )
        if self.attach is not None:
            self.attach(pool)
        return pool

    def describe(self) -> str:
        """The URL without its password, for log lines."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{netloc}{parts.path}"


class _Pool(redis.BlockingConnectionPool):
    """redis-py's blocking pool, with a cheaper look at a connection it hands out.

    Before it hands a connection out, the pool makes sure that nothing is
    waiting to be read on it: no reply left over, no end of stream from a
    server that closed it (Redis's ``timeout``), which would otherwise fail
    the next command, where a publish could not tell whether it ran. redis-py
    looks with a poll; under gevent a poll costs a set of watchers and a
    switch, about a third of a publish's CPU. One non-blocking peek at the
    socket answers the same question. A command cut short (an error, a
    timeout, a killed greenlet) disconnects its connection in redis-py, so
    nothing can be left in the parser's buffer where a peek would not see it.
    TLS sockets cannot peek: they keep redis-py's look.
    """

    def ensure_connection(self, connection: Any) -> None:
        connection.connect()
        sock = getattr(connection, "_sock", None)
        if sock is None or isinstance(sock, ssl.SSLSocket):
            super().ensure_connection(connection)
        elif _readable(sock):
            connection.disconnect()
            connection.connect()


def _readable(sock: socket.socket) -> bool:
    """Whether a byte or the end of the stream waits on ``sock``, without waiting."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True  # broken: made anew
    finally:
        sock.settimeout(timeout)
    return True


def close_inherited(pool: Any) -> None:
    """In a forked child, close this process's copies of ``pool``'s connections.

    gevent carries greenlets over a fork: one that was waiting on a reply
    would go on waiting in the child, and the child's copy of the socket could
    take that reply away from the parent (which would then wait out its
    socket timeout). Closed here, the waiter gets a connection error instead.
    redis-py does not shut down a connection made by another process, so the
    parent's stay up. A pool forgets its connections at its first use in the
    child (it starts afresh after a fork), so they are closed before that.
    """
    for connection in list(getattr(pool, "_connections", ())):
        connection.disconnect()


def _query(query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, values in parse_qs(query).items():
        value = values[0]
        parser = cast("Callable[[str], Any] | None", URL_QUERY_ARGUMENT_PARSERS.get(name))
        options[name] = parser(value) if parser else value
    return options


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
        hosts.append((host.strip("[]") or "localhost", int(port) if port else default_port))
    return hosts


def endpoint_for(url: str) -> Endpoint:
    """The endpoint ``url`` names.

    :raises ValueError: for an unknown scheme or a malformed URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("redis", "rediss", "unix"):
        kwargs = redis.connection.parse_url(url)
        connection_class = kwargs.pop("connection_class", Connection)
        return Endpoint(url, "single", connection_class, kwargs)
    tls = scheme.startswith("rediss+")
    options = _query(parts.query)
    if parts.password:
        options.setdefault("password", unquote(parts.password))
    if parts.username:
        options.setdefault("username", unquote(parts.username))
    if scheme.endswith("+sentinel"):
        return _sentinel(url, parts.netloc, parts.path, options, tls)
    if scheme.endswith("+cluster"):
        return _cluster(url, parts.netloc, options, tls)
    raise ValueError(f"not a Redis URL: {url!r}")


# -- Sentinel ----------------------------------------------------------------------


class _SentinelPrimaryConnection(SentinelManagedConnection):
    """Asks the Sentinels for the primary at each connect (see redis-py), and
    says :exc:`NotExecuted` when the node it reached was demoted."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return Connection.read_response(self, *args, **kwargs)
        except ReadOnlyError as exc:
            self.disconnect()
            raise NotExecuted("the primary was demoted; it refused the write") from exc


class _SentinelPrimarySSLConnection(_SentinelPrimaryConnection, SSLConnection):
    pass


class _Sentinels(Sentinel):
    """redis-py's Sentinel manager, whose error when no Sentinel names the
    primary says in a few words what each answered (a refused password, a
    Sentinel that is down), rather than a client's full description."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        answers = []
        for index, sentinel in enumerate(self.sentinels):
            options = sentinel.connection_pool.connection_kwargs
            where = f"{options.get('host')}:{options.get('port')}"
            try:
                masters: Any = sentinel.sentinel_masters()
            except (redis.ConnectionError, redis.TimeoutError, ResponseError) as exc:
                answers.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                # The next look starts with the Sentinel that knew (as redis-py does).
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return str(state["ip"]), int(state["port"])
            answers.append(f"{where}: no healthy primary")
        raise MasterNotFoundError(
            f"no Sentinel names a primary for {service_name!r} ({'; '.join(answers)})"
        )


def _sentinel(url: str, netloc: str, path: str, options: dict[str, Any], tls: bool) -> Endpoint:
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments:
        raise ValueError(
            f"{url!r}: name the Sentinel service, e.g. redis+sentinel://h:26379/mymaster/0"
        )
    service = segments[0]
    db = int(segments[1]) if len(segments) > 1 else int(options.pop("db", 0))
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": options.get("socket_timeout", 1.0),
        "socket_connect_timeout": options.get("socket_connect_timeout", 1.0),
    }
    for ours, theirs in (("sentinel_password", "password"), ("sentinel_username", "username")):
        if ours in options:
            sentinel_kwargs[theirs] = options.pop(ours)
    if tls:
        sentinel_kwargs["ssl"] = True
        for name, value in options.items():
            if name.startswith("ssl_"):
                sentinel_kwargs[name] = value
    manager = _Sentinels(_hosts(netloc, 26379), sentinel_kwargs=sentinel_kwargs)
    kwargs = {**options, "db": db}

    def attach(pool: Any) -> None:
        proxy = SentinelConnectionPoolProxy(
            connection_pool=pool,
            is_master=True,
            check_connection=False,
            service_name=service,
            sentinel_manager=manager,
        )
        pool.connection_kwargs["connection_pool"] = proxy

    def locate() -> tuple[str, int]:
        host, port = manager.discover_master(service)
        return str(host), int(port)

    connection_class = _SentinelPrimarySSLConnection if tls else _SentinelPrimaryConnection
    return Endpoint(url, "sentinel", connection_class, kwargs, attach=attach, locate=locate)


# -- Cluster -----------------------------------------------------------------------

#: Errors that mean the slot is elsewhere or not served: the command did not run.
_NOT_HERE = ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")


class _SlotOwner:
    """Finds the primary of the broker's slot, and finds it again on demand."""

    def __init__(self, startup: list[tuple[str, int]], options: dict[str, Any]) -> None:
        self._startup = startup
        self._options = options
        self._lock = threading.Lock()
        self._owner: tuple[str, int] | None = None
        self.key = ""  # a key in the slot: set by the broker (its prefix has the tag)

    def address(self) -> tuple[str, int]:
        with self._lock:
            if self._owner is None:
                self._owner = self._discover()
            return self._owner

    def forget(self) -> None:
        with self._lock:
            self._owner = None

    def _discover(self) -> tuple[str, int]:
        from redis.cluster import ClusterNode, RedisCluster

        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._startup],
            **self._options,
        )
        try:
            node = cluster.get_node_from_key(self.key)
            return node.host, node.port
        finally:
            cluster.close()


class _SlotConnection(Connection):
    """Connects to the primary of the broker's slot; says :exc:`NotExecuted`
    when the slot moved (a failover, a resharding)."""

    def __init__(self, *, slot_owner: _SlotOwner, **kwargs: Any) -> None:
        self.slot_owner = slot_owner
        super().__init__(**kwargs)

    def connect(self) -> None:
        if self._sock is None:
            self.host, self.port = self.slot_owner.address()
        super().connect()

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if str(exc).startswith(_NOT_HERE):
                self.slot_owner.forget()
                self.disconnect()
                raise NotExecuted(f"the broker's slot is not served here: {exc}") from exc
            raise
        except redis.ConnectionError:
            self.slot_owner.forget()  # a dead primary: ask the cluster again
            raise


class _SSLSlotConnection(_SlotConnection, SSLConnection):
    pass


def _cluster(url: str, netloc: str, options: dict[str, Any], tls: bool) -> Endpoint:
    discovery = {k: v for k, v in options.items() if k in ("password", "username")}
    if tls:
        discovery["ssl"] = True
        discovery.update({k: v for k, v in options.items() if k.startswith("ssl_")})
    owner = _SlotOwner(_hosts(netloc, 6379), discovery)
    kwargs = {**options, "slot_owner": owner}

    def locate() -> tuple[str, int]:
        owner.forget()
        return owner.address()

    connection_class = _SSLSlotConnection if tls else _SlotConnection
    return Endpoint(
        url, "cluster", connection_class, kwargs, locate=locate, slot_owner=owner, sharded=True
    )
