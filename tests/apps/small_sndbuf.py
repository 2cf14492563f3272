"""A test app (``TEST_BASE_APP``, default ``tests.apps.basic``) whose client
sockets get a small kernel send buffer (``TEST_SNDBUF`` bytes, default 64 KB).

On loopback Linux lets a send buffer grow to megabytes, so a slow reader's
backlog can sit in the kernel where the app never sees it; over a real network
to a slow client it cannot. This makes the server wait for the reader as it
would there.
"""

from __future__ import annotations

import importlib
import os
import socket

from flask import request

app = importlib.import_module(os.environ.get("TEST_BASE_APP", "tests.apps.basic")).app
SNDBUF = int(os.environ.get("TEST_SNDBUF", "65536"))


@app.before_request
def _small_send_buffer() -> None:
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
