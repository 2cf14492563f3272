"""Hold N streams open and keep reading them, for tests across a network namespace.

``python -m tests.apps.hold_streams HOST PORT PATH COUNT`` prints ``ready``
once every stream has its response head, then a line ``data <n> <text>`` for
each event stream ``n`` receives and ``ended <n>`` when it ends, until it is
killed. Runs inside the client namespace (no test imports, stdlib only).
"""

from __future__ import annotations

import selectors
import socket
import sys


def main() -> None:
    host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    selector = selectors.DefaultSelector()
    buffers: dict[int, bytes] = {}
    for n in range(count):
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                raise SystemExit(f"stream {n} closed before its head")
            head += data
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise SystemExit(f"stream {n}: status {status.decode()}")
        buffers[n] = head.split(b"\r\n\r\n", 1)[1]
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, n)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select(timeout=1):
            n = key.data
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                print(f"ended {n}", flush=True)
                continue
            buffers[n] += data
            # Chunk framing aside, an event line is "data: ...\n": enough here.
            *lines, buffers[n] = buffers[n].split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    print(f"data {n} {line[6:].decode(errors='replace')}", flush=True)


if __name__ == "__main__":
    main()
