"""A TCP proxy on loopback that can make the streams it carries go silent.

A connection accepted while :attr:`SilencingProxy.silence` is set gets the
response up to the stream's announced heartbeat interval
(``: sse-keepalive heartbeat-interval=S``), then nothing more: the proxy
keeps reading from the server and drops what it reads. To the browser the
line is half-open, as when a NAT or a proxy on the way forgot the
connection; to the server it is a reader that keeps up (every heartbeat is
acknowledged). Connections accepted while it is clear are carried as they
are. A stream request always has its own connection (a streaming response
never completes, so the browser cannot reuse it), so this is per stream.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

#: The end of the announcement line: from here on a silenced stream gets nothing.
_ANNOUNCED = re.compile(rb"heartbeat-interval=[0-9.]+\n")


class SilencingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        #: set: connections accepted from now on go silent after the announcement
        self.silence = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            silent = self.silence.is_set()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._start(self._pump, client, upstream, False)
            self._start(self._pump, upstream, client, silent)

    def _pump(self, source: socket.socket, sink: socket.socket, silent: bool) -> None:
        seen = b""
        forwarding = True
        try:
            while chunk := source.recv(65536):
                if forwarding:
                    sink.sendall(chunk)
                if silent and forwarding:
                    seen += chunk
                    forwarding = not _ANNOUNCED.search(seen)
        except OSError:
            pass
        finally:
            # Either side ending ends both: the browser's abort reaches the
            # server as an EOF, the server's end reaches the browser.
            for each in (source, sink):
                _shut(each)

    def close(self) -> None:
        _shut(self._listener)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for each in sockets:
            _shut(each)
        for thread in threads:
            thread.join(timeout=5)
            assert not thread.is_alive(), "a proxy thread did not stop within 5 s"


def _shut(sock: socket.socket) -> None:
    # shutdown() wakes a recv() blocked in another thread; close() alone does not.
    with contextlib.suppress(OSError):  # not connected, or already shut
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
