"""What the server offers: gevent or not, the client socket, the gunicorn worker.

Streams are long: a server that gives each request an OS thread from a small
pool (gunicorn ``sync`` or ``gthread``) is blocked by a few of them. This
module tells which kind of server the app runs in, finds the client socket
where the server exposes it, finds the gunicorn worker (whose shutdown the
streams follow, see :mod:`.state`), and logs once what will not work here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Any

log = logging.getLogger("flask_sse_keepalive")

FIX = (
    "run the app under gevent, e.g. `gunicorn -k gevent app:app` "
    "(gunicorn's sync and gthread workers hold one OS thread per open stream)"
)


_patched = False


def gevent_patched() -> bool:
    """Whether gevent has patched the standard library's sockets."""
    global _patched
    if not _patched:  # once patched, a process stays so: asked once per stream
        monkey = sys.modules.get("gevent.monkey")
        _patched = bool(monkey is not None and monkey.is_module_patched("socket"))
    return _patched


def is_dev_server(environ: dict[str, Any]) -> bool:
    """Werkzeug's development server (``flask run``)."""
    return str(environ.get("SERVER_SOFTWARE", "")).lower().startswith("werkzeug")


def _server_socket(environ: dict[str, Any]) -> Any:
    """The socket the server reads the request from and writes the response to."""
    sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")
    if sock is None:
        stream = environ.get("wsgi.input")
        if type(stream).__module__ == "gevent.pywsgi":
            raw = getattr(getattr(stream, "rfile", None), "raw", None)
            sock = getattr(raw, "_sock", None)
    return sock


def _http1(environ: dict[str, Any]) -> bool:
    # HTTP/2 streams share one socket: no stream may write to it or cut it.
    # (gunicorn says HTTP/2.0 there, and gives such requests trailers.)
    if not str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/1"):
        return False
    return "gunicorn.http2.send_trailers" not in environ


def client_socket(environ: dict[str, Any]) -> Any:
    """The gevent client socket of an HTTP/1.x request, to write to, or ``None``.

    gunicorn's ``-k gevent`` puts it in ``environ["gunicorn.socket"]`` and its
    ``-k gevent_pywsgi`` in ``environ["gunicorn.sock"]``; gevent's own
    ``WSGIServer`` reads the request from a file made on it. TLS sockets are
    left alone (a raw write would bypass the encryption), and so is HTTP/2.
    """
    sock = _server_socket(environ)
    if sock is None or not gevent_patched() or not _http1(environ):
        return None
    if hasattr(sock, "_sslobj") or not hasattr(sock, "_sock"):
        return None
    return sock


def cuttable_socket(environ: dict[str, Any]) -> Any:
    """The client socket of an HTTP/1.x request under gevent, TLS included,
    for one thing only: ``shutdown()``, which makes a server's blocked write
    to a stalled client fail. ``None`` where there is no such socket."""
    sock = _server_socket(environ)
    if sock is None or not gevent_patched() or not _http1(environ):
        return None
    return sock if hasattr(sock, "shutdown") else None


_TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)
_unbounded_said: set[tuple[int, str]] = set()


def bound_dead_peer(sock: Any, seconds: float) -> bool:
    """Make the kernel end the connection when bytes sent on ``sock`` (an OS
    socket) stay unacknowledged for ``seconds``: ``TCP_USER_TIMEOUT``.

    A client that vanished without a FIN or a reset (a cut network, a
    sleeping phone) acknowledges nothing, so the next heartbeat finds it:
    the heartbeat's TCP acknowledgement is the "pong". Where this cannot be
    set, it says why once per process, and only the send timeout finds such
    a client.

    :return: whether the bound is set.
    """
    if sock is None:
        why = "the server does not expose the client socket (HTTP/2, or another server)"
    elif _TCP_USER_TIMEOUT is None:
        why = "this platform has no TCP_USER_TIMEOUT"
    else:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, max(1, int(seconds * 1000)))
            return True
        except OSError:
            why = "the client socket is not TCP (a unix socket behind a proxy: bound it there)"
    key = (os.getpid(), why)
    if key not in _unbounded_said:
        _unbounded_said.add(key)
        log.warning("clients that vanish silently are found only by SSE_SEND_TIMEOUT here: %s", why)
    return False


def gunicorn_worker() -> Any:
    """The gunicorn worker object of this process, if there is one.

    gunicorn installs its worker's bound methods as signal handlers before it
    loads the app, so the SIGTERM handler leads to the worker.
    """
    handler = signal.getsignal(signal.SIGTERM)
    worker = getattr(handler, "__self__", None)
    if worker is None or not all(hasattr(worker, name) for name in ("alive", "cfg", "nr")):
        return None
    if type(worker).__module__.split(".")[0] != "gunicorn":
        return None
    return worker


#: (pid, app name) pairs whose gunicorn worker was checked
_checked: set[tuple[int, str]] = set()


def check_server(app_name: str, broker_url: str, *, allow_threads: bool | None = None) -> None:
    """Log what will not work in this gunicorn worker, once per worker and app.

    Only a gunicorn worker knows for sure: a gunicorn master that preloads
    the app has not patched gevent yet even when its workers will, and other
    servers (``flask run``, the test client) may serve streams from threads.
    So this runs when the app is set up and again when a process opens its
    first stream (a preloaded app's workers); elsewhere the first refused
    stream logs the wrong-server warning (:func:`warn_wrong_server`).
    ``allow_threads=True`` (``SSE_ALLOW_THREADS``) says streams in OS threads
    are wanted: no warning then.
    """
    key = (os.getpid(), app_name)
    if key in _checked:
        return
    worker = gunicorn_worker()
    if worker is None:
        return
    _checked.add(key)
    if not gevent_patched() and allow_threads is not True:
        warn_wrong_server(app_name)
    workers = getattr(worker.cfg, "workers", 1) or 1
    if workers > 1 and broker_url.startswith("memory:"):
        log.warning(
            "%s: the memory broker serves one process but gunicorn runs %d workers: each has "
            "its own bus and history. Set SSE_BROKER_URL=redis://... to share one.",
            app_name,
            workers,
        )


_wrong_server_warned: set[int] = set()


def warn_wrong_server(app_name: str) -> None:
    """Log the wrong-server warning, once per process: at start in a gunicorn
    worker, else when the first stream is refused."""
    if os.getpid() not in _wrong_server_warned:
        _wrong_server_warned.add(os.getpid())
        log.warning("%s: SSE streams cannot be served here: %s", app_name, FIX)
