"""A TCP relay on loopback that cuts connections at random, or refuses them all.

Between a client and a real server: each connection gets a random budget of
bytes from the server, and is cut (FIN, or RST) once the budget is spent, in
the middle of a response head, an event or a chunk header as it falls. With
``down()`` it cuts everything and closes every new connection at once, as a
network that has gone away, until ``up()``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading

#: SO_LINGER on with a zero timeout: close() sends RST
RESET_LINGER = b"\x01\x00\x00\x00\x00\x00\x00\x00"


class FlakyRelay:
    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int = 1,
        budget: tuple[int, int] | None = None,
        reset_share: float = 0.3,
    ) -> None:
        """``budget=(low, high)``: bytes from the server per connection, drawn
        between low and high (half the time below ``low * 4``); ``None``
        never cuts."""
        self._upstream = upstream_port
        self._rng = random.Random(seed)
        self._budget = budget
        self._reset_share = reset_share
        self._lock = threading.Lock()
        self._down = False
        self._closing = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        with self._lock:
            self._down = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._cut(pair, reset=False)

    def up(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        with self._lock:
            self._closing = True
            pairs, self._pairs = self._pairs, []
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() would not
        self._listener.close()
        for pair in pairs:
            self._cut(pair, reset=False)
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closing or self._down:
                    client.close()
                    continue
                self.connections += 1
                budget = self._draw()
                reset = self._rng.random() < self._reset_share
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._pairs.append(pair)
            self._spawn(self._pump, client, upstream, None, pair, reset)
            self._spawn(self._pump, upstream, client, budget, pair, reset)

    def _draw(self) -> int | None:
        if self._budget is None:
            return None
        low, high = self._budget
        if self._rng.random() < 0.5:
            return self._rng.randint(1, low * 4)
        return self._rng.randint(low, high)

    def _pump(
        self,
        source: socket.socket,
        target: socket.socket,
        budget: int | None,
        pair: tuple[socket.socket, socket.socket],
        reset: bool,
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if budget is not None and len(data) >= budget:
                    target.sendall(data[:budget])
                    with self._lock:
                        self.cuts += 1
                    self._cut(pair, reset)
                    return
                if budget is not None:
                    budget -= len(data)
                target.sendall(data)
        except OSError:
            pass  # the other side went away, or was cut
        self._cut(pair, reset=False)

    def _cut(self, pair: tuple[socket.socket, socket.socket], reset: bool) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for sock in pair:
            try:
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
                # Wakes the other pump's recv (close alone would not); with the
                # linger set, SHUT_RD sends nothing and close() then sends RST.
                sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
