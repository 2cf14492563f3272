"""What the server offers: gevent or not, the client socket, worker shutdown.

Streams are long: a server that gives each request an OS thread from a small
pool (gunicorn ``sync`` or ``gthread``) is blocked by a few of them. This
module tells which kind of server the app runs in, finds the client socket
where the server exposes it, and notices when a gunicorn worker starts to
shut down, so that streams end at once instead of holding the worker until
``graceful_timeout``.
"""

from __future__ import annotations

import logging
import signal
import sys
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("flask_sse_keepalive")

FIX = (
    "run the app under gevent, e.g. `gunicorn -k gevent app:app` "
    "(gunicorn's sync and gthread workers hold one OS thread per open stream)"
)

#: How often the shutdown watcher looks at the gunicorn worker, in seconds.
SHUTDOWN_POLL = 0.2

_registries: weakref.WeakSet[Registry] = weakref.WeakSet()
_watcher: Any = None


def gevent_patched() -> bool:
    """Whether gevent has patched the standard library's sockets."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def is_dev_server(environ: dict[str, Any]) -> bool:
    """Werkzeug's development server (``flask run``)."""
    return str(environ.get("SERVER_SOFTWARE", "")).lower().startswith("werkzeug")


def client_socket(environ: dict[str, Any]) -> Any:
    """The gevent client socket of an HTTP/1.x request, or ``None``.

    gunicorn's ``-k gevent`` puts it in ``environ["gunicorn.socket"]`` and its
    ``-k gevent_pywsgi`` in ``environ["gunicorn.sock"]``; gevent's own
    ``WSGIServer`` reads the request from a file made on it. TLS sockets are
    left alone (a raw write would bypass the encryption), and so is HTTP/2,
    whose streams share a socket.
    """
    sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")
    if sock is None:
        stream = environ.get("wsgi.input")
        if type(stream).__module__ == "gevent.pywsgi":
            raw = getattr(getattr(stream, "rfile", None), "raw", None)
            sock = getattr(raw, "_sock", None)
    if sock is None or not gevent_patched():
        return None
    if hasattr(sock, "_sslobj") or not hasattr(sock, "_sock"):
        return None
    if not str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/1"):
        return None
    if any(key.startswith("gunicorn.http2") for key in environ):
        return None
    return sock


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


def check_server(app_name: str, broker_url: str) -> None:
    """Log, once at start-up, what will not work in this process.

    Only a gunicorn worker knows for sure: a gunicorn master that preloads
    the app has not patched gevent yet even when its workers will, and other
    servers (``flask run``, the test client) may serve streams from threads.
    Elsewhere the first refused stream logs the warning (:func:`refused`).
    """
    worker = gunicorn_worker()
    if worker is None:
        return
    if not gevent_patched():
        refused(app_name)
    workers = getattr(worker.cfg, "workers", 1) or 1
    if workers > 1 and broker_url.startswith("memory:"):
        log.warning(
            "%s: the memory broker serves one process but gunicorn runs %d workers: each has "
            "its own bus and history. Set SSE_BROKER_URL=redis://... to share one.",
            app_name,
            workers,
        )


_wrong_server_logged = False


def refused(app_name: str) -> None:
    """Log the wrong-server warning, once per process: at start in a gunicorn
    worker, else when the first stream is refused."""
    global _wrong_server_logged
    if not _wrong_server_logged:
        _wrong_server_logged = True
        log.warning("%s: SSE streams cannot be served here: %s", app_name, FIX)


def watch_shutdown(registry: Registry) -> None:
    """End ``registry``'s streams when this gunicorn worker starts to shut down.

    Covers SIGTERM (stop, ``HUP`` reload), ``--max-requests`` recycling and the
    reloader: all of them clear ``worker.alive``. One greenlet per process
    polls it. Outside gunicorn this does nothing; call :meth:`SSE.shutdown`.
    """
    global _watcher
    _registries.add(registry)
    if _watcher is not None or not gevent_patched():
        return
    worker = gunicorn_worker()
    if worker is None:
        return
    import atexit

    import gevent

    from .direct import close_handed_over

    _watcher = gevent.spawn(_poll_worker, worker)
    # Streams that own their sockets are not in gunicorn's handler pool, so
    # the worker may finish before they said goodbye: end them at exit too.
    atexit.register(close_handed_over, 1.5)


def _poll_worker(worker: Any) -> None:
    import gevent

    while worker.alive:
        gevent.sleep(SHUTDOWN_POLL)
    log.info(
        "worker %s is shutting down: ending %d stream registries", worker.pid, len(_registries)
    )
    for registry in list(_registries):
        registry.shutdown()
