"""Redis in production shapes, for tests: a primary with a replica behind three
Sentinels, a Redis Cluster, and a TCP relay that can stop forwarding.

Every process is started on free loopback ports and stopped by pid; every wait
is bounded and says what it waited for.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.conftest import Server, free_port, wait_for_port

from .tls import Certificates, redis_tls_args


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Relay:
    """A TCP relay on a free port to ``target``; :meth:`pause` stops it
    forwarding what the target sends (the connections stay open and quiet),
    :meth:`resume` goes on. Runs in a thread of the test process."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.paused = threading.Event()
        #: pause only the connections open at :meth:`pause` whose client sent
        #: these bytes (``None``: every connection)
        self.only: bytes | None = None
        self._held: set[socket.socket] | None = None
        #: see :meth:`mute`: the bytes that pick the muted connections, and
        #: whether connections opened later are muted too
        self._mute: tuple[bytes, bool] | None = None
        self._muted: set[socket.socket] | None = None
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def pause(self, only: bytes | None = None) -> None:
        """Stop forwarding what the target sends; ``only``: on the connections
        open now whose client sent these bytes (e.g. ``b"SUBSCRIBE"``), not on
        the others nor on new ones."""
        self.only = only
        self._held = None
        self.paused.set()

    def resume(self) -> None:
        self.paused.clear()

    def mute(self, only: bytes, *, later: bool = False) -> None:
        """Drop the pub/sub messages the target sends, and forward the rest
        (replies, subscribe and unsubscribe confirmations), on the
        connections open now whose client sent ``only`` (``later``: and on
        those opened from now on). As a node that no longer gets the
        publishes but still answers its subscribers."""
        self._muted = None
        self._mute = (only, later)

    def unmute(self) -> None:
        self._mute = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        peers: dict[socket.socket, socket.socket] = {}
        from_target: set[socket.socket] = set()
        #: the first bytes each client sent, by the socket to the target
        sent: dict[socket.socket, bytes] = {}
        #: the start of a reply not read whole yet, on a muted connection
        unread: dict[socket.socket, bytes] = {}
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    try:
                        client, _ = self._listener.accept()
                        upstream = socket.create_connection(self.target, timeout=5)
                    except OSError:
                        continue
                    for one in (client, upstream):
                        one.setblocking(False)
                        selector.register(one, selectors.EVENT_READ, None)
                    peers[client], peers[upstream] = upstream, client
                    from_target.add(upstream)
                    continue
                if self.paused.is_set() and self.only is not None and self._held is None:
                    self._held = {s for s in from_target if self.only in sent.get(s, b"")}
                if (
                    sock in from_target
                    and self.paused.is_set()
                    and (self._held is None or sock in self._held)
                ):
                    continue  # hold what the target sends: it waits in its buffers
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                other = peers.get(sock)
                if not data or other is None:
                    for one in (sock, other):
                        if one is not None:
                            peers.pop(one, None)
                            from_target.discard(one)
                            sent.pop(one, None)
                            unread.pop(one, None)
                            with contextlib.suppress(KeyError, ValueError):
                                selector.unregister(one)
                            one.close()
                    continue
                if other in from_target and len(sent.get(other, b"")) < 65536:
                    sent[other] = sent.get(other, b"") + data
                mute = self._mute
                if mute is not None and sock in from_target:
                    if self._muted is None:
                        self._muted = {s for s in from_target if mute[0] in sent.get(s, b"")}
                    if sock in self._muted or (mute[1] and mute[0] in sent.get(sock, b"")):
                        data, unread[sock] = _without_messages(unread.get(sock, b"") + data)
                        if not data:
                            continue  # only messages, or a reply not read whole
                elif sock in unread:
                    data = unread.pop(sock) + data  # unmuted halfway through a reply
                try:
                    other.setblocking(True)
                    other.sendall(data)
                    other.setblocking(False)
                except OSError:
                    pass
            if self.paused.is_set():
                time.sleep(0.01)  # the paused sockets stay readable
        for sock in list(peers):
            sock.close()


#: how a pub/sub message starts (RESP2), plain and sharded
_MESSAGE_STARTS = (b"*3\r\n$7\r\nmessage\r\n", b"*3\r\n$8\r\nsmessage\r\n")


def _reply_end(buffer: bytes, start: int) -> int | None:
    """Where the RESP2 reply at ``start`` ends; ``None``: not all read yet."""
    line_end = buffer.find(b"\r\n", start)
    if line_end == -1:
        return None
    kind, size = buffer[start : start + 1], buffer[start + 1 : line_end]
    position = line_end + 2
    if kind == b"$" and int(size) >= 0:
        position += int(size) + 2
        return position if len(buffer) >= position else None
    if kind == b"*":
        for _ in range(max(int(size), 0)):
            end = _reply_end(buffer, position)
            if end is None:
                return None
            position = end
    return position


def _without_messages(buffer: bytes) -> tuple[bytes, bytes]:
    """The whole replies in ``buffer`` but the pub/sub messages, and the rest."""
    kept, position = [], 0
    while position < len(buffer):
        end = _reply_end(buffer, position)
        if end is None:
            break
        if not buffer.startswith(_MESSAGE_STARTS, position):
            kept.append(buffer[position:end])
        position = end
    return b"".join(kept), buffer[position:]


def redis_command(path: str, port: int, directory: Path, *extra: str) -> list[str]:
    return [
        path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--logfile", str(directory / "redis.log"), *extra,
    ]  # fmt: skip


class SentinelSetup:
    """A primary, a replica (replicating through an optional :class:`Relay`)
    and three Sentinels monitoring them as ``service``; ``password``: the
    Redis servers require it, ``sentinel_password``: the Sentinels require
    it (of clients and of each other); ``tls``: every one of them speaks TLS
    only, to clients and to each other, with these certificates."""

    service = "ssetest"

    def __init__(
        self,
        path: str,
        root: Path,
        *,
        relay: bool = False,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: Certificates | None = None,
    ) -> None:
        self.path = path
        self.root = root
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls
        self.servers: list[Server] = []
        self.relay: Relay | None = None
        try:
            self.primary = self._redis("primary")
            target = ("127.0.0.1", self.primary.port)
            if relay:
                self.relay = Relay(target)
                target = ("127.0.0.1", self.relay.port)
            self.replica = self._redis("replica", "--replicaof", target[0], str(target[1]))
            wait(
                lambda: self.client(self.replica).info("replication")["master_link_status"] == "up",
                15,
                "the replica to sync",
            )
            self.sentinels = [self._sentinel(n) for n in range(3)]
            wait(self._sentinels_ready, 30, "the Sentinels to see the primary and the replica")
        except Exception:
            self.close()
            raise

    def _redis(self, name: str, *extra: str) -> Server:
        if self.password is not None:
            extra = (*extra, "--requirepass", self.password, "--masterauth", self.password)
        port = free_port()
        directory = self.root / f"{name}-{port}"
        directory.mkdir(parents=True)
        command = redis_command(self.path, port, directory, *extra)
        if self.tls is not None:
            command[command.index("--port") + 1] = "0"
            command += ["--tls-port", str(port), "--tls-replication", "yes"]
            command += redis_tls_args(self.tls)
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = Server(proc, port, directory / "redis.log", extra={"dir": directory})
        self.servers.append(server)
        wait_for_port(port, 10, f"redis-server ({name})", proc)
        return server

    def _sentinel(self, n: int) -> Server:
        port = free_port()
        directory = self.root / f"sentinel-{port}"
        directory.mkdir(parents=True)
        config = directory / "sentinel.conf"
        listen = f"port {port}\n"
        if self.tls is not None:
            # TLS only, to clients, to the Redis servers and to the other Sentinels.
            options = redis_tls_args(self.tls)
            pairs = zip(options[::2], options[1::2], strict=True)
            listen = f"port 0\ntls-port {port}\ntls-replication yes\n" + "".join(
                f"{name[2:]} {value}\n" for name, value in pairs
            )
        config.write_text(
            listen + f"bind 127.0.0.1\ndir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            # Long, so that no Sentinel re-points a replica that replicates
            # through the relay; a failover itself takes a few seconds.
            f"sentinel failover-timeout {self.service} 60000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
            + (
                f"sentinel auth-pass {self.service} {self.password}\n"
                if self.password is not None
                else ""
            )
            + (
                f"requirepass {self.sentinel_password}\n"
                f"sentinel sentinel-pass {self.sentinel_password}\n"
                if self.sentinel_password is not None
                else ""
            )
        )
        proc = subprocess.Popen(
            [self.path, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = Server(proc, port, directory / "sentinel.log")
        self.servers.append(server)
        wait_for_port(port, 10, f"Sentinel {n}", proc)
        return server

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            client = self.sentinel_client(sentinel, decode_responses=True)
            if len(client.sentinel_slaves(self.service)) != 1:
                return False
            if len(client.sentinel_sentinels(self.service)) != 2:
                return False
        return True

    @property
    def url(self) -> str:
        """The broker URL, without passwords."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        scheme = "redis+sentinel" if self.tls is None else "rediss+sentinel"
        return f"{scheme}://{hosts}/{self.service}/0"

    def _tls_options(self) -> dict[str, Any]:
        return {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}

    def client(self, server: Server) -> redis.Redis:
        return redis.Redis(
            port=server.port, socket_timeout=2, password=self.password, **self._tls_options()
        )

    def sentinel_client(self, sentinel: Server, **options: Any) -> redis.Redis:
        return redis.Redis(
            port=sentinel.port,
            socket_timeout=1,
            password=self.sentinel_password,
            **self._tls_options(),
            **options,
        )

    def primary_port(self) -> int:
        client = self.sentinel_client(self.sentinels[0])
        _, port = client.sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        for server in reversed(self.servers):
            server.stop(timeout=5)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    for _ in range(100):
        with socket.socket() as low, socket.socket() as high:
            low.bind(("127.0.0.1", 0))
            port = int(low.getsockname()[1])
            if port + 10000 > 65535:
                continue
            try:
                high.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterSetup:
    """A Redis Cluster of three primaries (no replicas), with AOF, so that a
    node restarted keeps its data and its place."""

    def __init__(self, path: str, root: Path) -> None:
        self.path = path
        self.root = root
        self.nodes: list[Server] = []
        try:
            for _ in range(3):
                self.nodes.append(self._start(free_cluster_port()))
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            done = subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
                 "--cluster-yes"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
            wait(self._ok, 30, "the cluster to be ok on every node")
        except Exception:
            self.close()
            raise

    def _start(self, port: int) -> Server:
        directory = self.root / f"node-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.path, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000", "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = Server(proc, port, directory / "redis.log")
        wait_for_port(port, 10, "a cluster node", proc)
        return server

    def _ok(self) -> bool:
        return all(
            redis.Redis(port=node.port, socket_timeout=1).cluster("info")["cluster_state"] == "ok"
            for node in self.nodes
        )

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def owner_of(self, key: str) -> Server:
        """The node that serves ``key``'s slot (the others answer MOVED)."""
        for node in self.nodes:
            try:
                redis.Redis(port=node.port, socket_timeout=2).get(key)
            except redis.ResponseError:
                continue
            return node
        raise LookupError(f"no node serves {key!r}")

    def restart(self, node: Server) -> Server:
        """Stop ``node`` (SIGTERM: its AOF is complete) and start it again."""
        node.stop()
        index = self.nodes.index(node)
        self.nodes[index] = self._start(node.port)
        wait(self._ok, 30, "the cluster to be ok again")
        return self.nodes[index]

    def close(self) -> None:
        for node in self.nodes:
            node.stop(timeout=5)
